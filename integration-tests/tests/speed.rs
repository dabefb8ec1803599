//! The speed layer against the real stack (Tansu + Redis): exact aggregates against a ground
//! truth, the DLQ, late events, sketch accuracy, crashes mid-flush and a rebalance.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tributary_it::*;
use tributary_shared::layout::{RedisKeys, encode_group};
use tributary_shared::sketch::{QuantileSketch, exact_quantile_cont};
use tributary_shared::{Config, Granularity};

const FIELDS: &str = r#"
[fields]
country = "string"
device = "string"
user_id = "string"
amount = "float"
latency_ms = "float"
"#;

const VIEW: &str = r#"
[[views]]
name = "checkouts"
where = { type = "checkout" }
dimensions = ["country", "device"]
granularities = ["minute", "hour"]
measures = [
  { name = "events",  agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "min_amount", agg = "min", field = "amount" },
  { name = "max_amount", agg = "max", field = "amount" },
  { name = "avg_amount", agg = "avg", field = "amount" },
  { name = "buyers",  agg = "count_distinct", field = "user_id" },
  { name = "p95_latency", agg = "quantile", field = "latency_ms", q = 0.95 },
]
"#;

fn speed_section(lateness: &str, extra: &str) -> String {
    format!(
        "[speed]\nallowed_lateness = \"{lateness}\"\nflush_interval = \"100ms\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n{FIELDS}\n{VIEW}"
    )
}

/// One generated event and what the test knows about it.
#[derive(Clone)]
struct Gen {
    partition: i32,
    time_ms: i64,
    checkout: bool,
    country: &'static str,
    device: &'static str,
    amount: f64,
    json: Vec<u8>,
}

/// `n` events over `partitions`, in event-time order within the last hour. Amounts are
/// multiples of 0.25 so float sums are exact whatever the order.
fn generate(n: usize, partitions: i32, seed: u64) -> Vec<Gen> {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = now_ms() - 50 * 60_000;
    (0..n)
        .map(|i| {
            let time_ms = start + (i as i64) * (40 * 60_000) / n as i64;
            let checkout = rng.random_bool(0.8);
            let country = ["DE", "FR", "US", "BR"][rng.random_range(0..4)];
            let device = ["mobile", "desktop"][rng.random_range(0..2)];
            let amount = rng.random_range(1..400) as f64 * 0.25;
            let user = rng.random_range(0..500);
            let latency = rng.random_range(10..2000);
            let json = format!(
                r#"{{"event_id":"e-{seed}-{i}","event_time":{time_ms},"type":"{}","country":"{country}","device":"{device}","user_id":"u{user}","amount":{amount},"latency_ms":{latency}}}"#,
                if checkout { "checkout" } else { "page_view" }
            );
            Gen {
                partition: (i as i32) % partitions,
                time_ms,
                checkout,
                country,
                device,
                amount,
                json: json.into_bytes(),
            }
        })
        .collect()
}

