//! `bench-speed`: the speed layer and the archive through the broker, each against a bare
//! rdkafka consumer reading the same topic in the same run, pair by pair (machines here are
//! noisy: only ratios measured side by side mean anything). Prints JSON.
//!
//! `--mode secure`: the speed layer and the bare consumer both over SASL_SSL (SCRAM-SHA-512
//! through the secured stack's TLS proxy), the speed layer writing to TLS Redis with an ACL
//! user. `--mode cluster`: the same events through the speed layer into the single Redis and
//! into the Redis Cluster, run by run.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tributary_it::generator::{Generator, GeneratorOptions, produce_generated};
use tributary_it::secure::SecureStack;
use tributary_it::{brokers, create_topic_via, example_config, source_for, unique};
use tributary_shared::config::{RedisConfig, SourceConfig};
use tributary_shared::layout::RedisKeys;
use tributary_shared::redis_client::RedisClient;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// plain (the local stack), secure (SASL_SSL + TLS Redis), cluster (Redis Cluster vs
    /// single Redis).
    #[arg(long, default_value = "plain")]
    mode: String,
    /// Read an existing topic holding exactly `--events` records instead of producing a new
    /// one (to compare runs on the same broker store).
    #[arg(long)]
    topic: Option<String>,
    /// `archive`: only the archive pairs (bare consumer, archive), not the speed layer's.
    #[arg(long, value_parser = ["archive"])]
    only: Option<String>,
}

/// Where one run reads and writes: Kafka as `[source]` says, and a Redis per key prefix.
struct Target {
    source: SourceConfig,
    redis: Box<dyn Fn(&str) -> RedisConfig>,
}

fn plain_redis(prefix: &str) -> RedisConfig {
    RedisConfig {
        url: tributary_it::redis_url(),
        key_prefix: prefix.to_string(),
        ..RedisConfig::default()
    }
}

async fn produce(source: &SourceConfig, n: u64) -> anyhow::Result<()> {
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
    produce_generated(source, &source.topic, &mut g, n, 0).await
}

