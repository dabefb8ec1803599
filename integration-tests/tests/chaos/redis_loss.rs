//! Redis losing its data (FLUSHALL, a restart without persistence) under a stream.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tributary_it::chaos::services::OwnRedis;
use tributary_it::chaos::{Platform, Scale, chaos_config, produce_paced, rng, spread};
use tributary_it::checks::get;
use tributary_it::scenario::{Ev, Truth, events, truth};
use tributary_it::{brokers, create_topic, now_ms, unique};
use tributary_shared::Granularity;
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS};

use crate::{Verify, serve, sleep_ms, stop_clean};

/// The truth of the speed layer's buckets while a wave streams in: buckets complete before
/// the wave must be exact or `rebuilding`; the wave's may only be below their final values.
struct Watch {
    complete: BTreeMap<(Vec<Option<String>>, i64), Truth>,
    complete_until: i64,
    finals: BTreeMap<(Vec<Option<String>>, i64), Truth>,
}

impl Watch {
    fn new(before: &[Ev], all: &[Ev], wave_from: i64) -> Watch {
        Watch {
            complete: truth(before, Granularity::Minute, &[], &[]),
            complete_until: Granularity::Minute.floor(wave_from),
            finals: truth(all, Granularity::Minute, &[], &[]),
        }
    }

    /// Checks one `series` answer (minute, no group-by); returns how many speed points were
    /// `rebuilding`.
    fn check(&self, body: &Value) -> anyhow::Result<usize> {
        let mut rebuilding = 0;
        for s in body["series"].as_array().context("series")? {
            for p in s["points"].as_array().context("points")? {
                let t = p["t"]
                    .as_str()
                    .and_then(tributary_shared::bucket::parse_rfc3339)
                    .context("t")?;
                let source = p["source"].as_str().unwrap_or_default();
                let events = p["values"]["events"].as_f64();
                match source {
                    "rebuilding" => {
                        assert!(p["values"].as_object().is_some_and(|v| v.is_empty()), "{p}");
                        rebuilding += 1;
                    }
                    "speed" if t + MINUTE_MS <= self.complete_until => {
                        let want = self.complete.get(&(Vec::new(), t)).map(|x| x.count as f64);
                        assert_eq!(events, want, "a complete speed bucket is exact: {p}");
                    }
                    "speed" => {
                        let max = self
                            .finals
                            .get(&(Vec::new(), t))
                            .map_or(0.0, |x| x.count as f64);
                        assert!(
                            events.unwrap_or(0.0) <= max,
                            "never above the truth: {p} > {max}"
                        );
                    }
                    "batch" | "missing" | "unreadable" => {}
                    other => anyhow::bail!("unexpected source {other}: {p}"),
                }
            }
        }
        Ok(rebuilding)
    }
}

/// Redis loses everything twice (FLUSHALL, then a restart without persistence) while events
/// stream in: the speed layer notices, rebuilds each view from Kafka from the batch horizon,
/// and meanwhile the API answers the speed buckets `rebuilding`, never a wrong number; after
/// each rebuild every bucket equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_losing_its_data_is_rebuilt_and_never_misreported() -> anyhow::Result<()> {
    let scale = Scale::from_env();
    let (seed, mut rng) = rng("redis_loss");
    let mut redis = OwnRedis::start(&[]).await?;
    let brokers = brokers();
    let topic = unique("chaos-redis");
    create_topic(&topic, 4).await?;
    let config = chaos_config(&brokers, &redis.url(), &topic, "tributary", "")?;
    let mut pf = Platform::new(config.clone())?;
    let now = now_ms();
    let n = scale.pick(3_000, 20_000) as u64;
    let waves = [
        events(seed, n, now - 3 * HOUR_MS, 2 * HOUR_MS),
        events(seed + 1, n / 2, now - HOUR_MS, 30 * MINUTE_MS),
        events(seed + 2, n / 2, now - 30 * MINUTE_MS, 29 * MINUTE_MS),
    ];
    pf.speed.start()?;
    pf.archive.start()?;
    let mut produced: Vec<Ev> = Vec::new();
    let server = serve(pf.config.clone()).await?;
    let (from, to) = (now - 4 * HOUR_MS, now + MINUTE_MS);
    for (i, wave) in waves.iter().enumerate() {
        let per = spread(wave, 4, &[], &mut rng);
        let mut all = produced.clone();
        all.extend(wave.iter().cloned());
        let watch = Watch::new(&produced, &all, wave.first().map_or(now, |e| e.ts));
        let stream = {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            tokio::spawn(async move {
                produce_paced(&brokers, &topic, &per, 10, Duration::from_millis(300)).await
            })
        };
        match i {
            0 => {}
            1 => {
                sleep_ms(&mut rng, 200, 1500).await;
                let mut con = redis::Client::open(redis.url())?
                    .get_multiplexed_async_connection()
                    .await?;
                let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
                println!("[chaos] redis_loss: FLUSHALL");
            }
            _ => {
                sleep_ms(&mut rng, 200, 1500).await;
                redis.restart_empty().await?;
                println!("[chaos] redis_loss: redis restarted empty");
            }
        }
        let mut rebuilding_seen = 0;
        while !stream.is_finished() {
            let body = server
                .series("minute", from, to, "&measures=events")
                .await?;
            rebuilding_seen += watch.check(&body)?;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        stream.await??;
        produced = all;
        Verify {
            pf: &pf,
            brokers: &brokers,
            generated: &produced,
            patience: Duration::from_secs(180),
        }
        .all()
        .await
        .with_context(|| format!("after wave {i}"))?;
        println!("[chaos] redis_loss: wave {i} exact ({rebuilding_seen} rebuilding points seen)");
    }
    let (_, status) = get(&format!("{}/v1/status", server.url)).await?;
    assert_eq!(status["speed"]["views"][0]["state"], "serving", "{status}");
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("tributary_serving"), "serving metrics");
    let speed_log = pf.speed.log();
    assert!(
        speed_log.contains("rebuilding the view's speed state from Kafka"),
        "the speed layer logged its rebuilds"
    );
    server.stop().await?;
    stop_clean(&mut pf).await
}
