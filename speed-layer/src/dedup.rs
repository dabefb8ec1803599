//! Optional producer-duplicate filter (`speed.dedup_window > 0`).
//!
//! A producer that retries can write one event twice; both copies carry the same `event_id`
//! and `event_time`. Per view and partition, the ids seen are kept in slots of `window` event
//! time. A slot is dropped once the watermark has passed it (its events could only be late
//! anyway). New ids are written to Redis in the same script as the aggregates and offsets and
//! are loaded back on assignment, so the filter survives restarts exactly like the counts.
//!
//! A slot's Redis set is deleted by the flush that drops it from memory, not by a TTL counted
//! from its event time: the watermark moves with the data, not the clock, so events an hour
//! old (a backfill, a consumer that lags, a stream paused for a while) need their ids as long
//! as fresh ones do. The TTL is only the safety net for sets no consumer drops any more (the
//! view's retention, like the aggregates of the same time).
//!
//! Cost: one 64-bit hash per event in memory and about 20 bytes in Redis per event of the
//! last `allowed_lateness + dedup_window`, per view; and duplicates are only caught within a
//! partition (producers key events, so a retried event lands on the same partition).

use std::collections::{BTreeMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

/// The ids of one (view, partition).
#[derive(Debug, Clone, Default)]
pub struct DedupSet {
    slots: BTreeMap<i64, HashSet<u64>>,
    /// Ids added since the last flush, per slot.
    fresh: BTreeMap<i64, Vec<u64>>,
}

/// A stable 64-bit hash of an event id (SipHash with fixed keys: the same in every process).
pub fn id_hash(event_id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    event_id.hash(&mut h);
    h.finish()
}

impl DedupSet {
    /// Records the id; true when it was already there (a duplicate).
    pub fn check_and_insert(&mut self, window_ms: i64, event_time_ms: i64, id: u64) -> bool {
        let slot = event_time_ms.div_euclid(window_ms);
        if !self.slots.entry(slot).or_default().insert(id) {
            return true;
        }
        self.fresh.entry(slot).or_default().push(id);
        false
    }

    /// Loads ids stored in Redis for a slot.
    pub fn restore(&mut self, slot: i64, ids: impl IntoIterator<Item = u64>) {
        self.slots.entry(slot).or_default().extend(ids);
    }

    /// Drops slots that end before `watermark_ms`; returns them (their Redis sets go too).
    pub fn evict(&mut self, window_ms: i64, watermark_ms: i64) -> Vec<i64> {
        let keep_from = watermark_ms.div_euclid(window_ms);
        let kept = self.slots.split_off(&keep_from);
        let dropped = std::mem::replace(&mut self.slots, kept);
        dropped.into_keys().collect()
    }

    /// Ids added since the last call, by slot.
    pub fn take_fresh(&mut self) -> BTreeMap<i64, Vec<u64>> {
        std::mem::take(&mut self.fresh)
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.slots.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The slots a restored partition must load: those the watermark has not passed yet.
pub fn slots_to_restore(
    window_ms: i64,
    watermark_ms: i64,
    max_event_time_ms: i64,
) -> std::ops::RangeInclusive<i64> {
    watermark_ms.div_euclid(window_ms)..=max_event_time_ms.div_euclid(window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_are_caught_and_old_slots_evicted() {
        let mut d = DedupSet::default();
        let w = 60_000;
        assert!(!d.check_and_insert(w, 1_000, id_hash("a")));
        assert!(d.check_and_insert(w, 1_000, id_hash("a")));
        assert!(!d.check_and_insert(w, 1_000, id_hash("b")));
        assert!(!d.check_and_insert(w, 61_000, id_hash("c")));
        let fresh = d.take_fresh();
        assert_eq!(fresh.get(&0).map(Vec::len), Some(2));
        assert_eq!(fresh.get(&1).map(Vec::len), Some(1));
        assert!(d.take_fresh().is_empty());
        assert_eq!(d.evict(w, 60_000), vec![0]);
        assert_eq!(d.len(), 1);
        assert!(d.evict(w, 60_000).is_empty());
        d.restore(0, [id_hash("a")]);
        assert!(d.check_and_insert(w, 2_000, id_hash("a")));
        assert_eq!(slots_to_restore(w, 59_999, 180_000), 0..=3);
        assert_eq!(id_hash("a"), id_hash("a"));
    }
}
