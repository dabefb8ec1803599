//! `tributary_quantile_cont(x, q)`: the exact quantile by linear interpolation between the
//! closest ranks, as DuckDB's `quantile_cont` and numpy's default compute it. DataFusion's own
//! `percentile_cont` quantizes the interpolation weight to 1e-6, which is close but not
//! the contract's exact value.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Float64Builder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use tributary_shared::sketch::exact_quantile_cont_unsorted;

/// Values per group, and `q` (a constant argument, read from the first batch; the partial
/// states carry it in their first 8 bytes).
#[derive(Debug, Default)]
pub(crate) struct Groups {
    groups: Vec<Vec<f64>>,
    q: Option<f64>,
}

fn q_of(values: &[ArrayRef]) -> Result<Option<f64>> {
    let Some(arg) = values.get(1) else {
        return Ok(None);
    };
    let q = cast(arg, &DataType::Float64)?;
    let q = q.as_primitive::<Float64Type>();
    Ok((!q.is_empty() && q.is_valid(0)).then(|| q.value(0)))
}

impl Groups {
    fn encode(&self, values: &[f64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + values.len() * 8);
        out.extend_from_slice(&self.q.unwrap_or(f64::NAN).to_le_bytes());
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

fn f64s(bytes: &[u8]) -> impl Iterator<Item = f64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        if self.q.is_none() {
            self.q = q_of(values)?;
        }
        let nums = cast(&values[0], &DataType::Float64)?;
        let nums = nums.as_primitive::<Float64Type>();
        for (row, g) in group_indices.iter().enumerate() {
            if nums.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                self.groups[*g].push(nums.value(row));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let q = self.q.ok_or_else(|| {
            DataFusionError::Plan("tributary_quantile_cont: q must be a constant".into())
        })?;
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = Float64Builder::with_capacity(taken.len());
        for mut values in taken {
            out.append_option(exact_quantile_cont_unsorted(&mut values, q));
        }
        Ok(Arc::new(out.finish()))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = BinaryBuilder::with_capacity(taken.len(), taken.len() * 64);
        for values in &taken {
            out.append_value(self.encode(values));
        }
        Ok(vec![Arc::new(out.finish())])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        let states = values[0].as_binary::<i32>();
        for (row, g) in group_indices.iter().enumerate() {
            if !states.is_valid(row) {
                continue;
            }
            let bytes = states.value(row);
            let mut it = f64s(bytes);
            if let Some(q) = it.next()
                && !q.is_nan()
            {
                self.q = Some(q);
            }
            self.groups[*g].extend(it);
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let q = q_of(values)?.or(self.q);
        let nums = cast(&values[0], &DataType::Float64)?;
        let nums = nums.as_primitive::<Float64Type>();
        let mut out = BinaryBuilder::with_capacity(nums.len(), nums.len() * 16);
        for row in 0..nums.len() {
            let mut bytes = q.unwrap_or(f64::NAN).to_le_bytes().to_vec();
            if nums.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                bytes.extend_from_slice(&nums.value(row).to_le_bytes());
            }
            out.append_value(bytes);
        }
        Ok(vec![Arc::new(out.finish())])
    }

    fn size(&self) -> usize {
        self.groups.iter().map(|g| g.capacity() * 8).sum::<usize>()
            + self.groups.capacity() * std::mem::size_of::<Vec<f64>>()
    }
}
