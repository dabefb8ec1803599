//! `tributary-gen`: realistic events (~200 bytes, DESIGN.md's shape) for the demo, the tests and
//! the benchmarks. Fixed seed → the same events every time. Writes JSON lines to a file or
//! stdout, or produces to a Kafka topic, optionally at a fixed rate.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_it::generator::{Generator, GeneratorOptions};

#[derive(Parser)]
#[command(name = "tributary-gen", about = "Generate realistic Tributary events")]
struct Args {
    /// How many events.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write JSON lines here (`-` for stdout) instead of producing to Kafka.
    #[arg(long)]
    out: Option<String>,
    /// Kafka brokers (with --topic).
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Produce to this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Event times spread evenly over this many seconds ending now (0: each event's time is the
    /// moment it is generated).
    #[arg(long, default_value_t = 3600)]
    span_secs: i64,
    /// Share of events whose time is 10-30 minutes behind (late for the speed layer).
    #[arg(long, default_value_t = 0.0)]
    late: f64,
    /// Share of malformed events (bad JSON, missing fields, wrong types).
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Share of producer duplicates (an earlier event sent again).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = chrono::Utc::now().timestamp_millis();
    let mut g = Generator::new(GeneratorOptions {
        seed: args.seed,
        late: args.late,
        malformed: args.malformed,
        duplicates: args.duplicates,
        start_ms: now - args.span_secs * 1000,
        span_ms: args.span_secs * 1000,
        count: args.count,
    });
    let started = Instant::now();
    if let Some(out) = &args.out {
        let sink: Box<dyn Write> = if out == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::fs::File::create(out).with_context(|| format!("create {out}"))?)
        };
        let mut w = std::io::BufWriter::with_capacity(1 << 20, sink);
        for i in 0..args.count {
            writeln!(w, "{}", g.event(i))?;
        }
        w.flush()?;
    } else {
        let topic = args
            .topic
            .as_deref()
            .context("give --out FILE or --topic T")?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &args.brokers)
            .set("linger.ms", "10")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", "60000")
            .create()
            .context("create producer")?;
        let mut inflight = Vec::with_capacity(10_000);
        for i in 0..args.count {
            if args.rate > 0 {
                let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep(due - now).await;
                }
            }
            let payload = g.event(i);
            let key = format!("k{}", i % 1024);
            match producer.send_result(FutureRecord::to(topic).payload(&payload).key(&key)) {
                Ok(f) => inflight.push(f),
                Err((e, _)) => anyhow::bail!("produce: {e}"),
            }
            if inflight.len() >= 10_000 {
                for f in inflight.drain(..) {
                    f.await?
                        .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
                }
            }
        }
        for f in inflight.drain(..) {
            f.await?
                .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
        }
    }
    eprintln!(
        "generated {} events in {:.2}s",
        args.count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
