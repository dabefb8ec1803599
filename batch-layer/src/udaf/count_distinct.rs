//! `tributary_count_distinct(key)`: the exact number of distinct values per group, over the
//! values' 128-bit keys (`tributary_distinct_key`, [`crate::encode`]). A group collects its
//! keys and sorts out repeats whenever they have doubled since the last time, so it holds at
//! most about twice its distinct keys: with a view's many small groups that is far cheaper
//! than a hash set per group (DataFusion's `count(DISTINCT)`), and its size is what the memory
//! pool is told, so a group too large for `batch.memory_limit` spills or fails instead of
//! growing unseen.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, LargeBinaryArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::common::Result;

use super::{Aggregate, Rows, le_words};

/// The exact distinct count. Partial states are the distinct keys as little-endian `u128`s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountDistinct;

/// One group's keys: sorted and distinct up to `distinct`, appended after it.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    keys: Vec<u128>,
    distinct: usize,
}

impl Keys {
    fn push(&mut self, key: u128) {
        self.keys.push(key);
        self.compact_if_doubled();
    }

    fn compact_if_doubled(&mut self) {
        if self.keys.len() >= 2 * self.distinct + 64 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        // The stable sort finds the sorted prefix (and the sorted runs merged states add)
        // and merges them, instead of sorting them again.
        self.keys.sort();
        self.keys.dedup();
        self.distinct = self.keys.len();
    }
}

impl Aggregate for CountDistinct {
    type Group = Keys;
    type Input = u128;

    fn inputs(&self, rows: &Rows<'_>, add: impl FnMut(usize, u128)) -> Result<()> {
        rows.each_key(0, add)
    }

    fn add(group: &mut Keys, key: u128) {
        group.push(key);
    }

    fn merge(&mut self, group: &mut Keys, state: &[u8]) -> Result<()> {
        // A state is a sorted run: appended whole, then compacted if it doubled the group.
        group.keys.reserve(state.len() / 16);
        group.keys.extend(le_words(state).map(u128::from_le_bytes));
        group.compact_if_doubled();
        Ok(())
    }

    fn evaluate(&self, groups: Vec<Keys>) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from_iter_values(
            groups.into_iter().map(|mut g| {
                g.compact();
                g.distinct as i64
            }),
        )))
    }

    fn state(&self, groups: Vec<Keys>) -> Result<ArrayRef> {
        // One buffer for all the groups' keys, written in place (no vector per group).
        let total: usize = groups.iter().map(|g| g.keys.len()).sum();
        let mut values = Vec::with_capacity(total * 16);
        let mut offsets = Vec::with_capacity(groups.len() + 1);
        offsets.push(0i64);
        for mut g in groups {
            g.compact();
            for k in &g.keys {
                values.extend_from_slice(&k.to_le_bytes());
            }
            offsets.push(values.len() as i64);
        }
        Ok(Arc::new(LargeBinaryArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(values),
            None,
        )))
    }

    fn size(group: &Keys) -> usize {
        // The keys, and the scratch a compaction's stable sort takes (half of them).
        group.keys.capacity() * 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, StringArray};
    use datafusion::prelude::SessionContext;

    /// Grouped and without GROUP BY, over several partitions (so partial states merge), the
    /// count equals DataFusion's own `count(DISTINCT)` of the values.
    #[tokio::test]
    async fn counts_distinct_values_exactly() -> anyhow::Result<()> {
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(3);
        let ctx = SessionContext::new_with_config(config);
        crate::udaf::register(&ctx);
        let rows = 9000u32;
        let values: Vec<Option<String>> = (0..rows)
            .map(|i| (i % 17 != 0).then(|| format!("u{}", (i * 7919) % 1301)))
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
                        "v",
                        Arc::new(StringArray::from(values[range].to_vec())) as ArrayRef,
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
            .sql(
                "SELECT g, tributary_count_distinct(tributary_distinct_key(v)), \
                 count(DISTINCT v) FROM t GROUP BY g",
            )
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
            .sql("SELECT tributary_count_distinct(tributary_distinct_key(v)) FROM t")
            .await?
            .collect()
            .await?;
        let mut want: Vec<&String> = values.iter().flatten().collect();
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
