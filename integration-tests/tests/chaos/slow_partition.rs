//! A partition that has applied nothing yet keeps speed buckets open.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use tributary_it::chaos::{Platform, chaos_config, produce_paced, rng, spread};
use tributary_it::scenario::events;
use tributary_it::{
    brokers, create_topic, now_ms, redis_url, unique, wait_for, wait_speed_applied_on,
};
use tributary_shared::Granularity;
use tributary_shared::bucket::MINUTE_MS;

use crate::serve;

/// A speed bucket is sealed (and cached) only when every partition of the topic is past it:
/// a partition that has applied nothing yet (a start, a catch-up) keeps them open, so answers
/// never stick at a partial value. (Seen before: the serving layer sealed buckets on the
/// partitions that had published progress and served partial values for minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_that_has_applied_nothing_keeps_buckets_open() -> anyhow::Result<()> {
    let (seed, mut rng) = rng("slow_partition");
    let brokers = brokers();
    let topic = unique("chaos-slow");
    create_topic(&topic, 2).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    let now = now_ms();
    // Minutes well behind the watermark a single partition would set.
    let evs = events(seed, 2_000, now - 40 * MINUTE_MS, 38 * MINUTE_MS);
    let per = spread(&evs, 2, &[], &mut rng);
    pf.speed.start()?;
    let server = serve(pf.config.clone()).await?;
    let only_p0: BTreeMap<i32, Vec<Vec<u8>>> = per
        .iter()
        .filter(|(p, _)| **p == 0)
        .map(|(p, v)| (*p, v.clone()))
        .collect();
    produce_paced(&brokers, &topic, &only_p0, 1, Duration::ZERO).await?;
    let p0_end: std::collections::HashMap<i32, i64> = [(0, per[&0].len() as i64)].into();
    wait_speed_applied_on(
        &redis_url(),
        &pf.config.redis.key_prefix,
        "checkouts",
        &topic,
        &p0_end,
        Duration::from_secs(90),
    )
    .await?;
    let (from, to) = (now - 45 * MINUTE_MS, now + MINUTE_MS);
    // A dashboard polls while partition 1 has nothing yet.
    for _ in 0..5 {
        server
            .series("minute", from, to, "&measures=events")
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let only_p1: BTreeMap<i32, Vec<Vec<u8>>> = per
        .iter()
        .filter(|(p, _)| **p == 1)
        .map(|(p, v)| (*p, v.clone()))
        .collect();
    produce_paced(&brokers, &topic, &only_p1, 1, Duration::ZERO).await?;
    let ends: std::collections::HashMap<i32, i64> =
        per.iter().map(|(p, v)| (*p, v.len() as i64)).collect();
    wait_speed_applied_on(
        &redis_url(),
        &pf.config.redis.key_prefix,
        "checkouts",
        &topic,
        &ends,
        Duration::from_secs(90),
    )
    .await?;
    // Within a couple of refreshes every minute equals the truth of both partitions.
    let want = tributary_it::scenario::truth(&evs, Granularity::Minute, &[], &[]);
    wait_for(
        "answers equal to the truth",
        Duration::from_secs(10),
        || {
            let server = &server;
            let want = &want;
            async move {
                let body = server
                    .series("minute", from, to, "&measures=events")
                    .await?;
                let mut wrong = Vec::new();
                for p in body["series"][0]["points"].as_array().context("points")? {
                    let t = p["t"]
                        .as_str()
                        .and_then(tributary_shared::bucket::parse_rfc3339);
                    let got = p["values"]["events"].as_f64();
                    let truth = t
                        .and_then(|t| want.get(&(Vec::new(), t)))
                        .map(|x| x.count as f64);
                    if got != truth {
                        wrong.push(format!("{}: {got:?} vs {truth:?}", p["t"]));
                    }
                }
                Ok(wrong.is_empty().then_some(()).or_else(|| {
                    println!(
                        "[chaos] slow_partition: {} minutes differ, e.g. {:?}",
                        wrong.len(),
                        wrong.first()
                    );
                    None
                }))
            }
        },
    )
    .await?;
    server.stop().await?;
    pf.speed.stop(Duration::from_secs(30)).await?;
    Ok(())
}
