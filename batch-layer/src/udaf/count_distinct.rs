//! `tributary_count_distinct_ids(id)`: the exact number of distinct interned ids per group
//! ([`crate::encode::id_column`]). Each group collects its ids and counts them sorted and
//! deduplicated once, at the end: with a view's many small groups that is far cheaper than a
//! hash set per group (DataFusion's `count(DISTINCT)`), and it stays exact.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array};
use arrow::datatypes::UInt32Type;
use datafusion::common::Result;

use super::{Aggregate, Rows, le_words};

/// The exact distinct count. A group is its ids, with repeats until evaluated; partial states
/// are the distinct ids as little-endian `u32`s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountDistinctIds;

fn distinct(mut ids: Vec<u32>) -> Vec<u32> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A partial state: the group's distinct ids.
fn encode(ids: Vec<u32>) -> Vec<u8> {
    distinct(ids)
        .iter()
        .flat_map(|id| id.to_le_bytes())
        .collect()
}

impl Aggregate for CountDistinctIds {
    type Group = Vec<u32>;
    type Input = u32;

    fn inputs(&self, rows: &Rows<'_>, add: impl FnMut(usize, u32)) -> Result<()> {
        rows.each_primitive::<UInt32Type>(0, add)
    }

    fn add(group: &mut Vec<u32>, id: u32) {
        group.push(id);
    }

    fn merge(&mut self, group: &mut Vec<u32>, state: &[u8]) -> Result<()> {
        group.extend(le_words(state).map(u32::from_le_bytes));
        Ok(())
    }

    fn evaluate(&self, groups: Vec<Vec<u32>>) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from_iter_values(
            groups.into_iter().map(|ids| distinct(ids).len() as i64),
        )))
    }

    fn state(&self, groups: Vec<Vec<u32>>) -> Result<ArrayRef> {
        Ok(Arc::new(BinaryArray::from_iter_values(
            groups.into_iter().map(encode),
        )))
    }

    fn size(group: &Vec<u32>) -> usize {
        group.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, StringArray, UInt32Array};
    use datafusion::prelude::SessionContext;

    /// Grouped and without GROUP BY, over several partitions (so partial states merge), the
    /// count equals a count of the distinct values.
    #[tokio::test]
    async fn counts_distinct_ids_exactly() -> anyhow::Result<()> {
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(3);
        let ctx = SessionContext::new_with_config(config);
        crate::udaf::register(&ctx);
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
