//! `bench-speed`: the speed layer and the archive through the broker, each against a bare
//! rdkafka consumer reading the same topic in the same run, pair by pair (machines here are
//! noisy: only ratios measured side by side mean anything). Prints JSON.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;
use tributary_it::generator::{Generator, GeneratorOptions, produce_generated};
use tributary_it::{brokers, create_topic, example_config, redis, unique};
use tributary_shared::layout::RedisKeys;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

async fn produce(topic: &str, n: u64) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut g = Generator::new(GeneratorOptions {
        seed: 42,
        late: 0.0,
        malformed: 0.0,
        duplicates: 0.0,
        start_ms: now - 2 * 3_600_000,
        span_ms: 2 * 3_600_000,
        count: n,
    });
    produce_generated(&brokers(), topic, &mut g, n, 0).await
}

/// Reads every record and discards it; seconds from subscribe to the last record.
async fn bare_consumer(topic: &str, n: u64) -> anyhow::Result<f64> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("bare"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.max.bytes", "16777216")
        .create()?;
    let started = Instant::now();
    c.subscribe(&[topic])?;
    let mut seen = 0u64;
    let mut bytes = 0usize;
    while seen < n {
        let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .context("bare consumer stalled")??;
        bytes += m.payload_len();
        seen += 1;
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed().as_secs_f64())
}

/// Runs the speed layer in-process until it has applied every record; seconds from start.
async fn speed_layer(topic: &str, n: u64) -> anyhow::Result<f64> {
    let prefix = unique("bench");
    let config = example_config(&[
        ("SOURCE__BROKERS", brokers()),
        ("SOURCE__TOPIC", topic.to_string()),
        ("SOURCE__GROUP_PREFIX", unique("bench")),
        ("REDIS__URL", tributary_it::redis_url()),
        ("REDIS__KEY_PREFIX", prefix.clone()),
        ("SPEED__ALLOWED_LATENESS", "48h".into()),
        ("SPEED__METRICS_LISTEN", "127.0.0.1:0".into()),
    ])?;
    let keys = RedisKeys::new(prefix);
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let handle = tokio::spawn(tributary_speed_layer::run(config, rx));
    let mut con = redis().await?;
    let key = keys.offsets("checkouts", topic);
    loop {
        let stored: std::collections::HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut con)
            .await?;
        let total: i64 = stored
            .values()
            .filter_map(|v| v.split(':').next()?.parse::<i64>().ok())
            .sum();
        if total as u64 >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("speed layer did not finish in 600 s ({total} of {n})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    tx.send(true).ok();
    handle.await??;
    Ok(secs)
}

/// Runs the archiver in-process (to a temporary directory) until every record is committed;
/// seconds from start.
async fn archive(topic: &str, n: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let config = example_config(&[
        ("SOURCE__BROKERS", brokers()),
        ("SOURCE__TOPIC", topic.to_string()),
        ("SOURCE__GROUP_PREFIX", unique("bench")),
        ("STORE__URL", format!("file://{}", dir.path().display())),
        ("BATCH__METRICS_LISTEN", "127.0.0.1:0".into()),
        ("BATCH__ARCHIVE_FLUSH_INTERVAL", "1s".into()),
    ])?;
    let store = tributary_it::open(&config.store)?;
    let states = tributary_batch_layer::state::StateStore::new(store, topic);
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let handle = tokio::spawn(tributary_batch_layer::archive(config, rx));
    loop {
        let total: i64 = states
            .load_all()
            .await?
            .iter()
            .map(|(_, s)| s.committed_offset)
            .sum();
        if total as u64 >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("archive did not finish in 600 s ({total} of {n})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    tx.send(true).ok();
    handle.await??;
    Ok(secs)
}

fn stats(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    serde_json::json!({
        "median": s.get(s.len() / 2),
        "min": s.first(),
        "max": s.last(),
        "runs": v,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = unique("bench-speed");
    create_topic(&topic, args.partitions).await?;
    let t = Instant::now();
    produce(&topic, args.events).await?;
    eprintln!(
        "produced {} events in {:.1}s",
        args.events,
        t.elapsed().as_secs_f64()
    );
    let (mut bare, mut speed, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bare2, mut arch, mut aratio) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let b = args.events as f64 / bare_consumer(&topic, args.events).await?;
        let s = args.events as f64 / speed_layer(&topic, args.events).await?;
        eprintln!(
            "run {run}: bare {b:.0}/s, speed-layer {s:.0}/s, ratio {:.2}",
            s / b
        );
        bare.push(b);
        speed.push(s);
        ratio.push(s / b);
        let b = args.events as f64 / bare_consumer(&topic, args.events).await?;
        let a = args.events as f64 / archive(&topic, args.events).await?;
        eprintln!(
            "run {run}: bare {b:.0}/s, archive {a:.0}/s, ratio {:.2}",
            a / b
        );
        bare2.push(b);
        arch.push(a);
        aratio.push(a / b);
    }
    let out = serde_json::json!({
        "events": args.events,
        "partitions": args.partitions,
        "bare_consumer_events_per_sec": stats(&bare),
        "speed_layer_events_per_sec": stats(&speed),
        "ratio_speed_to_bare": stats(&ratio),
        "archive": {
            "bare_consumer_events_per_sec": stats(&bare2),
            "archive_events_per_sec": stats(&arch),
            "ratio_archive_to_bare": stats(&aratio),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
