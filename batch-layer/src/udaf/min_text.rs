//! `tributary_min_text(x)`: the least text of each group, by bytes, as SQL `min` of text. The
//! deduplication keeps one record per `event_id` with a `min` per column, so each of its text
//! columns holds one value per event of the date.
//!
//! Hand-written rather than DataFusion's `min` because of how that one holds them: a
//! `Vec<u8>` allocated per group and value, and a hash map of the batch's groups built per
//! batch. For the 10M-event day of the benchmark (2M checkouts, three text columns) that was
//! 6M allocations, as many frees, and ~13 % of the run's page faults. Here a group's value is
//! a span of one arena: a new group costs a copy and 12 bytes; a smaller value for a group
//! (only a duplicate whose text differs) is appended and the span moved, the old bytes left.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayAccessor, ArrayRef, AsArray, BooleanArray, LargeStringArray, StringArray,
    StringViewArray,
};
use arrow::compute::kernels::boolean::not;
use arrow::compute::{nullif, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, exec_err, internal_err};
use datafusion::functions_aggregate::min_max::min_udaf;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

/// The registered function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MinText {
    signature: Signature,
}

impl Default for MinText {
    fn default() -> Self {
        let text = vec![DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        MinText {
            signature: Signature::uniform(1, text, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for MinText {
    fn name(&self) -> &str {
        "tributary_min_text"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    /// The input's type, as `min`'s.
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => exec_err!("tributary_min_text takes one argument"),
        }
    }
    /// The state is the value so far.
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}_min", args.name),
            args.return_type().clone(),
            true,
        ))])
    }
    /// Without GROUP BY there is one group: DataFusion's `min`, which this one equals.
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        min_udaf().accumulator(args)
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(MinTexts::new(
            args.return_field.data_type().clone(),
        )))
    }
}

/// A group without a value yet (no row, or only nulls).
const NONE: u32 = u32::MAX;

/// Each group's least text so far: `arena[starts[g]..starts[g] + lens[g]]`.
struct MinTexts {
    data_type: DataType,
    arena: String,
    starts: Vec<u64>,
    lens: Vec<u32>,
}

impl MinTexts {
    fn new(data_type: DataType) -> MinTexts {
        MinTexts {
            data_type,
            arena: String::new(),
            starts: Vec::new(),
            lens: Vec::new(),
        }
    }

    fn value(&self, group: usize) -> Option<&str> {
        let len = *self.lens.get(group)?;
        if len == NONE {
            return None;
        }
        let start = *self.starts.get(group)? as usize;
        self.arena.get(start..start + len as usize)
    }

    /// Keeps `text` as the group's value if it has none or a greater one.
    fn offer(&mut self, group: usize, text: &str) -> Result<()> {
        if self
            .value(group)
            .is_some_and(|old| old.as_bytes() <= text.as_bytes())
        {
            return Ok(());
        }
        let len = match u32::try_from(text.len()) {
            Ok(len) if len != NONE => len,
            _ => return exec_err!("tributary_min_text: a value of {} bytes", text.len()),
        };
        let (Some(start), Some(l)) = (self.starts.get_mut(group), self.lens.get_mut(group)) else {
            return internal_err!("tributary_min_text: group {group} out of range");
        };
        *start = self.arena.len() as u64;
        *l = len;
        self.arena.push_str(text);
        Ok(())
    }

    /// Offers each selected row of `text` to its group.
    fn offer_all<'a, A: ArrayAccessor<Item = &'a str>>(
        &mut self,
        text: A,
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        // Most batches have neither nulls nor a filter: no per-row checks then.
        let all = text.null_count() == 0 && filter.is_none();
        for (row, group) in groups.iter().enumerate() {
            let selected = all
                || (text.is_valid(row) && filter.is_none_or(|f| f.is_valid(row) && f.value(row)));
            if selected {
                self.offer(*group, text.value(row))?;
            }
        }
        Ok(())
    }

    /// The first `n` groups' values (all when `n` is past the end), as an array of the input's
    /// type; the groups after them become the first.
    fn emit(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let total = self.lens.len();
        let n = match emit_to {
            EmitTo::All => total,
            EmitTo::First(n) => n.min(total),
        };
        let values = (0..n).map(|g| self.value(g));
        let array: ArrayRef = match self.data_type {
            DataType::Utf8 => Arc::new(values.collect::<StringArray>()),
            DataType::LargeUtf8 => Arc::new(values.collect::<LargeStringArray>()),
            DataType::Utf8View => Arc::new(values.collect::<StringViewArray>()),
            ref other => return internal_err!("tributary_min_text of {other}"),
        };
        // The rest move to a new arena (a partial emit happens under memory pressure, where
        // the emitted groups' bytes are what must be freed).
        let mut rest = MinTexts::new(self.data_type.clone());
        rest.resize(total - n);
        for g in n..total {
            if let Some(v) = self.value(g) {
                rest.offer(g - n, v)?;
            }
        }
        *self = rest;
        Ok(array)
    }

