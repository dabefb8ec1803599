//! `GET /v1/views/{view}/accuracy`: the speed accuracy ledger (how far the speed layer's
//! values were from the batch's exact ones, per settled bucket and measure), with a summary
//! per measure; and the `/v1/status` warnings drawn from it.

use std::collections::BTreeMap;

use serde::Serialize;
use tributary_batch_layer::ledger::{LedgerRow, percentile, sketch_bound};
use tributary_batch_layer::read::Manifest;
use tributary_shared::Granularity;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::view::ViewPlan;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::query::AccuracyParams;
use crate::sources::Sources;

/// One measure of one settled bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeasureAccuracy {
    /// The speed layer's value of the bucket's total when the batch settled it.
    pub speed: Option<f64>,
    /// The batch's exact value.
    pub batch: Option<f64>,
    pub abs_error: Option<f64>,
    /// |speed − batch| / |batch| (0 when equal; 1 when one side has no value or batch is 0).
    pub rel_error: f64,
    /// Over the finest grouping set (every dimension grouped): p99 and max of the per-group
    /// relative error.
    pub group_p99_rel_error: Option<f64>,
    pub group_max_rel_error: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccuracyBucket {
    pub t: String,
    pub settled_at: String,
    pub run_id: String,
    pub measures: BTreeMap<String, MeasureAccuracy>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccuracySummary {
    /// Buckets compared.
    pub buckets: usize,
    pub mean_rel_error: Option<f64>,
    pub p99_rel_error: Option<f64>,
    pub max_rel_error: Option<f64>,
    /// Sketch measures: the sketch's stated bound (HyperLogLog's standard error, the quantile
    /// sketch's relative accuracy) and the share of buckets within it; null for the measures
    /// speed computes exactly.
    pub bound: Option<f64>,
    pub within_bound_share: Option<f64>,
    /// Buckets with any error (exact measures) or outside 3× the bound (sketch measures).
    pub buckets_off: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccuracyResponse {
    pub view: String,
    pub granularity: String,
    pub from: String,
    pub to: String,
    pub buckets: Vec<AccuracyBucket>,
    pub summary: BTreeMap<String, AccuracySummary>,
}

/// Whether a row is "off": any error for a measure speed computes exactly, beyond 3× the
/// bound for a sketch.
pub fn off(row: &LedgerRow) -> bool {
    match sketch_bound(row.agg) {
        Some(bound) => row.rel_error > 3.0 * bound,
        None => row.rel_error > 0.0,
    }
}

pub fn summarize(rows: &[&LedgerRow]) -> AccuracySummary {
    let mut rel: Vec<f64> = rows.iter().map(|r| r.rel_error).collect();
    rel.sort_by(f64::total_cmp);
    let bound = rows.first().and_then(|r| sketch_bound(r.agg));
    let n = rel.len();
    AccuracySummary {
        buckets: n,
        mean_rel_error: (n > 0).then(|| rel.iter().sum::<f64>() / n as f64),
        p99_rel_error: percentile(&rel, 0.99),
        max_rel_error: rel.last().copied(),
        bound,
        within_bound_share: bound
            .filter(|_| n > 0)
            .map(|b| rel.iter().filter(|e| **e <= b).count() as f64 / n as f64),
        buckets_off: rows.iter().filter(|r| off(r)).count(),
    }
}

pub async fn accuracy(
    src: &Sources,
    view: &ViewPlan,
    p: &AccuracyParams,
) -> Result<AccuracyResponse, ApiError> {
    let rows = match src.batch.manifest(&view.name).await {
        Ok(Some(m)) => src
            .batch
            .ledger(&m, p.from_ms, p.to_ms)
            .await
            .map_err(|e| ApiError::internal(format!("accuracy ledger unreadable: {e}")))?,
        Ok(None) => Vec::new(),
        Err(e) => return Err(ApiError::internal(format!("batch view unreadable: {e}"))),
    };
    let names: Vec<&str> = p
        .measures
        .iter()
        .filter_map(|m| view.measures.get(*m))
        .map(|m| m.name.as_str())
        .collect();
    let rows: Vec<&LedgerRow> = rows
        .iter()
        .filter(|r| r.granularity == p.granularity && names.contains(&r.measure.as_str()))
        .collect();
    let mut buckets: BTreeMap<i64, AccuracyBucket> = BTreeMap::new();
    let mut per_measure: BTreeMap<String, Vec<&LedgerRow>> = BTreeMap::new();
    for r in &rows {
        let b = buckets.entry(r.t_ms).or_insert_with(|| AccuracyBucket {
            t: format_rfc3339(r.t_ms),
            settled_at: format_rfc3339(r.settled_ms),
            run_id: r.run_id.clone(),
            measures: BTreeMap::new(),
        });
        b.measures.insert(
            r.measure.clone(),
            MeasureAccuracy {
                speed: r.speed,
                batch: r.batch,
                abs_error: r.abs_error,
                rel_error: r.rel_error,
                group_p99_rel_error: r.group_p99_rel_error,
                group_max_rel_error: r.group_max_rel_error,
            },
        );
        per_measure.entry(r.measure.clone()).or_default().push(r);
    }
    Ok(AccuracyResponse {
        view: view.name.clone(),
        granularity: p.granularity.to_string(),
        from: format_rfc3339(p.from_ms),
        to: format_rfc3339(p.to_ms),
        buckets: buckets.into_values().collect(),
        summary: per_measure
            .iter()
            .map(|(m, rs)| (m.clone(), summarize(rs)))
            .collect(),
    })
}

/// Bucket names listed in a warning at most.
const NAMED: usize = 3;

/// A value as an operator reads it: at most 6 decimals, no float noise.
fn number(v: Option<f64>) -> String {
    match v {
        None => "none".into(),
        Some(v) => {
            let s = format!("{v:.6}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    }
}

/// `/v1/status` warnings from the ledger of the view's two newest settled dates: a measure
/// speed computes exactly that shows any error (events lost, doubled or late: the first
/// buckets are named), a sketch measure outside 3× its bound in more than 1 % of its buckets.
pub async fn warnings(src: &Sources, view: &ViewPlan, manifest: &Manifest) -> Vec<String> {
    let Some(newest) = manifest.accuracy.keys().next_back() else {
        return Vec::new();
    };
    let Some(day) = tributary_shared::bucket::parse_date(newest) else {
        return Vec::new();
    };
    let day_ms = tributary_shared::bucket::DAY_MS;
    let rows = match src.batch.ledger(manifest, day - day_ms, day + day_ms).await {
        Ok(r) => r,
        Err(e) => {
            return vec![format!(
                "view {}: accuracy ledger unreadable: {e}",
                view.name
            )];
        }
    };
    let mut per_measure: BTreeMap<&str, Vec<&LedgerRow>> = BTreeMap::new();
    for r in &rows {
        per_measure.entry(r.measure.as_str()).or_default().push(r);
    }
    // One warning per measure, whatever the granularities it shows at.
    let mut out = Vec::new();
    for (measure, rs) in per_measure {
        let Some(first) = rs.first() else { continue };
        let agg = first.agg.as_str();
        match sketch_bound(first.agg) {
            None => {
                let mut wrong: Vec<&&LedgerRow> = rs.iter().filter(|r| off(r)).collect();
                if wrong.is_empty() {
                    continue;
                }
                // Coarsest granularity first, then time.
                wrong.sort_by_key(|r| (std::cmp::Reverse(r.granularity), r.t_ms));
                let mut per_g: BTreeMap<std::cmp::Reverse<Granularity>, usize> = BTreeMap::new();
                for r in &wrong {
                    *per_g.entry(std::cmp::Reverse(r.granularity)).or_default() += 1;
                }
                let counts: Vec<String> =
                    per_g.iter().map(|(g, n)| format!("{n} {}", g.0)).collect();
                let named: Vec<String> = wrong
                    .iter()
                    .take(NAMED)
                    .map(|r| {
                        format!(
                            "{} {} (speed {}, batch {})",
                            r.granularity,
                            format_rfc3339(r.t_ms),
                            number(r.speed),
                            number(r.batch)
                        )
                    })
                    .collect();
                out.push(format!(
                    "view {}: {measure} ({agg}) differed between speed and batch in {} settled bucket(s), e.g. {}; events were lost, doubled or late in the speed path (docs/runbooks/accuracy-ledger.md)",
                    view.name,
                    counts.join(" and "),
                    named.join(", ")
                ));
            }
            Some(bound) => {
                // Judged at the coarsest granularity with data: a quantile's bound is about
                // the value at its rank (the speed layer estimates the lower closest rank
                // within 1 %), while the batch's exact value interpolates between the two
                // closest ranks, which in a bucket of few values differ by far more than 1 %
                // without any error anywhere.
                let Some(g) = rs
                    .iter()
                    .filter(|r| r.batch.is_some_and(|b| b != 0.0))
                    .map(|r| r.granularity)
                    .max()
                else {
                    continue;
                };
                // Buckets without data in the batch say nothing about a sketch.
                let judged: Vec<&&LedgerRow> = rs
                    .iter()
                    .filter(|r| r.granularity == g && r.batch.is_some_and(|b| b != 0.0))
                    .collect();
                let wrong = judged.iter().filter(|r| off(r)).count();
                if wrong as f64 > 0.01 * judged.len() as f64 {
                    out.push(format!(
                        "view {}: {measure} ({agg}) was outside 3x its sketch bound ({:.2} %) in {wrong} of {} settled {g} buckets (docs/runbooks/accuracy-ledger.md)",
                        view.name,
                        bound * 100.0,
                        judged.len()
                    ));
                }
            }
        }
    }
    out
}