/// Reads every record and discards it; seconds from subscribe to the last record.
async fn bare_consumer(source: &SourceConfig, n: u64) -> anyhow::Result<f64> {
    let topic = source.topic.as_str();
    let c: StreamConsumer = tributary_shared::kafka::client_config(source)
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
    let mut first = None;
    while seen < n {
        let m = match tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .context("bare consumer stalled")?
        {
            Ok(m) => m,
            // librdkafka reconnects by itself after a non-fatal error, as the speed layer and
            // the archive carry on after one: over SASL, Tansu fails every connection's
            // re-authentication ~54 s after its login (infra/secure.sh).
            Err(KafkaError::MessageConsumption(e)) => {
                eprintln!("bare: {e} (not fatal; librdkafka reconnects)");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        first.get_or_insert_with(|| started.elapsed());
        bytes += m.payload_len();
        seen += 1;
    }
    std::hint::black_box(bytes);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "bare: first record at {:.2} s, last at {secs:.2} s",
        first.unwrap_or_default().as_secs_f64()
    );
    Ok(secs)
}

/// Runs the speed layer in-process until it has applied every record; seconds from start.
async fn speed_layer(source: &SourceConfig, redis: RedisConfig, n: u64) -> anyhow::Result<f64> {
    let topic = source.topic.as_str();
    let mut config = example_config(&[
        ("SPEED__ALLOWED_LATENESS", "48h".into()),
        ("SPEED__METRICS_LISTEN", "127.0.0.1:0".into()),
    ])?;
    config.source = source.clone();
    config.source.group_prefix = unique("bench");
    config.redis = redis;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let mut con = RedisClient::new(&config.redis)?.connect().await?;
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let handle = tokio::spawn(tributary_speed_layer::run(config, rx));
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
async fn archive(source: &SourceConfig, n: u64) -> anyhow::Result<f64> {
    let topic = source.topic.as_str();
    let dir = tempfile::tempdir()?;
    let config = example_config(&[
        ("SOURCE__BROKERS", source.brokers.clone()),
        ("SOURCE__TOPIC", topic.to_string()),
        ("SOURCE__GROUP_PREFIX", unique("bench")),
        ("STORE__URL", format!("file://{}", dir.path().display())),
        ("BATCH__METRICS_LISTEN", "127.0.0.1:0".into()),
    ])?;
    let store = tributary_it::open(&config.store)?;
    let states = tributary_batch_layer::state::StateStore::new(store, topic);
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let handle = tokio::spawn(tributary_batch_layer::archive(config, rx));
    // The first commit comes one flush interval after the first record: how long joining
    // the group and loading the states took, as against the bare consumer's first record.
    let mut first_commit = None;
    loop {
        let total: i64 = states
            .load_all()
            .await?
            .iter()
            .map(|(_, s)| s.committed_offset)
            .sum();
        if total > 0 {
            first_commit.get_or_insert_with(|| started.elapsed());
        }
        if total as u64 >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("archive did not finish in 600 s ({total} of {n})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    // Reading vs committing: when the last record arrived, and when the state took it in.
    let last = states
        .load_all()
        .await?
        .iter()
        .filter_map(|(_, s)| s.last_record_ms)
        .max()
        .unwrap_or(0);
    let started_ms = chrono::Utc::now().timestamp_millis() - (secs * 1000.0) as i64;
    eprintln!(
        "archive: first commit at {:.2} s, last record received at {:.2} s, committed at {secs:.2} s",
        first_commit.unwrap_or_default().as_secs_f64(),
        (last - started_ms) as f64 / 1000.0
    );
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
    let topic = args.topic.clone().unwrap_or_else(|| unique("bench-speed"));
    let target = match args.mode.as_str() {
        "plain" | "cluster" => Target {
            source: source_for(&brokers()),
            redis: Box::new(plain_redis),
        },
        "secure" => {
            let stack = SecureStack::from_env()?;
            Target {
                source: stack.source(&topic),
                redis: Box::new(move |prefix: &str| stack.redis(prefix)),
            }
        }
        other => anyhow::bail!("--mode {other:?}: plain, secure or cluster"),
    };
    let mut source = target.source.clone();
    source.topic = topic.clone();
    if args.topic.is_none() {
        create_topic_via(&source, &topic, args.partitions, false).await?;
        let t = Instant::now();
        produce(&source, args.events).await?;
        eprintln!(
            "produced {} events in {:.1}s ({} mode)",
            args.events,
            t.elapsed().as_secs_f64(),
            args.mode
        );
    }
    let out = if args.mode == "cluster" {
        cluster_runs(&args, &source).await?
    } else {
        broker_runs(&args, &source, &target).await?
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Speed layer and archive, each next to the bare consumer, run by run.
async fn broker_runs(
    args: &Args,
    source: &SourceConfig,
    target: &Target,
) -> anyhow::Result<serde_json::Value> {
    let n = args.events;
    let (mut bare, mut speed, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bare2, mut arch, mut aratio) = (Vec::new(), Vec::new(), Vec::new());
    let archive_only = args.only.as_deref() == Some("archive");
    for run in 0..args.runs {
        if !archive_only {
            let b = n as f64 / bare_consumer(source, n).await?;
            let s = n as f64 / speed_layer(source, (target.redis)(&unique("bench")), n).await?;
            eprintln!(
                "run {run}: bare {b:.0}/s, speed-layer {s:.0}/s, ratio {:.2}",
                s / b
            );
            bare.push(b);
            speed.push(s);
            ratio.push(s / b);
        }
        if args.mode != "plain" {
            continue;
        }
        let b = n as f64 / bare_consumer(source, n).await?;
        let a = n as f64 / archive(source, n).await?;
        eprintln!(
            "run {run}: bare {b:.0}/s, archive {a:.0}/s, ratio {:.2}",
            a / b
        );
        bare2.push(b);
        arch.push(a);
        aratio.push(a / b);
    }
    let mut out = serde_json::json!({
        "mode": args.mode,
        "events": n,
        "partitions": args.partitions,
        "bare_consumer_events_per_sec": stats(&bare),
        "speed_layer_events_per_sec": stats(&speed),
        "ratio_speed_to_bare": stats(&ratio),
    });
    if !arch.is_empty() {
        out["archive"] = serde_json::json!({
            "bare_consumer_events_per_sec": stats(&bare2),
            "archive_events_per_sec": stats(&arch),
            "ratio_archive_to_bare": stats(&aratio),
        });
    }
    Ok(out)
}

/// The speed layer into the single Redis, then into the Redis Cluster, run by run.
async fn cluster_runs(args: &Args, source: &SourceConfig) -> anyhow::Result<serde_json::Value> {
    let stack = SecureStack::from_env()?;
    let n = args.events;
    let (mut single, mut cluster, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let s = n as f64 / speed_layer(source, plain_redis(&unique("bench")), n).await?;
        let c = n as f64 / speed_layer(source, stack.cluster(&unique("bench")), n).await?;
        eprintln!(
            "run {run}: single redis {s:.0}/s, redis cluster {c:.0}/s, ratio {:.2}",
            c / s
        );
        single.push(s);
        cluster.push(c);
        ratio.push(c / s);
    }
    Ok(serde_json::json!({
        "mode": "cluster",
        "events": n,
        "partitions": args.partitions,
        "single_redis_events_per_sec": stats(&single),
        "redis_cluster_events_per_sec": stats(&cluster),
        "ratio_cluster_to_single": stats(&ratio),
    }))
}
