//! Reading the speed layer's aggregates back (the serving layer's Redis side).
//!
//! Per bucket: the groups set says which dimension tuples have data; the filters keep some,
//! `group_by` folds them into output groups, and the values merge: additive aggregates by
//! addition, distinct counts by a multi-key `PFCOUNT` or by unioning the cells' HyperLogLogs
//! here (`distinct.rs`: a true union either way, never a sum), quantiles by
//! adding sketch buckets. Reads are pipelined: three round trips whatever the range.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;
use tributary_shared::Granularity;
use tributary_shared::config::AggKind;
use tributary_shared::hll::Hll;
use tributary_shared::layout::{RedisKeys, decode_group};
use tributary_shared::selection::Selection;
use tributary_shared::series::{Partial, PartialValue};
use tributary_shared::view::ViewPlan;

use distinct::DistinctBy;
use point::{Fields, Gathered, Num, Points};
use sketch::SketchCommand;

/// What to read.
#[derive(Debug, Clone)]
pub struct SpeedQuery {
    pub granularity: Granularity,
    /// Bucket starts to read.
    pub buckets: Vec<i64>,
    /// Filters, output groups and measures.
    pub selection: Selection,
    /// The view's epoch the caller saw (see `view_state`). A read that finds another, none,
    /// or a rebuild running fails with [`ReadError::StateChanged`] rather than answer from a
    /// state that is not whole.
    pub epoch: Option<String>,
    /// Most output groups an answer may have ([`ReadError::TooManyGroups`] past it).
    pub max_groups: usize,
}

mod distinct;
pub mod dump;
pub(crate) mod error;
mod point;
mod sketch;

pub use error::ReadError;
pub use tributary_shared::series::{Point as SpeedPoint, Series as SpeedSeries};

// The rest of what the serving layer reads from the speed layer's Redis state, so it has one
// surface to import: each view's state (epoch, rebuild, watermarks), partition progress and
// the operators' counters.
pub use crate::progress::{PartitionReport, read as read_progress};
pub use crate::stats::{SpeedStats, read as read_stats};
pub use crate::view_state::{StateVersion, ViewState, read as read_view_state, read_version};

/// Appends the reads that tell whether the view's state is still the one the query expects.
fn add_state_check(pipe: &mut redis::Pipeline, keys: &RedisKeys, view: &ViewPlan) {
    pipe.get(keys.epoch(&view.name))
        .exists(keys.rebuild(&view.name));
}

/// Checks the two replies [`add_state_check`] asked for.
fn check_state(q: &SpeedQuery, replies: &[redis::Value]) -> Result<(), ReadError> {
    let Some(expected) = &q.epoch else {
        return Ok(());
    };
    let [epoch, rebuilding] = replies else {
        return Err(ReadError::StateChanged);
    };
    let epoch: Option<String> = redis::from_redis_value_ref(epoch)?;
    let rebuilding: bool = redis::from_redis_value_ref(rebuilding)?;
    if epoch.as_ref() != Some(expected) || rebuilding {
        return Err(ReadError::StateChanged);
    }
    Ok(())
}

