//! A group member that holds partitions and reads nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary_it::chaos::procs::Daemon;
use tributary_it::chaos::{Platform, chaos_config, produce_paced, rng, spread};
use tributary_it::scenario::events;
use tributary_it::{brokers, create_topic, now_ms, redis_url, unique};
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS};

use crate::{Verify, malformed, stop_clean};

/// A member that holds partitions and never reads them (a hung process whose heartbeat
/// thread lives on): rejoining the group does not free them, so after two rejoins the speed
/// layer and the archiver read every partition without the group, and everything is applied
/// and archived exactly once all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_holds_partitions_and_reads_nothing_is_worked_around() -> anyhow::Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let (seed, mut rng) = rng("hung_member");
    let brokers = brokers();
    let topic = unique("chaos-hung");
    create_topic(&topic, 4).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    // The hung members: one in each group, polling (so they keep their partitions) and never
    // committing or writing anything.
    let mut hung = Vec::new();
    for group in [
        pf.config.source.speed_group(),
        pf.config.source.archive_group(),
    ] {
        let c: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .create()?;
        c.subscribe(&[&topic])?;
        hung.push(tokio::spawn(async move {
            loop {
                let _ = c.recv().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = now_ms();
    let evs = events(seed, 6_000, now - HOUR_MS, HOUR_MS - MINUTE_MS);
    let per = spread(&evs, 4, &malformed(8), &mut rng);
    pf.speed.start()?;
    pf.archive.start()?;
    // A stream that lasts until both have given up on the group (the hung member's
    // partitions keep having unread records whatever the assignment), at most a few minutes.
    let alone = |d: &Daemon| {
        d.log()
            .contains("every partition without the consumer group")
    };
    let chunks = 200;
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while sent < chunks
        && !(alone(&pf.speed) && alone(&pf.archive))
        && tokio::time::Instant::now() < deadline
    {
        let slice: BTreeMap<i32, Vec<Vec<u8>>> = per
            .iter()
            .map(|(p, v)| {
                let size = v.len().div_ceil(chunks);
                (*p, v.iter().skip(sent * size).take(size).cloned().collect())
            })
            .collect();
        produce_paced(&brokers, &topic, &slice, 1, Duration::from_secs(1)).await?;
        sent += 1;
    }
    let rest: BTreeMap<i32, Vec<Vec<u8>>> = per
        .iter()
        .map(|(p, v)| {
            let size = v.len().div_ceil(chunks);
            (*p, v.iter().skip(sent * size).cloned().collect())
        })
        .collect();
    produce_paced(&brokers, &topic, &rest, 1, Duration::ZERO).await?;
    Verify {
        pf: &pf,
        brokers: &brokers,
        generated: &evs,
        patience: Duration::from_secs(400),
    }
    .all()
    .await?;
    for (d, what) in [(&pf.speed, "speed"), (&pf.archive, "archive")] {
        assert!(
            d.log()
                .contains("every partition without the consumer group"),
            "the {what} read every partition alone:\n{}",
            d.tail(30)
        );
    }
    for h in hung {
        h.abort();
    }
    stop_clean(&mut pf).await
}
