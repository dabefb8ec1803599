//! A date whose rows do not fit `batch.memory_limit`: computed by spilling, equal to the
//! ground truth and, file for file, to the run without a limit; a budget too small for even
//! that fails the view naming `batch.memory_limit`, and the previous manifest stays.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_batch_layer::report::load_report;
use tributary_it::master::{DaySpec, write_day};
use tributary_it::*;
use tributary_shared::bucket::{DAY_MS, HOUR_MS, date_string};
use tributary_shared::layout::paths;

use super::{assert_same_contents, view_contents};

/// The shipped example's `checkouts` view over a store; `extra` env-style overrides.
pub fn config_on(url: &str, extra: &[(&str, String)]) -> anyhow::Result<tributary_shared::Config> {
    let mut overrides = vec![
        ("STORE__URL", url.to_string()),
        ("BATCH__IDLE_TIMEOUT", "1s".to_string()),
        ("BATCH__METRICS_LISTEN", "127.0.0.1:0".to_string()),
    ];
    overrides.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    example_config(&overrides)
}

/// One checkout as the truth sees it.
struct Row {
    hour: i64,
    country: Option<String>,
    amount: Option<f64>,
    user: Option<String>,
}

/// The checkouts of the master dataset, one per event id.
async fn master_checkouts(store: &Arc<dyn ObjectStore>, topic: &str) -> anyhow::Result<Vec<Row>> {
    let files: Vec<_> = store
        .list(Some(&paths::master_root(topic)))
        .try_collect()
        .await?;
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for f in files {
        if paths::parse_master_file(topic, &f.location).is_none() {
            continue;
        }
        let bytes = store.get(&f.location).await?.bytes().await?;
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
            let b: RecordBatch = batch?;
            let col = |n: &str| b.column_by_name(n).with_context(|| format!("column {n}"));
            let ids = col("event_id")?.as_string::<i32>().clone();
            let types = col("type")?.as_string::<i32>().clone();
            let times = col("event_time")?
                .as_primitive::<TimestampMillisecondType>()
                .clone();
            let country = col("country")?.as_string::<i32>().clone();
            let amount = col("amount")?.as_primitive::<Float64Type>().clone();
            let user = col("user_id")?.as_string::<i32>().clone();
            for i in 0..b.num_rows() {
                if types.value(i) != "checkout" || !seen.insert(ids.value(i).to_string()) {
                    continue;
                }
                let opt =
                    |a: &arrow::array::StringArray| a.is_valid(i).then(|| a.value(i).to_string());
                rows.push(Row {
                    hour: times.value(i).div_euclid(HOUR_MS) * HOUR_MS,
                    country: opt(&country),
                    amount: amount.is_valid(i).then(|| amount.value(i)),
                    user: opt(&user),
                });
            }
        }
    }
    Ok(rows)
}

