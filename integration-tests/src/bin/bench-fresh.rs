//! `bench-fresh`: end-to-end freshness, from the moment an event is produced to the moment the
//! serving layer's `series` shows it, at a fixed background rate. The speed layer and the
//! serving layer run in-process on the real broker and Redis; probes are events with a
//! device value of their own, polled through HTTP until counted. Prints JSON.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::producer::FutureRecord;
use tokio::sync::{oneshot, watch};
use tributary_it::{brokers, create_topic, example_config, producer, redis_url, unique};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let topic = unique("bench-fresh");
    create_topic(&topic, 4).await?;
    let store = tempfile::tempdir()?;
    let config = example_config(&[
        ("SOURCE__BROKERS", brokers()),
        ("SOURCE__TOPIC", topic.clone()),
        ("SOURCE__GROUP_PREFIX", unique("fresh")),
        ("REDIS__URL", redis_url()),
        ("REDIS__KEY_PREFIX", unique("fresh")),
        ("STORE__URL", format!("file://{}", store.path().display())),
        ("SPEED__METRICS_LISTEN", "127.0.0.1:0".into()),
        ("SERVING__LISTEN", "127.0.0.1:0".into()),
    ])?;
    let (stop, rx) = watch::channel(false);
    let speed = tokio::spawn(tributary_speed_layer::run(config.clone(), rx.clone()));
    let (tx, bound) = oneshot::channel();
    let serving = tokio::spawn(tributary_serving_layer::serve(config.clone(), rx, Some(tx)));
    let base = format!("http://{}", bound.await.context("serving did not bind")?);
    let producer = producer()?;

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
    let warm = unique("warm");
    let now = chrono::Utc::now().timestamp_millis();
    producer
        .send(
            FutureRecord::<(), String>::to(&topic).payload(&event(&warm, &warm, now)),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    while !visible(warm.clone()).await? {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "warm-up probe never visible"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
                if visible(device.clone()).await? {
                    return Ok::<f64, anyhow::Error>(sent.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::ensure!(
                    sent.elapsed() < Duration::from_secs(30),
                    "probe never visible"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut lat = Vec::new();
    for p in probes {
        lat.push(p.await??);
    }
    let _ = bg_stop.send(true);
    bg.await?;
    let _ = stop.send(true);
    speed.await??;
    serving.await??;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    let out = serde_json::json!({
        "rate_events_per_sec": args.rate,
        "probes": lat.len(),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": lat.last(),
        "flush_interval_ms": config.speed.flush_interval.as_millis() as u64,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
