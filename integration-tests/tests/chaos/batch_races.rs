//! Batch runs racing, slowed past their lock and killed midway.

use std::time::Duration;

use anyhow::Context;
use object_store::ObjectStoreExt;
use serde_json::Value;
use tributary_it::chaos::{Platform, chaos_config, produce_paced, rng, spread};
use tributary_it::scenario::events;
use tributary_it::{
    brokers, create_topic, now_ms, open, redis_url, unique, wait_archived_within, wait_for,
};
use tributary_shared::bucket::{HOUR_MS, format_rfc3339};

use crate::sleep_ms;

/// The run id a `batch-layer run` printed ("run <id> done ...").
fn run_id_of(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix("run ")?
            .split_whitespace()
            .next()
            .map(str::to_string)
    })
}

/// Two `batch-layer run` at once, one slowed (SIGSTOP) past `lock_ttl`, one killed midway:
/// exactly one manifest version per run that landed, every file a manifest names present, and
/// no orphaned view file left after the next run's GC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_slowed_and_killed_batch_runs_land_once() -> anyhow::Result<()> {
    use tributary_batch_layer::manifest::Manifest;
    let (seed, mut rng) = rng("batch_races");
    let brokers = brokers();
    let topic = unique("chaos-batch");
    create_topic(&topic, 2).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    let store = open(&pf.config.store)?;
    let now = now_ms();
    // Several days, so a run has several dates to write.
    let evs = events(seed, 6_000, now - 6 * 24 * HOUR_MS, 6 * 24 * HOUR_MS);
    let per = spread(&evs, 2, &[], &mut rng);
    produce_paced(&brokers, &topic, &per, 1, Duration::ZERO).await?;
    pf.archive.start()?;
    let ends: std::collections::HashMap<i32, i64> =
        per.iter().map(|(p, v)| (*p, v.len() as i64)).collect();
    wait_archived_within(store.clone(), &topic, &ends, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let version = |m: &Option<(Manifest, String)>| m.as_ref().map_or(0, |(m, _)| m.version);

    // A and B at once: A takes the lock and is paused (SIGSTOP) past lock_ttl; B is refused
    // while A's lock is fresh; C, once it expired, takes it over and lands.
    let mut a = pf.batch_run("batch-a")?;
    a.start()?;
    let a_pid = a.pid().context("a's pid")?;
    wait_for("run A to hold the lock", Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            let lock = match store
                .get(&tributary_shared::layout::paths::batch_lock())
                .await
            {
                Ok(r) => String::from_utf8_lossy(&r.bytes().await?).to_string(),
                Err(_) => return Ok(None),
            };
            let held = serde_json::from_str::<Value>(&lock).ok().is_some_and(|l| {
                l["owner"]
                    .as_str()
                    .is_some_and(|o| o.ends_with(&format!(":{a_pid}")))
                    && l["released"] != Value::Bool(true)
            });
            Ok(held.then_some(()))
        }
    })
    .await?;
    tributary_it::chaos::procs::signal(a_pid, "STOP")?;
    let mut b = pf.batch_run("batch-b")?;
    b.start()?;
    assert_eq!(
        b.wait(Duration::from_secs(60)).await?,
        Some(1),
        "B is refused: {}",
        b.tail(5)
    );
    assert!(b.log().contains("holds the lock"), "{}", b.tail(5));
    let before = Manifest::load(&store, "checkouts").await?;
    tokio::time::sleep(Duration::from_secs(6)).await; // past lock_ttl (5s)
    let mut c = pf.batch_run("batch-c")?;
    c.start()?;
    assert_eq!(
        c.wait(Duration::from_secs(300)).await?,
        Some(0),
        "C lands: {}",
        c.tail(20)
    );
    let c_id = run_id_of(&c.log()).context("C's run id")?;
    let after_c = Manifest::load(&store, "checkouts").await?;
    assert_eq!(
        version(&after_c),
        version(&before) + 1,
        "C landed one version"
    );
    tributary_it::chaos::procs::signal(a_pid, "CONT")?;
    let a_code = a.wait(Duration::from_secs(300)).await?;
    let after_a = Manifest::load(&store, "checkouts").await?;
    assert_eq!(
        after_a.as_ref().map(|(m, _)| m.run_id.clone()),
        Some(c_id.clone()),
        "A (exit {a_code:?}) did not land over C:\n{}",
        a.tail(10)
    );
    assert_eq!(version(&after_a), version(&after_c));
    assert_ne!(
        a_code,
        Some(0),
        "A lost its lock and says so: {}",
        a.tail(10)
    );

    // D recomputes every date (a backfill) and is killed midway: its files are orphans.
    let mut d = tributary_it::chaos::procs::Daemon::new(
        "batch-d",
        "batch-layer",
        &[
            "backfill",
            "--from",
            &format_rfc3339(now - 8 * 24 * HOUR_MS),
            "--to",
            &format_rfc3339(now + HOUR_MS),
        ],
        &pf.config_path,
        &pf.env,
        pf.dir.path(),
    )?;
    d.start()?;
    let named = |m: &Option<(Manifest, String)>| -> std::collections::BTreeSet<String> {
        m.iter()
            .flat_map(|(m, _)| {
                m.dates
                    .values()
                    .flat_map(|d| d.files.values().map(|f| f.path.clone()))
                    .chain(m.retired.iter().map(|r| r.path.clone()))
                    .chain(m.accuracy.values().flatten().map(|f| f.path.clone()))
            })
            .collect()
    };
    let view_files = || {
        let store = store.clone();
        async move {
            use futures::TryStreamExt;
            let metas: Vec<object_store::ObjectMeta> = store
                .list(Some(&object_store::path::Path::from("views")))
                .try_collect()
                .await?;
            anyhow::Ok(
                metas
                    .into_iter()
                    .map(|m| m.location.to_string())
                    .filter(|p| p.ends_with(".parquet"))
                    .collect::<std::collections::BTreeSet<String>>(),
            )
        }
    };
    let manifests = || {
        let store = store.clone();
        async move {
            let mut all = Vec::new();
            for v in ["checkouts", "all_types"] {
                all.push(Manifest::load(&store, v).await?);
            }
            anyhow::Ok(all)
        }
    };
    let named_all = |ms: &[Option<(Manifest, String)>]| -> std::collections::BTreeSet<String> {
        ms.iter().flat_map(named).collect()
    };
    let known = named_all(&manifests().await?);
    wait_for(
        "run D to write a view file",
        Duration::from_secs(120),
        || {
            let known = known.clone();
            let files = view_files();
            async move { Ok((files.await?.difference(&known).count() > 0).then_some(())) }
        },
    )
    .await?;
    sleep_ms(&mut rng, 0, 300).await;
    d.kill9().await?;
    let orphans: Vec<String> = view_files().await?.difference(&known).cloned().collect();
    println!(
        "[chaos] batch_races: D killed, leaving {} orphaned file(s)",
        orphans.len()
    );
    assert!(!orphans.is_empty());

    // E, after D's lock expired and the grace period passed, lands and collects D's files.
    tokio::time::sleep(Duration::from_secs(6)).await;
    pf.batch_until_ok(Duration::from_secs(120)).await?;
    let last = manifests().await?;
    let files = view_files().await?;
    let named_now = named_all(&last);
    for (m, _) in last.iter().flatten() {
        for d in m.dates.values() {
            for f in d.files.values() {
                assert!(
                    files.contains(&f.path),
                    "the manifest names {}, which is missing",
                    f.path
                );
            }
        }
    }
    let stray: Vec<&String> = files.difference(&named_now).collect();
    assert!(stray.is_empty(), "orphaned view files after GC: {stray:?}");
    pf.archive.stop(Duration::from_secs(30)).await?;
    Ok(())
}
