//! Outages of the broker, Redis and the object store, ridden out.

use std::time::Duration;

use tributary_it::chaos::services::{FaultProxy, OwnBroker, OwnRedis, ProxyMode};
use tributary_it::chaos::{Platform, Scale, chaos_config, produce_paced, rng, spread};
use tributary_it::scenario::events;
use tributary_it::{create_topic_on, now_ms, s3_endpoint, s3_store_config, unique};
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS};

use crate::{Verify, malformed, sleep_ms, stop_clean};

/// The broker restarted mid-stream, Redis unreachable (paused) for a while, the S3 endpoint
/// answering errors and dropping connections for a while, with a batch run during the store
/// outage: everything waits, retries and catches up; nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outages_of_broker_redis_and_store_are_ridden_out() -> anyhow::Result<()> {
    let scale = Scale::from_env();
    let (seed, mut rng) = rng("outages");
    let outage = Duration::from_secs(scale.pick(10, 30));
    let mut broker = OwnBroker::start().await?;
    let redis = OwnRedis::start(&[]).await?;
    let s3 = s3_endpoint();
    let proxy = FaultProxy::start(s3.trim_start_matches("http://")).await?;
    let topic = unique("chaos-outage");
    create_topic_on(&broker.brokers(), &topic, 4, false).await?;
    let mut config = chaos_config(&broker.brokers(), &redis.url(), &topic, "tributary", "")?;
    config.store = s3_store_config("chaos").await?;
    config.store.endpoint = Some(proxy.endpoint());
    let mut pf = Platform::new(config)?;
    let now = now_ms();
    let evs = events(
        seed,
        scale.pick(4_000, 30_000),
        now - 2 * HOUR_MS,
        2 * HOUR_MS - MINUTE_MS,
    );
    let per = spread(&evs, 4, &malformed(20), &mut rng);
    pf.speed.start()?;
    pf.archive.start()?;
    let stream = {
        let (brokers, topic) = (broker.brokers(), topic.clone());
        let chunks = scale.pick(30, 90);
        tokio::spawn(async move {
            produce_paced(&brokers, &topic, &per, chunks, Duration::from_millis(500)).await
        })
    };
    sleep_ms(&mut rng, 2000, 4000).await;
    println!("[chaos] outages: broker restart");
    broker.restart(Duration::from_secs(3)).await?;
    sleep_ms(&mut rng, 1000, 3000).await;
    println!("[chaos] outages: redis unreachable for {outage:?}");
    redis.pause()?;
    tokio::time::sleep(outage).await;
    redis.resume()?;
    sleep_ms(&mut rng, 1000, 3000).await;
    println!("[chaos] outages: the S3 endpoint fails for {outage:?}, a batch run meanwhile");
    proxy.set(ProxyMode::Fail);
    let mut run = pf.batch_run("batch-during-outage")?;
    run.start()?;
    tokio::time::sleep(outage / 2).await;
    proxy.set(ProxyMode::Reset);
    tokio::time::sleep(outage / 2).await;
    proxy.set(ProxyMode::Pass);
    let code = run.wait(Duration::from_secs(300)).await?;
    println!("[chaos] outages: the batch run during the outage exited {code:?}");
    stream.await??;
    Verify {
        pf: &pf,
        brokers: &broker.brokers(),
        generated: &evs,
        patience: Duration::from_secs(scale.pick(240, 420)),
    }
    .all()
    .await?;
    stop_clean(&mut pf).await
}
