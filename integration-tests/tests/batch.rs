//! Batch views against the real stack: Tansu → archive → `batch-layer run` → view files and
//! manifest on a local directory and on S3 (moto), equal to a ground truth computed here
//! (producer duplicates removed); late events recompute only their date; reruns change
//! nothing; the lock refuses a second run; a broken view does not stop the others;
//! `backfill` and `schedule` work through the real binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::watch;
use tributary_batch_layer::manifest::Manifest;
use tributary_batch_layer::read::{BatchQuery, BatchReader};
use tributary_batch_layer::report::{RunReport, load_report};
use tributary_it::scenario::*;
use tributary_it::*;
use tributary_shared::bucket::{DAY_MS, HOUR_MS, date_string};
use tributary_shared::config::StoreConfig;
use tributary_shared::layout::paths;
use tributary_shared::selection::Selection;
use tributary_shared::{Config, EventSchema, Granularity, ViewPlan};

/// (dimension index, accepted values) per filtered dimension.
type Filters = Vec<(usize, Vec<String>)>;

const SETTINGS: &str = r#"
[speed]
allowed_lateness = "5m"

[batch]
archive_max_rows = 2000
archive_flush_interval = "300ms"
metrics_listen = "127.0.0.1:0"
idle_timeout = "1s"
gc_grace = "1s"
history_retention = "15s"
"#;

fn config_for(topic: &str) -> anyhow::Result<Config> {
    test_config(topic, &unique("b"), &format!("{SETTINGS}{VIEWS}"))
}

async fn archive_until(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    ends: &HashMap<i32, i64>,
) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(tributary_batch_layer::archive(config.clone(), rx));
    let waited = wait_archived(store.clone(), &config.source.topic, ends).await;
    let _ = tx.send(true);
    task.await??;
    waited
}

/// Checks every bucket ending at or before the horizon, for group_by none / country /
/// country+device and an equality filter, against the deduplicated events.
async fn check_views(
    reader: &BatchReader,
    plan: &ViewPlan,
    evs: &[Ev],
    from: i64,
    to: i64,
) -> anyhow::Result<usize> {
    let manifest = reader.manifest("checkouts").await?.context("manifest")?;
    let horizon = manifest.horizon_ms.context("horizon")?;
    let mut checked = 0;
    let cases: [(Vec<usize>, Filters); 4] = [
        (vec![], vec![]),
        (vec![0], vec![]),
        (vec![0, 1], vec![]),
        (vec![1], vec![(0, vec!["DE".into()])]),
    ];
    for g in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
        for (group_by, filters) in &cases {
            let q = BatchQuery {
                granularity: g,
                from_ms: from,
                to_ms: to,
                selection: Selection {
                    filters: filters.clone(),
                    group_by: group_by.clone(),
                    measures: (0..plan.measures.len()).collect(),
                },
            };
            let got = reader.read(plan, &manifest, &q).await?;
            let mut want = truth(evs, g, group_by, filters);
            want.retain(|(_, t), _| g.end(*t) <= horizon && *t >= from && *t < to);
            let mut seen = 0;
            for (group, points) in &got {
                for (t, p) in points {
                    if g.end(*t) > horizon {
                        continue;
                    }
                    seen += 1;
                    let ctx =
                        format!("{g} group_by={group_by:?} filters={filters:?} {group:?} t={t}");
                    let tr = want
                        .get(&(group.clone(), *t))
                        .with_context(|| format!("{ctx}: batch has a group the truth lacks"))?;
                    assert!(p.exact, "{ctx}: one precomputed row must be exact");
                    for (m, v) in &p.values {
                        let w = tr.value(m);
                        let ok = match (v, w) {
                            (Some(a), Some(b)) => close(*a, b),
                            (a, b) => *a == b,
                        };
                        assert!(ok, "{ctx} {m}: batch {v:?}, truth {w:?}");
                    }
                }
            }
            assert_eq!(
                seen,
                want.len(),
                "{g} {group_by:?} {filters:?}: bucket/group count; got {} groups, horizon {horizon}, files {:?}",
                got.len(),
                manifest
                    .dates
                    .values()
                    .map(|d| &d.files)
                    .collect::<Vec<_>>()
            );
            checked += seen;
        }
    }
    // A set filter merges rows: additive measures exact, distinct and quantile from sketches.
    let set = vec![(0, vec!["DE".to_string(), "FR".to_string()])];
    let q = BatchQuery {
        granularity: Granularity::Day,
        from_ms: from,
        to_ms: to,
        selection: Selection {
            filters: set.clone(),
            group_by: vec![],
            measures: (0..plan.measures.len()).collect(),
        },
    };
    let got = reader.read(plan, &manifest, &q).await?;
    let points = got.get(&Vec::new()).context("set filter result")?;
    let want = truth(evs, Granularity::Day, &[], &set);
    for (t, p) in points {
        if *t + DAY_MS > horizon {
            continue;
        }
        let tr = want
            .get(&(Vec::new(), *t))
            .context("truth for the set filter")?;
        assert!(!p.exact, "a merged distinct count is not exact");
        for m in [
            "events",
            "revenue",
            "min_amount",
            "max_amount",
            "avg_amount",
        ] {
            let (a, b) = (
                p.values[m].unwrap_or(f64::NAN),
                tr.value(m).unwrap_or(f64::NAN),
            );
            assert!(close(a, b), "set filter {m}: {a} vs {b}");
        }
        let buyers = p.values["buyers"].context("buyers")?;
        let users = tr.users.len() as f64;
        assert!(
            (buyers - users).abs() <= 0.03 * users,
            "HLL union {buyers} vs {users}"
        );
        let (lo, hi) = tr.p90_bounds().context("latencies")?;
        let est = p.values["p90_latency"].context("p90")?;
        assert!(
            est >= lo * 0.99 - 1e-9 && est <= hi * 1.01 + 1e-9,
            "merged sketch p90 {est} outside [{lo}, {hi}]"
        );
        checked += 1;
    }
    Ok(checked)
}

