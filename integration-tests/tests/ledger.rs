//! The speed accuracy ledger over a stream with producer duplicates the speed layer does not
//! remove (`dedup_window = "0s"`) and late events it drops (beyond allowed lateness), through
//! the real broker, Redis, archive and batch run: the ledger shows exactly the minutes those
//! events touched, with the errors the ground truth gives, and no error anywhere else; minutes
//! the batch settled before the speed layer sealed them are compared by the next run.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tributary_batch_layer::ledger::LedgerRow;
use tributary_batch_layer::metrics::BatchMetrics;
use tributary_batch_layer::read::BatchReader;
use tributary_batch_layer::run::{RunRequest, run_once};
use tributary_it::scenario::{Resend, VIEWS, add_ends, close, events, produce, truth};
use tributary_it::{
    create_topic, now_ms, open, test_config, unique, wait_archived, wait_speed_applied,
};
use tributary_shared::Granularity;
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS, format_rfc3339};
use tributary_shared::layout::RedisKeys;
use tributary_shared::redis_client::RedisClient;
use tributary_speed_layer::read::read_view_state;

const SETTINGS: &str = r#"
[speed]
allowed_lateness = "5m"
dedup_window = "0s"
flush_interval = "100ms"
metrics_listen = "127.0.0.1:0"

[batch]
archive_max_rows = 5000
archive_flush_interval = "300ms"
metrics_listen = "127.0.0.1:0"
idle_timeout = "1s"
"#;

