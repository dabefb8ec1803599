//! `tributary_quantile_cont(x, q)`: the exact quantile by linear interpolation between the
//! closest ranks, as DuckDB's `quantile_cont` and numpy's default compute it. DataFusion's own
//! `percentile_cont` quantizes the interpolation weight to 1e-6, which is close but not
//! the contract's exact value.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, LargeBinaryArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use tributary_shared::sketch::exact_quantile_cont_unsorted;

use super::{Aggregate, Rows, le_words};

/// The exact quantile. A group is its values; `q` is a constant argument, read from the first
/// batch, and partial states carry it in their first 8 bytes (NaN while unknown).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QuantileCont {
    q: Option<f64>,
}

impl QuantileCont {
    /// A partial state: `q`, then the values.
    fn encode_into(&self, values: &[f64], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.q.unwrap_or(f64::NAN).to_le_bytes());
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

impl Aggregate for QuantileCont {
    type Group = Vec<f64>;
    type Input = f64;

    fn read_args(&mut self, rows: &Rows<'_>) -> Result<()> {
        if self.q.is_some() {
            return Ok(());
        }
        let Some(arg) = rows.values.get(1) else {
            return Ok(());
        };
        let q = cast(arg, &DataType::Float64)?;
        let q = q.as_primitive::<Float64Type>();
        self.q = (!q.is_empty() && q.is_valid(0)).then(|| q.value(0));
        Ok(())
    }

    fn inputs(&self, rows: &Rows<'_>, add: impl FnMut(usize, f64)) -> Result<()> {
        rows.each_primitive::<Float64Type>(0, add)
    }

    fn add(group: &mut Vec<f64>, value: f64) {
        group.push(value);
    }

    fn merge(&mut self, group: &mut Vec<f64>, state: &[u8]) -> Result<()> {
        let mut words = le_words(state).map(f64::from_le_bytes);
        if let Some(q) = words.next()
            && !q.is_nan()
        {
            self.q = Some(q);
        }
        group.reserve(state.len() / 8);
        group.extend(words);
        Ok(())
    }

    fn evaluate(&self, groups: Vec<Vec<f64>>) -> Result<ArrayRef> {
        let q = self.q.ok_or_else(|| {
            DataFusionError::Plan("tributary_quantile_cont: q must be a constant".into())
        })?;
        Ok(Arc::new(Float64Array::from_iter(groups.into_iter().map(
            |mut values| exact_quantile_cont_unsorted(&mut values, q),
        ))))
    }

    fn state(&self, groups: Vec<Vec<f64>>) -> Result<ArrayRef> {
        // One buffer for all the groups' states, written in place (a coarse group of the
        // rollup holds millions of values: no vector per group to copy them through).
        let total: usize = groups.iter().map(|g| 8 + g.len() * 8).sum();
        let mut values = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(groups.len() + 1);
        offsets.push(0i64);
        for group in &groups {
            self.encode_into(group, &mut values);
            offsets.push(values.len() as i64);
        }
        Ok(Arc::new(LargeBinaryArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(values),
            None,
        )))
    }

    fn size(group: &Vec<f64>) -> usize {
        group.capacity() * 8
    }
}
