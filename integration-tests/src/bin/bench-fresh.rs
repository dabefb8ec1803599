//! `bench-fresh`: end-to-end freshness, from the moment an event is produced to the moment the
//! serving layer's `series` shows it, at a fixed background rate. The speed layer and the
//! serving layer run in-process on the real broker and Redis; probes are events with a
//! device value of their own, polled through HTTP (every 2 ms) until counted. Prints JSON: the
//! end-to-end percentiles, and where the time went, stage by stage: the speed layer's own
//! histograms (record timestamp to received: producer, broker and fetch wait; received to its
//! flush starting: the buffer; the flush's Redis write), scraped from its `/metrics` at the
//! end, and the serving layer's answer time of the polls that saw a probe. The peer, run
//! first under the same background load: a bare rdkafka consumer on the same topic, with the
//! same `fetch.wait.max.ms`, timing each of its own probes from record timestamp to arrival
//! (the broker's share of the freshness).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{oneshot, watch};
use tributary_it::{
    brokers, create_topic, example_config, produce_all, producer, redis_url, unique,
};

#[derive(Parser)]
struct Args {
    /// Background events per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Probes (one every 200 ms).
    #[arg(long, default_value_t = 100)]
    probes: u64,
}

fn event(id: &str, device: &str, now: i64) -> String {
    format!(
        r#"{{"event_id":"{id}","event_time":{now},"type":"checkout","country":"DE","device":"{device}","user_id":"u-1","amount":1.0,"latency_ms":10}}"#
    )
}

