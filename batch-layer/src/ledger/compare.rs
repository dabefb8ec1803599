//! One chunk of buckets compared: the batch's values of the chunk's buckets read from the
//! version about to land, paired group by group with the speed layer's, and a row per
//! bucket and measure.
//!
//! Each chunk is compared on a task of its own ([`Compare::spawn`]): this step runs after
//! the engine has finished the view's dates and before the version lands, so it is on the
//! run's critical path with every core otherwise idle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tributary_shared::config::AggKind;
use tributary_shared::selection::Selection;
use tributary_shared::series::{Point, Series};
use tributary_shared::{Granularity, ViewPlan};

use crate::manifest::Manifest;
use crate::read::{BatchQuery, BatchReader};

use super::speed::SpeedChunk;
use super::{LedgerError, LedgerRow, error, percentile};

/// What comparing a chunk needs, shared by the chunks' tasks.
pub(super) struct Compare {
    pub(super) reader: BatchReader,
    pub(super) plan: ViewPlan,
    /// The version about to land.
    pub(super) manifest: Manifest,
    /// What is compared: every measure over the finest grouping set, and over no group.
    pub(super) finest: Selection,
    pub(super) totals: Selection,
    pub(super) run_id: String,
    pub(super) settled_ms: i64,
}

/// A chunk's rows and the time its batch reads took.
type Compared = (Vec<LedgerRow>, Duration);

impl Compare {
    /// Compares every chunk, each on a task of its own; the rows in the chunks' order, and
    /// the batch reads' time summed over the tasks. Dropped unfinished: the tasks stop.
    pub(super) async fn spawn(
        self: Arc<Self>,
        chunks: Vec<SpeedChunk>,
    ) -> Result<Compared, LedgerError> {
        let mut tasks = JoinSet::new();
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let this = self.clone();
            tasks.spawn(async move { this.chunk(chunk).await.map(|c| (i, c)) });
        }
        let mut by_chunk: Vec<Vec<LedgerRow>> = vec![Vec::new(); n];
        let mut batch_time = Duration::ZERO;
        while let Some(joined) = tasks.join_next().await {
            let joined = joined.map_err(|e| LedgerError::Task(format!("comparison: {e}")))?;
            let (i, (rows, t)) = joined?;
            batch_time += t;
            if let Some(slot) = by_chunk.get_mut(i) {
                *slot = rows;
            }
        }
        Ok((by_chunk.into_iter().flatten().collect(), batch_time))
    }

    /// One chunk's rows.
    async fn chunk(&self, chunk: SpeedChunk) -> Result<Compared, LedgerError> {
        // Chunks are never empty; an empty one compares nothing.
        let (Some(first), Some(last)) = (chunk.buckets.first(), chunk.buckets.last()) else {
            return Ok((Vec::new(), Duration::ZERO));
        };
        let g = chunk.granularity;
        let t = Instant::now();
        let batch_read = async |selection: &Selection| {
            let q = BatchQuery {
                granularity: g,
                from_ms: *first,
                to_ms: g.end(*last),
                selection: selection.clone(),
            };
            self.reader.read(&self.plan, &self.manifest, &q).await
        };
        let batch_totals = batch_read(&self.totals).await?;
        let batch_groups = batch_read(&self.finest).await?;
        let read_time = t.elapsed();
        let (speed_totals, speed_groups) = &chunk.speed;
        let mut pairs = pair_groups(speed_groups, &batch_groups);
        let mut rows = Vec::with_capacity(chunk.buckets.len() * self.plan.measures.len());
        for &b in &chunk.buckets {
            let groups = pairs.remove(&b).unwrap_or_default();
            self.bucket(g, b, (speed_totals, &batch_totals), &groups, &mut rows);
        }
        Ok((rows, read_time))
    }

    /// One bucket's rows: per measure, the totals compared and the groups' errors.
    fn bucket(
        &self,
        g: Granularity,
        b: i64,
        totals: (&Series, &Series),
        groups: &[PointPair<'_>],
        rows: &mut Vec<LedgerRow>,
    ) {
        let total = |s: &Series, m: &str, agg: AggKind| {
            let v = s
                .get(&Vec::new())
                .and_then(|pts| pts.get(&b))
                .and_then(|p| p.values.get(m).copied().flatten());
            // A bucket without any event counts 0 (it has no other value).
            v.or((agg == AggKind::Count).then_some(0.0))
        };
        for m in &self.plan.measures {
            let speed = total(totals.0, &m.name, m.agg);
            let batch = total(totals.1, &m.name, m.agg);
            let (abs, rel) = error(m.agg, speed, batch);
            let value = |p: Option<&Point>| {
                p.and_then(|p| p.values.get(&m.name).copied().flatten())
                    .or((m.agg == AggKind::Count).then_some(0.0))
            };
            let mut per_group: Vec<f64> = groups
                .iter()
                .map(|(s, b)| error(m.agg, value(*s), value(*b)).1)
                .collect();
            per_group.sort_by(f64::total_cmp);
            rows.push(LedgerRow {
                granularity: g,
                t_ms: b,
                measure: m.name.clone(),
                agg: m.agg,
                speed,
                batch,
                abs_error: abs,
                rel_error: rel,
                groups: per_group.len() as u64,
                group_p99_rel_error: percentile(&per_group, 0.99),
                group_max_rel_error: per_group.last().copied(),
                run_id: self.run_id.clone(),
                settled_ms: self.settled_ms,
            });
        }
    }
}

