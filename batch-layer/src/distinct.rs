//! `tributary_count_distinct_ids(id)`: the exact number of distinct interned ids per group
//! ([`crate::encode::id_column`]). Each group collects its ids and counts them sorted and
//! deduplicated once, at the end: with a view's many small groups that is far cheaper than a
//! hash set per group (DataFusion's `count(DISTINCT)`), and it stays exact.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Int64Builder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, UInt32Type};
use datafusion::common::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

/// Ids per group (with repeats until evaluated). Partial states are the ids as little-endian
/// `u32`s.
#[derive(Debug, Default)]
pub(crate) struct DistinctIdGroups {
    groups: Vec<Vec<u32>>,
}

fn ids(values: &ArrayRef) -> Result<arrow::array::UInt32Array> {
    Ok(cast(values, &DataType::UInt32)?
        .as_primitive::<UInt32Type>()
        .clone())
}

fn selected(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

fn distinct_count(mut ids: Vec<u32>) -> i64 {
    ids.sort_unstable();
    ids.dedup();
    ids.len() as i64
}

impl GroupsAccumulator for DistinctIdGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        let ids = ids(&values[0])?;
        if ids.null_count() == 0 && opt_filter.is_none() {
            for (id, g) in ids.values().iter().zip(group_indices) {
                self.groups[*g].push(*id);
            }
            return Ok(());
        }
        for (row, g) in group_indices.iter().enumerate() {
            if ids.is_valid(row) && selected(opt_filter, row) {
                self.groups[*g].push(ids.value(row));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = Int64Builder::with_capacity(taken.len());
        for ids in taken {
            out.append_value(distinct_count(ids));
        }
        Ok(Arc::new(out.finish()))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = BinaryBuilder::with_capacity(taken.len(), taken.len() * 16);
        for mut ids in taken {
            ids.sort_unstable();
            ids.dedup();
            let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
            out.append_value(bytes);
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
            if states.is_valid(row) {
                self.groups[*g].extend(
                    states
                        .value(row)
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let ids = ids(&values[0])?;
        let mut out = BinaryBuilder::with_capacity(ids.len(), ids.len() * 4);
        for row in 0..ids.len() {
            if ids.is_valid(row) && selected(opt_filter, row) {
                out.append_value(ids.value(row).to_le_bytes());
            } else {
                out.append_value([]);
            }
        }
        Ok(vec![Arc::new(out.finish())])
    }

    fn size(&self) -> usize {
        self.groups.iter().map(|g| g.capacity() * 4).sum::<usize>()
            + self.groups.capacity() * std::mem::size_of::<Vec<u32>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, UInt32Array};
    use datafusion::prelude::SessionContext;

    /// Grouped and without GROUP BY, over several partitions (so partial states merge), the
    /// count equals a count of the distinct values.
    #[tokio::test]
    async fn counts_distinct_ids_exactly() -> anyhow::Result<()> {
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(3);
        let ctx = SessionContext::new_with_config(config);
        crate::sketches::register(&ctx);
        let rows = 9000u32;
        let ids: Vec<Option<u32>> = (0..rows)
            .map(|i| (i % 17 != 0).then_some((i * 7919) % 1301))
            .collect();
        let groups: Vec<String> = (0..rows).map(|i| format!("g{}", i % 5)).collect();
        let mut parts = Vec::new();
        for chunk in 0..3 {
            let range = (chunk * 3000) as usize..((chunk + 1) * 3000) as usize;
            parts.push(vec![arrow::record_batch::RecordBatch::try_from_iter(
                vec![
                    (
                        "g",
                        Arc::new(StringArray::from(groups[range.clone()].to_vec())) as ArrayRef,
                    ),
                    (
                        "id",
                        Arc::new(UInt32Array::from(ids[range].to_vec())) as ArrayRef,
                    ),
                ],
            )?]);
        }
        let schema = parts[0][0].schema();
        ctx.register_table(
            "t",
            Arc::new(datafusion::datasource::MemTable::try_new(schema, parts)?),
        )?;
        let out = ctx
            .sql("SELECT g, tributary_count_distinct_ids(id), count(DISTINCT id) FROM t GROUP BY g")
            .await?
            .collect()
            .await?;
        let mut checked = 0;
        for b in &out {
            let mine = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
            let theirs = b.column(2).as_primitive::<arrow::datatypes::Int64Type>();
            for row in 0..b.num_rows() {
                assert_eq!(mine.value(row), theirs.value(row));
                checked += 1;
            }
        }
        assert_eq!(checked, 5);
        let all = ctx
            .sql("SELECT tributary_count_distinct_ids(id) FROM t")
            .await?
            .collect()
            .await?;
        let mut want: Vec<u32> = ids.iter().flatten().copied().collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(
            all[0]
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            want.len() as i64
        );
        Ok(())
    }
}