const PARTITIONS: i32 = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = unique("bench-fresh");
    create_topic(&topic, PARTITIONS).await?;
    let store = tempfile::tempdir()?;
    // A port of our own for the speed layer's metrics, scraped for the stage breakdown.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = example_config(&[
        ("SOURCE__BROKERS", brokers()),
        ("SOURCE__TOPIC", topic.clone()),
        ("SOURCE__GROUP_PREFIX", unique("fresh")),
        ("REDIS__URL", redis_url()),
        ("REDIS__KEY_PREFIX", unique("fresh")),
        ("STORE__URL", format!("file://{}", store.path().display())),
        ("SPEED__METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("SERVING__LISTEN", "127.0.0.1:0".into()),
    ])?;
    let producer = producer()?;
    // Background load at a fixed rate.
    let (bg_stop, mut bg_rx) = watch::channel(false);
    let bg = {
        let (producer, topic) = (producer.clone(), topic.clone());
        let rate = args.rate;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / 100).max(1);
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = bg_rx.changed() => break,
                    _ = tick.tick() => {}
                }
                let now = chrono::Utc::now().timestamp_millis();
                for _ in 0..per_tick {
                    let p = event(&format!("bg-{i}"), "mobile", now);
                    let _ =
                        producer.send_result(FutureRecord::<(), String>::to(&topic).payload(&p));
                    i += 1;
                }
            }
        })
    };

    // The peer first, alone on the broker under the same load: beside the speed layer it would
    // double the fetches Tansu serves (one storage worker for every request) and slow both.
    let peer_ms = peer_phase(&config, &producer, &topic, args.probes).await?;

    let (stop, rx) = watch::channel(false);
    let speed = tokio::spawn(tributary_speed_layer::run(config.clone(), rx.clone()));
    let (tx, bound) = oneshot::channel();
    let serving = tokio::spawn(tributary_serving_layer::serve(config.clone(), rx, Some(tx)));
    let base = format!("http://{}", bound.await.context("serving did not bind")?);

    // Wait until the speed layer owns its partitions: a first probe must become visible.
    let client = reqwest::Client::new();
    let visible = move |device: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let now = chrono::Utc::now().timestamp_millis();
            let url = format!(
                "{base}/v1/views/checkouts/series?measures=events&granularity=minute&filter=device:{device}&from={}&to={}",
                tributary_shared::bucket::format_rfc3339(now - 600_000),
                tributary_shared::bucket::format_rfc3339(now + 120_000)
            );
            let body: serde_json::Value = client.get(&url).send().await?.json().await?;
            let n: f64 = body["series"][0]["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["values"]["events"].as_f64())
                .sum();
            Ok::<bool, anyhow::Error>(n >= 1.0)
        }
    };
    // One warm-up record per partition, each counted: every partition has caught up with the
    // backlog the peer's run left (one alone would say so of its own partition only).
    for partition in 0..PARTITIONS {
        let warm = unique("warm");
        let now = chrono::Utc::now().timestamp_millis();
        let payload = event(&warm, &warm, now).into_bytes();
        produce_all(&producer, &topic, Some(partition), [payload]).await?;
        let t = Instant::now();
        while !visible(warm.clone()).await? {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "warm-up probe of partition {partition} never visible"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut probes = Vec::new();
    for n in 0..args.probes {
        let device = format!("probe-{n}-{}", unique("p"));
        let id = device.clone();
        let now = chrono::Utc::now().timestamp_millis();
        let sent = Instant::now();
        let visible = visible.clone();
        let (producer, topic) = (producer.clone(), topic.clone());
        probes.push(tokio::spawn(async move {
            let payload = event(&id, &device, now);
            producer
                .send(
                    FutureRecord::<(), String>::to(&topic).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
            loop {
                let asked = Instant::now();
                if visible(device.clone()).await? {
                    let serving_ms = asked.elapsed().as_secs_f64() * 1000.0;
                    return Ok::<_, anyhow::Error>((
                        sent.elapsed().as_secs_f64() * 1000.0,
                        serving_ms,
                    ));
                }
                anyhow::ensure!(
                    sent.elapsed() < Duration::from_secs(30),
                    "probe never visible"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut lat = Vec::new();
    let mut serving_ms = Vec::new();
    for p in probes {
        let (total, serving) = p.await??;
        lat.push(total);
        serving_ms.push(serving);
    }
    let _ = bg_stop.send(true);
    bg.await?;
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await?
        .text()
        .await?;
    let _ = stop.send(true);
    speed.await??;
    serving.await??;
    lat.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    serving_ms.sort_by(f64::total_cmp);
    let stage = |name: &str| -> anyhow::Result<serde_json::Value> {
        let h = Histogram::parse(&metrics, name)
            .with_context(|| format!("the speed layer's /metrics has no histogram {name}"))?;
        Ok(serde_json::json!({
            "count": h.count,
            "mean_ms": h.sum / h.count.max(1) as f64 * 1000.0,
            "p50_at_most_ms": h.quantile_bound(0.5) * 1000.0,
            "p99_at_most_ms": h.quantile_bound(0.99) * 1000.0,
        }))
    };
    let out = serde_json::json!({
        "rate_events_per_sec": args.rate,
        "probes": lat.len(),
        "p50_ms": pct(&lat, 0.5),
        "p99_ms": pct(&lat, 0.99),
        "max_ms": lat.last(),
        "flush_interval_ms": config.speed.flush_interval.as_millis() as u64,
        "idle_flush_ms": config.speed.idle_flush.as_millis() as u64,
        "fetch_wait_ms": config.speed.fetch_wait.as_millis() as u64,
        "stages": {
            "produce_to_received": stage("tributary_speed_fetch_delay_seconds")?,
            "received_to_flush": stage("tributary_speed_buffer_wait_seconds")?,
            "flush_write": stage("tributary_speed_flush_seconds")?,
            "peer_bare_consumer_produce_to_received": {
                "count": peer_ms.len(),
                "p50_ms": pct(&peer_ms, 0.5),
                "p99_ms": pct(&peer_ms, 0.99),
                "max_ms": peer_ms.last(),
            },
            "serving_answer": {
                "count": serving_ms.len(),
                "p50_ms": pct(&serving_ms, 0.5),
                "p99_ms": pct(&serving_ms, 0.99),
            },
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The peer's run: a bare consumer joins, then `probes` probes, one every 200 ms; per probe,
/// record timestamp to arrival in ms, sorted.
async fn peer_phase(
    config: &tributary_shared::Config,
    producer: &FutureProducer,
    topic: &str,
    probes: u64,
) -> anyhow::Result<Vec<f64>> {
    let warm = unique("peer-warm");
    let (ready, ready_rx) = oneshot::channel();
    let (stop, stop_rx) = watch::channel(false);
    let peer = tokio::spawn(bare_consumer(
        config.source.clone(),
        config.speed.fetch_wait,
        warm.clone(),
        ready,
        stop_rx,
    ));
    let send = |payload: String| produce_all(producer, topic, None, [payload.into_bytes()]);
    send(event(&warm, &warm, chrono::Utc::now().timestamp_millis())).await?;
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .context("the bare consumer never read the warm-up record")?
        .context("the bare consumer stopped")?;
    for n in 0..probes {
        let device = format!("probe-peer-{n}-{}", unique("p"));
        send(event(
            &device,
            &device,
            chrono::Utc::now().timestamp_millis(),
        ))
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let mut delays = peer.await??;
    delays.sort_by(f64::total_cmp);
    anyhow::ensure!(
        delays.len() as u64 == probes,
        "the bare consumer saw {} of {probes} probes",
        delays.len()
    );
    Ok(delays)
}

/// The peer: reads the topic with nothing but rdkafka (its own group, the speed layer's fetch
/// wait) and returns, per probe, record timestamp to arrival in ms. `ready` fires at the
/// warm-up record.
async fn bare_consumer(
    source: tributary_shared::config::SourceConfig,
    fetch_wait: Duration,
    warm: String,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<f64>> {
    let consumer: StreamConsumer = tributary_shared::kafka::client_config(&source)
        .set("group.id", unique("fresh-bare"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
        .create()
        .context("create the bare consumer")?;
    consumer.subscribe(&[source.topic.as_str()])?;
    let mut ready = Some(ready);
    let mut delays = Vec::new();
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = consumer.recv() => m?,
        };
        let now = chrono::Utc::now().timestamp_millis();
        let payload = msg.payload().unwrap_or_default();
        let text = std::str::from_utf8(payload).unwrap_or_default();
        if let Some(r) = ready.take_if(|_| text.contains(&warm)) {
            let _ = r.send(());
        } else if text.contains(r#""device":"probe-"#)
            && let Some(ts) = msg.timestamp().to_millis()
        {
            delays.push((now - ts).max(0) as f64);
        }
    }
    Ok(delays)
}

/// A Prometheus histogram read back from the text exposition.
struct Histogram {
    /// (upper bound, cumulative count), ascending.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn parse(text: &str, name: &str) -> Option<Histogram> {
        let (mut buckets, mut sum, mut count) = (Vec::new(), None, None);
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(le) = key
                .strip_prefix(name)
                .and_then(|k| k.strip_prefix("_bucket{le=\""))
                .and_then(|k| k.strip_suffix("\"}"))
            {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                buckets.push((bound, value.parse().ok()?));
            } else if key == format!("{name}_sum") {
                sum = value.parse().ok();
            } else if key == format!("{name}_count") {
                count = value.parse().ok();
            }
        }
        Some(Histogram {
            buckets,
            sum: sum?,
            count: count?,
        })
    }

    /// The upper bound of the bucket holding the `q` quantile (an "at most" figure).
    fn quantile_bound(&self, q: f64) -> f64 {
        let rank = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= rank.max(1))
            .map_or(f64::NAN, |(b, _)| *b)
    }
}
