//! The grouped accumulator of an [`Aggregate`] (`Grouped`), in the [`Mode`] a registered
//! variant asks for, and its use as the accumulator of an aggregate without GROUP BY.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};

use super::{Aggregate, Rows};

/// What a registered variant of an aggregate takes in and gives out. A view's rollup
/// aggregates the events once into its finest groups as partial states (`f_state(x)`), then
/// every coarser group of the cube from those (`f_merge(state)`): the result is the one
/// `f(x)` gives over the same events, since every state here merges exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Rows in, the result out: `f(x)`.
    Raw,
    /// Rows in, the partial state out: `f_state(x)`.
    StateOut,
    /// Partial states in, the result out: `f_merge(state, ...)`.
    MergeIn,
}

/// The grouped accumulator of an [`Aggregate`]: one state per group, indexed by group.
pub(crate) struct Grouped<A: Aggregate> {
    aggregate: A,
    mode: Mode,
    groups: Vec<A::Group>,
}

impl<A: Aggregate> Grouped<A> {
    pub(super) fn boxed(aggregate: A, mode: Mode) -> Groups {
        Box::new(Grouped {
            aggregate,
            mode,
            groups: Vec::new(),
        })
    }

    /// Adds the selected rows of a batch (values, or partial states in [`Mode::MergeIn`]) to
    /// `groups`, row `r` to `groups[group_of(r)]`.
    fn add_rows(
        aggregate: &mut A,
        mode: Mode,
        rows: &Rows<'_>,
        groups: &mut [A::Group],
        group_of: impl Fn(usize) -> usize,
    ) -> Result<()> {
        aggregate.read_args(rows)?;
        match mode {
            Mode::MergeIn => {
                let merging = &mut *aggregate;
                rows.each_state(0, |row, state| {
                    merging.merge(&mut groups[group_of(row)], state)
                })
            }
            Mode::Raw | Mode::StateOut => {
                aggregate.inputs(rows, |row, input| A::add(&mut groups[group_of(row)], input))
            }
        }
    }
}

impl<A: Aggregate> GroupsAccumulator for Grouped<A> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, A::Group::default);
        let rows = Rows {
            values,
            filter: opt_filter,
        };
        Self::add_rows(
            &mut self.aggregate,
            self.mode,
            &rows,
            &mut self.groups,
            |row| group_indices[row],
        )
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = emit_to.take_needed(&mut self.groups);
        match self.mode {
            Mode::StateOut => self.aggregate.state(groups),
            Mode::Raw | Mode::MergeIn => self.aggregate.evaluate(groups),
        }
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            self.aggregate
                .state(emit_to.take_needed(&mut self.groups))?,
        ])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, A::Group::default);
        let Some(states) = values.first() else {
            return Ok(());
        };
        let states = cast(states, &DataType::LargeBinary)?;
        let states = states.as_binary::<i64>();
        for (row, g) in group_indices.iter().enumerate() {
            if states.is_valid(row) {
                self.aggregate
                    .merge(&mut self.groups[*g], states.value(row))?;
            }
        }
        Ok(())
    }

    /// Each row as a group of its own: the partial state of that row alone.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows = Rows {
            values,
            filter: opt_filter,
        };
        // Constant arguments are read into a copy: converting leaves this accumulator as it is.
        let mut aggregate = self.aggregate.clone();
        let mut groups: Vec<A::Group> = (0..rows.len()).map(|_| A::Group::default()).collect();
        Self::add_rows(&mut aggregate, self.mode, &rows, &mut groups, |row| row)?;
        Ok(vec![aggregate.state(groups)?])
    }

    fn size(&self) -> usize {
        self.groups.iter().map(A::size).sum::<usize>()
            + self.groups.capacity() * std::mem::size_of::<A::Group>()
    }
}

/// A grouped accumulator of ours, used as both DataFusion's grouped and single-group
/// accumulator.
pub(crate) type Groups = Box<dyn GroupsAccumulator + Sync>;

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
