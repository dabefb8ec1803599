//! `tributary_qsketch(x)` and `tributary_qsketch_observed(c)`: the log-bucket quantile sketch
//! of a group's values, encoded as text, in the encoding of `tributary_shared` so the serving
//! layer can merge a batch sketch with the speed layer's buckets. `c` is the bucket code
//! `tributary_sketch_bucket` ([`crate::encode`]) computed once per event.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{Float64Type, UInt32Type};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use tributary_shared::sketch::{QuantileSketch, SketchBucket};

use super::{Aggregate, Rows};

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
/// a map update per value), and the buckets folded in so far (and from merged states).
#[derive(Debug, Default)]
pub(crate) struct SketchGroup {
    pending: Vec<u32>,
    sketch: QuantileSketch,
}

impl SketchGroup {
    fn fold(&mut self) -> &QuantileSketch {
        self.pending.sort_unstable();
        for run in self.pending.chunk_by(|a, b| a == b) {
            if let Some(b) = SketchBucket::from_code(run[0]) {
                self.sketch.add_bucket(b, run.len() as u64);
            }
        }
        self.pending.clear();
        &self.sketch
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
        let other = std::str::from_utf8(state)
            .ok()
            .and_then(QuantileSketch::decode)
            .ok_or_else(|| {
                DataFusionError::Internal(
                    "tributary_qsketch: state is not an encoded sketch".into(),
                )
            })?;
        group.sketch.merge(&other);
        Ok(())
    }

    fn evaluate(&self, groups: Vec<SketchGroup>) -> Result<ArrayRef> {
        Ok(Arc::new(StringArray::from_iter_values(
            groups.into_iter().map(|mut g| g.fold().encode()),
        )))
    }

    fn size(group: &SketchGroup) -> usize {
        group.pending.capacity() * 4 + group.sketch.bucket_count() * 24
    }
}
