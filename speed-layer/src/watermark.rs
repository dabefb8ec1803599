//! Per-partition progress: which offsets each view has applied, and the event-time watermark.
//!
//! Both live in Redis next to the aggregates (one `offsets` hash per view), and are restored on
//! partition assignment, so a replay after a crash takes exactly the decisions the first pass
//! took: same offsets skipped, same events judged late.

use std::fmt;

/// What Redis holds for one (view, partition): the next offset to apply and the maximum event
/// time seen up to it. Stored as `"<next_offset>:<max_event_time_ms>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub next_offset: i64,
    pub max_event_time_ms: i64,
}

impl Stored {
    pub fn parse(s: &str) -> Option<Stored> {
        let (o, t) = s.split_once(':')?;
        Some(Stored {
            next_offset: o.parse().ok()?,
            max_event_time_ms: t.parse().ok()?,
        })
    }
}

impl fmt::Display for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.next_offset, self.max_event_time_ms)
    }
}

/// One view's progress on one partition.
#[derive(Debug, Clone)]
pub struct ViewProgress {
    /// What Redis holds now (the compare-and-set value of the next flush); `None` before the
    /// view's first flush on this partition.
    pub committed: Option<Stored>,
    /// Offsets below this were already applied for this view: skip them.
    pub skip_below: i64,
    /// Max event time seen by this view on this partition, including unflushed events.
    pub max_event_time_ms: i64,
    /// Event ids seen recently (only with `dedup_window > 0`).
    pub dedup: crate::dedup::DedupSet,
}

impl ViewProgress {
    pub fn new(committed: Option<Stored>) -> Self {
        ViewProgress {
            committed,
            skip_below: committed.map_or(i64::MIN, |s| s.next_offset),
            max_event_time_ms: committed.map_or(i64::MIN, |s| s.max_event_time_ms),
            dedup: Default::default(),
        }
    }

    /// Event-time watermark: events before it are late.
    pub fn watermark(&self, allowed_lateness_ms: i64) -> i64 {
        self.max_event_time_ms.saturating_sub(allowed_lateness_ms)
    }
}

/// Progress of all views on one partition.
#[derive(Debug, Clone)]
pub struct PartitionProgress {
    pub views: Vec<ViewProgress>,
    /// Next offset after the last record processed (flushed or not); `None` before any.
    pub next_offset: Option<i64>,
    /// Highest offset in the partition as last reported by the broker (for lag).
    pub high_watermark: Option<i64>,
}

impl PartitionProgress {
    pub fn new(stored: Vec<Option<Stored>>) -> Self {
        PartitionProgress {
            views: stored.into_iter().map(ViewProgress::new).collect(),
            next_offset: None,
            high_watermark: None,
        }
    }

    /// Where to start reading: the lowest offset some view still needs. `None` when no view
    /// has applied anything yet (then the consumer group's position decides).
    pub fn resume_offset(&self) -> Option<i64> {
        self.views
            .iter()
            .filter_map(|v| v.committed.map(|s| s.next_offset))
            .min()
    }

    /// Max event time over views (for status reporting).
    pub fn max_event_time_ms(&self) -> Option<i64> {
        self.views
            .iter()
            .map(|v| v.max_event_time_ms)
            .max()
            .filter(|t| *t != i64::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_round_trips_and_resume_takes_the_minimum() {
        let s = Stored {
            next_offset: 42,
            max_event_time_ms: -5,
        };
        assert_eq!(Stored::parse(&s.to_string()), Some(s));
        assert_eq!(Stored::parse("x:1"), None);
        let p = PartitionProgress::new(vec![
            Some(Stored {
                next_offset: 10,
                max_event_time_ms: 100,
            }),
            None,
            Some(Stored {
                next_offset: 7,
                max_event_time_ms: 90,
            }),
        ]);
        assert_eq!(p.resume_offset(), Some(7));
        assert_eq!(p.views[0].skip_below, 10);
        assert_eq!(p.views[1].skip_below, i64::MIN);
        assert_eq!(p.views[0].watermark(30), 70);
        assert_eq!(p.max_event_time_ms(), Some(100));
        assert_eq!(PartitionProgress::new(vec![None]).resume_offset(), None);
    }
}
