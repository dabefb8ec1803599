//! What Redis says about a view as a whole: its epoch (is the state there at all, and which
//! build of it), a rebuild in progress, and how far each partition has been applied. Read by
//! the serving layer (which buckets are sealed, which are rebuilding) and by `/v1/status`.

use std::collections::{BTreeMap, HashMap};

use redis::aio::ConnectionLike;
use tributary_shared::layout::RedisKeys;

use crate::read::error::ReadError;
use crate::watermark::Stored;

/// A rebuild of a view's state from Kafka, while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    pub epoch: String,
    /// Event time the rebuild restarts the view from.
    pub from_ms: i64,
    pub started_ms: i64,
    /// Why: `lost` (the view's state vanished from Redis), `reset` (an operator), `corrupt`.
    pub reason: String,
    /// Per partition, the offset the rebuild must reach (the partition's end when it began).
    pub targets: BTreeMap<i32, i64>,
}

impl Rebuild {
    /// Parses the rebuild hash; `None` when it is absent or not one.
    pub fn from_hash(h: &HashMap<String, String>) -> Option<Rebuild> {
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
        Some(Rebuild {
            epoch: h.get("epoch")?.clone(),
            from_ms: num("from_ms")?,
            started_ms: num("started_ms")?,
            reason: h.get("reason").cloned().unwrap_or_default(),
            targets: h
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("t:")?.parse().ok()?, v.parse().ok()?)))
                .collect(),
        })
    }
}

/// One view's state in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewState {
    /// `None`: the view has no state in Redis (lost, or the speed layer never ran).
    pub epoch: Option<String>,
    pub rebuild: Option<Rebuild>,
    /// What each partition has applied (next offset, newest event time).
    pub partitions: BTreeMap<i32, Stored>,
    /// The topic's partition count as the speed layer last saw it.
    pub topic_partitions: Option<i32>,
}

impl ViewState {
    /// Whether speed answers of this view can be trusted now: its state exists and is not
    /// being rebuilt.
    pub fn serving(&self) -> bool {
        self.epoch.is_some() && self.rebuild.is_none()
    }

    /// The view's watermark: buckets ending at or before it are sealed (the speed layer drops
    /// any later event for them as late). It is the minimum over *every* partition of the
    /// topic, so a partition that has applied nothing yet (a start, a catch-up, a new
    /// partition) keeps every bucket open.
    pub fn watermark(&self, allowed_lateness_ms: i64) -> Option<i64> {
        let n = self.topic_partitions?;
        if n <= 0 || !self.serving() {
            return None;
        }
        (0..n)
            .map(|p| {
                self.partitions
                    .get(&p)
                    .map(|s| s.max_event_time_ms.saturating_sub(allowed_lateness_ms))
            })
            .try_fold(i64::MAX, |acc, w| w.map(|w| acc.min(w)))
    }

    /// Offsets still to apply before the rebuild completes (0 when none runs).
    pub fn rebuild_remaining(&self) -> i64 {
        self.rebuild.as_ref().map_or(0, |r| {
            r.targets
                .iter()
                .map(|(p, t)| {
                    let at = self.partitions.get(p).map_or(0, |s| s.next_offset);
                    (t - at).max(0)
                })
                .sum()
        })
    }
}

/// Reads a view's state in one round trip.
pub async fn read<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    topic: &str,
    view: &str,
) -> Result<ViewState, ReadError> {
    let mut pipe = redis::pipe();
    pipe.get(keys.epoch(view))
        .hgetall(keys.rebuild(view))
        .hgetall(keys.offsets(view, topic))
        .get(keys.topic_partitions(topic));
    type Replies = (
        Option<String>,
        HashMap<String, String>,
        HashMap<String, String>,
        Option<i32>,
    );
    let (epoch, rebuild, offsets, partitions): Replies = pipe.query_async(con).await?;
    Ok(ViewState {
        epoch,
        rebuild: Rebuild::from_hash(&rebuild),
        partitions: offsets
            .iter()
            .filter_map(|(p, v)| Some((p.parse().ok()?, Stored::parse(v)?)))
            .collect(),
        topic_partitions: partitions,
    })
}

/// A version of a view's speed state: which build of it (the epoch), how far it has been
/// applied (the sum of the partitions' next offsets) and how many flushes were applied (the
/// counter the apply script increments). Every flush that changes the view's data increments
/// the counter and, when a consumer applies it, advances the offsets of the partitions it
/// read, in the same atomic script; within an epoch neither goes back. So two equal versions
/// read one after the other mean no flush was applied in between: an answer read from the
/// state in between is still current. Both, because each misses one writer: a `replay`
/// writes no offsets, and a speed layer from before the counter existed (a rolling upgrade or
/// a rollback) does not increment it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVersion {
    pub epoch: String,
    /// The sum of the partitions' next offsets.
    pub applied: i128,
    /// Flushes applied (0: none since the counter existed).
    pub flushes: u64,
}

/// The view's [`StateVersion`] now; `None` when the state is gone or being rebuilt.
pub async fn read_version<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    topic: &str,
    view: &str,
) -> Result<Option<StateVersion>, ReadError> {
    let mut pipe = redis::pipe();
    pipe.get(keys.epoch(view))
        .exists(keys.rebuild(view))
        .get(keys.flushes(view))
        .hvals(keys.offsets(view, topic));
    type Replies = (Option<String>, bool, Option<u64>, Vec<String>);
    let (epoch, rebuilding, flushes, offsets): Replies = pipe.query_async(con).await?;
    let applied = offsets
        .iter()
        .map(|v| Stored::parse(v).map(|s| i128::from(s.next_offset)))
        .sum::<Option<i128>>();
    Ok(match (epoch, rebuilding, applied) {
        (Some(epoch), false, Some(applied)) => Some(StateVersion {
            epoch,
            applied,
            flushes: flushes.unwrap_or(0),
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(next_offset: i64, max_event_time_ms: i64) -> Stored {
        Stored {
            next_offset,
            max_event_time_ms,
        }
    }

    #[test]
    fn the_watermark_waits_for_every_partition_of_the_topic() {
        let mut s = ViewState {
            epoch: Some("e1".into()),
            rebuild: None,
            partitions: [(0, stored(10, 1_000)), (1, stored(5, 700))].into(),
            topic_partitions: Some(2),
        };
        assert_eq!(s.watermark(100), Some(600));
        // A third partition that has applied nothing yet keeps every bucket open.
        s.topic_partitions = Some(3);
        assert_eq!(s.watermark(100), None);
        s.partitions.insert(2, stored(0, 2_000));
        assert_eq!(s.watermark(100), Some(600));
        // Nothing is sealed while the state is missing or rebuilding.
        s.rebuild = Some(Rebuild {
            epoch: "e1".into(),
            from_ms: 0,
            started_ms: 0,
            reason: "lost".into(),
            targets: [(0, 20), (1, 5)].into(),
        });
        assert_eq!(s.watermark(100), None);
        assert_eq!(s.rebuild_remaining(), 10);
        s.rebuild = None;
        s.epoch = None;
        assert_eq!(s.watermark(100), None);
        assert!(!s.serving());
    }

    #[test]
    fn a_rebuild_hash_parses() {
        let h: HashMap<String, String> = [
            ("epoch", "e2"),
            ("from_ms", "100"),
            ("started_ms", "200"),
            ("reason", "lost"),
            ("t:0", "7"),
            ("t:3", "9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = Rebuild::from_hash(&h).expect("a rebuild");
        assert_eq!(r.targets, [(0, 7), (3, 9)].into());
        assert_eq!(Rebuild::from_hash(&HashMap::new()), None);
    }
}
