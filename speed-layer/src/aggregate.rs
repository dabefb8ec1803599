//! The in-memory half of the speed layer: parse, filter per view, bucket, pre-aggregate until
//! the next flush. Pure and synchronous, so `run` (Kafka) and `replay` (a file) share it.
//!
//! Aggregates are kept per numeric *field* (sum, count of values, min, max), and one distinct
//! set and one quantile sketch per field, so several measures on one field share storage.

mod buffer;

use std::collections::{BTreeSet, HashMap};

use tributary_shared::Event;
use tributary_shared::config::AggKind;
use tributary_shared::event::{EventError, EventSchema, check_future_skew};
use tributary_shared::view::{FieldRef, ViewPlan};

pub use self::buffer::{Cell, NumAcc, Scratch, ViewBuffer, accumulate};
use crate::dedup::id_hash;
use crate::watermark::{PartitionProgress, Stored};

/// Where a view's inputs live in a [`Cell`].
#[derive(Debug, Clone)]
pub struct ViewInputs {
    /// Numeric fields feeding sum/min/max/avg, by name.
    pub numeric: Vec<(String, FieldRef)>,
    /// Fields feeding count_distinct.
    pub distinct: Vec<(String, FieldRef)>,
    /// Fields feeding quantile.
    pub quantile: Vec<(String, FieldRef)>,
}

impl ViewInputs {
    pub fn of(plan: &ViewPlan) -> Self {
        let mut inputs = ViewInputs {
            numeric: Vec::new(),
            distinct: Vec::new(),
            quantile: Vec::new(),
        };
        for m in &plan.measures {
            let (Some(name), Some(field)) = (&m.field_name, m.field) else {
                continue;
            };
            let list = match m.agg {
                AggKind::Count => continue,
                AggKind::Sum | AggKind::Min | AggKind::Max | AggKind::Avg => &mut inputs.numeric,
                AggKind::CountDistinct => &mut inputs.distinct,
                AggKind::Quantile => &mut inputs.quantile,
            };
            if !list.iter().any(|(n, _)| n == name) {
                list.push((name.clone(), field));
            }
        }
        inputs
    }
}

/// One view's share of a flush: its cells and the offsets they bring it to.
#[derive(Debug)]
pub struct ViewFlush {
    pub view: usize,
    pub data: ViewBuffer,
    /// (partition, value Redis must hold now, value to store).
    pub offsets: Vec<(i32, Option<Stored>, Stored)>,
    /// Event-id hashes first seen in this flush: (partition, slot, expire at ms, ids).
    pub dedup: Vec<(i32, i64, i64, Vec<u64>)>,
    /// Slots the watermark passed in this flush, whose id sets are deleted: (partition, slot).
    pub dedup_dropped: Vec<(i32, i64)>,
}

/// What one flush writes.
#[derive(Debug)]
pub struct Flush {
    pub views: Vec<ViewFlush>,
    /// Records consumed since the previous flush (valid, invalid and late alike).
    pub records: usize,
    /// Next offset per partition after this flush, for the advisory Kafka commit.
    pub positions: Vec<(i32, i64)>,
}

/// The result of feeding one record.
#[derive(Debug)]
pub enum Outcome {
    /// Valid; applied to, or judged late by, the views that needed it.
    Processed,
    /// Invalid: belongs in the DLQ.
    Invalid(EventError),
    /// Every view had already applied this offset (a replay after a crash).
    AlreadyApplied,
}

/// Parse → filter → bucket → pre-aggregate, with offsets and watermarks per partition.
pub struct Pipeline {
    schema: EventSchema,
    views: Vec<ViewPlan>,
    inputs: Vec<ViewInputs>,
    allowed_lateness_ms: i64,
    max_future_skew_ms: i64,
    /// 0: no duplicate filter.
    dedup_window_ms: i64,
    /// How long after its slot ends a dedup set outlives a consumer that stops dropping it.
    dedup_keep_ms: i64,
    partitions: HashMap<i32, PartitionProgress>,
    buffers: Vec<ViewBuffer>,
    touched: BTreeSet<i32>,
    records: usize,
    /// Reused by `process`: the views an event goes to, and `accumulate`'s strings.
    accepted: Vec<usize>,
    scratch: Scratch,
}

