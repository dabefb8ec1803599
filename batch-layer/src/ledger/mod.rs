//! The speed accuracy ledger: for each bucket the batch has settled (it ends at or before the
//! horizon) and the speed layer has sealed and still holds, once, a run records, per
//! granularity, bucket and measure, the speed layer's value of the bucket's total next to the
//! batch's exact one, their absolute and relative error, and over the finest grouping set
//! the p99 and max of the per-group relative error.
//!
//! A bucket the batch settles before the speed layer has sealed it (the batch's horizon is
//! its newest partition's watermark, the speed layer's its oldest's) is compared by a later
//! run: the manifest keeps how far the ledger got (`ledger_to_ms`), and a run whose only news
//! is such buckets lands a version for their ledger rows alone.
//!
//! Written per date of the buckets, `views/<view>/accuracy/date=D/<run-id>.parquet`, named by
//! the manifest (`accuracy`) and kept as long as the view. Best effort: a run whose Redis
//! cannot be read lands its views without the ledger rows (logged), and a later run compares
//! those buckets (the mark did not move) while the speed layer still holds them. A bucket is compared only
//! once the speed layer has sealed it (its watermark is past the bucket), so a speed layer
//! that is merely behind is never recorded as wrong.
//!
//! Two steps: [`read_speed`] reads the speed side, which depends only on the horizon the run
//! will land and on Redis, while the engine computes the view's dates (`speed.rs`);
//! [`Settle::run`] then reads the batch side (the tables the run just wrote, still in memory for
//! the dates within the speed layer's retention; the files otherwise), compares and writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tributary_shared::bucket::date_string;
use tributary_shared::config::AggKind;
use tributary_shared::layout::paths;
use tributary_shared::selection::Selection;
use tributary_shared::{Granularity, ViewPlan};

use crate::manifest::{Manifest, ViewFile};
use crate::metrics::BatchMetrics;
use crate::read::BatchReader;

use compare::Compare;

mod compare;
mod file;
mod speed;

pub use file::{decode, encode};
pub use speed::{SpeedSide, SpeedTask, read_speed};

/// Redis's HyperLogLog (16,384 registers): its standard error, 1.04 / √16384.
pub const HLL_STANDARD_ERROR: f64 = 0.008125;

/// Below this relative difference two sums are equal: the speed layer adds floats in arrival
/// order, the batch rounds the exact sum once; they differ in the last bits only.
const FLOAT_TOLERANCE: f64 = 1e-9;

/// One settled bucket's comparison for one measure.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    pub granularity: Granularity,
    pub t_ms: i64,
    pub measure: String,
    pub agg: AggKind,
    pub speed: Option<f64>,
    pub batch: Option<f64>,
    pub abs_error: Option<f64>,
    /// |speed − batch| / |batch|; 0 when both agree, 1 when one side has no value (or the
    /// batch's is 0) and the other does.
    pub rel_error: f64,
    /// Groups of the finest grouping set compared (with data in either layer).
    pub groups: u64,
    pub group_p99_rel_error: Option<f64>,
    pub group_max_rel_error: Option<f64>,
    pub run_id: String,
    pub settled_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("batch view: {0}")]
    Batch(#[from] crate::read::ReadError),
    #[error("ledger file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("ledger file: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("the speed side's read stopped: {0}")]
    Task(String),
    #[error("ledger file {path}: {what}")]
    Layout { path: String, what: String },
}

/// The stated bound of a sketch measure's estimate (none for the measures speed computes
/// exactly).
pub fn sketch_bound(agg: AggKind) -> Option<f64> {
    match agg {
        AggKind::CountDistinct => Some(HLL_STANDARD_ERROR),
        AggKind::Quantile => Some(tributary_shared::sketch::RELATIVE_ACCURACY),
        _ => None,
    }
}