/// Checks the hour files' totals and per-country counts against the truth; returns the
/// buckets checked.
fn check_hours(
    truth: &[Row],
    files: &BTreeMap<(String, String), Vec<RecordBatch>>,
    date: &str,
) -> anyhow::Result<usize> {
    // hour → (count, sum, max, users); (hour, country) → count.
    let mut totals: HashMap<i64, (i64, f64, f64, HashSet<&str>)> = HashMap::new();
    let mut by_country: HashMap<(i64, Option<&str>), i64> = HashMap::new();
    for r in truth {
        let t = totals
            .entry(r.hour)
            .or_insert((0, 0.0, f64::NEG_INFINITY, HashSet::new()));
        t.0 += 1;
        if let Some(a) = r.amount {
            t.1 += a;
            t.2 = t.2.max(a);
        }
        if let Some(u) = &r.user {
            t.3.insert(u);
        }
        *by_country
            .entry((r.hour, r.country.as_deref()))
            .or_default() += 1;
    }
    let batches = files
        .get(&(date.to_string(), "hour".to_string()))
        .context("hour file")?;
    let mut checked = 0;
    for b in batches {
        let col = |n: &str| b.column_by_name(n).with_context(|| format!("column {n}"));
        let t = col("t")?.as_primitive::<Int64Type>().clone();
        let gset = col("gset")?.as_primitive::<Int32Type>().clone();
        let country = col("dim:country")?.as_string::<i32>().clone();
        let events = col("m:events")?.as_primitive::<Int64Type>().clone();
        let revenue = col("m:revenue")?.as_primitive::<Float64Type>().clone();
        let max = col("m:max_amount")?.as_primitive::<Float64Type>().clone();
        let buyers = col("m:buyers")?.as_primitive::<Int64Type>().clone();
        for i in 0..b.num_rows() {
            match gset.value(i) {
                0 => {
                    let (n, sum, top, users) = &totals[&t.value(i)];
                    assert_eq!(events.value(i), *n, "events at {}", t.value(i));
                    assert!(
                        (revenue.value(i) - sum).abs() <= 1e-6 * sum.abs().max(1.0),
                        "revenue at {}: {} vs {sum}",
                        t.value(i),
                        revenue.value(i)
                    );
                    assert_eq!(max.value(i), *top, "max_amount at {}", t.value(i));
                    assert_eq!(buyers.value(i), users.len() as i64, "buyers");
                    checked += 1;
                }
                1 => {
                    let c = country.is_valid(i).then(|| country.value(i));
                    assert_eq!(
                        events.value(i),
                        by_country[&(t.value(i), c)],
                        "events at {} in {c:?}",
                        t.value(i)
                    );
                    checked += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        checked,
        totals.len() + by_country.len(),
        "every hour and country"
    );
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_larger_than_the_memory_limit_is_computed_exactly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spill = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().display());
    let day = (now_ms() / DAY_MS - 2) * DAY_MS;
    let date = date_string(day);
    let limited = config_on(
        &url,
        &[
            ("BATCH__MEMORY_LIMIT", "64MiB".to_string()),
            ("BATCH__SPILL_DIR", spill.path().display().to_string()),
        ],
    )?;
    let store = open(&limited.store)?;
    let topic = limited.source.topic.clone();
    // 1.5M events with 1% resent, 300k of them the view's checkouts: their deduplication and
    // exact states hold far more than 64 MiB (it spills ~1.7 GB of sorted runs on the way).
    let rows = write_day(
        &store,
        &limited,
        &topic,
        &DaySpec {
            day_ms: day,
            events: 1_500_000,
            partitions: 4,
            seed: 7,
        },
    )
    .await?;
    assert!(rows > 1_480_000, "{rows} rows written");

    let (code, out) = batch_cli(&limited, &["run"]).await?;
    assert_eq!(code, 0, "batch-layer run within 64MiB: {out}");
    // It did not fit: the run spilled, and says so.
    let report = load_report(&store).await?.context("last_run.json")?;
    let spilled = report.views["checkouts"].spilled_bytes;
    assert!(spilled > 64 << 20, "spilled {spilled} bytes within 64MiB");
    let (m1, small) = view_contents(&store, "checkouts").await?;
    let truth = master_checkouts(&store, &topic).await?;
    assert!(truth.len() > 10_000, "{} checkouts", truth.len());
    let checked = check_hours(&truth, &small, &date)?;
    assert!(checked > 24, "{checked} buckets checked");
    assert_eq!(
        m1.dates[&date].events,
        truth.len() as u64,
        "the manifest's deduplicated events"
    );

    // The same date without a limit: the very same files' contents.
    let unlimited = config_on(&url, &[])?;
    let (code, out) = batch_cli(
        &unlimited,
        &[
            "backfill",
            "--from",
            &date,
            "--to",
            &date_string(day + DAY_MS),
        ],
    )
    .await?;
    assert_eq!(code, 0, "unlimited backfill: {out}");
    let report = load_report(&store).await?.context("last_run.json")?;
    assert_eq!(
        report.views["checkouts"].spilled_bytes, 0,
        "unlimited: no spill"
    );
    let (m2, big) = view_contents(&store, "checkouts").await?;
    assert_eq!(m2.version, m1.version + 1);
    let compared = assert_same_contents(&small, &big, "64MiB vs unlimited")?;
    assert!(compared > 1000, "{compared} rows compared");
    Ok(())
}