/// A group's point in one bucket, in the speed layer and in the batch (either may be absent).
type PointPair<'a> = (Option<&'a Point>, Option<&'a Point>);

/// The groups of each bucket with a point in either series, paired: one pass over both, so
/// comparing a bucket does not look every group up once per measure.
fn pair_groups<'a>(speed: &'a Series, batch: &'a Series) -> BTreeMap<i64, Vec<PointPair<'a>>> {
    type ByGroup<'a> = BTreeMap<&'a Vec<Option<String>>, PointPair<'a>>;
    let mut by_bucket: BTreeMap<i64, ByGroup<'a>> = BTreeMap::new();
    for (k, pts) in speed {
        for (b, p) in pts {
            by_bucket.entry(*b).or_default().entry(k).or_default().0 = Some(p);
        }
    }
    for (k, pts) in batch {
        for (b, p) in pts {
            by_bucket.entry(*b).or_default().entry(k).or_default().1 = Some(p);
        }
    }
    by_bucket
        .into_iter()
        .map(|(b, groups)| (b, groups.into_values().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_paired_per_bucket_whichever_side_has_them() {
        let point = |v: f64| Point {
            values: BTreeMap::from([("events".to_string(), Some(v))]),
            exact: true,
        };
        let group = |g: &str| vec![Some(g.to_string())];
        let speed: Series = BTreeMap::from([
            (
                group("a"),
                BTreeMap::from([(0, point(1.0)), (60, point(2.0))]),
            ),
            (group("b"), BTreeMap::from([(0, point(3.0))])),
        ]);
        let batch: Series = BTreeMap::from([
            (group("a"), BTreeMap::from([(0, point(1.0))])),
            (group("c"), BTreeMap::from([(60, point(4.0))])),
        ]);
        let pairs = pair_groups(&speed, &batch);
        let values = |b: i64| -> Vec<(Option<f64>, Option<f64>)> {
            let v = |p: Option<&Point>| p.and_then(|p| p.values["events"]);
            pairs[&b].iter().map(|(s, t)| (v(*s), v(*t))).collect()
        };
        // Bucket 0: a on both sides, b in speed only; bucket 60: a in speed, c in batch.
        assert_eq!(values(0), vec![(Some(1.0), Some(1.0)), (Some(3.0), None)]);
        assert_eq!(values(60), vec![(Some(2.0), None), (None, Some(4.0))]);
        assert_eq!(pairs.len(), 2);
    }
}
