//! kill -9 storms: every daemon killed at random points while events stream in.

use std::collections::BTreeMap;
use std::time::Duration;

use object_store::ObjectStoreExt;
use rand::Rng;
use tributary_it::chaos::procs::Daemon;
use tributary_it::chaos::{Platform, Scale, chaos_config, produce_paced, rng, spread};
use tributary_it::scenario::events;
use tributary_it::{brokers, create_topic, now_ms, open, redis_url, unique};
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS};

use crate::{Verify, malformed, sleep_ms, stop_clean};

/// kill -9 of `speed-layer run`, `batch-layer archive` and `batch-layer run` at random
/// points while events stream in (a fresh group and topic, as the operator's bad day went):
/// both consumers get their partitions back, nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_storm_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let scale = Scale::from_env();
    let (seed, mut rng) = rng("kill_storm");
    let brokers = brokers();
    let topic = unique("chaos-kill");
    create_topic(&topic, 4).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    let n = scale.pick(6_000, 60_000);
    let now = now_ms();
    let evs = events(seed, n, now - 2 * HOUR_MS, 2 * HOUR_MS - MINUTE_MS);
    let per = spread(&evs, 4, &malformed(40), &mut rng);
    pf.speed.start()?;
    pf.archive.start()?;
    let chunks = scale.pick(20, 60);
    let stream = {
        let (brokers, topic, per) = (brokers.clone(), topic.clone(), per.clone());
        tokio::spawn(async move {
            produce_paced(&brokers, &topic, &per, chunks, Duration::from_millis(500)).await
        })
    };
    let target = scale.pick(10, 36);
    let mut kills = BTreeMap::<&str, u32>::new();
    let mut n_runs = 0;
    while !stream.is_finished() || kills.values().sum::<u32>() < target {
        sleep_ms(&mut rng, 200, 2500).await;
        match rng.random_range(0..5) {
            0 | 1 => {
                pf.speed.kill9().await?;
                sleep_ms(&mut rng, 0, 800).await;
                pf.speed.start()?;
                *kills.entry("speed").or_default() += 1;
            }
            2 | 3 => {
                pf.archive.kill9().await?;
                sleep_ms(&mut rng, 0, 800).await;
                pf.archive.start()?;
                *kills.entry("archive").or_default() += 1;
            }
            _ => {
                // A run killed at a random point once it holds the lock (a run refused
                // because a killed run's lock has not expired yet exits by itself).
                n_runs += 1;
                let mut run: Daemon = pf.batch_run(&format!("batch-{n_runs}"))?;
                run.start()?;
                let pid = run.pid().unwrap_or(0);
                let store = open(&pf.config.store)?;
                for _ in 0..600 {
                    let lock = match store
                        .get(&tributary_shared::layout::paths::batch_lock())
                        .await
                    {
                        Ok(r) => String::from_utf8_lossy(&r.bytes().await?).to_string(),
                        Err(_) => String::new(),
                    };
                    if lock.contains(&format!(":{pid}\"")) || !run.running() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // The storm's views are small (runs of 10-150 ms here): the kill lands
                // within the run, anywhere from taking the lock to landing.
                sleep_ms(&mut rng, 0, 60).await;
                if let Some(status) = run.exited() {
                    println!(
                        "[chaos] kill_storm: batch run {n_runs} ended ({status}) before its kill: {}",
                        run.tail(1)
                    );
                }
                run.kill9().await?;
                if run.kills > 0 {
                    *kills.entry("batch").or_default() += 1;
                }
            }
        }
    }
    stream.await??;
    println!("[chaos] kill_storm: seed {seed}, kills {kills:?}");
    Verify {
        pf: &pf,
        brokers: &brokers,
        generated: &evs,
        patience: Duration::from_secs(scale.pick(240, 420)),
    }
    .all()
    .await?;
    stop_clean(&mut pf).await
}