    fn resize(&mut self, groups: usize) {
        self.starts.resize(groups, 0);
        self.lens.resize(groups, NONE);
    }
}

impl GroupsAccumulator for MinTexts {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        let Some(column) = values.first() else {
            return internal_err!("tributary_min_text takes one argument");
        };
        match column.data_type() {
            DataType::Utf8 => self.offer_all(column.as_string::<i32>(), group_indices, opt_filter),
            DataType::LargeUtf8 => {
                self.offer_all(column.as_string::<i64>(), group_indices, opt_filter)
            }
            DataType::Utf8View => {
                self.offer_all(column.as_string_view(), group_indices, opt_filter)
            }
            other => internal_err!("tributary_min_text of {other}"),
        }
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.emit(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)?])
    }

    /// States are values: they merge as rows do.
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.update_batch(values, group_indices, None, total_num_groups)
    }

    /// A row's state is its value (null where the filter drops it): what lets DataFusion skip
    /// the partial aggregation of a deduplication, whose groups are nearly all single rows.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let Some(column) = values.first() else {
            return internal_err!("tributary_min_text takes one argument");
        };
        let Some(filter) = opt_filter else {
            return Ok(vec![Arc::clone(column)]);
        };
        let dropped = not(&prep_null_mask_filter(filter))?;
        Ok(vec![nullif(column, &dropped)?])
    }

    fn size(&self) -> usize {
        self.arena.capacity()
            + self.starts.capacity() * size_of::<u64>()
            + self.lens.capacity() * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::RecordBatch;
    use datafusion::logical_expr::AggregateUDF;
    use datafusion::prelude::SessionContext;

    /// Equals `min` over text of each type, with nulls, filters, ties, a group of nulls only,
    /// and rows of one group spread over batches and partitions (partial states merged).
    #[tokio::test]
    async fn equals_min_of_text() -> anyhow::Result<()> {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new()
                .with_target_partitions(3)
                .with_batch_size(7),
        );
        ctx.register_udaf(AggregateUDF::from(MinText::default()));
        let n = 500;
        let ids: Vec<i64> = (0..n).map(|i| i % 61).collect();
        let text: Vec<Option<String>> = (0..n)
            .map(|i| match (i * 7919) % 13 {
                // A group of nulls only.
                _ if i % 61 == 5 => None,
                0 => None,
                1 => Some(String::new()),
                k => Some(format!("{}-é{}", "x".repeat((k % 5) as usize * 6), i % 17)),
            })
            .collect();
        for data_type in [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] {
            let column = arrow::compute::cast(&StringArray::from(text.clone()), &data_type)?;
            let batch = RecordBatch::try_from_iter(vec![
                (
                    "id",
                    Arc::new(arrow::array::Int64Array::from(ids.clone())) as ArrayRef,
                ),
                ("t", column),
            ])?;
            let batches: Vec<RecordBatch> = (0..n as usize)
                .step_by(50)
                .map(|at| batch.slice(at, 50))
                .collect();
            let table = datafusion::datasource::MemTable::try_new(
                batch.schema(),
                batches.chunks(4).map(|c| c.to_vec()).collect(),
            )?;
            let _ = ctx.deregister_table("t")?;
            ctx.register_table("t", Arc::new(table))?;
            let ours = ctx
                .sql("SELECT id, tributary_min_text(t) AS m, tributary_min_text(t) FILTER (WHERE id % 2 = 0) AS f FROM t GROUP BY id ORDER BY id")
                .await?
                .collect()
                .await?;
            let theirs = ctx
                .sql("SELECT id, min(t) AS m, min(t) FILTER (WHERE id % 2 = 0) AS f FROM t GROUP BY id ORDER BY id")
                .await?
                .collect()
                .await?;
            assert_eq!(
                arrow::util::pretty::pretty_format_batches(&ours)?.to_string(),
                arrow::util::pretty::pretty_format_batches(&theirs)?.to_string(),
                "{data_type}"
            );
            assert_eq!(ours[0].schema().field(1).data_type(), &data_type);
        }
        Ok(())
    }

    #[test]
    fn a_partial_emit_keeps_the_rest() -> anyhow::Result<()> {
        let mut m = MinTexts::new(DataType::Utf8);
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("b"),
            Some("zz"),
            None,
            Some("a"),
            Some("yy"),
        ]));
        m.update_batch(&[values], &[0, 1, 2, 0, 1], None, 4)?;
        let first = m.evaluate(EmitTo::First(1))?;
        assert_eq!(first.as_string::<i32>().value(0), "a");
        let rest = m.evaluate(EmitTo::All)?;
        let rest = rest.as_string::<i32>();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest.value(0), "yy");
        assert!(rest.is_null(1) && rest.is_null(2));
        Ok(())
    }
}
