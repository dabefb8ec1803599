//! The speed accuracy ledger over a stream with producer duplicates the speed layer does not
//! remove (`dedup_window = "0s"`) and late events it drops (beyond allowed lateness), through
//! the real broker, Redis, archive and batch run: the ledger shows exactly the minutes those
//! events touched, with the errors the ground truth gives, and no error anywhere else.

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
    let mut ends = produce(&topic, &wave, DUP_EVERY, Resend::SamePartition, 2, &[]).await?;

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
    tokio::time::sleep(Duration::from_millis(1500)).await; // every partition idle
    let metrics = BatchMetrics::new();
    let ran = run_once(&config, &store, &metrics, &RunRequest::default()).await;
    for stop in [stop_speed, stop_archive] {
        let _ = stop.send(true);
    }
    speed.await??;
    archive.await??;
    ran?;

    let reader = BatchReader::new(store.clone(), Duration::from_secs(1));
    let manifest = reader
        .manifest("checkouts")
        .await?
        .context("the run landed no manifest")?;
    let horizon = manifest.horizon_ms.context("horizon")?;
    // A run compares what the speed layer has sealed: up to the smaller of the horizon (every
    // partition idle: the newest partition's watermark) and the speed layer's watermark (the
    // oldest partition's), which a minute boundary between the two partitions' last events
    // can set apart.
    let mut con = RedisClient::new(&config.redis)?.connect().await?;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let state = read_view_state(&mut con, &keys, &topic, "checkouts").await?;
    let lateness = config.speed.allowed_lateness.as_millis() as i64;
    let settled_to = horizon.min(state.watermark(lateness).context("speed watermark")?);
    assert!(
        horizon - settled_to < MINUTE_MS,
        "the speed layer applied every record: its watermark is within a minute of the horizon"
    );
    let from = Granularity::Hour.floor(now - 4 * HOUR_MS);
    let rows = reader.ledger(&manifest, from, now).await?;
    let g = Granularity::Minute;
    let minutes: Vec<&LedgerRow> = rows.iter().filter(|r| r.granularity == g).collect();

    // The truth each layer saw: the speed layer the wave (its duplicates twice: `truth`
    // counts an id once, so they are added here) and no late event; the batch every event once.
    let mut all = wave.clone();
    all.extend(late.iter().cloned());
    let wave_truth = truth(&wave, g, &[], &[]);
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

    // Every minute from the range's start to what it settled is in the ledger, once per
    // measure.
    let expected: Vec<i64> = g
        .buckets(from, settled_to)
        .filter(|b| g.end(*b) <= settled_to)
        .collect();
    let events_rows: Vec<&&LedgerRow> = minutes.iter().filter(|r| r.measure == "events").collect();
    let times: Vec<i64> = events_rows.iter().map(|r| r.t_ms).collect();
    assert_eq!(times, expected, "the minutes the run settled");
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
