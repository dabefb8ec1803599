//! DataFusion aggregate functions that build the mergeable sketches batch views store next to
//! their exact values, in the encodings of `tributary_shared` (so the serving layer can union
//! a batch sketch with a speed key):
//!
//! - `tributary_hll(x)`: Redis HyperLogLog bytes (sparse while small) of `x` as text;
//!   `tributary_hll_observed(o)` the same from precomputed observations
//!   ([`crate::encode`]);
//! - `tributary_qsketch(x)`: the log-bucket quantile sketch of `x`, encoded as text;
//!   `tributary_qsketch_observed(c)` the same from precomputed bucket codes.
//!
//! [`register`] also registers the exact aggregates of [`crate::distinct`] and
//! [`crate::quantile`]. All are grouped accumulators (one state vector indexed by group),
//! because a view's cube has tens of thousands of groups per query and per-group accumulators
//! would be called once per group per batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt32Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use tributary_shared::hll::{self, Hll, REGISTERS};
use tributary_shared::sketch::{QuantileSketch, SketchBucket};

use crate::encode::unpack_observation;

/// Registers the view functions on a session: the sketches, the exact distinct count over
/// interned ids and the exact quantile.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    let any = |n| Signature::any(n, Volatility::Immutable);
    let udafs = [
        GroupedUdaf {
            name: "tributary_hll",
            signature: any(1),
            return_type: DataType::Binary,
            state_type: DataType::Binary,
            make: || Box::new(HllGroups::new(HllInput::Text)),
        },
        GroupedUdaf {
            name: "tributary_hll_observed",
            signature: any(1),
            return_type: DataType::Binary,
            state_type: DataType::Binary,
            make: || Box::new(HllGroups::new(HllInput::Observation)),
        },
        GroupedUdaf {
            name: "tributary_qsketch",
            signature: any(1),
            return_type: DataType::Utf8,
            state_type: DataType::Utf8,
            make: || Box::new(QuantileGroups::new(SketchInput::Value)),
        },
        GroupedUdaf {
            name: "tributary_qsketch_observed",
            signature: any(1),
            return_type: DataType::Utf8,
            state_type: DataType::Utf8,
            make: || Box::new(QuantileGroups::new(SketchInput::Code)),
        },
        GroupedUdaf {
            name: "tributary_count_distinct_ids",
            signature: any(1),
            return_type: DataType::Int64,
            state_type: DataType::Binary,
            make: || Box::new(crate::distinct::DistinctIdGroups::default()),
        },
        GroupedUdaf {
            name: "tributary_quantile_cont",
            signature: any(2),
            return_type: DataType::Float64,
            state_type: DataType::Binary,
            make: || Box::new(crate::quantile::Groups::default()),
        },
    ];
    for udaf in udafs {
        ctx.register_udaf(AggregateUDF::from(udaf));
    }
}

/// A grouped accumulator of ours, used as both DataFusion's grouped and single-group
/// accumulator.
pub(crate) type Groups = Box<dyn GroupsAccumulator + Sync>;

/// An aggregate function given by its grouped accumulator: what differs between ours is the
/// name, the types and the accumulator; the rest is here once.
pub(crate) struct GroupedUdaf {
    name: &'static str,
    signature: Signature,
    return_type: DataType,
    state_type: DataType,
    make: fn() -> Groups,
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
        self.name
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
            self.state_type.clone(),
            true,
        ))])
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleGroup((self.make)())))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok((self.make)())
    }
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

fn observations(values: &ArrayRef) -> Result<arrow::array::UInt32Array> {
    Ok(cast(values, &DataType::UInt32)?
        .as_primitive::<UInt32Type>()
        .clone())
}

fn as_f64(values: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(values, &DataType::Float64)?)
}

