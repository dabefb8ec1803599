//! The batch horizon: up to where the master dataset is complete.
//!
//! It is the minimum committed watermark over the partitions, so every bucket ending at or
//! before it has all its events archived (later events are late beyond `allowed_lateness`).
//! An idle partition (read to its end and quiet for `batch.idle_timeout`) is left out of the
//! minimum, as Flink does with idle sources, so one quiet partition cannot freeze it.

use crate::state::PartitionState;

/// The horizon in epoch ms; `None` while some active partition has no watermark yet, while a
/// partition of the topic (`topic_partitions`, when known) has no state at all (a partition
/// just added: its records are not archived yet), or before anything was archived.
pub fn horizon(
    states: &[(i32, PartitionState)],
    topic_partitions: Option<i32>,
    now_ms: i64,
    idle_ms: i64,
) -> Option<i64> {
    if let Some(n) = topic_partitions
        && (0..n).any(|p| !states.iter().any(|(q, _)| *q == p))
    {
        return None;
    }
    let mut active_min: Option<i64> = None;
    let mut all_max: Option<i64> = None;
    for (_, s) in states {
        if let Some(w) = s.watermark_ms {
            all_max = Some(all_max.map_or(w, |m| m.max(w)));
        }
        if s.is_idle(now_ms, idle_ms) {
            continue;
        }
        let w = s.watermark_ms?;
        active_min = Some(active_min.map_or(w, |m| m.min(w)));
    }
    // Every partition idle: what was archived is complete up to the newest watermark.
    active_min.or(all_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(
        watermark: Option<i64>,
        committed: i64,
        high: i64,
        last_record: i64,
    ) -> PartitionState {
        PartitionState {
            committed_offset: committed,
            watermark_ms: watermark,
            high_watermark: Some(high),
            last_record_ms: Some(last_record),
            ..Default::default()
        }
    }

    #[test]
    fn minimum_over_active_partitions_and_idle_ones_left_out() {
        let now = 1_000_000;
        let idle = 60_000;
        let busy_a = state(Some(500), 10, 20, now);
        let busy_b = state(Some(300), 10, 20, now);
        let quiet_caught_up = state(Some(100), 20, 20, now - 2 * idle);
        let quiet_behind = state(Some(50), 10, 20, now - 2 * idle);
        assert_eq!(
            horizon(&[(0, busy_a.clone()), (1, busy_b.clone())], None, now, idle),
            Some(300)
        );
        // The idle partition does not hold the horizon back...
        assert_eq!(
            horizon(
                &[(0, busy_a.clone()), (1, quiet_caught_up.clone())],
                Some(2),
                now,
                idle
            ),
            Some(500)
        );
        // ...but one that is behind its end does, even when quiet.
        assert_eq!(
            horizon(&[(0, busy_a.clone()), (1, quiet_behind)], None, now, idle),
            Some(50)
        );
        // All idle: the newest watermark.
        assert_eq!(
            horizon(&[(0, quiet_caught_up.clone())], None, now, idle),
            Some(100)
        );
        // An active partition without a watermark yet: unknown.
        assert_eq!(
            horizon(
                &[(0, busy_a.clone()), (1, state(None, 0, 5, now))],
                None,
                now,
                idle
            ),
            None
        );
        assert_eq!(horizon(&[], None, now, idle), None);
        // The topic grew to 3 partitions; the new one has no state yet: unknown.
        assert_eq!(
            horizon(
                &[(0, busy_a.clone()), (1, busy_b.clone())],
                Some(3),
                now,
                idle
            ),
            None
        );
    }
}
