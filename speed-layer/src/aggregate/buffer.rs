//! What a view accumulates between flushes: cells per (granularity, bucket, group), filled by
//! [`accumulate`] and merged by [`ViewBuffer::absorb`] when several threads filled their own.

use std::collections::hash_map::Entry;

use foldhash::{HashMap, HashSet};

use tributary_shared::layout::push_json_string;
use tributary_shared::sketch::SketchBucket;
use tributary_shared::view::{ViewPlan, field_f64, write_field_text};
use tributary_shared::{Event, Granularity};

use super::ViewInputs;

/// Sum, count, min and max of one numeric field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumAcc {
    pub sum: f64,
    pub n: u64,
    pub min: f64,
    pub max: f64,
}

impl Default for NumAcc {
    fn default() -> Self {
        NumAcc {
            sum: 0.0,
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl NumAcc {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.n += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    fn merge(&mut self, other: &NumAcc) {
        self.sum += other.sum;
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// Pre-aggregated state of one (granularity, bucket, group) since the last flush.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub count: u64,
    pub numeric: Vec<NumAcc>,
    pub distinct: Vec<HashSet<Box<str>>>,
    pub sketches: Vec<HashMap<SketchBucket, u64>>,
}

impl Cell {
    fn merge(&mut self, other: Cell) {
        self.count += other.count;
        for (a, b) in self.numeric.iter_mut().zip(&other.numeric) {
            a.merge(b);
        }
        for (a, b) in self.distinct.iter_mut().zip(other.distinct) {
            a.extend(b);
        }
        for (a, b) in self.sketches.iter_mut().zip(other.sketches) {
            for (bucket, n) in b {
                *a.entry(bucket).or_insert(0) += n;
            }
        }
    }
}

/// Everything one view accumulated since the last flush.
#[derive(Debug, Default)]
pub struct ViewBuffer {
    group_ids: HashMap<String, u32>,
    /// Encoded groups (see `layout::encode_group`), by id.
    pub groups: Vec<String>,
    /// (granularity, bucket start ms, group id) → cell.
    pub cells: HashMap<(Granularity, i64, u32), Cell>,
    pub applied: u64,
    pub late_dropped: u64,
    /// Producer duplicates filtered out.
    pub duplicates: u64,
}

impl ViewBuffer {
    fn group_id(&mut self, group: &str) -> u32 {
        if let Some(id) = self.group_ids.get(group) {
            return *id;
        }
        let id = self.groups.len() as u32;
        self.groups.push(group.to_string());
        self.group_ids.insert(group.to_string(), id);
        id
    }

    /// Adds another buffer of the same view (its groups numbered its own way).
    pub fn absorb(&mut self, other: ViewBuffer) {
        self.applied += other.applied;
        self.late_dropped += other.late_dropped;
        self.duplicates += other.duplicates;
        if self.groups.is_empty() {
            self.groups = other.groups;
            self.group_ids = other.group_ids;
            self.cells = other.cells;
            return;
        }
        let ids: Vec<u32> = other.groups.iter().map(|g| self.group_id(g)).collect();
        for ((g, bucket, gid), cell) in other.cells {
            match self.cells.entry((g, bucket, ids[gid as usize])) {
                Entry::Occupied(mut e) => e.get_mut().merge(cell),
                Entry::Vacant(e) => {
                    e.insert(cell);
                }
            }
        }
    }
}

/// Strings [`accumulate`] reuses from one event to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    group: String,
    text: String,
}

/// Adds one admitted event to a view's buffer.
pub fn accumulate(
    view: &ViewPlan,
    inputs: &ViewInputs,
    buffer: &mut ViewBuffer,
    event: &Event<'_>,
    scratch: &mut Scratch,
) {
    let Scratch { group, text } = scratch;
    group.clear();
    group.push('[');
    for i in 0..view.dimensions.len() {
        if i > 0 {
            group.push(',');
        }
        text.clear();
        if view.write_dimension(i, event, text) {
            push_json_string(group, text);
        } else {
            group.push_str("null");
        }
    }
    group.push(']');
    let gid = buffer.group_id(group);
    for g in &view.granularities {
        let bucket = g.floor(event.event_time_ms);
        let cell = buffer
            .cells
            .entry((*g, bucket, gid))
            .or_insert_with(|| Cell {
                count: 0,
                numeric: vec![NumAcc::default(); inputs.numeric.len()],
                distinct: vec![HashSet::default(); inputs.distinct.len()],
                sketches: vec![HashMap::default(); inputs.quantile.len()],
            });
        cell.count += 1;
        for (i, (_, field)) in inputs.numeric.iter().enumerate() {
            if let Some(x) = field_f64(event, *field) {
                cell.numeric[i].add(x);
            }
        }
        for (i, (_, field)) in inputs.distinct.iter().enumerate() {
            text.clear();
            if write_field_text(event, *field, text) && !cell.distinct[i].contains(text.as_str()) {
                cell.distinct[i].insert(text.as_str().into());
            }
        }
        for (i, (_, field)) in inputs.quantile.iter().enumerate() {
            if let Some(b) = field_f64(event, *field).and_then(SketchBucket::of) {
                *cell.sketches[i].entry(b).or_insert(0) += 1;
            }
        }
    }
}
