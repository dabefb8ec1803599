//! `tributary_hll(x)` and `tributary_hll_observed(o)`: the Redis HyperLogLog bytes (sparse
//! while small) of a group's values, so the serving layer can union a batch sketch with a
//! speed key. `x` is hashed as text, as `PFADD` sees it; `o` is the observation
//! `tributary_hll_observation` ([`crate::encode`]) computed once per event.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray};
use arrow::datatypes::UInt32Type;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use tributary_shared::hll::{self, Hll, REGISTERS};

use super::{Aggregate, Rows};
use crate::encode::unpack_observation;

/// What `tributary_hll` is given: values (hashed as text) or precomputed observations.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HllInput {
    Text,
    Observation,
}

/// The HyperLogLog aggregate of one kind of input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HllOf(pub(crate) HllInput);

/// One group's HyperLogLog: its `(register, rank)` observations while few, the registers once
/// the list would outgrow them (so memory stays ≤ 16 KiB per group, and the many small groups
/// of a cube never pay for 16384 registers).
#[derive(Debug, Clone, Default)]
pub(crate) enum HllState {
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
            DataFusionError::Internal("tributary_hll: state is not a Redis HyperLogLog".into())
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
}

impl Aggregate for HllOf {
    type Group = HllState;
    /// `(register, rank)`.
    type Input = (usize, u8);

    fn inputs(&self, rows: &Rows<'_>, mut add: impl FnMut(usize, (usize, u8))) -> Result<()> {
        match self.0 {
            HllInput::Text => rows.each_text(0, |row, text| {
                add(row, hll::register_of(text.as_bytes()));
            }),
            HllInput::Observation => rows.each_primitive::<UInt32Type>(0, |row, observation| {
                add(row, unpack_observation(observation));
            }),
        }
    }

    fn add(group: &mut HllState, (index, rank): (usize, u8)) {
        group.observe(index, rank);
    }

    fn merge(&mut self, group: &mut HllState, state: &[u8]) -> Result<()> {
        group.merge_bytes(state)
    }

    fn evaluate(&self, groups: Vec<HllState>) -> Result<ArrayRef> {
        Ok(Arc::new(BinaryArray::from_iter_values(
            groups.into_iter().map(HllState::encode),
        )))
    }

    fn size(group: &HllState) -> usize {
        match group {
            HllState::Empty => 0,
            HllState::Small(v) => v.capacity() * 4,
            HllState::Dense(_) => REGISTERS,
        }
    }
}
