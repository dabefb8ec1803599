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

use super::{Aggregate, Rows, states};
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

/// Tags of a partial state: `(register u16, rank u8)` observations, or the registers.
const OBSERVATIONS: u8 = 0;
const REGISTER_BYTES: u8 = 1;

impl HllState {
    fn observe(&mut self, index: usize, rank: u8) {
        match self {
            HllState::Empty => *self = HllState::Small(vec![(index as u16, rank)]),
            HllState::Small(v) => {
                v.push((index as u16, rank));
                if v.len() >= SMALL_MAX {
                    *self = HllState::Dense(Box::new(std::mem::take(self).into_registers()));
                }
            }
            HllState::Dense(h) => h.observe(index, rank),
        }
    }

    /// The sketch as registers, whatever its form.
    fn into_registers(self) -> Hll {
        match self {
            HllState::Dense(h) => *h,
            HllState::Empty => Hll::new(),
            HllState::Small(v) => {
                let mut h = Hll::new();
                v.iter().for_each(|(i, r)| h.observe(*i as usize, *r));
                h
            }
        }
    }

    /// Folds in a partial state ([`HllState::state`]).
    fn merge_state(&mut self, state: &[u8]) -> Result<()> {
        let bad = || DataFusionError::Internal("tributary_hll: not a partial state".into());
        match state.split_first() {
            None => Ok(()),
            Some((&OBSERVATIONS, obs)) if obs.len().is_multiple_of(3) => {
                for o in obs.chunks_exact(3) {
                    self.observe(u16::from_le_bytes([o[0], o[1]]) as usize, o[2]);
                }
                Ok(())
            }
            Some((&REGISTER_BYTES, registers)) => {
                let mut h = std::mem::take(self).into_registers();
                let merged = h.merge_registers(registers);
                *self = HllState::Dense(Box::new(h));
                merged.ok_or_else(bad)
            }
            Some(_) => Err(bad()),
        }
    }

    /// The partial state: the observations while few (3 bytes each), else the registers,
    /// after a tag byte. Cheaper to write and read than Redis's encoding, which only the
    /// result needs.
    fn state(self) -> Vec<u8> {
        match self {
            HllState::Empty => Vec::new(),
            HllState::Small(v) => {
                let mut out = Vec::with_capacity(1 + v.len() * 3);
                out.push(OBSERVATIONS);
                for (i, r) in v {
                    out.extend_from_slice(&i.to_le_bytes());
                    out.push(r);
                }
                out
            }
            HllState::Dense(h) => {
                let mut out = Vec::with_capacity(1 + REGISTERS);
                out.push(REGISTER_BYTES);
                out.extend_from_slice(h.registers());
                out
            }
        }
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
        group.merge_state(state)
    }

    fn evaluate(&self, groups: Vec<HllState>) -> Result<ArrayRef> {
        Ok(Arc::new(BinaryArray::from_iter_values(
            groups.into_iter().map(HllState::encode),
        )))
    }

    fn state(&self, groups: Vec<HllState>) -> Result<ArrayRef> {
        Ok(states(groups.into_iter().map(HllState::state)))
    }

    fn size(group: &HllState) -> usize {
        match group {
            HllState::Empty => 0,
            HllState::Small(v) => v.capacity() * 4,
            HllState::Dense(_) => REGISTERS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partial state folds back into the same sketch, small (observations) or dense
    /// (registers), and merging states equals observing everything in one group.
    #[test]
    fn partial_states_merge_into_the_same_sketch() -> Result<()> {
        for n in [0usize, 10, 3 * SMALL_MAX] {
            let observations: Vec<(usize, u8)> = (0..n)
                .map(|i| hll::register_of(format!("u{i}").as_bytes()))
                .collect();
            let (first, second) = observations.split_at(n / 3);
            let mut all = HllState::default();
            let (mut a, mut b) = (HllState::default(), HllState::default());
            for &(i, r) in &observations {
                all.observe(i, r);
            }
            first.iter().for_each(|&(i, r)| a.observe(i, r));
            second.iter().for_each(|&(i, r)| b.observe(i, r));
            let mut merged = HllState::default();
            merged.merge_state(&a.state())?;
            merged.merge_state(&b.state())?;
            assert_eq!(merged.encode(), all.encode(), "{n} observations");
        }
        let mut bad = HllState::default();
        assert!(bad.merge_state(&[7, 1, 2]).is_err());
        Ok(())
    }
}