async fn produce_gen(topic: &str, events: &[Gen]) -> anyhow::Result<()> {
    let producer = producer()?;
    let partitions: BTreeSet<i32> = events.iter().map(|e| e.partition).collect();
    for p in partitions {
        let payloads = events
            .iter()
            .filter(|e| e.partition == p)
            .map(|e| e.json.clone());
        produce_all(&producer, topic, Some(p), payloads).await?;
    }
    Ok(())
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Truth {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

fn ground_truth(events: &[Gen], g: Granularity) -> BTreeMap<(i64, String), Truth> {
    let mut truth: BTreeMap<(i64, String), Truth> = BTreeMap::new();
    for e in events.iter().filter(|e| e.checkout) {
        let group = encode_group(&[Some(e.country), Some(e.device)]);
        let t = truth.entry((g.floor(e.time_ms), group)).or_insert(Truth {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        });
        t.count += 1;
        t.sum += e.amount;
        t.min = t.min.min(e.amount);
        t.max = t.max.max(e.amount);
    }
    truth
}

/// Reads back what Redis holds for the view at granularity `g`, over the buckets of `truth`
/// and every group the groups sets list.
async fn read_back(
    keys: &RedisKeys,
    g: Granularity,
    buckets: &BTreeSet<i64>,
) -> anyhow::Result<BTreeMap<(i64, String), Truth>> {
    let mut con = redis().await?;
    let mut out = BTreeMap::new();
    for b in buckets {
        let groups: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.groups("checkouts", g, *b))
            .query_async(&mut con)
            .await?;
        for group in groups {
            let h = hgetall(&mut con, &keys.aggregates("checkouts", g, *b, &group)).await?;
            let num = |f: &str| -> anyhow::Result<f64> {
                h.get(f)
                    .with_context(|| format!("{f} missing in bucket {b} group {group}"))?
                    .parse::<f64>()
                    .context("number")
            };
            let count = num("count")? as u64;
            assert_eq!(
                num("n:amount")? as u64,
                count,
                "every checkout has an amount"
            );
            out.insert(
                (*b, group.clone()),
                Truth {
                    count,
                    sum: num("sum:amount")?,
                    min: num("min:amount")?,
                    max: num("max:amount")?,
                },
            );
        }
    }
    Ok(out)
}

/// Waits until every view's stored offset reaches the end of each partition.
async fn wait_applied(
    keys: &RedisKeys,
    topic: &str,
    ends: &HashMap<i32, i64>,
) -> anyhow::Result<()> {
    let mut con = redis().await?;
    let key = keys.offsets("checkouts", topic);
    wait_for(
        "the speed layer to apply every record",
        Duration::from_secs(60),
        || {
            let key = key.clone();
            let mut con = con.clone();
            async move {
                let stored = hgetall(&mut con, &key).await?;
                let done = ends.iter().all(|(p, end)| {
                    stored
                        .get(&p.to_string())
                        .and_then(|v| v.split(':').next()?.parse::<i64>().ok())
                        == Some(*end)
                });
                Ok(done.then_some(()))
            }
        },
    )
    .await?;
    let _: i64 = redis::cmd("DBSIZE").query_async(&mut con).await?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn ends_of(events: &[Gen]) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for e in events {
        *ends.entry(e.partition).or_insert(0) += 1;
    }
    ends
}

fn start(config: Config) -> (watch::Sender<bool>, JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(speed_layer_run(config, rx));
    (tx, handle)
}

async fn speed_layer_run(config: Config, rx: watch::Receiver<bool>) -> anyhow::Result<()> {
    tributary_speed_layer::run(config, rx).await
}

async fn stop(
    tx: watch::Sender<bool>,
    handle: JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tx.send(true).ok();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .context("speed layer did not stop within 20 s")??
}

fn assert_matches_truth(
    got: &BTreeMap<(i64, String), Truth>,
    want: &BTreeMap<(i64, String), Truth>,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: the same (bucket, group) cells"
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.count, w.count, "{what}: count of {k:?}");
        assert_eq!(g.sum, w.sum, "{what}: sum of {k:?}");
        assert_eq!(g.min, w.min, "{what}: min of {k:?}");
        assert_eq!(g.max, w.max, "{what}: max of {k:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_equal_an_independent_ground_truth() -> anyhow::Result<()> {
    let topic = unique("speed-truth");
    create_topic(&topic, 4).await?;
    let prefix = unique("it");
    let config = test_config(&topic, &prefix, &speed_section("2h", ""))?;
    let keys = RedisKeys::new(prefix.clone());
    let events = generate(8_000, 4, 1);
    produce_gen(&topic, &events).await?;
    let (tx, handle) = start(config);
    wait_applied(&keys, &topic, &ends_of(&events)).await?;
    stop(tx, handle).await?;

    for g in [Granularity::Minute, Granularity::Hour] {
        let truth = ground_truth(&events, g);
        let buckets: BTreeSet<i64> = truth.keys().map(|(b, _)| *b).collect();
        let got = read_back(&keys, g, &buckets).await?;
        assert_matches_truth(&got, &truth, g.as_str());
    }
    // Every data key carries a TTL.
    let mut con = redis().await?;
    let any_bucket = Granularity::Hour.floor(events[0].time_ms);
    let key = keys.aggregates(
        "checkouts",
        Granularity::Hour,
        any_bucket,
        &encode_group(&[Some("DE"), Some("mobile")]),
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut con).await?;
    assert!(ttl > 0, "aggregate keys expire (PTTL {ttl})");
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    let checkouts = events.iter().filter(|e| e.checkout).count();
    assert_eq!(
        stats.get("applied").map(String::as_str),
        Some(checkouts.to_string().as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_go_to_the_dlq_with_their_reason() -> anyhow::Result<()> {
    let topic = unique("speed-dlq");
    create_topic(&topic, 1).await?;
    let prefix = unique("it");
    let metrics_port = free_port()?;
    let section = speed_section("2h", "").replace(
        "metrics_listen = \"127.0.0.1:0\"",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let config = test_config(&topic, &prefix, &section)?;
    let keys = RedisKeys::new(prefix);
    let now = now_ms();
    let good = |i: i64| {
        format!(
            r#"{{"event_id":"g{i}","event_time":{},"type":"checkout","country":"DE","device":"mobile","user_id":"u","amount":1.5,"latency_ms":10}}"#,
            now - 60_000 + i
        )
        .into_bytes()
    };
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{this is not json".to_vec(), "not valid JSON"),
        (
            br#"{"event_time":1,"type":"checkout"}"#.to_vec(),
            "missing required field \"event_id\"",
        ),
        (
            format!(r#"{{"event_id":"b3","event_time":{now},"type":"checkout","amount":"12,5"}}"#)
                .into_bytes(),
            "field \"amount\": expected float, got string \"12,5\"",
        ),
        (
            format!(
                r#"{{"event_id":"b4","event_time":{},"type":"checkout"}}"#,
                now + 3_600_000
            )
            .into_bytes(),
            "max_future_skew",
        ),
    ];
    let mut payloads = Vec::new();
    for (i, (b, _)) in bad.iter().enumerate() {
        payloads.push(good(i as i64));
        payloads.push(b.clone());
    }
    payloads.push(good(99));
    produce_all(&producer()?, &topic, Some(0), payloads.clone()).await?;

    let (tx, handle) = start(config);
    let mut ends = HashMap::new();
    ends.insert(0, payloads.len() as i64);
    wait_applied(&keys, &topic, &ends).await?;
    // Prometheus sees them too.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await?
        .text()
        .await?;
    for line in [
        "tributary_speed_dlq_total{reason=\"not_json\"} 1",
        "tributary_speed_dlq_total{reason=\"missing_field\"} 1",
        "tributary_speed_dlq_total{reason=\"ill_typed_field\"} 1",
        "tributary_speed_dlq_total{reason=\"future_event_time\"} 1",
        "tributary_speed_events_in_total 9",
        "tributary_speed_applied_total{view=\"checkouts\"} 5",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }
    assert!(
        metrics.contains("tributary_speed_flush_seconds_bucket"),
        "flush latency histogram"
    );
    stop(tx, handle).await?;

    // The good events around the bad ones are all counted.
    let mut con = redis().await?;
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    assert_eq!(stats.get("applied").map(String::as_str), Some("5"));
    let dlq_stats = hgetall(&mut con, &keys.speed_stats(&topic)).await?;
    let dlq_total: u64 = dlq_stats
        .values()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    assert_eq!(dlq_total, 4, "dlq counters {dlq_stats:?}");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&format!("{topic}.dlq")])?;
    let mut seen = Vec::new();
    while seen.len() < bad.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("waiting for dlq records")??;
        let headers = m.headers().context("dlq record has headers")?;
        let reason = headers
            .iter()
            .find(|h| h.key == "tributary.error")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .context("tributary.error header")?;
        seen.push((m.payload().unwrap_or_default().to_vec(), reason));
    }
    for ((payload, fragment), (got_payload, got_reason)) in bad.iter().zip(&seen) {
        assert_eq!(payload, got_payload, "the DLQ keeps the original bytes");
        assert!(
            got_reason.contains(fragment),
            "reason {got_reason:?} should mention {fragment:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_are_not_applied_and_are_counted() -> anyhow::Result<()> {
    let topic = unique("speed-late");
    create_topic(&topic, 1).await?;
    let prefix = unique("it");
    let config = test_config(&topic, &prefix, &speed_section("5m", ""))?;
    let keys = RedisKeys::new(prefix);
    let t0 = Granularity::Hour.floor(now_ms()) - 3_600_000;
    let ev = |id: &str, t: i64| {
        format!(
            r#"{{"event_id":"{id}","event_time":{t},"type":"checkout","country":"DE","device":"mobile","user_id":"u","amount":2.0,"latency_ms":5}}"#
        )
        .into_bytes()
    };
    // Watermark after e2 is t0+10m-5m = t0+5m: e3 (t0+1m) is late, e4 (t0+6m) is not.
    let payloads = vec![
        ev("e1", t0),
        ev("e2", t0 + 600_000),
        ev("e3", t0 + 60_000),
        ev("e4", t0 + 360_000),
    ];
    produce_all(&producer()?, &topic, Some(0), payloads).await?;
    let (tx, handle) = start(config);
    let mut ends = HashMap::new();
    ends.insert(0, 4);
    wait_applied(&keys, &topic, &ends).await?;
    stop(tx, handle).await?;

    let mut con = redis().await?;
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    assert_eq!(stats.get("late_dropped").map(String::as_str), Some("1"));
    assert_eq!(stats.get("applied").map(String::as_str), Some("3"));
    let group = encode_group(&[Some("DE"), Some("mobile")]);
    let hour = hgetall(
        &mut con,
        &keys.aggregates("checkouts", Granularity::Hour, t0, &group),
    )
    .await?;
    assert_eq!(hour.get("count").map(String::as_str), Some("3"));
    let late_minute = keys.aggregates("checkouts", Granularity::Minute, t0 + 60_000, &group);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&late_minute)
        .query_async(&mut con)
        .await?;
    assert_eq!(
        exists, 0,
        "the late event's minute bucket was never written"
    );
    Ok(())
}

/// 100k events through `replay` (the same pipeline, without the broker): HyperLogLog and the
/// quantile sketch stay within their error bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_counts_and_quantiles_are_within_their_bounds() -> anyhow::Result<()> {
    let prefix = unique("it");
    let view = r#"
[[views]]
name = "latency"
granularities = ["day"]
measures = [
  { name = "users", agg = "count_distinct", field = "user_id" },
  { name = "p50", agg = "quantile", field = "latency_ms", q = 0.5 },
]
"#;
    let text = format!("[speed]\nallowed_lateness = \"48h\"\n{FIELDS}\n{view}");
    let config = test_config("replay-test", &prefix, &text)?;
    let keys = RedisKeys::new(prefix);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("events.jsonl");
    let mut rng = StdRng::seed_from_u64(7);
    let day = Granularity::Day.floor(now_ms() - 3_600_000);
    let t = day.max(now_ms() - 20 * 3_600_000);
    let mut latencies = Vec::with_capacity(100_000);
    let mut lines = String::new();
    for i in 0..100_000u64 {
        // Log-normal-ish latencies: a long right tail, as real latencies have.
        let latency = (rng.random_range(0.0f64..1.0).powi(3) * 5_000.0 + 1.0).round();
        latencies.push(latency);
        lines.push_str(&format!(
            "{{\"event_id\":\"r{i}\",\"event_time\":{},\"type\":\"req\",\"user_id\":\"user-{}\",\"latency_ms\":{latency}}}\n",
            t + (i as i64 % 1000),
            i % 50_000
        ));
    }
    std::fs::write(&file, lines)?;
    let summary = tributary_speed_layer::replay::replay(&config, &file, None).await?;
    assert_eq!(summary.lines, 100_000);
    assert_eq!(summary.applied, 100_000);

    let mut con = redis().await?;
    let group = encode_group::<&str>(&[]);
    let bucket = Granularity::Day.floor(t);
    let distinct: i64 = redis::cmd("PFCOUNT")
        .arg(keys.hll("latency", "user_id", Granularity::Day, bucket, &group))
        .query_async(&mut con)
        .await?;
    let err = (distinct as f64 - 50_000.0).abs() / 50_000.0;
    assert!(
        err < 0.02,
        "distinct {distinct} is {:.2}% off 50000",
        err * 100.0
    );

    let fields = hgetall(
        &mut con,
        &keys.sketch("latency", "latency_ms", Granularity::Day, bucket, &group),
    )
    .await?;
    let mut sketch = QuantileSketch::new();
    for (f, c) in &fields {
        sketch.add_field(f, c.parse()?);
    }
    assert_eq!(sketch.count(), 100_000);
    latencies.sort_by(f64::total_cmp);
    for q in [0.5, 0.95, 0.99] {
        let exact = exact_quantile_cont(&latencies, q).context("non-empty")?;
        let est = sketch.quantile(q).context("non-empty sketch")?;
        let rel = (est - exact).abs() / exact;
        assert!(
            rel <= 0.01,
            "p{} estimate {est} vs exact {exact}: {:.3}% off",
            q * 100.0,
            rel * 100.0
        );
    }
    Ok(())
}

/// Kill the process in the middle of flushes (after Redis was written but before Kafka was
/// committed; before Redis was written), restart it: the totals are still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_mid_flush_neither_lose_nor_double_count() -> anyhow::Result<()> {
    let topic = unique("speed-crash");
    create_topic(&topic, 2).await?;
    let prefix = unique("it");
    let section = speed_section("2h", "flush_max_events = 300\nflush_interval = \"10s\"")
        .replace("flush_interval = \"100ms\"\n", "");
    let config_text = format!(
        "[source]\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup_prefix = \"{topic}\"\n[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n{section}",
        brokers(),
        redis_url()
    );
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("tributary.toml");
    std::fs::write(&config_path, &config_text)?;
    let keys = RedisKeys::new(prefix);
    let events = generate(3_000, 2, 3);
    produce_gen(&topic, &events).await?;
    let bin = binary("speed-layer")?;

    for crash in ["after_redis@2", "before_redis@2", "after_redis@1"] {
        let status = tokio::process::Command::new(&bin)
            .arg("--config")
            .arg(&config_path)
            .arg("run")
            .env("TRIBUTARY_CRASH_AT", crash)
            .env("RUST_LOG", "warn")
            .status();
        // Generous: a restart waits for the crashed member's session to expire on the broker.
        let status = tokio::time::timeout(Duration::from_secs(180), status)
            .await
            .with_context(|| format!("speed-layer with crash {crash} did not exit"))??;
        assert_eq!(
            status.code(),
            Some(101),
            "the fault injection {crash} fired"
        );
    }
    // A clean run to the end, stopped with SIGTERM.
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&config_path)
        .arg("run")
        .env("RUST_LOG", "warn")
        .spawn()?;
    wait_applied(&keys, &topic, &ends_of(&events)).await?;
    let pid = child.id().context("child pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");

    let truth = ground_truth(&events, Granularity::Hour);
    let buckets: BTreeSet<i64> = truth.keys().map(|(b, _)| *b).collect();
    let got = read_back(&keys, Granularity::Hour, &buckets).await?;
    assert_matches_truth(&got, &truth, "after crashes");
    Ok(())
}

/// Two consumers in one group, the second joining mid-stream: exact totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_consumers_keeps_totals_exact() -> anyhow::Result<()> {
    let topic = unique("speed-rebalance");
    create_topic(&topic, 4).await?;
    let prefix = unique("it");
    let config = test_config(&topic, &prefix, &speed_section("2h", ""))?;
    let keys = RedisKeys::new(prefix);
    let events = generate(12_000, 4, 5);
    let (first, second) = events.split_at(6_000);
    let with_port = |port: u16| {
        let mut c = config.clone();
        c.speed.metrics_listen = format!("127.0.0.1:{port}");
        c
    };
    // Both listeners held at once, so the two ports differ.
    let (la, lb) = (
        std::net::TcpListener::bind("127.0.0.1:0")?,
        std::net::TcpListener::bind("127.0.0.1:0")?,
    );
    let (port_a, port_b) = (la.local_addr()?.port(), lb.local_addr()?.port());
    drop((la, lb));

    let (tx_a, a) = start(with_port(port_a));
    produce_gen(&topic, first).await?;
    wait_applied(&keys, &topic, &ends_of(first)).await?;
    let consumed = |port: u16| async move {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .text()
            .await?;
        anyhow::Ok(
            text.lines()
                .find_map(|l| l.strip_prefix("tributary_speed_events_in_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0),
        )
    };
    let (tx_b, b) = start(with_port(port_b));
    // Records keep arriving, a trickle at a time, while the group rebalances; once the second
    // consumer has records of its own, the rest comes at once.
    for chunk in second.chunks(300) {
        produce_gen(&topic, chunk).await?;
        if consumed(port_b).await? == 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    wait_applied(&keys, &topic, &ends_of(&events)).await?;
    // The second consumer really took partitions over.
    let (in_a, in_b) = (consumed(port_a).await?, consumed(port_b).await?);
    assert!(
        in_b > 0,
        "the second consumer received no records (a: {in_a})"
    );
    assert!(
        in_a >= first.len() as u64,
        "the first consumer read the first half"
    );
    stop(tx_a, a).await?;
    stop(tx_b, b).await?;

    let truth = ground_truth(&events, Granularity::Hour);
    let buckets: BTreeSet<i64> = truth.keys().map(|(b, _)| *b).collect();
    let got = read_back(&keys, Granularity::Hour, &buckets).await?;
    assert_matches_truth(&got, &truth, "after a rebalance");
    Ok(())
}

/// Producer duplicates (same event_id and time) are applied once with `dedup_window` on, even
/// when the copy arrives after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_duplicates_are_applied_once_across_a_restart() -> anyhow::Result<()> {
    let topic = unique("speed-dedup");
    create_topic(&topic, 1).await?;
    let prefix = unique("it");
    let config = test_config(
        &topic,
        &prefix,
        &speed_section("5m", "dedup_window = \"10m\""),
    )?;
    let keys = RedisKeys::new(prefix);
    let events = generate(400, 1, 11);
    let checkouts = events.iter().filter(|e| e.checkout).count() as i64;
    // First run: every event, and every tenth one twice.
    let mut first: Vec<Vec<u8>> = Vec::new();
    let mut dup_checkouts = 0;
    for (i, e) in events.iter().enumerate() {
        first.push(e.json.clone());
        if i % 10 == 0 {
            first.push(e.json.clone());
            dup_checkouts += i64::from(e.checkout);
        }
    }
    produce_all(&producer()?, &topic, Some(0), first.clone()).await?;
    let (tx, handle) = start(config.clone());
    let mut ends = HashMap::new();
    ends.insert(0, first.len() as i64);
    wait_applied(&keys, &topic, &ends).await?;
    stop(tx, handle).await?;

    // After a restart, copies of the last 50 events arrive again.
    let again: Vec<Vec<u8>> = events[350..].iter().map(|e| e.json.clone()).collect();
    let again_checkouts = events[350..].iter().filter(|e| e.checkout).count() as i64;
    produce_all(&producer()?, &topic, Some(0), again.clone()).await?;
    let (tx, handle) = start(config);
    ends.insert(0, (first.len() + again.len()) as i64);
    wait_applied(&keys, &topic, &ends).await?;
    stop(tx, handle).await?;

    let mut con = redis().await?;
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    assert_eq!(
        stats.get("applied").map(String::as_str),
        Some(checkouts.to_string().as_str())
    );
    assert_eq!(
        stats.get("duplicates").map(String::as_str),
        Some((dup_checkouts + again_checkouts).to_string().as_str())
    );
    let truth = ground_truth(&events, Granularity::Hour);
    let buckets: BTreeSet<i64> = truth.keys().map(|(b, _)| *b).collect();
    let got = read_back(&keys, Granularity::Hour, &buckets).await?;
    assert_matches_truth(&got, &truth, "with producer duplicates");
    Ok(())
}