/// A number held in a hash field's reply (absent, or not a number: none).
fn number<T: std::str::FromStr>(reply: Option<&redis::Value>) -> Option<T> {
    match reply? {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        redis::Value::Int(i) => i.to_string().parse().ok(),
        redis::Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn unexpected(command: &str, reply: &redis::Value) -> ReadError {
    ReadError::Reply(redis::ParsingError::from(format!(
        "{command} replied {reply:?}"
    )))
}

/// Steps 1-3 of a read: the cells passing the filters, merged per output group and bucket
/// (all buckets into the first one when `fold`).
async fn gather<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &ViewPlan,
    q: &SpeedQuery,
    fold: bool,
) -> Result<Gathered, ReadError> {
    let g = q.granularity;
    // 1. Which groups have data in each bucket (and the view's state, before).
    let mut pipe = redis::pipe();
    for b in &q.buckets {
        pipe.smembers(keys.groups(&view.name, g, *b));
    }
    add_state_check(&mut pipe, keys, view);
    let mut replies: Vec<redis::Value> = pipe.query_async(con).await?;
    let state = replies.split_off(q.buckets.len().min(replies.len()));
    check_state(q, &state)?;
    let members: Vec<Vec<String>> = replies
        .into_iter()
        .map(redis::from_redis_value)
        .collect::<Result<_, _>>()?;

    // 2. Keep the groups passing the filters, and fold them into output groups.
    let mut cells: Vec<(i64, String, Vec<Option<String>>)> = Vec::new();
    for (b, groups) in q.buckets.iter().zip(members) {
        for encoded in groups {
            let Some(values) = decode_group(&encoded) else {
                continue;
            };
            let value = |d: usize| values.get(d).and_then(|v| v.as_deref());
            if !q.selection.passes(value) {
                continue;
            }
            let out = q.selection.project(value);
            cells.push((*b, encoded, out));
        }
    }
    let groups: std::collections::HashSet<&Vec<Option<String>>> =
        cells.iter().map(|(_, _, out)| out).collect();
    if groups.len() > q.max_groups {
        return Err(ReadError::TooManyGroups(groups.len()));
    }

    let fields = Fields::of(view, &q.selection);
    // Only the hash fields the measures use (a cell's hash holds every numeric field's stats).
    let hash_fields = fields.hash_fields();

    // 3. The cells' hashes and sketches (and the view's state, after: a state lost or
    // rebuilt between the two round trips would make a partial answer).
    let step3 = |sketches: SketchCommand| {
        let mut pipe = redis::pipe();
        for (b, enc, _) in &cells {
            pipe.cmd("HMGET")
                .arg(keys.aggregates(&view.name, g, *b, enc))
                .arg(&hash_fields);
            for f in &fields.quantile {
                sketches.add(&mut pipe, keys.sketch(&view.name, f, g, *b, enc));
            }
        }
        add_state_check(&mut pipe, keys, view);
        pipe
    };
    let mut sketches = SketchCommand::preferred();
    let mut replies: Vec<redis::Value> = match step3(sketches).query_async(con).await {
        Err(e) if sketches == SketchCommand::Dump && sketch::dump_refused(&e) => {
            sketches = SketchCommand::HGetAll;
            step3(sketches).query_async(con).await?
        }
        other => other?,
    };
    let state = replies.split_off(replies.len().saturating_sub(2));
    check_state(q, &state)?;
    // Replies are read in place (no map of strings per hash): a ledger run reads tens of
    // thousands of sketch hashes of a few hundred fields each, and allocating for each field
    // was most of its time.
    let mut replies = replies.into_iter();
    let mut out = Gathered {
        points: Points::new(),
        cells: Vec::with_capacity(cells.len()),
        fields,
    };
    let mut undecoded = Vec::new();
    let stats = out.fields.stats.clone();
    for (b, enc, group) in cells {
        let key_bucket = if fold {
            q.buckets.first().copied().unwrap_or(b)
        } else {
            b
        };
        let Some(hash) = replies.next() else {
            break;
        };
        let member = out.cells.len() as u32;
        let m = out.point((group, key_bucket));
        let mut values = match hash {
            redis::Value::Array(values) => values.into_iter(),
            other => return Err(unexpected("HMGET", &other)),
        };
        m.count += number::<u64>(values.next().as_ref()).unwrap_or(0);
        for (num, wanted) in m.numeric.iter_mut().zip(&stats) {
            // A stat not asked for is `None`; asked for and absent, `Some(None)`.
            let mut stat = |asked: bool| asked.then(|| number::<f64>(values.next().as_ref()));
            let (sum, n, min, max) = (
                stat(wanted.sum),
                stat(wanted.n),
                stat(wanted.min),
                stat(wanted.max),
            );
            // Without `n` (no `avg`), any stat present says the cell has values of the field.
            let seen = [sum, min, max].iter().any(|s| matches!(s, Some(Some(_))));
            num.absorb(&Num {
                sum: sum.flatten().unwrap_or(0.0),
                n: n.map_or(u64::from(seen), |n| n.map_or(0, |n| n as u64)),
                min: min.flatten().unwrap_or(f64::INFINITY),
                max: max.flatten().unwrap_or(f64::NEG_INFINITY),
            });
        }
        m.members.push(member);
        for (field, sketch) in m.sketches.iter_mut().enumerate() {
            let Some(reply) = replies.next() else {
                break;
            };
            if !sketch::add_reply(sketch, sketches, reply)? {
                undecoded.push(sketch::Undecoded { member, field });
            }
        }
        out.cells.push((b, enc));
    }

    // 3b. Those sketches with HGETALL.
    sketch::read_undecoded(con, keys, view, q, undecoded, &mut out).await?;

    Ok(out)
}

/// Reads a query's points from Redis.
pub async fn read<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &ViewPlan,
    q: &SpeedQuery,
) -> Result<SpeedSeries, ReadError> {
    let mut gathered = gather(con, keys, view, q, false).await?;
    let points = std::mem::take(&mut gathered.points);
    let [series] = evaluate(con, keys, view, q, &gathered, [points], DistinctBy::Pfcount).await?;
    Ok(series)
}

