//! The speed layer against the real stack (Tansu + Redis): exact aggregates against a ground
//! truth, the DLQ, late events, sketch accuracy, crashes mid-flush and a rebalance.
//!
//! One module per seam: exact totals (`exact`), input the layer refuses (`rejected`) and the
//! sketches (`sketches`); what they share is here.

mod exact;
mod rejected;
mod sketches;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tributary_it::scenario::{Ev, VIEWS, exact_events, truth};
use tributary_it::{hgetall, now_ms, redis};
use tributary_shared::bucket::MINUTE_MS;
use tributary_shared::layout::{RedisKeys, encode_group};
use tributary_shared::{Config, Granularity};

/// Settings for one test, with the scenario's fields and views.
fn speed_section(lateness: &str, extra: &str) -> String {
    format!(
        "[speed]\nallowed_lateness = \"{lateness}\"\nflush_interval = \"100ms\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n{VIEWS}"
    )
}

/// `n` events of [`exact_events`] over the 40 minutes up to 10 minutes ago, evenly spaced.
fn recent_events(seed: u64, n: u64) -> Vec<Ev> {
    exact_events(seed, n, now_ms() - 50 * MINUTE_MS, 40 * MINUTE_MS)
}

/// The additive aggregates of one (bucket, encoded group) cell of the `checkouts` view.
#[derive(Debug, Default, Clone, PartialEq)]
struct Cell {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// The cells the speed layer must hold for `events` at granularity `g` (from the shared
/// ground truth, keyed as Redis keys them).
fn ground_truth(events: &[Ev], g: Granularity) -> anyhow::Result<BTreeMap<(i64, String), Cell>> {
    truth(events, g, &[0, 1], &[])
        .into_iter()
        .map(|((dims, bucket), t)| {
            let cell = Cell {
                count: t.count,
                sum: t.value("revenue").context("a checkout without an amount")?,
                min: t.value("min_amount").context("min")?,
                max: t.value("max_amount").context("max")?,
            };
            Ok(((bucket, encode_group(&dims)), cell))
        })
        .collect()
}

/// Reads back what Redis holds for the view at granularity `g`, over `buckets` and every
/// group the groups sets list.
async fn read_back(
    keys: &RedisKeys,
    g: Granularity,
    buckets: &BTreeSet<i64>,
) -> anyhow::Result<BTreeMap<(i64, String), Cell>> {
    let mut con = redis().await?;
    let mut out = BTreeMap::new();
    for b in buckets {
        let groups: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.groups("checkouts", g, *b))
            .query_async(&mut con)
            .await?;
        for group in groups {
            let h = hgetall(&mut con, &keys.aggregates("checkouts", g, *b, &group)).await?;
            let num = |f: &str| -> anyhow::Result<f64> {
                h.get(f)
                    .with_context(|| format!("{f} missing in bucket {b} group {group}"))?
                    .parse::<f64>()
                    .context("number")
            };
            let count = num("count")? as u64;
            assert_eq!(
                num("n:amount")? as u64,
                count,
                "every checkout has an amount"
            );
            out.insert(
                (*b, group.clone()),
                Cell {
                    count,
                    sum: num("sum:amount")?,
                    min: num("min:amount")?,
                    max: num("max:amount")?,
                },
            );
        }
    }
    Ok(out)
}

/// Reads back the cells of `want`'s buckets and checks them equal to `want`, bit for bit.
async fn check_against_truth(
    keys: &RedisKeys,
    g: Granularity,
    want: &BTreeMap<(i64, String), Cell>,
    what: &str,
) -> anyhow::Result<()> {
    let buckets: BTreeSet<i64> = want.keys().map(|(b, _)| *b).collect();
    let got = read_back(keys, g, &buckets).await?;
    assert_matches_truth(&got, want, what);
    Ok(())
}

fn assert_matches_truth(
    got: &BTreeMap<(i64, String), Cell>,
    want: &BTreeMap<(i64, String), Cell>,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: the same (bucket, group) cells"
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.count, w.count, "{what}: count of {k:?}");
        assert_eq!(g.sum, w.sum, "{what}: sum of {k:?}");
        assert_eq!(g.min, w.min, "{what}: min of {k:?}");
        assert_eq!(g.max, w.max, "{what}: max of {k:?}");
    }
}

/// Runs the speed layer in this process until the returned sender says stop.
fn start(config: Config) -> (watch::Sender<bool>, JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(tributary_speed_layer::run(config, rx));
    (tx, handle)
}

async fn stop(
    tx: watch::Sender<bool>,
    handle: JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tx.send(true).ok();
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .context("speed layer did not stop within 20 s")??
}