/// Every 97th event is sent twice: some minutes get a duplicate, most do not.
const DUP_EVERY: usize = 97;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_shows_exactly_the_buckets_duplicates_and_late_events_touched()
-> anyhow::Result<()> {
    let topic = unique("ledger");
    create_topic(&topic, 2).await?;
    let store_dir = tempfile::tempdir()?;
    let mut config = test_config(&topic, &unique("ledger"), &format!("{SETTINGS}{VIEWS}"))?;
    config.store.url = format!("file://{}", store_dir.path().display());
    let store = open(&config.store)?;
    let now = now_ms();
    let wave = events(31, 3000, now - 3 * HOUR_MS, 150 * MINUTE_MS);
    let late = events(32, 200, now - 170 * MINUTE_MS, HOUR_MS);
    // Partition 0 alone runs ahead: the batch's horizon (every partition idle: the newest
    // partition's watermark) passes the speed layer's watermark (the oldest partition's), so
    // the first run settles minutes the speed layer has not sealed.
    let ahead = events(33, 30, now - 25 * MINUTE_MS, 5 * MINUTE_MS);
    let mut ends = produce(&topic, &wave, DUP_EVERY, Resend::SamePartition, 2, &[]).await?;
    ends = add_ends(
        &ends,
        &produce(&topic, &ahead, 0, Resend::SamePartition, 1, &[]).await?,
    );

    let (stop_speed, rx) = watch::channel(false);
    let speed = tokio::spawn(tributary_speed_layer::run(config.clone(), rx));
    let (stop_archive, rx) = watch::channel(false);
    let archive = tokio::spawn(tributary_batch_layer::archive(config.clone(), rx));
    wait_speed_applied(&config.redis.key_prefix, "checkouts", &topic, &ends).await?;
    // Late once the speed layer's watermark is past them: it drops them, the batch keeps them.
    ends = add_ends(
        &ends,
        &produce(&topic, &late, 0, Resend::SamePartition, 2, &[]).await?,
    );
    wait_speed_applied(&config.redis.key_prefix, "checkouts", &topic, &ends).await?;
    wait_archived(store.clone(), &topic, &ends).await?;
    // Every partition idle (`idle_timeout`), so the horizon is the newest partition's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = BatchMetrics::new();
    let ran = run_once(&config, &store, &metrics, &RunRequest::default()).await;
    let _ = stop_archive.send(true);
    archive.await??;
    ran?;

    let manifest = BatchReader::new(store.clone(), Duration::ZERO)
        .manifest("checkouts")
        .await?
        .context("the run landed no manifest")?;
    let horizon = manifest.horizon_ms.context("horizon")?;
    let mut con = RedisClient::new(&config.redis)?.connect().await?;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let lateness = config.speed.allowed_lateness.as_millis() as i64;
    let speed_watermark = async |con: &mut _| -> anyhow::Result<i64> {
        let state = read_view_state(con, &keys, &topic, "checkouts").await?;
        state.watermark(lateness).context("speed watermark")
    };
    let settled_to = horizon.min(speed_watermark(&mut con).await?);
    assert!(
        horizon - settled_to >= 5 * MINUTE_MS,
        "the scenario leaves minutes settled but not sealed: horizon {}, speed {}",
        format_rfc3339(horizon),
        format_rfc3339(settled_to)
    );
    let from = Granularity::Hour.floor(now - 4 * HOUR_MS);
    let g = Granularity::Minute;
    let compared = |rows: &[LedgerRow], to: i64| {
        let mut times: Vec<i64> = rows
            .iter()
            .filter(|r| r.granularity == g && r.measure == "events")
            .map(|r| r.t_ms)
            .collect();
        times.sort_unstable();
        let expected: Vec<i64> = g.buckets(from, to).filter(|b| g.end(*b) <= to).collect();
        assert_eq!(times, expected, "the minutes compared, once each");
    };
    let reader = BatchReader::new(store.clone(), Duration::ZERO);
    compared(&reader.ledger(&manifest, from, now).await?, settled_to);

    // The speed layer seals the rest of them (both partitions move on; the archive is
    // stopped, so the batch's dates and horizon stay): the next run lands a version for their
    // ledger rows alone.
    let fresh = events(34, 40, now - 15 * MINUTE_MS, 10 * MINUTE_MS);
    ends = add_ends(
        &ends,
        &produce(&topic, &fresh, 0, Resend::SamePartition, 2, &[]).await?,
    );
    wait_speed_applied(&config.redis.key_prefix, "checkouts", &topic, &ends).await?;
    assert!(speed_watermark(&mut con).await? >= horizon);
    let ran = run_once(&config, &store, &metrics, &RunRequest::default()).await;
    let _ = stop_speed.send(true);
    speed.await??;
    ran?;
    let next = reader
        .manifest("checkouts")
        .await?
        .context("the manifest is gone")?;
    assert_eq!(
        next.version,
        manifest.version + 1,
        "a version for the ledger"
    );
    // Nothing new since: the next run lands nothing.
    run_once(&config, &store, &metrics, &RunRequest::default()).await?;
    let again = reader.manifest("checkouts").await?.context("manifest")?;
    assert_eq!(again.version, next.version, "nothing new, no version");
    assert_eq!(next.horizon_ms, Some(horizon), "the horizon stays");
    assert_eq!(next.dates, manifest.dates, "no date recomputed");
    let rows = reader.ledger(&next, from, now).await?;
    compared(&rows, horizon);
    let minutes: Vec<&LedgerRow> = rows.iter().filter(|r| r.granularity == g).collect();

    // The truth each layer saw: the speed layer the wave (its duplicates twice: `truth`
    // counts an id once, so they are added here), the partition ahead and no late event; the
    // batch every event once.
    let mut seen_by_speed = wave.clone();
    seen_by_speed.extend(ahead.iter().cloned());
    let mut all = seen_by_speed.clone();
    all.extend(late.iter().cloned());
    let wave_truth = truth(&seen_by_speed, g, &[], &[]);
    let batch_truth = truth(&all, g, &[], &[]);
    let dups = |t: i64| -> Vec<f64> {
        wave.iter()
            .enumerate()
            .filter(|(i, e)| i % DUP_EVERY == 0 && e.checkout && g.floor(e.ts) == t)
            .map(|(_, e)| e.amount.unwrap_or(0.0))
            .collect()
    };
    let touched =
        |t: i64| !dups(t).is_empty() || late.iter().any(|e| e.checkout && g.floor(e.ts) == t);
    // What the speed layer's exact measures must say.
    let speed_value = |t: i64, measure: &str| -> Option<f64> {
        let base = wave_truth
            .get(&(Vec::new(), t))
            .and_then(|x| x.value(measure));
        let d = dups(t);
        match measure {
            "events" => Some(base.unwrap_or(0.0) + d.len() as f64),
            "revenue" if !d.is_empty() => Some(base.unwrap_or(0.0) + d.iter().sum::<f64>()),
            _ => base,
        }
    };

    let (mut off, mut clean) = (0, 0);
    for r in &minutes {
        let ctx = format!("{} {} {:?}", format_rfc3339(r.t_ms), r.measure, r);
        let batch = batch_truth
            .get(&(Vec::new(), r.t_ms))
            .and_then(|x| x.value(&r.measure))
            .or((r.measure == "events").then_some(0.0));
        if [
            "events",
            "revenue",
            "min_amount",
            "max_amount",
            "avg_amount",
        ]
        .contains(&r.measure.as_str())
        {
            let mut checks = vec![(r.batch, batch)];
            if r.measure != "avg_amount" {
                checks.push((r.speed, speed_value(r.t_ms, &r.measure)));
            }
            for (got, truth) in checks {
                let ok = match (got, truth) {
                    (Some(a), Some(b)) => close(a, b),
                    (a, b) => a == b,
                };
                assert!(ok, "{ctx}: {got:?} vs truth {truth:?}");
            }
            if touched(r.t_ms) {
                if r.measure == "events" {
                    let diff =
                        (speed_value(r.t_ms, "events").unwrap_or(0.0) - batch.unwrap_or(0.0)).abs();
                    assert_eq!(r.abs_error, Some(diff), "{ctx}");
                    if diff > 0.0 {
                        off += 1;
                    }
                }
            } else {
                assert_eq!(r.rel_error, 0.0, "{ctx}: untouched, exact in both layers");
                if r.measure == "events" {
                    clean += 1;
                }
            }
        } else if r.measure == "buyers" {
            // The distinct count within HyperLogLog's bound where both layers saw the same
            // events (quantiles: the speed layer estimates a closest rank, the batch
            // interpolates, see `accuracy::warnings`; the e2e tests check speed quantiles).
            if !touched(r.t_ms) {
                let n = r.batch.unwrap_or(0.0);
                assert!(
                    r.rel_error * n <= 0.04 * n + 2.0,
                    "{ctx}: outside the sketch's bound"
                );
            }
        }
    }
    assert!(
        off >= 10 && clean >= 10,
        "{off} minutes off, {clean} clean: the scenario must have both"
    );
    Ok(())
}
