//! `tributary_qsketch(x)` and `tributary_qsketch_observed(c)`: the log-bucket quantile sketch
//! of a group's values, encoded as text, in the encoding of `tributary_shared` so the serving
//! layer can merge a batch sketch with the speed layer's buckets. `c` is the bucket code
//! `tributary_sketch_bucket` ([`crate::encode`]) computed once per event.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{Float64Type, UInt32Type};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use tributary_shared::sketch::{QuantileSketch, SketchBucket, merge_sorted_counts};

use super::{Aggregate, Rows, states};

/// What `tributary_qsketch` is given: values, or precomputed bucket codes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SketchInput {
    Value,
    Code,
}

/// The quantile-sketch aggregate of one kind of input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuantileSketchOf(pub(crate) SketchInput);

/// One group's sketch: bucket codes gathered since the last fold (appending is cheaper than
/// a map update per value), the buckets of states merged since then (the same: a coarse
/// group of the rollup merges tens of thousands of small states, and merging each into its
/// buckets at once cost a pass over them per state), and the buckets folded in so far as
/// `(code, count)` in code order, which is bucket order ([`SketchBucket::code`]).
#[derive(Debug, Default)]
pub(crate) struct SketchGroup {
    pending: Vec<u32>,
    incoming: Vec<(u32, u64)>,
    buckets: Vec<(u32, u64)>,
}

/// Bytes of one bucket in a partial state: its code and its count, little-endian.
const STATE_BUCKET: usize = 12;

impl SketchGroup {
    /// Folds the pending codes and merged buckets into the buckets.
    fn fold(&mut self) {
        if !self.pending.is_empty() {
            self.pending.sort_unstable();
            let runs: Vec<(u32, u64)> = self
                .pending
                .chunk_by(|a, b| a == b)
                .map(|run| (run[0], run.len() as u64))
                .collect();
            self.pending.clear();
            self.add_sorted(&runs);
        }
        if !self.incoming.is_empty() {
            self.incoming.sort_unstable_by_key(|(code, _)| *code);
            let mut runs: Vec<(u32, u64)> = Vec::with_capacity(self.incoming.len());
            for (code, count) in self.incoming.drain(..) {
                match runs.last_mut() {
                    Some(last) if last.0 == code => last.1 += count,
                    _ => runs.push((code, count)),
                }
            }
            self.add_sorted(&runs);
        }
    }

    /// Adds bucket counts given in code order, each code once.
    fn add_sorted(&mut self, other: &[(u32, u64)]) {
        if self.buckets.is_empty() {
            self.buckets.extend_from_slice(other);
            return;
        }
        self.buckets = merge_sorted_counts(&self.buckets, other);
    }

    /// The partial state: the buckets' codes and counts (binary; text only for the result).
    fn state(mut self) -> Vec<u8> {
        self.fold();
        let mut out = Vec::with_capacity(self.buckets.len() * STATE_BUCKET);
        for (code, count) in &self.buckets {
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    /// The sketch in the shared text encoding.
    fn encode(mut self) -> String {
        self.fold();
        QuantileSketch::from_buckets(
            self.buckets
                .iter()
                .filter_map(|(code, count)| Some((SketchBucket::from_code(*code)?, *count))),
        )
        .encode()
    }
}

impl Aggregate for QuantileSketchOf {
    type Group = SketchGroup;
    /// A bucket code.
    type Input = u32;

    fn inputs(&self, rows: &Rows<'_>, mut add: impl FnMut(usize, u32)) -> Result<()> {
        match self.0 {
            // NaN has no bucket and adds nothing.
            SketchInput::Value => rows.each_primitive::<Float64Type>(0, |row, value| {
                if let Some(bucket) = SketchBucket::of(value) {
                    add(row, bucket.code());
                }
            }),
            SketchInput::Code => rows.each_primitive::<UInt32Type>(0, add),
        }
    }

    fn add(group: &mut SketchGroup, code: u32) {
        group.pending.push(code);
    }

    fn merge(&mut self, group: &mut SketchGroup, state: &[u8]) -> Result<()> {
        if !state.len().is_multiple_of(STATE_BUCKET) {
            return Err(DataFusionError::Internal(
                "tributary_qsketch: a partial state is not whole buckets".into(),
            ));
        }
        group.incoming.reserve(state.len() / STATE_BUCKET);
        group
            .incoming
            .extend(state.chunks_exact(STATE_BUCKET).filter_map(|c| {
                let (code, count) = c.split_first_chunk::<4>()?;
                Some((
                    u32::from_le_bytes(*code),
                    u64::from_le_bytes(count.try_into().ok()?),
                ))
            }));
        // Folded once they outgrow the buckets: each state's buckets are then passed over
        // about twice, whatever the number of states.
        if group.incoming.len() >= 2 * group.buckets.len() + 1024 {
            group.fold();
        }
        Ok(())
    }

    fn evaluate(&self, groups: Vec<SketchGroup>) -> Result<ArrayRef> {
        Ok(Arc::new(StringArray::from_iter_values(
            groups.into_iter().map(SketchGroup::encode),
        )))
    }

    fn state(&self, groups: Vec<SketchGroup>) -> Result<ArrayRef> {
        Ok(states(groups.into_iter().map(SketchGroup::state)))
    }

    fn size(group: &SketchGroup) -> usize {
        group.pending.capacity() * 4 + (group.incoming.capacity() + group.buckets.capacity()) * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partial states of any split merge into the sketch of all the values, in the shared
    /// text encoding.
    #[test]
    fn partial_states_merge_into_the_shared_sketch() -> Result<()> {
        let values: Vec<f64> = (0..5000)
            .map(|i| ((i * 37) % 1009) as f64 - 300.0)
            .collect();
        let mut want = QuantileSketch::new();
        values.iter().for_each(|v| want.insert(*v));
        let code = |v: &f64| SketchBucket::of(*v).map(SketchBucket::code);
        let mut merged = SketchGroup::default();
        for part in values.chunks(1700) {
            let mut group = SketchGroup::default();
            part.iter()
                .filter_map(code)
                .for_each(|c| group.pending.push(c));
            QuantileSketchOf(SketchInput::Code).merge(&mut merged, &group.state())?;
        }
        merged
            .pending
            .extend(values.iter().take(10).filter_map(code));
        values.iter().take(10).for_each(|v| want.insert(*v));
        assert_eq!(merged.encode(), want.encode());
        assert!(
            QuantileSketchOf(SketchInput::Code)
                .merge(&mut SketchGroup::default(), &[1, 2, 3])
                .is_err()
        );
        Ok(())
    }
}
