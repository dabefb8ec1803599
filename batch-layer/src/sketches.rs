//! DataFusion aggregate functions that build the mergeable sketches batch views store next to
//! their exact values, in the encodings of `tributary_shared` (so the serving layer can union
//! a batch sketch with a speed key):
//!
//! - `tributary_hll(x)`: Redis HyperLogLog bytes (sparse while small) of `x` as text;
//! - `tributary_qsketch(x)`: the log-bucket quantile sketch of `x`, encoded as text.
//!
//! Both are grouped accumulators (one state vector indexed by group), because a view's
//! cube has tens of thousands of groups per query and per-group accumulators would be called
//! once per group per batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use tributary_shared::hll::{self, Hll, REGISTERS};
use tributary_shared::sketch::QuantileSketch;

/// Registers both functions on a session.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_udaf(AggregateUDF::from(HllUdaf::new()));
    ctx.register_udaf(AggregateUDF::from(QuantileUdaf::new()));
    ctx.register_udaf(AggregateUDF::from(crate::quantile::QuantileContUdaf::new()));
}

/// One group's HyperLogLog: its `(register, rank)` observations while few, the registers once
/// the list would outgrow them (so memory stays ≤ 16 KiB per group, and the many small groups
/// of a cube never pay for 16384 registers).
#[derive(Debug, Clone, Default)]
enum HllState {
    #[default]
    Empty,
    Small(Vec<(u16, u8)>),
    Dense(Box<Hll>),
}

/// Observations kept before switching to registers (about the registers' size).
const SMALL_MAX: usize = REGISTERS / 4;

impl HllState {
    fn observe(&mut self, index: usize, rank: u8) {
        match self {
            HllState::Empty => *self = HllState::Small(vec![(index as u16, rank)]),
            HllState::Small(v) => {
                v.push((index as u16, rank));
                if v.len() >= SMALL_MAX {
                    let mut h = Hll::new();
                    for (i, r) in v.iter() {
                        h.observe(*i as usize, *r);
                    }
                    *self = HllState::Dense(Box::new(h));
                }
            }
            HllState::Dense(h) => h.observe(index, rank),
        }
    }

    /// Folds in another sketch's Redis bytes (a partial aggregate's state).
    fn merge_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(obs) = Hll::sparse_observations(bytes) {
            for (i, r) in obs {
                self.observe(i as usize, r);
            }
            return Ok(());
        }
        let other = Hll::from_redis(bytes).ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(
                "tributary_hll: state is not a Redis HyperLogLog".into(),
            )
        })?;
        let mut h = match std::mem::take(self) {
            HllState::Dense(h) => *h,
            HllState::Empty => Hll::new(),
            HllState::Small(v) => {
                let mut h = Hll::new();
                v.iter().for_each(|(i, r)| h.observe(*i as usize, *r));
                h
            }
        };
        h.merge(&other);
        *self = HllState::Dense(Box::new(h));
        Ok(())
    }

    /// Redis bytes (sparse while small).
    fn encode(self) -> Vec<u8> {
        match self {
            HllState::Empty => Hll::redis_from_observations(&mut []),
            HllState::Small(mut v) => Hll::redis_from_observations(&mut v),
            HllState::Dense(h) => h.to_redis(),
        }
    }

    fn size(&self) -> usize {
        match self {
            HllState::Empty => 0,
            HllState::Small(v) => v.capacity() * 4,
            HllState::Dense(_) => REGISTERS,
        }
    }
}

fn as_text(values: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(values, &DataType::Utf8)?)
}

fn as_f64(values: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(values, &DataType::Float64)?)
}

fn selected(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

/// `tributary_hll(x) -> Binary`: Redis HyperLogLog of `x` as text (what `PFADD` of the same
/// text would build).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HllUdaf {
    signature: Signature,
}

impl HllUdaf {
    pub fn new() -> Self {
        HllUdaf {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for HllUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for HllUdaf {
    fn name(&self) -> &str {
        "tributary_hll"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}_hll", args.name),
            DataType::Binary,
            true,
        ))])
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(HllGroups::default())))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(HllGroups::default()))
    }
}

#[derive(Debug, Default)]
struct HllGroups {
    groups: Vec<HllState>,
}