/// Reads a query's points and, from the same cells, each bucket's total over all of the
/// query's groups (under the empty group): what the accuracy ledger compares, for the cost of
/// one read instead of two. A total is merged from the groups' partial values (counts and
/// numeric stats added, sketches merged) and its distinct count is the union of every member
/// cell of the bucket (counted here, [`DistinctBy::Registers`]), so it equals what `read`
/// answers for a query without `group_by`.
pub async fn read_with_totals<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &ViewPlan,
    q: &SpeedQuery,
) -> Result<(SpeedSeries, SpeedSeries), ReadError> {
    let mut gathered = gather(con, keys, view, q, false).await?;
    let totals = gathered.totals();
    let points = std::mem::take(&mut gathered.points);
    let [groups, totals] = evaluate(
        con,
        keys,
        view,
        q,
        &gathered,
        [points, totals],
        DistinctBy::Registers,
    )
    .await?;
    Ok((groups, totals))
}

/// Steps 4-5 of a read, for several sets of points merged from `gathered`'s cells at once:
/// distinct counts (all sets in one round trip, see [`DistinctBy`]), then each point's value
/// per measure.
async fn evaluate<C: ConnectionLike, const N: usize>(
    con: &mut C,
    keys: &RedisKeys,
    view: &ViewPlan,
    q: &SpeedQuery,
    gathered: &Gathered,
    sets: [Points; N],
    by: DistinctBy,
) -> Result<[SpeedSeries; N], ReadError> {
    let fields = &gathered.fields;
    // 4. Distinct counts.
    let nd = fields.distinct.len();
    let distinct = distinct::count(con, keys, view, q, gathered, &sets, by).await?;

    // 5. Values per measure.
    let mut first = 0;
    Ok(sets.map(|merged| {
        let base = first;
        first += merged.len() * nd;
        let mut series = SpeedSeries::new();
        // Points come in (group, bucket) order: a group's points are gathered, then built
        // into its map at once (a ledger read has tens of thousands).
        let mut run: Option<GroupRun> = None;
        for (i, ((out, b), m)) in merged.into_iter().enumerate() {
            if m.count == 0 {
                continue;
            }
            let mut values = BTreeMap::new();
            let mut exact = true;
            for mi in &q.selection.measures {
                let Some(measure) = view.measures.get(*mi) else {
                    continue;
                };
                let num = m.stats(fields, measure);
                let v = match measure.agg {
                    AggKind::Count => Some(m.count as f64),
                    AggKind::Sum => num.map(|n| n.sum),
                    AggKind::Min => num.map(|n| n.min),
                    AggKind::Max => num.map(|n| n.max),
                    AggKind::Avg => num.map(|n| n.sum / n.n as f64),
                    AggKind::CountDistinct => {
                        exact = false;
                        Fields::position(&fields.distinct, measure)
                            .and_then(|f| distinct.get(base + i * nd + f))
                            .map(|c| *c as f64)
                    }
                    AggKind::Quantile => {
                        exact = false;
                        m.sketch(fields, measure)
                            .and_then(|s| s.quantile(measure.q.unwrap_or(0.5)))
                    }
                };
                values.insert(measure.name.clone(), v);
            }
            let point = (b, SpeedPoint { values, exact });
            match &mut run {
                Some((group, points)) if *group == out => points.push(point),
                _ => {
                    if let Some((group, points)) = run.replace((out, vec![point])) {
                        add_group(&mut series, group, points);
                    }
                }
            }
        }
        if let Some((group, points)) = run {
            add_group(&mut series, group, points);
        }
        series
    }))
}