impl Pipeline {
    pub fn new(
        schema: EventSchema,
        views: Vec<ViewPlan>,
        allowed_lateness_ms: i64,
        max_future_skew_ms: i64,
    ) -> Self {
        let inputs = views.iter().map(ViewInputs::of).collect();
        let buffers = views.iter().map(|_| ViewBuffer::default()).collect();
        Pipeline {
            schema,
            views,
            inputs,
            allowed_lateness_ms,
            max_future_skew_ms,
            dedup_window_ms: 0,
            dedup_keep_ms: 0,
            partitions: HashMap::new(),
            buffers,
            touched: BTreeSet::new(),
            records: 0,
            accepted: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Turns on the producer-duplicate filter (see `dedup`); `retention_ms` is the speed
    /// layer's retention, the dedup sets' safety-net TTL after their slot.
    pub fn with_dedup_window(mut self, window_ms: i64, retention_ms: i64) -> Self {
        self.dedup_window_ms = window_ms.max(0);
        self.dedup_keep_ms = retention_ms.max(self.allowed_lateness_ms + self.dedup_window_ms);
        self
    }

    pub fn dedup_window_ms(&self) -> i64 {
        self.dedup_window_ms
    }

    pub fn allowed_lateness_ms(&self) -> i64 {
        self.allowed_lateness_ms
    }

    pub fn views(&self) -> &[ViewPlan] {
        &self.views
    }

    pub fn inputs(&self) -> &[ViewInputs] {
        &self.inputs
    }

    /// Records buffered since the last flush.
    pub fn pending(&self) -> usize {
        self.records
    }

    pub fn partitions(&self) -> &HashMap<i32, PartitionProgress> {
        &self.partitions
    }

    /// Drops everything buffered and starts over from the given progress (after a rebalance
    /// or a fenced flush: the buffer may hold records another consumer now owns).
    pub fn reset(&mut self, partitions: HashMap<i32, PartitionProgress>) {
        self.partitions = partitions;
        self.buffers = self.views.iter().map(|_| ViewBuffer::default()).collect();
        self.touched.clear();
        self.records = 0;
    }

    /// Records the broker's high watermark of a partition (for lag).
    pub fn set_high_watermark(&mut self, partition: i32, high: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.high_watermark = Some(high);
        }
    }

    /// Feeds one record.
    pub fn process(&mut self, partition: i32, offset: i64, payload: &[u8], now_ms: i64) -> Outcome {
        if !self.take_offset(partition, offset) {
            return Outcome::AlreadyApplied;
        }
        let event = match self.schema.parse(payload) {
            Ok(e) => e,
            Err(e) => return Outcome::Invalid(e),
        };
        let mut accepted = std::mem::take(&mut self.accepted);
        let outcome = match self.admit(partition, offset, &event, now_ms, &mut accepted) {
            Ok(()) => {
                for &vi in &accepted {
                    accumulate(
                        &self.views[vi],
                        &self.inputs[vi],
                        &mut self.buffers[vi],
                        &event,
                        &mut self.scratch,
                    );
                }
                Outcome::Processed
            }
            Err(e) => Outcome::Invalid(e),
        };
        self.accepted = accepted;
        outcome
    }

    /// The event schema records are parsed with (parsing is pure: see [`Pipeline::admit`]).
    pub fn schema(&self) -> &EventSchema {
        &self.schema
    }

    /// The first step of [`Pipeline::process`]: counts the record and moves its partition's
    /// position; false when every view already applied this offset (a replay after a crash).
    pub fn take_offset(&mut self, partition: i32, offset: i64) -> bool {
        let nviews = self.views.len();
        let progress = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionProgress::new(vec![None; nviews]));
        if progress.views.iter().all(|v| offset < v.skip_below) {
            return false;
        }
        progress.next_offset = Some(
            progress
                .next_offset
                .map_or(offset + 1, |n| n.max(offset + 1)),
        );
        self.touched.insert(partition);
        self.records += 1;
        true
    }

