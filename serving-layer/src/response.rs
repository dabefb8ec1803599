//! The JSON answers of `series` and `top` (and their OpenAPI schemas).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::points::RenderedPoint;

/// A point of a series (the schema of [`RenderedPoint`]).
#[allow(dead_code)]
#[derive(Debug, Serialize, ToSchema)]
pub struct PointOut {
    /// Bucket start (RFC 3339, UTC).
    pub t: String,
    /// `batch`, `speed`, `missing` (neither layer holds it; with `as_of`: after that
    /// version's horizon), `pending` (`exact=true`: not settled by the batch yet),
    /// `rebuilding` (the speed layer is rebuilding the view from Kafka after Redis lost it)
    /// or `unreadable` (its layer could not be read; see `errors`). Only `batch` and `speed`
    /// points have values.
    #[schema(value_type = String, pattern = "^(batch|speed|missing|pending|rebuilding|unreadable)$")]
    pub source: &'static str,
    /// False for sketch-based values (speed distinct counts and quantiles, merged batch rows).
    pub exact: bool,
    pub values: BTreeMap<String, Option<f64>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSeries {
    /// The `group_by` dimensions' values (null: events without the field).
    pub group: BTreeMap<String, Option<String>>,
    #[schema(value_type = Vec<PointOut>)]
    pub points: Vec<RenderedPoint>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct SourceCounts {
    pub batch: usize,
    pub speed: usize,
    pub missing: usize,
    pub pending: usize,
    pub rebuilding: usize,
    pub unreadable: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesResponse {
    pub view: String,
    pub granularity: String,
    pub from: String,
    pub to: String,
    /// Whether the query asked for exact answers only (`exact=true`).
    pub exact: bool,
    /// The `as_of` instant the answer is for (absent: now, with the speed layer).
    pub as_of: Option<String>,
    /// The batch manifest version that answered (absent before the first batch run, or
    /// before the first version at `as_of`).
    pub manifest_version: Option<u64>,
    /// Buckets ending at or before it come from the batch view.
    pub batch_horizon: Option<String>,
    /// The view's speed watermark (minimum over every partition of the topic): speed buckets
    /// ending at or before it are final.
    pub speed_watermark: Option<String>,
    pub series: Vec<GroupSeries>,
    /// Bucket counts by source.
    pub buckets: SourceCounts,
    /// Buckets neither layer holds.
    pub missing: Vec<String>,
    /// `exact=true`: buckets the batch has not settled yet (no values).
    pub pending: Vec<String>,
    /// Speed buckets not served while the speed layer rebuilds the view from Kafka.
    pub rebuilding: Vec<String>,
    /// Buckets whose layer could not be read (e.g. Redis down).
    pub unreadable: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopRow {
    /// The dimension's value (null: events without the field).
    pub value: Option<String>,
    pub measure_value: Option<f64>,
    pub exact: bool,
    /// `batch`, `speed` or `batch+speed`.
    pub source: String,
}

/// A range of buckets: `from` (start of the first) to `to` (end of the last, exclusive).
#[derive(Debug, Serialize, ToSchema)]
pub struct Covered {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopResponse {
    pub view: String,
    pub dimension: String,
    pub measure: String,
    pub from: String,
    pub to: String,
    /// The granularity the range was read at (the coarsest one both ends align to).
    pub granularity: String,
    pub exact: bool,
    pub as_of: Option<String>,
    pub manifest_version: Option<u64>,
    pub batch_horizon: Option<String>,
    /// The part of the range the rows cover: all of it, or with `exact=true` or `as_of`
    /// the settled buckets only (absent: none settled).
    pub covered: Option<Covered>,
    pub rows: Vec<TopRow>,
    pub missing: Vec<String>,
    /// `exact=true`: buckets left out as not settled by the batch yet.
    pub pending: Vec<String>,
    /// Speed buckets left out while the speed layer rebuilds the view.
    pub rebuilding: Vec<String>,
    pub unreadable: Vec<String>,
    pub errors: Vec<String>,
}

impl SeriesResponse {
    /// About the bytes of its JSON: the rendered points plus a little per group and bucket.
    fn size_hint(&self) -> usize {
        let points: usize = self
            .series
            .iter()
            .map(|g| 64 + g.points.iter().map(|p| p.len() + 1).sum::<usize>())
            .sum();
        let buckets =
            self.missing.len() + self.pending.len() + self.rebuilding.len() + self.unreadable.len();
        512 + points + 32 * buckets
    }
}

impl SeriesResponse {
    /// Its JSON, serialized into a buffer of about its size at once (axum's `Json` grows its
    /// buffer from 128 bytes: profiled, the copies of a ~30 KB answer while it grew were ~8 %
    /// of a request's CPU).
    pub fn to_json(&self) -> Result<Vec<u8>, crate::error::ApiError> {
        let mut body = Vec::with_capacity(self.size_hint());
        serde_json::to_writer(&mut body, self).map_err(|e| {
            crate::error::ApiError::internal(format!("serializing the answer: {e}"))
        })?;
        Ok(body)
    }
}