/// Absolute and relative error of a speed value against the batch's.
pub fn error(agg: AggKind, speed: Option<f64>, batch: Option<f64>) -> (Option<f64>, f64) {
    let (abs, rel) = match (speed, batch) {
        (None, None) => return (None, 0.0),
        (Some(s), Some(b)) => {
            let abs = (s - b).abs();
            let rel = if abs == 0.0 {
                0.0
            } else if b == 0.0 {
                1.0
            } else {
                abs / b.abs()
            };
            (abs, rel)
        }
        (Some(v), None) | (None, Some(v)) => (v.abs(), if v == 0.0 { 0.0 } else { 1.0 }),
    };
    if matches!(agg, AggKind::Sum | AggKind::Avg) && rel < FLOAT_TOLERANCE {
        return (Some(0.0), 0.0);
    }
    (Some(abs), rel)
}

/// The buckets of each granularity a run compares: ending after those compared before
/// (`compared_to`, the manifest's [`Manifest::ledger_from`]; any, on a first run) and at or
/// before the new horizon, sealed by the speed layer (ending at or before its watermark), and
/// still within its retention.
pub fn buckets_to_settle(
    plan: &ViewPlan,
    compared_to: Option<i64>,
    horizon: i64,
    speed_watermark: i64,
    retention_ms: i64,
    now_ms: i64,
) -> Vec<(Granularity, Vec<i64>)> {
    let last_end = horizon.min(speed_watermark);
    let retained_from = now_ms.saturating_sub(retention_ms);
    plan.granularities
        .iter()
        .map(|g| {
            // The first bucket ending after those compared, and after the retention.
            let after = compared_to.unwrap_or(i64::MIN).max(retained_from);
            let mut b = g.floor(after);
            let mut out = Vec::new();
            while g.end(b) <= last_end {
                if g.end(b) > after {
                    out.push(b);
                }
                b = g.end(b);
            }
            (*g, out)
        })
        .collect()
}

/// Every measure over the finest grouping set (every dimension), no filter.
fn finest(plan: &ViewPlan) -> Selection {
    Selection {
        filters: Vec::new(),
        group_by: (0..plan.dimensions.len()).collect(),
        measures: (0..plan.measures.len()).collect(),
    }
}

/// What a view's settlement reads and writes.
pub struct Settle<'a> {
    pub store: &'a Arc<dyn ObjectStore>,
    pub plan: &'a ViewPlan,
    /// The version about to land (its files are written).
    pub manifest: &'a Manifest,
    pub run_id: &'a str,
    pub now_ms: i64,
    pub metrics: &'a BatchMetrics,
    /// View files this run wrote, still in memory, by path: read from here, not the store.
    pub held: Vec<(String, RecordBatch)>,
}

impl Settle<'_> {
    /// Compares the buckets of `speed` (read for the manifest's horizon) with the batch's
    /// values in the version about to land and writes their ledger files; returns them by
    /// date.
    pub async fn run(&self, speed: SpeedSide) -> Result<Vec<(String, ViewFile)>, LedgerError> {
        debug_assert_eq!(self.manifest.horizon_ms, Some(speed.horizon));
        let started = std::time::Instant::now();
        let name = &self.plan.name;
        let reader = BatchReader::new(self.store.clone(), Duration::ZERO);
        for (path, batch) in &self.held {
            reader.hold(path, batch.clone())?;
        }
        let finest = finest(self.plan);
        let compare = Arc::new(Compare {
            reader,
            plan: self.plan.clone(),
            manifest: self.manifest.clone(),
            totals: Selection {
                group_by: Vec::new(),
                ..finest.clone()
            },
            finest,
            run_id: self.run_id.to_string(),
            settled_ms: self.now_ms,
        });
        let (rows, batch_time) = compare.spawn(speed.chunks).await?;
        for m in &self.plan.measures {
            let rels = rows.iter().filter(|r| r.measure == m.name);
            self.metrics
                .relative_errors(name, &m.name, rels.map(|r| r.rel_error));
        }
        let compared = rows.len();
        let wrong: usize = rows
            .iter()
            .filter(|r| sketch_bound(r.agg).is_none() && r.rel_error > 0.0)
            .count();
        let files = self.write(rows).await?;
        // `seconds`: what the ledger added after the dates were computed; the speed side
        // was read during the computation (`speed_wall_seconds`).
        tracing::info!(
            view = %name,
            rows = compared,
            exact_measures_off = wrong,
            files = files.len(),
            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
            speed_wall_seconds = format!("{:.2}", speed.wall_time.as_secs_f64()),
            speed_read_seconds = format!("{:.2}", speed.read_time.as_secs_f64()),
            batch_read_seconds = format!("{:.2}", batch_time.as_secs_f64()),
            "accuracy ledger written"
        );
        Ok(files)
    }

    /// Writes the rows, one file per date of their buckets.
    async fn write(&self, rows: Vec<LedgerRow>) -> Result<Vec<(String, ViewFile)>, LedgerError> {
        let mut by_date: BTreeMap<String, Vec<LedgerRow>> = BTreeMap::new();
        for r in rows {
            by_date.entry(date_string(r.t_ms)).or_default().push(r);
        }
        let mut out = Vec::new();
        for (date, rows) in by_date {
            let bytes = encode(&rows)?;
            let path = paths::accuracy_file(&self.plan.name, &date, self.run_id);
            let size = bytes.len() as u64;
            self.store.put(&path, PutPayload::from(bytes)).await?;
            out.push((
                date,
                ViewFile {
                    path: path.to_string(),
                    rows: rows.len() as u64,
                    bytes: size,
                },
            ));
        }
        Ok(out)
    }
}

