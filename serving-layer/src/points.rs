//! Rendered points and their cache.
//!
//! A dashboard asks the same question again and again, and most of the answer cannot change:
//! a batch bucket is fixed for a manifest version, a sealed speed bucket for a view's epoch.
//! Their points are kept already serialized, per query shape and bucket, in a cache bounded
//! by bytes (and entries expire, so a `speed-layer reset` is seen even without a new epoch).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::ApiError;

/// A point already serialized to its JSON: a cached bucket's points are rendered once and
/// then copied into every response that shows them.
#[derive(Debug, Clone)]
pub struct RenderedPoint(Arc<serde_json::value::RawValue>);

impl Serialize for RenderedPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// What is serialized: `{"t", "source", "exact", "values"}`.
#[derive(Serialize)]
struct PointOutRef<'a> {
    t: &'a str,
    source: &'static str,
    exact: bool,
    values: &'a BTreeMap<String, Option<f64>>,
}

impl RenderedPoint {
    pub fn new(
        t: &str,
        source: &'static str,
        exact: bool,
        values: &BTreeMap<String, Option<f64>>,
    ) -> Result<RenderedPoint, ApiError> {
        let point = PointOutRef {
            t,
            source,
            exact,
            values,
        };
        serde_json::value::to_raw_value(&point)
            .map(|raw| RenderedPoint(raw.into()))
            .map_err(|e| ApiError::internal(format!("rendering a point: {e}")))
    }

    /// Bytes of its JSON.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One bucket's points per output group.
pub type CachedPoints = Arc<Vec<(Vec<Option<String>>, RenderedPoint)>>;

/// A batch answer over a run of buckets, assembled per output group: each group's points in
/// bucket order. What a dashboard polling the same chart needs every time, so it is kept whole
/// (profiled: regrouping the per-bucket entries on every request was most of a request's CPU).
pub type BatchPart = BTreeMap<Vec<Option<String>>, Vec<(i64, RenderedPoint)>>;

/// Rendered points of buckets whose answer can no longer change, keyed by query shape (view,
/// granularity, filters, group-by, measures, and the source's version: a batch manifest
/// version, or the speed epoch for sealed buckets) and bucket start; and assembled batch
/// parts, keyed by shape and their first and last bucket.
pub struct PointCache {
    cache: moka::sync::Cache<(Arc<str>, i64), CachedPoints>,
    parts: moka::sync::Cache<(Arc<str>, i64, i64), Arc<BatchPart>>,
}

/// Approximate memory of one entry: the rendered JSON, the group labels, and bookkeeping.
fn weight(key: &(Arc<str>, i64), points: &CachedPoints) -> u32 {
    let bytes: usize = points
        .iter()
        .map(|(group, point)| 64 + point.len() + group_weight(group))
        .sum();
    (bytes + key.0.len() + 96).min(u32::MAX as usize) as u32
}

/// Approximate memory of a group's labels.
fn group_weight(group: &[Option<String>]) -> usize {
    group
        .iter()
        .map(|v| 24 + v.as_ref().map_or(0, String::len))
        .sum()
}

/// Approximate memory of an assembled part (as [`weight`]).
fn part_weight(key: &(Arc<str>, i64, i64), part: &Arc<BatchPart>) -> u32 {
    let bytes: usize = part
        .iter()
        .map(|(group, points)| {
            64 + group_weight(group) + points.iter().map(|(_, p)| 32 + p.len()).sum::<usize>()
        })
        .sum();
    (bytes + key.0.len() + 96).min(u32::MAX as usize) as u32
}

impl PointCache {
    /// `max_bytes` bounds both: half for the per-bucket entries, half for assembled parts.
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        PointCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes / 2)
                .weigher(weight)
                .time_to_live(ttl)
                .build(),
            parts: moka::sync::Cache::builder()
                .max_capacity(max_bytes / 2)
                .weigher(part_weight)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The assembled batch part of `first..=last` for one query shape.
    pub fn part(&self, shape: &str, first: i64, last: i64) -> Option<Arc<BatchPart>> {
        self.parts.get(&(shape.into(), first, last))
    }

    pub fn put_part(&self, shape: &str, first: i64, last: i64, part: Arc<BatchPart>) {
        self.parts.insert((shape.into(), first, last), part);
    }

    /// The cached entries of `buckets` for one query shape.
    pub fn get_many(&self, shape: &str, buckets: &[i64]) -> Vec<Option<CachedPoints>> {
        let shape: Arc<str> = shape.into();
        buckets
            .iter()
            .map(|b| self.cache.get(&(shape.clone(), *b)))
            .collect()
    }

    pub fn put_many(&self, shape: &str, entries: Vec<(i64, CachedPoints)>) {
        let shape: Arc<str> = shape.into();
        for (b, points) in entries {
            self.cache.insert((shape.clone(), b), points);
        }
    }

    /// Bytes held (approximate; the caches settle their accounting lazily).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.parts.run_pending_tasks();
        self.cache.weighted_size() + self.parts.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_in_bytes_not_entries() {
        let cache = PointCache::new(Duration::from_secs(60), 64 * 1024);
        let values: BTreeMap<String, Option<f64>> =
            [("events".to_string(), Some(1.0))].into_iter().collect();
        let big: CachedPoints = Arc::new(
            (0..100)
                .map(|i| {
                    (
                        vec![Some(format!("group-{i}"))],
                        RenderedPoint::new("2026-11-21T10:00:00Z", "batch", true, &values)
                            .unwrap_or_else(|e| panic!("{}", e.message)),
                    )
                })
                .collect(),
        );
        for b in 0..200 {
            cache.put_many("shape", vec![(b, big.clone())]);
        }
        let held = cache.weighted_size();
        assert!(held <= 64 * 1024, "held {held} bytes");
        assert!(held > 0);
        let hits = cache
            .get_many("shape", &(0..200).collect::<Vec<_>>())
            .into_iter()
            .flatten()
            .count();
        assert!(
            hits < 200,
            "entries were evicted to stay within the bound ({hits})"
        );
    }
}
