//! `tributary-gen`: realistic events (~200 bytes, the event contract's shape) for the demo, the tests and
//! the benchmarks. Fixed seed → the same events every time. Writes JSON lines to a file or
//! stdout, or produces to a Kafka topic, optionally at a fixed rate.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use tributary_it::generator::{Generator, GeneratorOptions, produce_generated};

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
    /// Kafka brokers (with --topic); default `source.brokers` of the config.
    #[arg(long)]
    brokers: Option<String>,
    /// The config whose `[source]` says how to reach Kafka (SASL, TLS); `TRIBUTARY__SOURCE__*`
    /// variables apply as for every Tributary binary.
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    config: Option<std::path::PathBuf>,
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
    /// End the span this many seconds before now (with --span-secs; 0: it ends now).
    #[arg(long, default_value_t = 0)]
    end_secs_ago: i64,
    /// Share of events whose time is 10-30 minutes behind (late for the speed layer).
    #[arg(long, default_value_t = 0.0)]
    late: f64,
    /// Share of malformed events (bad JSON, missing fields, wrong types).
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Share of producer duplicates (an earlier event sent again).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Create the topic (with this many partitions) if it does not exist yet.
    #[arg(long)]
    create_partitions: Option<i32>,
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
        start_ms: now - (args.end_secs_ago + args.span_secs) * 1000,
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
        let mut source = tributary_shared::Config::load(args.config.as_deref())
            .context("config")?
            .source;
        if let Some(b) = &args.brokers {
            source.brokers = b.clone();
        }
        if let Some(p) = args.create_partitions {
            tributary_it::create_topic_via(&source, topic, p, true).await?;
        }
        produce_generated(&source, topic, &mut g, args.count, args.rate).await?;
    }
    eprintln!(
        "generated {} events in {:.2}s",
        args.count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