/// An output group and its points, in bucket order.
type GroupRun = (Vec<Option<String>>, Vec<(i64, SpeedPoint)>);

/// Adds a group's points, in bucket order, to a series.
fn add_group(series: &mut SpeedSeries, group: Vec<Option<String>>, points: Vec<(i64, SpeedPoint)>) {
    let buckets = series.entry(group).or_default();
    if buckets.is_empty() {
        *buckets = points.into_iter().collect();
    } else {
        buckets.extend(points);
    }
}

/// Mergeable totals per output group over all of the query's buckets (`top`): additive
/// values, the union HyperLogLog of every member key (read with `GET`, so it can be unioned
/// with a batch sketch) and the merged quantile sketches. The value is under the first bucket.
pub async fn read_totals<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &ViewPlan,
    q: &SpeedQuery,
) -> Result<BTreeMap<Vec<Option<String>>, Partial>, ReadError> {
    let g = q.granularity;
    let gathered = gather(con, keys, view, q, true).await?;
    let fields = &gathered.fields;
    let nd = fields.distinct.len();
    // The union HyperLogLog per (point, distinct field), in the points' order.
    let mut hlls: Vec<Option<Hll>> = Vec::new();
    if nd > 0 && !gathered.points.is_empty() {
        let mut pipe = redis::pipe();
        let mut order = Vec::new();
        for (i, m) in gathered.points.values().enumerate() {
            for (j, f) in fields.distinct.iter().enumerate() {
                for (mb, enc) in m
                    .members
                    .iter()
                    .filter_map(|c| gathered.cells.get(*c as usize))
                {
                    pipe.get(keys.hll(&view.name, f, g, *mb, enc));
                    order.push(i * nd + j);
                }
            }
        }
        let raw: Vec<Option<Vec<u8>>> = pipe.query_async(con).await?;
        hlls = vec![None; gathered.points.len() * nd];
        for (at, bytes) in order.into_iter().zip(raw) {
            let h = bytes.as_deref().and_then(Hll::from_redis);
            if let (Some(h), Some(union)) = (h, hlls.get_mut(at)) {
                union.get_or_insert_with(Hll::default).merge(&h);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (i, ((group, _), m)) in gathered.points.into_iter().enumerate() {
        if m.count == 0 {
            continue;
        }
        let mut p = Partial::default();
        for measure in q
            .selection
            .measures
            .iter()
            .filter_map(|mi| view.measures.get(*mi))
        {
            let num = m.stats(fields, measure);
            let v = match measure.agg {
                AggKind::Count => PartialValue::Count(m.count),
                AggKind::Sum => PartialValue::Sum(num.map(|n| n.sum)),
                AggKind::Min => PartialValue::Min(num.map(|n| n.min)),
                AggKind::Max => PartialValue::Max(num.map(|n| n.max)),
                AggKind::Avg => PartialValue::Avg {
                    sum: num.map_or(0.0, |n| n.sum),
                    n: num.map_or(0, |n| n.n),
                },
                AggKind::CountDistinct => PartialValue::Distinct {
                    exact: None,
                    sketch: Fields::position(&fields.distinct, measure)
                        .and_then(|f| hlls.get(i * nd + f))
                        .and_then(Option::clone),
                },
                AggKind::Quantile => PartialValue::Quantile {
                    q: measure.q.unwrap_or(0.5),
                    exact: None,
                    sketch: m.sketch(fields, measure).cloned(),
                },
            };
            p.values.insert(measure.name.clone(), v);
        }
        out.entry(group)
            .and_modify(|x: &mut Partial| x.merge(&p))
            .or_insert(p);
    }
    Ok(out)
}
