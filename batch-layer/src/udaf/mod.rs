//! The DataFusion aggregate functions (UDAFs) the view cube calls, and the plumbing they share.
//!
//! Each function is one file that says only what differs: what a row adds to a group, how a
//! partial state folds in, what a group evaluates to (`Aggregate`). The rest is written
//! once: the registered function (`GroupedUdaf`) and the selected rows of a batch (`Rows`)
//! here, the grouped accumulator over a vector of group states (`Grouped`) and the
//! single-group accumulator of an aggregate without GROUP BY (`SingleGroup`) in [`grouped`].
//!
//! All are grouped accumulators (one state vector indexed by group), because a view's cube
//! has tens of thousands of groups per query and per-group accumulators would be called once
//! per group per batch.
//!
//! - [`hll`]: `tributary_hll(x)`, `tributary_hll_observed(o)`, the Redis HyperLogLog;
//! - [`quantile_sketch`]: `tributary_qsketch(x)`, `tributary_qsketch_observed(c)`, the
//!   mergeable quantile sketch;
//! - [`count_distinct`]: `tributary_count_distinct(key)`, the exact distinct count;
//! - [`quantile_cont`]: `tributary_quantile_cont(x, q)`, the exact quantile;
//! - [`exact_sum`]: `tributary_sum(x)`, the correctly rounded sum, whatever the order;
//! - [`min_text`]: `tributary_min_text(x)`, `min` of text without an allocation per group
//!   (the deduplication's).

pub mod count_distinct;
pub mod exact_sum;
mod grouped;
pub mod hll;
pub mod min_text;
pub mod quantile_cont;
pub mod quantile_sketch;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, LargeBinaryArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, Signature, Volatility,
};

use count_distinct::CountDistinct;
use exact_sum::ExactSum;
pub(crate) use grouped::Mode;
use grouped::{Grouped, Groups, SingleGroup};
use hll::{HllInput, HllOf};
use quantile_cont::QuantileCont;
use quantile_sketch::{QuantileSketchOf, SketchInput};

/// Registers the view functions on a session: the aggregates and the per-row encodings.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    for udaf in aggregates() {
        ctx.register_udaf(udaf.as_ref().clone());
    }
    for udf in crate::encode::functions() {
        ctx.register_udf(udf.as_ref().clone());
    }
}

/// The view's aggregate functions: the sketches, the exact distinct count over distinct keys
/// and the exact quantile, and for those the rollup uses, their `_state` and `_merge`
/// variants ([`Mode`]); the deduplication's `min` of text. Ballista's scheduler and
/// executors get the same list.
pub fn aggregates() -> Vec<Arc<AggregateUDF>> {
    let bases = [
        Base {
            name: "tributary_hll",
            args: 1,
            return_type: DataType::Binary,
            make: |mode| Grouped::boxed(HllOf(HllInput::Text), mode),
            rollup: false,
        },
        Base {
            name: "tributary_hll_observed",
            args: 1,
            return_type: DataType::Binary,
            make: |mode| Grouped::boxed(HllOf(HllInput::Observation), mode),
            rollup: true,
        },
        Base {
            name: "tributary_qsketch",
            args: 1,
            return_type: DataType::Utf8,
            make: |mode| Grouped::boxed(QuantileSketchOf(SketchInput::Value), mode),
            rollup: false,
        },
        Base {
            name: "tributary_qsketch_observed",
            args: 1,
            return_type: DataType::Utf8,
            make: |mode| Grouped::boxed(QuantileSketchOf(SketchInput::Code), mode),
            rollup: true,
        },
        Base {
            name: "tributary_count_distinct",
            args: 1,
            return_type: DataType::Int64,
            make: |mode| Grouped::boxed(CountDistinct, mode),
            rollup: true,
        },
        Base {
            name: "tributary_sum",
            args: 1,
            return_type: DataType::Float64,
            make: |mode| Grouped::boxed(ExactSum, mode),
            rollup: true,
        },
        Base {
            name: "tributary_quantile_cont",
            args: 2,
            return_type: DataType::Float64,
            make: |mode| Grouped::boxed(QuantileCont::default(), mode),
            rollup: true,
        },
    ];
    let any = |n| Signature::any(n, Volatility::Immutable);
    let mut udafs = Vec::new();
    for base in bases {
        let variant = |name: String, mode: Mode, args: usize, return_type: DataType| {
            Arc::new(AggregateUDF::from(GroupedUdaf {
                name,
                signature: any(args),
                return_type,
                mode,
                make: base.make,
            }))
        };
        if base.rollup {
            // The state of the value alone (a constant argument such as `q` is the merge's).
            udafs.push(variant(
                format!("{}_state", base.name),
                Mode::StateOut,
                1,
                DataType::LargeBinary,
            ));
            udafs.push(variant(
                format!("{}_merge", base.name),
                Mode::MergeIn,
                base.args,
                base.return_type.clone(),
            ));
        }
        udafs.push(variant(
            base.name.to_string(),
            Mode::Raw,
            base.args,
            base.return_type,
        ));
    }
    udafs.push(Arc::new(AggregateUDF::from(min_text::MinText::default())));
    udafs
}

