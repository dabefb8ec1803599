//! A read's distinct counts: per point and distinct field, the count of the union of the
//! point's member cells' HyperLogLogs, counted by Redis or here.

use redis::aio::ConnectionLike;
use tributary_shared::hll::{Hll, Union};
use tributary_shared::layout::RedisKeys;
use tributary_shared::view::ViewPlan;

use super::point::{Gathered, Points};
use super::{ReadError, SpeedQuery};

/// Where a read's distinct counts are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DistinctBy {
    /// One `PFCOUNT` per point over its member cells' keys (Redis unions them): the least
    /// sent back when points fold many cells (a query's `group_by`, a `top`).
    Pfcount,
    /// Each cell's HyperLogLog read once with `GET`, counted (a point of one cell) or
    /// unioned (a point of many) here. For the accuracy ledger, whose points are single
    /// cells plus each bucket's total over all of them: Redis's multi-key `PFCOUNT` of those
    /// totals was the largest part of Redis's work in a ledger run (0.16 of 0.60 s of its
    /// CPU on the 10M-event day), while a `GET` costs it what a single-key `PFCOUNT` does.
    /// The counts are the same: `Hll` is Redis's estimator over the same registers.
    Registers,
}

/// The distinct counts of `sets`' points, in the order of the sets, their points and
/// `gathered.fields.distinct`; empty when the read has no distinct field.
pub(super) async fn count<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &ViewPlan,
    q: &SpeedQuery,
    gathered: &Gathered,
    sets: &[Points],
    by: DistinctBy,
) -> Result<Vec<u64>, ReadError> {
    let fields = &gathered.fields;
    if fields.distinct.is_empty() || sets.iter().all(|s| s.is_empty()) {
        return Ok(Vec::new());
    }
    // Each cell's key once per field, though a cell is a member of a point in every set.
    let g = q.granularity;
    let hll_keys: Vec<Vec<String>> = fields
        .distinct
        .iter()
        .map(|f| {
            gathered
                .cells
                .iter()
                .map(|(b, enc)| keys.hll(&view.name, f, g, *b, enc))
                .collect()
        })
        .collect();
    let mut pipe = redis::pipe();
    match by {
        DistinctBy::Pfcount => {
            for m in sets.iter().flat_map(|s| s.values()) {
                for field_keys in &hll_keys {
                    pipe.cmd("PFCOUNT");
                    for key in m.members.iter().filter_map(|i| field_keys.get(*i as usize)) {
                        pipe.arg(key);
                    }
                }
            }
            Ok(pipe.query_async(con).await?)
        }
        DistinctBy::Registers => {
            for key in hll_keys.iter().flatten() {
                pipe.get(key);
            }
            let values: Vec<Option<Vec<u8>>> = pipe.query_async(con).await?;
            count_here(gathered, sets, &values)
        }
    }
}

/// [`DistinctBy::Registers`] once the values are read: `values` holds each distinct field's
/// cells in turn (`None`: no key, an empty set, as `PFCOUNT` takes it).
fn count_here(
    gathered: &Gathered,
    sets: &[Points],
    values: &[Option<Vec<u8>>],
) -> Result<Vec<u64>, ReadError> {
    let (nd, cells) = (gathered.fields.distinct.len(), gathered.cells.len());
    let value = |cell: u32, f: usize| {
        values
            .get(f * cells + cell as usize)
            .and_then(Option::as_deref)
    };
    let invalid = || {
        ReadError::Reply(redis::ParsingError::from(
            "a distinct count's key holds no HyperLogLog (GET read it)".to_string(),
        ))
    };
    let mut out = Vec::with_capacity(sets.iter().map(|s| s.len() * nd).sum());
    // One union, reused: a bucket's total unions tens of cells.
    let mut union = Union::default();
    for m in sets.iter().flat_map(|s| s.values()) {
        for f in 0..nd {
            let n = match m.members.as_slice() {
                [one] => match value(*one, f) {
                    Some(bytes) => Hll::count_redis(bytes).ok_or_else(invalid)?,
                    None => 0,
                },
                members => {
                    union.clear();
                    for bytes in members.iter().filter_map(|c| value(*c, f)) {
                        union.merge_redis(bytes).ok_or_else(invalid)?;
                    }
                    union.count()
                }
            };
            out.push(n);
        }
    }
    Ok(out)
}