/// The value at rank `q` (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_relative_to_the_batch_and_float_noise_is_not_an_error() {
        assert_eq!(error(AggKind::Count, Some(118.0), Some(120.0)).0, Some(2.0));
        let (_, rel) = error(AggKind::Count, Some(118.0), Some(120.0));
        assert!((rel - 2.0 / 120.0).abs() < 1e-12);
        assert_eq!(
            error(AggKind::Count, Some(0.0), Some(0.0)),
            (Some(0.0), 0.0)
        );
        assert_eq!(
            error(AggKind::Count, Some(3.0), Some(0.0)),
            (Some(3.0), 1.0)
        );
        assert_eq!(error(AggKind::Min, None, Some(2.5)), (Some(2.5), 1.0));
        assert_eq!(error(AggKind::Min, None, None), (None, 0.0));
        assert_eq!(
            error(AggKind::Sum, Some(0.1 + 0.2), Some(0.3)),
            (Some(0.0), 0.0)
        );
        assert!(error(AggKind::Count, Some(0.1 + 0.2), Some(0.3)).1 > 0.0);
    }

    #[test]
    fn a_bucket_the_speed_layer_had_not_sealed_is_compared_by_the_next_run() {
        use tributary_shared::bucket::{HOUR_MS, MINUTE_MS};
        let plan = ViewPlan {
            name: "v".into(),
            filters: Vec::new(),
            dimensions: Vec::new(),
            granularities: vec![Granularity::Minute, Granularity::Hour],
            measures: Vec::new(),
        };
        let at = |h: i64, m: i64| 100 * 24 * HOUR_MS + h * HOUR_MS + m * MINUTE_MS;
        let day = 24 * HOUR_MS;
        // The horizon is at 12:00, the speed layer sealed up to 11:45: the ledger stops there.
        let first = buckets_to_settle(
            &plan,
            Some(at(10, 30)),
            at(12, 0),
            at(11, 45),
            day,
            at(12, 0),
        );
        assert_eq!(
            first[0].1,
            (0..75).map(|i| at(10, 30 + i)).collect::<Vec<_>>()
        );
        assert_eq!(first[1].1, vec![at(10, 0)]);
        // The next run (same horizon, the speed layer now past it) takes up from 11:45.
        let next = buckets_to_settle(
            &plan,
            Some(at(11, 45)),
            at(12, 0),
            at(12, 10),
            day,
            at(12, 5),
        );
        assert_eq!(next[0].1, (45..60).map(|m| at(11, m)).collect::<Vec<_>>());
        assert_eq!(next[1].1, vec![at(11, 0)]);
        // Buckets past the speed layer's retention are not compared.
        let old = buckets_to_settle(&plan, None, at(12, 0), at(12, 0), HOUR_MS, at(12, 0));
        assert_eq!(old[0].1.len(), 60);
        assert_eq!(
            old[1].1,
            vec![at(11, 0)],
            "not the hour ending at its start"
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), Some(198.0));
        assert_eq!(percentile(&[0.5], 0.99), Some(0.5));
        assert_eq!(percentile(&[], 0.99), None);
    }
}