/// One of our aggregate functions before its variants are made.
struct Base {
    name: &'static str,
    /// Arguments of the function over rows: the value, then any constants.
    args: usize,
    return_type: DataType,
    make: fn(Mode) -> Groups,
    /// Whether the view's rollup uses its `_state` and `_merge` variants.
    rollup: bool,
}

/// What one aggregate function is, apart from the grouping plumbing of [`Grouped`].
pub(crate) trait Aggregate: Clone + Send + Sync + 'static {
    /// One group's state.
    type Group: Default + Send + Sync;
    /// What one selected row adds to a group.
    type Input;

    /// Reads constant arguments from a batch (before its rows); most functions have none.
    fn read_args(&mut self, _rows: &Rows<'_>) -> Result<()> {
        Ok(())
    }
    /// Calls `add(row, input)` for each of `rows` that adds to its group.
    fn inputs(&self, rows: &Rows<'_>, add: impl FnMut(usize, Self::Input)) -> Result<()>;
    /// Adds one row's input to its group.
    fn add(group: &mut Self::Group, input: Self::Input);
    /// Folds a partial state (one value of [`Aggregate::state`], as bytes) into a group.
    fn merge(&mut self, group: &mut Self::Group, state: &[u8]) -> Result<()>;
    /// The function's result, one row per group.
    fn evaluate(&self, groups: Vec<Self::Group>) -> Result<ArrayRef>;
    /// Partial states, one row per group; the result itself unless the result is lossy.
    fn state(&self, groups: Vec<Self::Group>) -> Result<ArrayRef> {
        self.evaluate(groups)
    }
    /// Heap bytes of one group (its inline size is counted by [`Grouped`]).
    fn size(group: &Self::Group) -> usize;
}

/// The arguments of one batch and DataFusion's optional row filter.
pub(crate) struct Rows<'a> {
    pub(crate) values: &'a [ArrayRef],
    filter: Option<&'a BooleanArray>,
}

impl<'a> Rows<'a> {
    fn arg(&self, i: usize) -> Result<&'a ArrayRef> {
        self.values
            .get(i)
            .ok_or_else(|| DataFusionError::Internal(format!("aggregate argument {i} missing")))
    }

    /// Calls `f(row, value)` for each selected row of argument `i`, cast to a primitive type.
    pub(crate) fn each_primitive<T: ArrowPrimitiveType>(
        &self,
        i: usize,
        mut f: impl FnMut(usize, T::Native),
    ) -> Result<()> {
        let column = cast(self.arg(i)?, &T::DATA_TYPE)?;
        let column = column.as_primitive::<T>();
        self.selected(column)
            .for_each(|row| f(row, column.value(row)));
        Ok(())
    }

    /// Calls `f(row, key)` for each selected row of argument `i`, a 16-byte distinct key.
    pub(crate) fn each_key(&self, i: usize, mut f: impl FnMut(usize, u128)) -> Result<()> {
        let column = self.arg(i)?;
        let Some(keys) = column
            .as_any()
            .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
            .filter(|k| k.value_length() == 16)
        else {
            return Err(DataFusionError::Internal(format!(
                "a distinct key is 16 bytes, not {}",
                column.data_type()
            )));
        };
        self.selected(keys).for_each(|row| {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(keys.value(row));
            f(row, u128::from_le_bytes(bytes))
        });
        Ok(())
    }

    /// Calls `f(row, state)` for each selected row of argument `i`, a partial state.
    fn each_state(&self, i: usize, mut f: impl FnMut(usize, &[u8]) -> Result<()>) -> Result<()> {
        let column = cast(self.arg(i)?, &DataType::LargeBinary)?;
        let column = column.as_binary::<i64>();
        self.selected(column)
            .try_for_each(|row| f(row, column.value(row)))
    }

    /// Calls `f(row, text)` for each selected row of argument `i`, cast to text.
    pub(crate) fn each_text(&self, i: usize, mut f: impl FnMut(usize, &str)) -> Result<()> {
        let column = cast(self.arg(i)?, &DataType::Utf8)?;
        let column = column.as_string::<i32>();
        self.selected(column)
            .for_each(|row| f(row, column.value(row)));
        Ok(())
    }

    /// The rows of `column` an aggregate reads: not null, and kept by the filter.
    fn selected<'c>(&self, column: &'c dyn Array) -> impl Iterator<Item = usize> + 'c
    where
        'a: 'c,
    {
        // Most batches have neither nulls nor a filter: no per-row checks then.
        let all = column.null_count() == 0 && self.filter.is_none();
        let filter = self.filter;
        (0..column.len()).filter(move |&row| {
            all || (column.is_valid(row) && filter.is_none_or(|f| f.is_valid(row) && f.value(row)))
        })
    }

    /// Rows in the batch.
    fn len(&self) -> usize {
        self.values.first().map_or(0, |v| v.len())
    }
}