fn selected(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

/// What `tributary_hll` is given: values (hashed as text) or precomputed observations
/// ([`crate::encode::hll_column`]).
#[derive(Debug, Clone, Copy)]
enum HllInput {
    Text,
    Observation,
}

#[derive(Debug)]
struct HllGroups {
    input: HllInput,
    groups: Vec<HllState>,
}

impl HllGroups {
    fn new(input: HllInput) -> Self {
        HllGroups {
            input,
            groups: Vec::new(),
        }
    }
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
        match self.input {
            HllInput::Text => {
                let text = as_text(&values[0])?;
                let text = text.as_string::<i32>();
                for (row, g) in group_indices.iter().enumerate() {
                    if text.is_valid(row) && selected(opt_filter, row) {
                        let (index, rank) = hll::register_of(text.value(row).as_bytes());
                        self.groups[*g].observe(index, rank);
                    }
                }
            }
            HllInput::Observation => {
                let obs = observations(&values[0])?;
                for (row, g) in group_indices.iter().enumerate() {
                    if obs.is_valid(row) && selected(opt_filter, row) {
                        let (index, rank) = unpack_observation(obs.value(row));
                        self.groups[*g].observe(index, rank);
                    }
                }
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
        let rows = values[0].len();
        let mut out = BinaryBuilder::with_capacity(rows, rows * 24);
        let mut one = |observation: Option<(usize, u8)>| {
            let mut state = HllState::default();
            if let Some((index, rank)) = observation {
                state.observe(index, rank);
            }
            out.append_value(state.encode());
        };
        match self.input {
            HllInput::Text => {
                let text = as_text(&values[0])?;
                let text = text.as_string::<i32>();
                for row in 0..rows {
                    one((text.is_valid(row) && selected(opt_filter, row))
                        .then(|| hll::register_of(text.value(row).as_bytes())));
                }
            }
            HllInput::Observation => {
                let obs = observations(&values[0])?;
                for row in 0..rows {
                    one((obs.is_valid(row) && selected(opt_filter, row))
                        .then(|| unpack_observation(obs.value(row))));
                }
            }
        }
        Ok(vec![Arc::new(out.finish())])
    }

    fn size(&self) -> usize {
        self.groups.iter().map(HllState::size).sum::<usize>()
            + self.groups.capacity() * std::mem::size_of::<HllState>()
    }
}

/// What `tributary_qsketch` is given: values, or precomputed bucket codes
/// ([`crate::encode::sketch_column`]).
#[derive(Debug, Clone, Copy)]
enum SketchInput {
    Value,
    Code,
}

/// One group's sketch: bucket codes gathered since the last fold (appending is cheaper than
/// a map update per value), and the buckets folded in so far (and from merged states).
#[derive(Debug, Default)]
struct SketchGroup {
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

#[derive(Debug)]
struct QuantileGroups {
    input: SketchInput,
    groups: Vec<SketchGroup>,
}

impl QuantileGroups {
    fn new(input: SketchInput) -> Self {
        QuantileGroups {
            input,
            groups: Vec::new(),
        }
    }

    /// The bucket code of each row (`None`: null, NaN or filtered out).
    fn codes<'a>(
        &self,
        values: &'a ArrayRef,
        opt_filter: Option<&'a BooleanArray>,
    ) -> Result<Vec<Option<u32>>> {
        Ok(match self.input {
            SketchInput::Value => {
                let nums = as_f64(values)?;
                let nums = nums.as_primitive::<Float64Type>();
                (0..nums.len())
                    .map(|row| {
                        (nums.is_valid(row) && selected(opt_filter, row))
                            .then(|| SketchBucket::of(nums.value(row)).map(SketchBucket::code))
                            .flatten()
                    })
                    .collect()
            }
            SketchInput::Code => {
                let codes = observations(values)?;
                (0..codes.len())
                    .map(|row| {
                        (codes.is_valid(row) && selected(opt_filter, row)).then(|| codes.value(row))
                    })
                    .collect()
            }
        })
    }
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
            .resize_with(total_num_groups, SketchGroup::default);
        let codes = self.codes(&values[0], opt_filter)?;
        for (code, g) in codes.into_iter().zip(group_indices) {
            if let Some(code) = code {
                self.groups[*g].pending.push(code);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = StringBuilder::with_capacity(taken.len(), taken.len() * 32);
        for mut g in taken {
            out.append_value(g.fold().encode());
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
            .resize_with(total_num_groups, SketchGroup::default);
        let text = as_text(&values[0])?;
        let text = text.as_string::<i32>();
        for (row, g) in group_indices.iter().enumerate() {
            if text.is_valid(row) {
                let other = QuantileSketch::decode(text.value(row)).ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal(
                        "tributary_qsketch: state is not an encoded sketch".into(),
                    )
                })?;
                self.groups[*g].sketch.merge(&other);
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let codes = self.codes(&values[0], opt_filter)?;
        let mut out = StringBuilder::with_capacity(codes.len(), codes.len() * 8);
        for code in codes {
            let mut sketch = QuantileSketch::new();
            if let Some(b) = code.and_then(SketchBucket::from_code) {
                sketch.add_bucket(b, 1);
            }
            out.append_value(sketch.encode());
        }
        Ok(vec![Arc::new(out.finish())])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<SketchGroup>()
            + self
                .groups
                .iter()
                .map(|g| g.pending.capacity() * 4 + g.sketch.bucket_count() * 24)
                .sum::<usize>()
    }
}

/// A grouped accumulator used for the one group of an aggregate without GROUP BY.
pub(crate) struct SingleGroup(pub(crate) Groups);

impl std::fmt::Debug for SingleGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SingleGroup")
    }
}

impl Accumulator for SingleGroup {
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