impl GroupsAccumulator for HllGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, HllState::default);
        let text = as_text(&values[0])?;
        let text = text.as_string::<i32>();
        for (row, g) in group_indices.iter().enumerate() {
            if text.is_valid(row) && selected(opt_filter, row) {
                let (index, rank) = hll::register_of(text.value(row).as_bytes());
                self.groups[*g].observe(index, rank);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = BinaryBuilder::with_capacity(taken.len(), taken.len() * 64);
        for g in taken {
            out.append_value(g.encode());
        }
        Ok(Arc::new(out.finish()))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, HllState::default);
        let bytes = values[0].as_binary::<i32>();
        for (row, g) in group_indices.iter().enumerate() {
            if bytes.is_valid(row) {
                self.groups[*g].merge_bytes(bytes.value(row))?;
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let text = as_text(&values[0])?;
        let text = text.as_string::<i32>();
        let mut out = BinaryBuilder::with_capacity(text.len(), text.len() * 24);
        for row in 0..text.len() {
            let mut h = Hll::new();
            if text.is_valid(row) && selected(opt_filter, row) {
                h.add(text.value(row).as_bytes());
            }
            out.append_value(h.to_redis());
        }
        Ok(vec![Arc::new(out.finish())])
    }

    fn size(&self) -> usize {
        self.groups.iter().map(HllState::size).sum::<usize>()
            + self.groups.capacity() * std::mem::size_of::<HllState>()
    }
}

/// `tributary_qsketch(x) -> Utf8`: the log-bucket quantile sketch of numeric `x`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantileUdaf {
    signature: Signature,
}

impl QuantileUdaf {
    pub fn new() -> Self {
        QuantileUdaf {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl Default for QuantileUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for QuantileUdaf {
    fn name(&self) -> &str {
        "tributary_qsketch"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}_sketch", args.name),
            DataType::Utf8,
            true,
        ))])
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup(QuantileGroups::default())))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(QuantileGroups::default()))
    }
}

#[derive(Debug, Default)]
struct QuantileGroups {
    groups: Vec<QuantileSketch>,
}

impl GroupsAccumulator for QuantileGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups
            .resize_with(total_num_groups, QuantileSketch::default);
        let nums = as_f64(&values[0])?;
        let nums = nums.as_primitive::<Float64Type>();
        for (row, g) in group_indices.iter().enumerate() {
            if nums.is_valid(row) && selected(opt_filter, row) {
                self.groups[*g].insert(nums.value(row));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = StringBuilder::with_capacity(taken.len(), taken.len() * 32);
        for g in taken {
            out.append_value(g.encode());
        }
        Ok(Arc::new(out.finish()))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups
            .resize_with(total_num_groups, QuantileSketch::default);
        let text = as_text(&values[0])?;
        let text = text.as_string::<i32>();
        for (row, g) in group_indices.iter().enumerate() {
            if text.is_valid(row) {
                let other = QuantileSketch::decode(text.value(row)).ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal(
                        "tributary_qsketch: state is not an encoded sketch".into(),
                    )
                })?;
                self.groups[*g].merge(&other);
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let nums = as_f64(&values[0])?;
        let nums = nums.as_primitive::<Float64Type>();
        let mut out = StringBuilder::with_capacity(nums.len(), nums.len() * 8);
        for row in 0..nums.len() {
            let mut sketch = QuantileSketch::new();
            if nums.is_valid(row) && selected(opt_filter, row) {
                sketch.insert(nums.value(row));
            }
            out.append_value(sketch.encode());
        }
        Ok(vec![Arc::new(out.finish())])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<QuantileSketch>()
            + self
                .groups
                .iter()
                .map(|g| g.bucket_count() * 24)
                .sum::<usize>()
    }
}

/// A grouped accumulator used for the one group of an aggregate without GROUP BY.
#[derive(Debug)]
pub(crate) struct SingleGroup<G>(pub(crate) G);

impl<G: GroupsAccumulator + std::fmt::Debug + Sync> Accumulator for SingleGroup<G> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |v| v.len());
        self.0.update_batch(values, &vec![0; rows], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // Evaluation takes the state; keep a copy to put back for a later `state()` call.
        let saved = self.0.state(EmitTo::All)?;
        if saved.first().is_none_or(|a| a.is_empty()) {
            return Ok(ScalarValue::Null);
        }
        self.0.merge_batch(&saved, &[0], 1)?;
        let out = self.0.evaluate(EmitTo::All)?;
        let value = ScalarValue::try_from_array(&out, 0)?;
        self.0.merge_batch(&saved, &[0], 1)?;
        Ok(value)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let out = self.0.state(EmitTo::All)?;
        if out.first().is_none_or(|a| a.is_empty()) {
            return Ok(vec![ScalarValue::Null]);
        }
        let values = out
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect::<Result<Vec<_>>>()?;
        self.0.merge_batch(&out, &[0], 1)?;
        Ok(values)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |v| v.len());
        self.0.merge_batch(states, &vec![0; rows], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use datafusion::prelude::SessionContext;

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