/// Partial states, one per group, as one array. 64-bit offsets: a partial aggregation emits
/// all its groups at once, and the exact states of a large date pass 2 GiB.
pub(crate) fn states<B: AsRef<[u8]>>(values: impl IntoIterator<Item = B>) -> ArrayRef {
    Arc::new(LargeBinaryArray::from_iter_values(values))
}

/// Little-endian `N`-byte words of a partial state.
pub(crate) fn le_words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .filter_map(|c| <[u8; N]>::try_from(c).ok())
}

/// An aggregate function given by its grouped accumulator: what differs between ours is the
/// name, the types and the accumulator; the rest is here once.
pub(crate) struct GroupedUdaf {
    name: String,
    signature: Signature,
    return_type: DataType,
    mode: Mode,
    make: fn(Mode) -> Groups,
}

impl std::fmt::Debug for GroupedUdaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedUdaf")
            .field("name", &self.name)
            .finish()
    }
}

// Functions are registered by name, so the name identifies one.
impl PartialEq for GroupedUdaf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for GroupedUdaf {}

impl std::hash::Hash for GroupedUdaf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl AggregateUDFImpl for GroupedUdaf {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.return_type.clone())
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}_state", args.name),
            DataType::LargeBinary,
            true,
        ))])
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup((self.make)(self.mode))))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok((self.make)(self.mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use datafusion::prelude::SessionContext;
    use tributary_shared::hll::Hll;
    use tributary_shared::sketch::QuantileSketch;

    #[tokio::test]
    async fn sketches_match_their_shared_counterparts() -> anyhow::Result<()> {
        let ctx = SessionContext::new();
        register(&ctx);
        let users: Vec<String> = (0..5000).map(|i| format!("u{}", i % 1200)).collect();
        let lat: Vec<f64> = (0..5000).map(|i| (i % 977) as f64 * 1.5).collect();
        let groups: Vec<&str> = (0..5000)
            .map(|i| if i % 3 == 0 { "a" } else { "b" })
            .collect();
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
            ("g", Arc::new(StringArray::from(groups.clone())) as ArrayRef),
            (
                "user",
                Arc::new(StringArray::from(users.clone())) as ArrayRef,
            ),
            ("lat", Arc::new(Float64Array::from(lat.clone())) as ArrayRef),
        ])?;
        ctx.register_batch("t", batch)?;
        let df = ctx
            .sql("SELECT g, tributary_hll(user) AS h, tributary_qsketch(lat) AS q, tributary_quantile_cont(lat, 0.9) AS p FROM t GROUP BY g ORDER BY g")
            .await?;
        let out =
            arrow::compute::concat_batches(&df.schema().inner().clone(), &df.collect().await?)?;
        for (row, want_group) in ["a", "b"].iter().enumerate() {
            let mut hll = Hll::new();
            let mut sketch = QuantileSketch::new();
            for i in 0..5000 {
                if groups[i] == *want_group {
                    hll.add(users[i].as_bytes());
                    sketch.insert(lat[i]);
                }
            }
            let h = out.column(1).as_binary::<i32>().value(row);
            assert_eq!(Hll::from_redis(h), Some(hll));
            let q = out.column(2).as_string::<i32>().value(row);
            assert_eq!(QuantileSketch::decode(q), Some(sketch));
            let mut mine: Vec<f64> = (0..5000)
                .filter(|i| groups[*i] == *want_group)
                .map(|i| lat[i])
                .collect();
            mine.sort_by(f64::total_cmp);
            let exact = tributary_shared::sketch::exact_quantile_cont(&mine, 0.9);
            let p = out
                .column(3)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row);
            assert_eq!(Some(p), exact);
        }
        // Without GROUP BY (the single-group accumulator).
        let df = ctx.sql("SELECT tributary_hll(user) FROM t").await?;
        let batches = df.collect().await?;
        let h = batches[0].column(0).as_binary::<i32>().value(0);
        let mut all = Hll::new();
        users.iter().for_each(|u| all.add(u.as_bytes()));
        assert_eq!(Hll::from_redis(h).map(|h| h.count()), Some(all.count()));
        Ok(())
    }
}
