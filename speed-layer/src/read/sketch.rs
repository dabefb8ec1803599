//! A cell's quantile sketch as Redis holds it (a hash of bucket field → count), read with
//! `DUMP` (one bulk string per cell, decoded by [`super::dump`]) and with `HGETALL` for a
//! cell whose payload that cannot decode, or for every cell once Redis refuses `DUMP` (an
//! ACL written before readers needed it: `NOPERM`, warned once).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::ConnectionLike;
use tributary_shared::layout::RedisKeys;
use tributary_shared::sketch::{QuantileSketch, SketchBucket};
use tributary_shared::view::ViewPlan;

use super::point::{Gathered, Merged};
use super::{ReadError, SpeedQuery, add_state_check, check_state, dump, number, unexpected};

/// Set when Redis refused `DUMP` to this process: sketches are read with `HGETALL` since.
static DUMP_REFUSED: AtomicBool = AtomicBool::new(false);
/// Whether a payload that could not be decoded was already logged.
static UNDECODED_LOGGED: AtomicBool = AtomicBool::new(false);

/// How a read asks for the sketches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SketchCommand {
    Dump,
    HGetAll,
}

impl SketchCommand {
    /// `DUMP`, unless Redis refused it before.
    pub(super) fn preferred() -> SketchCommand {
        if DUMP_REFUSED.load(Ordering::Relaxed) {
            SketchCommand::HGetAll
        } else {
            SketchCommand::Dump
        }
    }

    pub(super) fn add(self, pipe: &mut redis::Pipeline, key: String) {
        match self {
            SketchCommand::Dump => pipe.cmd("DUMP").arg(key),
            SketchCommand::HGetAll => pipe.hgetall(key),
        };
    }
}

/// Whether `e` is Redis refusing `DUMP` to this user; if so, later reads use `HGETALL`.
pub(super) fn dump_refused(e: &redis::RedisError) -> bool {
    let refused = e.code() == Some("NOPERM") && e.to_string().to_lowercase().contains("dump");
    if refused && !DUMP_REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "Redis refuses DUMP to this user: quantile sketches are read with HGETALL, which costs Redis about three times the CPU (add +dump to the user's ACL, see docs/deploying.md)");
    }
    refused
}

/// Adds a cell's reply to `sketch`. `Ok(false)`: a `DUMP` payload this reader does not
/// decode (the cell must be read with `HGETALL`); nothing was added.
pub(super) fn add_reply(
    sketch: &mut QuantileSketch,
    command: SketchCommand,
    reply: redis::Value,
) -> Result<bool, ReadError> {
    match (command, reply) {
        (_, redis::Value::Nil) => Ok(true),
        (SketchCommand::HGetAll, reply) => add_hgetall_reply(sketch, reply).map(|()| true),
        (SketchCommand::Dump, redis::Value::BulkString(payload)) => {
            let buckets = dump::hash_pairs(&payload, |field, count| {
                let field = std::str::from_utf8(field.as_bytes()?).ok()?;
                Some((SketchBucket::parse_field(field)?, count.as_u64()?))
            });
            match buckets {
                Some(buckets) => {
                    sketch.merge_owned(QuantileSketch::from_buckets(buckets));
                    Ok(true)
                }
                None => {
                    if !UNDECODED_LOGGED.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            encoding = payload.first().copied().unwrap_or_default(),
                            "a quantile sketch's DUMP payload is in an encoding this reader does not decode (e.g. Redis 6's ziplist): such cells are read with HGETALL"
                        );
                    }
                    Ok(false)
                }
            }
        }
        (SketchCommand::Dump, other) => Err(unexpected("DUMP", &other)),
    }
}

/// A cell's sketch whose `DUMP` payload [`add_reply`] did not decode.
pub(super) struct Undecoded {
    /// The cell, an index into [`Gathered::cells`].
    pub(super) member: u32,
    /// The sketch's field, an index into the read's quantile fields.
    pub(super) field: usize,
}

/// Reads the `undecoded` cells' sketches with `HGETALL` into their points (and the view's
/// state again, as every round trip of a read does).
pub(super) async fn read_undecoded<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &ViewPlan,
    q: &SpeedQuery,
    undecoded: Vec<Undecoded>,
    gathered: &mut Gathered,
) -> Result<(), ReadError> {
    if undecoded.is_empty() {
        return Ok(());
    }
    let g = q.granularity;
    let mut pipe = redis::pipe();
    for cell in &undecoded {
        let (Some((b, enc)), Some(f)) = (
            gathered.cells.get(cell.member as usize),
            gathered.fields.quantile.get(cell.field),
        ) else {
            return Err(ReadError::Reply(redis::ParsingError::from(
                "a sketch to read again names no cell of the read".to_string(),
            )));
        };
        pipe.hgetall(keys.sketch(&view.name, f, g, *b, enc));
    }
    add_state_check(&mut pipe, keys, view);
    let mut replies: Vec<redis::Value> = pipe.query_async(con).await?;
    let state = replies.split_off(replies.len().saturating_sub(2));
    check_state(q, &state)?;
    // The point each cell was merged into (found by its member index: rare, so a scan).
    let wanted: HashSet<u32> = undecoded.iter().map(|c| c.member).collect();
    let mut points: Vec<&mut Merged> = gathered.points.values_mut().collect();
    let mut point_of: HashMap<u32, usize> = HashMap::new();
    for (i, m) in points.iter().enumerate() {
        for member in m.members.iter().filter(|c| wanted.contains(c)) {
            point_of.insert(*member, i);
        }
    }
    for (cell, reply) in undecoded.into_iter().zip(replies) {
        let sketch = point_of
            .get(&cell.member)
            .and_then(|i| points.get_mut(*i))
            .and_then(|m| m.sketches.get_mut(cell.field));
        if let Some(sketch) = sketch {
            add_hgetall_reply(sketch, reply)?;
        }
    }
    Ok(())
}

/// Adds a sketch hash's `HGETALL` reply (bucket field → count) to a sketch: pairs in an
/// array (RESP2) or a map (RESP3). Fields that are not sketch buckets are ignored.
fn add_hgetall_reply(sketch: &mut QuantileSketch, reply: redis::Value) -> Result<(), ReadError> {
    let bucket = |field: &redis::Value, count: &redis::Value| {
        let redis::Value::BulkString(field) = field else {
            return None;
        };
        let b = SketchBucket::parse_field(std::str::from_utf8(field).ok()?)?;
        Some((b, number::<u64>(Some(count))?))
    };
    // The hash's fields come in no useful order: sorted once per cell, then merged.
    let cell = match reply {
        redis::Value::Array(items) => QuantileSketch::from_buckets(
            items
                .chunks_exact(2)
                .filter_map(|pair| bucket(&pair[0], &pair[1])),
        ),
        redis::Value::Map(pairs) => {
            QuantileSketch::from_buckets(pairs.iter().filter_map(|(f, c)| bucket(f, c)))
        }
        redis::Value::Nil => return Ok(()),
        other => return Err(unexpected("HGETALL", &other)),
    };
    sketch.merge_owned(cell);
    Ok(())
}
