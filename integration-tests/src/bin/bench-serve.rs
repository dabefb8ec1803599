//! `bench-serve`: a closed-loop HTTP load generator. `--clients` tasks each send one request
//! at a time over a kept-alive connection for `--seconds`; prints requests/s and latency
//! percentiles as JSON. Non-2xx answers count as errors.

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Full URL to GET.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up, seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let warm_until = Instant::now() + Duration::from_secs(args.warmup);
    let end = warm_until + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, url) = (client.clone(), args.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let ok = match client.get(&url).send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
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
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    let out = serde_json::json!({
        "clients": args.clients,
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