async fn scenario(store_config: StoreConfig, label: &str) -> anyhow::Result<()> {
    let topic = unique(&format!("batch-{label}"));
    create_topic(&topic, 4).await?;
    let mut config = config_for(&topic)?;
    config.store = store_config;
    let store = open(&config.store)?;
    let plan = ViewPlan::compile_all(&config, &EventSchema::from_config(&config))?
        .into_iter()
        .next()
        .context("plan")?;

    // Two days, three days ago and the day after; every 20th event resent by the producer.
    let d1 = Granularity::Day.floor(now_ms()) - 3 * DAY_MS;
    let d2 = d1 + DAY_MS;
    let mut evs = events(1, 3000, d1, 2 * DAY_MS);
    evs.push(
        Ev {
            ts: d2 + DAY_MS - 1,
            ..evs[0].clone()
        }
        .with_id("last"),
    );
    let ends = produce(&topic, &evs, 20, Resend::NextPartition, 4, &[]).await?;
    archive_until(&config, &store, &ends).await?;
    // Past batch.idle_timeout every partition is idle: the horizon is the newest watermark.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (code, out) = batch_cli(&config, &["run"]).await?;
    assert_eq!(code, 0, "batch-layer run: {out}");
    let report = load_report(&store).await?.context("last_run.json")?;
    assert_eq!(
        report.views["checkouts"].dates_computed,
        vec![date_string(d1), date_string(d2)]
    );
    let (manifest, _) = Manifest::load(&store, "checkouts")
        .await?
        .context("manifest")?;
    assert_eq!(
        manifest.horizon_ms,
        Some(d2 + DAY_MS - 1 - 5 * 60_000),
        "min watermark (all idle: max)"
    );
    for date in [date_string(d1), date_string(d2)] {
        for g in ["hour", "day"] {
            let f = &manifest.dates[&date].files[&g.parse::<Granularity>()?];
            store
                .head(&object_store::path::Path::from(f.path.as_str()))
                .await?;
        }
    }
    let reader = BatchReader::new(store.clone(), Duration::ZERO);
    let checked = check_views(&reader, &plan, &evs, d1, d2 + DAY_MS).await?;
    assert!(checked > 100, "only {checked} points checked");

    // Idempotent: a second run changes nothing.
    let (code, out) = batch_cli(&config, &["run"]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checkouts: 0 date(s) recomputed"), "{out}");
    let (again, _) = Manifest::load(&store, "checkouts")
        .await?
        .context("manifest")?;
    assert_eq!(again, manifest, "a rerun must not rewrite the manifest");

    // A held lock refuses a run, clearly.
    let lock =
        tributary_batch_layer::lock::RunLock::acquire(&store, "test-holder", now_ms(), 60_000)
            .await?;
    let (code, out) = batch_cli(&config, &["run"]).await?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("another batch run holds the lock") && out.contains("test-holder"),
        "{out}"
    );
    lock.release().await?;

    // Late events for day 1 (with resends of events already archived): only day 1 changes.
    let late = events(2, 400, d1 + 2 * HOUR_MS, 6 * HOUR_MS);
    let mut late_batch = late.clone();
    late_batch.extend(evs.iter().filter(|e| e.ts < d2).take(50).cloned());
    let more = produce(&topic, &late_batch, 0, Resend::NextPartition, 4, &[]).await?;
    let ends2 = add_ends(&ends, &more);
    archive_until(&config, &store, &ends2).await?;
    let (code, out) = batch_cli(&config, &["run"]).await?;
    assert_eq!(code, 0, "{out}");
    let report: RunReport = load_report(&store).await?.context("report")?;
    assert_eq!(
        report.views["checkouts"].dates_computed,
        vec![date_string(d1)],
        "{out}"
    );
    let (m2, _) = Manifest::load(&store, "checkouts")
        .await?
        .context("manifest")?;
    assert_eq!(m2.version, manifest.version + 1);
    assert_eq!(
        m2.dates[&date_string(d2)],
        manifest.dates[&date_string(d2)],
        "day 2 untouched"
    );
    // Day 1's old files are retired, not deleted: readers of the previous manifest (and
    // `as_of` queries, for history_retention, 15s) may still read them. Once both have
    // passed, the next run collects them.
    for f in manifest.dates[&date_string(d1)].files.values() {
        assert!(
            m2.retired.iter().any(|r| r.path == f.path),
            "{} is retired",
            f.path
        );
        store
            .head(&object_store::path::Path::from(f.path.as_str()))
            .await
            .with_context(|| format!("{} is still there during the grace period", f.path))?;
    }
    // Every landed version is in the history, named by the instant it counts from.
    let history = tributary_batch_layer::history::list(&store, "checkouts").await?;
    let recorded: Vec<u64> = history.iter().map(|e| e.version).collect();
    assert!(
        recorded.ends_with(&[manifest.version, m2.version]),
        "{recorded:?}"
    );
    let at_m1 = history
        .iter()
        .find(|e| e.version == manifest.version)
        .context("version 1 recorded")?;
    assert_eq!(Some(at_m1.landed_ms), manifest.landed_ms);
    let old = tributary_batch_layer::history::load(&store, "checkouts", at_m1).await?;
    assert_eq!(old, manifest, "the history holds the version as it landed");
    // Past gc_grace but within the history's retention: kept for as_of. (The retention is
    // 15 s, not less: a debug run against moto on a busy machine takes seconds, and at 5 s
    // this run once came after the retention had passed.)
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (code, out) = batch_cli(&config, &["run"]).await?;
    assert_eq!(code, 0, "{out}");
    for f in manifest.dates[&date_string(d1)].files.values() {
        store
            .head(&object_store::path::Path::from(f.path.as_str()))
            .await
            .with_context(|| format!("{} is kept within history_retention", f.path))?;
    }
    tokio::time::sleep(std::time::Duration::from_millis(14500)).await;
    let (code, out) = batch_cli(&config, &["run"]).await?;
    assert_eq!(code, 0, "{out}");
    // The versions older than the retention are gone but the one current at its start.
    let history = tributary_batch_layer::history::list(&store, "checkouts").await?;
    let m3 = Manifest::load(&store, "checkouts")
        .await?
        .context("manifest")?
        .0;
    assert!(
        !history.iter().any(|e| e.version == manifest.version),
        "version {} expired: {history:?}",
        manifest.version
    );
    assert!(
        history.iter().any(|e| e.version == m3.version),
        "{history:?}"
    );
    for f in manifest.dates[&date_string(d1)].files.values() {
        let gone = store
            .head(&object_store::path::Path::from(f.path.as_str()))
            .await;
        assert!(
            matches!(gone, Err(object_store::Error::NotFound { .. })),
            "{} should be collected",
            f.path
        );
    }
    let mut all = evs.clone();
    all.extend(late_batch);
    check_views(&reader, &plan, &all, d1, d2 + DAY_MS).await?;

    // backfill recomputes a range on demand, even unchanged; --view narrows it.
    let (code, out) = batch_cli(
        &config,
        &[
            "backfill",
            "--from",
            &date_string(d2),
            "--to",
            &date_string(d2 + DAY_MS),
            "--view",
            "checkouts",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("progress=\"1/1\"") || out.contains("progress=1/1"),
        "progress output: {out}"
    );
    let report = load_report(&store).await?.context("report")?;
    assert_eq!(report.views.keys().collect::<Vec<_>>(), vec!["checkouts"]);
    assert_eq!(
        report.views["checkouts"].dates_computed,
        vec![date_string(d2)]
    );
    check_views(&reader, &plan, &all, d1, d2 + DAY_MS).await?;
    let (code, out) = batch_cli(
        &config,
        &["backfill", "--from", "yesterday", "--to", "2026-01-01"],
    )
    .await?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--from"), "{out}");

    // A broken view fails alone: the other view's run still lands, the exit code says so.
    store
        .put(
            &paths::view_manifest("all_types"),
            PutPayload::from_static(b"{not json"),
        )
        .await?;
    let late2 = events(3, 50, d1, HOUR_MS);
    let more2 = produce(&topic, &late2, 0, Resend::NextPartition, 4, &[]).await?;
    let ends3 = add_ends(&ends2, &more2);
    archive_until(&config, &store, &ends3).await?;
    let (code, out) = batch_cli(&config, &["run"]).await?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("all_types"),
        "the failing view is named: {out}"
    );
    let report = load_report(&store).await?.context("report")?;
    assert!(report.views["all_types"].error.is_some());
    assert_eq!(
        report.views["checkouts"].dates_computed,
        vec![date_string(d1)]
    );
    all.extend(late2);
    check_views(&reader, &plan, &all, d1, d2 + DAY_MS).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_views_on_a_local_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = StoreConfig {
        url: format!("file://{}", dir.path().display()),
        ..Default::default()
    };
    scenario(store, "file").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_views_on_s3_through_moto() -> anyhow::Result<()> {
    let store = s3_store_config(&unique("batch")).await?;
    scenario(store, "s3").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_fires_on_its_cron_and_stops_on_sigterm() -> anyhow::Result<()> {
    let topic = unique("batch-sched");
    create_topic(&topic, 2).await?;
    let dir = tempfile::tempdir()?;
    let mut config = config_for(&topic)?;
    config.store.url = format!("file://{}", dir.path().display());
    config.batch.schedule = "* * * * * *".into();
    let store = open(&config.store)?;
    let d1 = Granularity::Day.floor(now_ms()) - 2 * DAY_MS;
    let ends = produce(
        &topic,
        &events(4, 500, d1, DAY_MS),
        0,
        Resend::NextPartition,
        2,
        &[],
    )
    .await?;
    archive_until(&config, &store, &ends).await?;

    let (cfg_path, env) = write_config(&config, dir.path())?;
    let child = tokio::process::Command::new(binary("batch-layer")?)
        .arg("--config")
        .arg(&cfg_path)
        .arg("schedule")
        .envs(env)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let fired = wait_for(
        "a scheduled run to write the manifest",
        Duration::from_secs(60),
        || {
            let store = store.clone();
            async move { Ok(Manifest::load(&store, "checkouts").await?.map(|(m, _)| m)) }
        },
    )
    .await;
    let pid = child.id().context("pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    let logs =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let manifest = fired?;
    assert_eq!(manifest.dates.len(), 1, "{logs}");
    assert!(
        logs.contains("next batch run"),
        "logs the next run time: {logs}"
    );
    if out.status.code() != Some(0) {
        bail!("schedule exited {:?} on SIGTERM: {logs}", out.status.code());
    }
    Ok(())
}
