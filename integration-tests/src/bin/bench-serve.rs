//! `bench-serve`: a closed-loop HTTP/1.1 load generator. `--clients` connections, each sending
//! one request at a time (kept alive, reopened after an error) for `--seconds`; prints
//! requests/s and latency percentiles as JSON. Non-2xx answers count as errors.
//!
//! All clients share one thread, on bare hyper connections: on two cores shared with the server
//! and Redis, the generator's own CPU shows up as the server's latency, and the reqwest client
//! with a multi-threaded runtime used before the seventh stop spent 44 us of CPU per request,
//! as much as the server it measured (docs/benchmarks.md). This is the shape of `wrk -t1`,
//! which the harness runs next to it; written here so the harness owns its JSON and percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    /// Full URL to GET (http://).
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up, seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Send `Accept-Encoding: gzip`, as browsers do (the body is read, not decompressed).
    #[arg(long)]
    accept_gzip: bool,
}

/// Where and what every client asks.
struct Target {
    addr: (String, u16),
    /// The `Host` header.
    authority: String,
    /// Path and query.
    path: String,
    accept_gzip: bool,
}

impl Target {
    fn parse(url: &str, accept_gzip: bool) -> anyhow::Result<Target> {
        let url = reqwest::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
        anyhow::ensure!(
            url.scheme() == "http",
            "--url: only http:// is measured (got {}://)",
            url.scheme()
        );
        let host = url.host_str().context("--url has no host")?.to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        Ok(Target {
            authority: format!("{host}:{port}"),
            addr: (host, port),
            path,
            accept_gzip,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Arc::new(Target::parse(&args.url, args.accept_gzip)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut all, errors) = runtime.block_on(run(&args, target))?;
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    let out = serde_json::json!({
        "clients": args.clients,
        "accept_gzip": args.accept_gzip,
        "seconds": args.seconds,
        "requests": all.len(),
        "errors": errors,
        "requests_per_sec": all.len() as f64 / args.seconds as f64,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": all.last(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Runs every client to the end; their latencies (ms) of the measured period and error count.
async fn run(args: &Args, target: Arc<Target>) -> anyhow::Result<(Vec<f64>, u64)> {
    let warm_until = Instant::now() + Duration::from_secs(args.warmup);
    let end = warm_until + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client(target.clone(), warm_until, end)))
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    Ok((all, errors))
}

async fn client(target: Arc<Target>, warm_until: Instant, end: Instant) -> (Vec<f64>, u64) {
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    let mut con: Option<SendRequest<Empty<Bytes>>> = None;
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        let ok = match get(&mut con, &target).await {
            Ok(ok) => ok,
            Err(_) => {
                con = None;
                // A refused connection must not spin the thread the other clients share.
                tokio::time::sleep(Duration::from_millis(10)).await;
                false
            }
        };
        if t >= warm_until {
            if ok {
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                errors += 1;
            }
        }
    }
    (lat, errors)
}

/// One request on the client's connection (opened first if it has none); whether it was 2xx.
async fn get(con: &mut Option<SendRequest<Empty<Bytes>>>, target: &Target) -> anyhow::Result<bool> {
    let sender = match con {
        Some(sender) => sender,
        None => {
            let stream = tokio::net::TcpStream::connect(&target.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            // Drives the connection until it closes.
            tokio::spawn(connection);
            con.insert(sender)
        }
    };
    sender.ready().await?;
    let mut request = hyper::Request::get(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str());
    if target.accept_gzip {
        request = request.header(hyper::header::ACCEPT_ENCODING, "gzip");
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let ok = response.status().is_success();
    response.into_body().collect().await?;
    Ok(ok)
}
