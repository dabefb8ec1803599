//! `tributary_sum(x)`: the sum of a group's values, correctly rounded from their exact sum
//! (Shewchuk's non-overlapping partials, the algorithm of Python's `math.fsum`). A float sum
//! added up in arrival order depends on that order, which depends on partitioning, spilling
//! and the engine: the same date would get sums differing in the last bits on every run and
//! between the local engine and Ballista. The exact sum does not depend on the order, so a
//! view file's bytes do not either. `sum` and `avg` measures use it.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, LargeBinaryArray};
use arrow::datatypes::Float64Type;
use datafusion::common::Result;

use super::{Aggregate, Rows, le_words};

#[derive(Debug, Clone, Copy)]
pub(crate) struct ExactSum;

/// A group's exact sum as non-overlapping partials (smallest magnitude first), and whether it
/// saw a value (an empty group sums to null, as SQL's `sum`).
#[derive(Debug, Default)]
pub(crate) struct Partials {
    partials: Vec<f64>,
    seen: bool,
    /// Sum of non-finite values (none in parsed JSON; kept apart so they cannot poison the
    /// partials).
    special: f64,
}

impl Partials {
    fn add(&mut self, mut x: f64) {
        self.seen = true;
        if !x.is_finite() {
            self.special += x;
            return;
        }
        let mut i = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        self.partials.truncate(i);
        if x.is_finite() {
            self.partials.push(x);
        } else {
            // The exact sum overflows f64: so does its rounding.
            self.special += x;
        }
    }

    /// The exact sum rounded to the nearest f64 (ties to even), as `math.fsum` does.
    fn value(&self) -> Option<f64> {
        if !self.seen {
            return None;
        }
        if self.special != 0.0 || self.special.is_nan() {
            return Some(self.special);
        }
        let p = &self.partials;
        let Some(mut n) = p.len().checked_sub(1) else {
            return Some(0.0);
        };
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            n -= 1;
            let x = hi;
            let y = p[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        // Half-way case: the rest of the partials decide the rounding direction.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        Some(hi)
    }
}

impl Aggregate for ExactSum {
    type Group = Partials;
    type Input = f64;

    fn inputs(&self, rows: &Rows<'_>, add: impl FnMut(usize, f64)) -> Result<()> {
        rows.each_primitive::<Float64Type>(0, add)
    }

    fn add(group: &mut Partials, x: f64) {
        group.add(x);
    }

    /// A partial state is its partials and the special sum (`seen` is implied by a state).
    fn merge(&mut self, group: &mut Partials, state: &[u8]) -> Result<()> {
        let mut words = le_words(state).map(f64::from_le_bytes);
        let special = words.next().unwrap_or(0.0);
        group.seen = true;
        group.special += special;
        for x in words {
            group.add(x);
        }
        Ok(())
    }

    fn evaluate(&self, groups: Vec<Partials>) -> Result<ArrayRef> {
        Ok(Arc::new(Float64Array::from_iter(
            groups.iter().map(Partials::value),
        )))
    }

    fn state(&self, groups: Vec<Partials>) -> Result<ArrayRef> {
        Ok(Arc::new(LargeBinaryArray::from_iter(groups.iter().map(
            |g| {
                g.seen.then(|| {
                    let mut out = Vec::with_capacity(8 * (1 + g.partials.len()));
                    for x in std::iter::once(g.special).chain(g.partials.iter().copied()) {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                    out
                })
            },
        ))))
    }

    fn size(group: &Partials) -> usize {
        group.partials.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(values: impl IntoIterator<Item = f64>) -> Option<f64> {
        let mut p = Partials::default();
        for v in values {
            p.add(v);
        }
        p.value()
    }

    #[test]
    fn the_sum_is_exact_and_does_not_depend_on_the_order() {
        assert_eq!(sum([0.1; 10]), Some(1.0));
        assert_eq!(sum([1e100, 1.0, -1e100, 1e-100]), Some(1.0 + 1e-100));
        assert_eq!(sum([]), None);
        let values: Vec<f64> = (0..10_000)
            .map(|i| ((i * 7919) % 10_007) as f64 * 0.01 + 1e-3 * i as f64)
            .collect();
        let forward = sum(values.iter().copied());
        let backward = sum(values.iter().rev().copied());
        let mut shuffled = values.clone();
        shuffled.sort_by_key(|a| a.to_bits() % 97);
        assert_eq!(forward, backward);
        assert_eq!(forward, sum(shuffled));
        // Merging partial states of any split gives the same sum.
        let mut whole = Partials::default();
        let mut agg = ExactSum;
        for chunk in values.chunks(333) {
            let part = sum(chunk.iter().copied());
            let mut p = Partials::default();
            chunk.iter().for_each(|v| p.add(*v));
            let state = std::iter::once(p.special)
                .chain(p.partials.iter().copied())
                .flat_map(f64::to_le_bytes)
                .collect::<Vec<u8>>();
            assert!(part.is_some());
            agg.merge(&mut whole, &state).expect("merge");
        }
        assert_eq!(whole.value(), forward);
    }
}
