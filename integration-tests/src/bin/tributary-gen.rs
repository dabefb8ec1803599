//! `tributary-gen`: realistic events (~200 bytes, DESIGN.md's shape) for the demo, the tests and
//! the benchmarks. Fixed seed → the same events every time. Writes JSON lines to a file or
//! stdout, or produces to a Kafka topic, optionally at a fixed rate.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

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

const COUNTRIES: [&str; 10] = ["DE", "FR", "US", "GB", "BR", "IN", "JP", "ES", "IT", "NL"];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
const TYPES: [(&str, f64); 4] = [
    ("page_view", 0.6),
    ("add_to_cart", 0.15),
    ("checkout", 0.2),
    ("refund", 0.05),
];

struct Generator {
    rng: StdRng,
    args_late: f64,
    malformed: f64,
    duplicates: f64,
    start_ms: i64,
    span_ms: i64,
    count: u64,
    last: Option<String>,
}

impl Generator {
    fn event(&mut self, i: u64) -> String {
        if let Some(prev) = &self.last
            && self.rng.random_bool(self.duplicates)
        {
            return prev.clone();
        }
        let mut t = if self.span_ms == 0 {
            chrono::Utc::now().timestamp_millis()
        } else {
            self.start_ms + (i as i64 * self.span_ms) / self.count.max(1) as i64
        };
        if self.rng.random_bool(self.args_late) {
            t -= self.rng.random_range(600_000..1_800_000);
        }
        if self.rng.random_bool(self.malformed) {
            return match self.rng.random_range(0..3) {
                0 => format!("{{\"event_id\":\"bad-{i}\",\"event_time\":{t},\"type\":\"checkout\""),
                1 => format!("{{\"event_time\":{t},\"type\":\"checkout\",\"amount\":3.5}}"),
                _ => format!(
                    "{{\"event_id\":\"bad-{i}\",\"event_time\":{t},\"type\":\"checkout\",\"amount\":\"12,5\"}}"
                ),
            };
        }
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        let mut ty = TYPES[0].0;
        for (name, p) in TYPES {
            acc += p;
            if r < acc {
                ty = name;
                break;
            }
        }
        let country = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let device = DEVICES[self.rng.random_range(0..DEVICES.len())];
        let user = self.rng.random_range(0..200_000);
        let amount = (self.rng.random_range(100..50_000) as f64) / 100.0;
        // Long-tailed latencies.
        let latency = (self.rng.random::<f64>().powi(3) * 2_000.0 + 20.0).round();
        let time = chrono::DateTime::from_timestamp_millis(t)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let e = format!(
            "{{\"event_id\":\"{:016x}-{i}\",\"event_time\":\"{time}\",\"type\":\"{ty}\",\"country\":\"{country}\",\"device\":\"{device}\",\"user_id\":\"u-{user}\",\"amount\":{amount},\"latency_ms\":{latency},\"session\":\"s-{:08x}\"}}",
            self.rng.random::<u64>(),
            self.rng.random::<u32>()
        );
        self.last = Some(e.clone());
        e
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = chrono::Utc::now().timestamp_millis();
    let mut g = Generator {
        rng: StdRng::seed_from_u64(args.seed),
        args_late: args.late,
        malformed: args.malformed,
        duplicates: args.duplicates,
        start_ms: now - args.span_secs * 1000,
        span_ms: args.span_secs * 1000,
        count: args.count,
        last: None,
    };
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