    /// The ordered step of [`Pipeline::process`] after parsing: the time-skew check, then per
    /// view the watermark, the filter, lateness and duplicates. Fills `accepted` with the views
    /// the event is to be [`accumulate`]d into (and counts it applied there); `process` does
    /// that at once, `replay` on several threads into [`ViewBuffer`]s of their own.
    pub fn admit(
        &mut self,
        partition: i32,
        offset: i64,
        event: &Event<'_>,
        now_ms: i64,
        accepted: &mut Vec<usize>,
    ) -> Result<(), EventError> {
        accepted.clear();
        check_future_skew(event, now_ms, self.max_future_skew_ms)?;
        debug_assert!(
            self.partitions.contains_key(&partition),
            "admit before take_offset"
        );
        let Some(progress) = self.partitions.get_mut(&partition) else {
            // `take_offset` creates it; a caller that skipped it admits nothing.
            return Ok(());
        };
        let mut id = None;
        for (vi, view) in self.views.iter().enumerate() {
            let vp = &mut progress.views[vi];
            if offset < vp.skip_below {
                continue;
            }
            let late = event.event_time_ms < vp.watermark(self.allowed_lateness_ms);
            vp.max_event_time_ms = vp.max_event_time_ms.max(event.event_time_ms);
            if !view.matches(event) {
                continue;
            }
            let buffer = &mut self.buffers[vi];
            if late {
                buffer.late_dropped += 1;
                continue;
            }
            if self.dedup_window_ms > 0 {
                let h = *id.get_or_insert_with(|| id_hash(&event.event_id));
                if vp
                    .dedup
                    .check_and_insert(self.dedup_window_ms, event.event_time_ms, h)
                {
                    buffer.duplicates += 1;
                    continue;
                }
            }
            buffer.applied += 1;
            accepted.push(vi);
        }
        Ok(())
    }

    /// Adds what other threads accumulated (see [`Pipeline::admit`]) to the next flush.
    pub fn absorb(&mut self, buffers: &mut [ViewBuffer]) {
        for (mine, theirs) in self.buffers.iter_mut().zip(buffers) {
            mine.absorb(std::mem::take(theirs));
        }
    }

    /// Hands over everything buffered, with the offsets each view moves to; `None` when
    /// nothing was consumed since the last flush.
    pub fn take_flush(&mut self) -> Option<Flush> {
        if self.records == 0 {
            return None;
        }
        let mut views = Vec::with_capacity(self.views.len());
        let mut positions = Vec::new();
        for &p in &self.touched {
            if let Some(next) = self.partitions.get(&p).and_then(|pp| pp.next_offset) {
                positions.push((p, next));
            }
        }
        for vi in 0..self.views.len() {
            let mut offsets = Vec::new();
            let mut dedup = Vec::new();
            let mut dedup_dropped = Vec::new();
            for &p in &self.touched {
                let Some(pp) = self.partitions.get_mut(&p) else {
                    continue;
                };
                let Some(next) = pp.next_offset else { continue };
                let vp = &mut pp.views[vi];
                let new = Stored {
                    next_offset: next.max(vp.committed.map_or(i64::MIN, |s| s.next_offset)),
                    max_event_time_ms: vp.max_event_time_ms,
                };
                if vp.committed != Some(new) {
                    offsets.push((p, vp.committed, new));
                    vp.committed = Some(new);
                }
                if self.dedup_window_ms > 0 {
                    let w = self.dedup_window_ms;
                    let watermark = vp.watermark(self.allowed_lateness_ms);
                    for (slot, ids) in vp.dedup.take_fresh() {
                        // Deleted when the watermark passes the slot (see `dedup`); this is
                        // the safety net: as long as the aggregates of the slot's time.
                        dedup.push((p, slot, (slot + 1) * w + self.dedup_keep_ms, ids));
                    }
                    dedup_dropped.extend(vp.dedup.evict(w, watermark).into_iter().map(|s| (p, s)));
                }
            }
            let data = std::mem::take(&mut self.buffers[vi]);
            views.push(ViewFlush {
                view: vi,
                data,
                offsets,
                dedup,
                dedup_dropped,
            });
        }
        let records = std::mem::take(&mut self.records);
        self.touched.clear();
        Some(Flush {
            views,
            records,
            positions,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
