//! The shape both layers answer a query in, so the serving layer merges them bucket by bucket.

use std::collections::BTreeMap;

/// One output group's value in one bucket; `None` where the measure has no input (a sum over
/// events that all lacked the field).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub values: BTreeMap<String, Option<f64>>,
    /// False when a value comes from a sketch (distinct counts, quantiles).
    pub exact: bool,
}

/// Output group (values of the `group_by` dimensions) → bucket start → point. Groups and
/// buckets without data are absent.
pub type Series = BTreeMap<Vec<Option<String>>, BTreeMap<i64, Point>>;

use crate::config::AggKind;
use crate::hll::Hll;
use crate::sketch::QuantileSketch;

/// A measure's value in mergeable form: what a precomputed row (or a Redis key) holds, merged
/// with others when an answer spans several rows (a set filter, `top` over a range). Additive
/// kinds stay exact; a distinct count or quantile merged from two non-empty parts falls back
/// to its sketch and is no longer exact.
#[derive(Debug, Clone, PartialEq)]
pub enum PartialValue {
    Count(u64),
    Sum(Option<f64>),
    Min(Option<f64>),
    Max(Option<f64>),
    Avg {
        sum: f64,
        n: u64,
    },
    Distinct {
        exact: Option<u64>,
        sketch: Option<Hll>,
    },
    Quantile {
        q: f64,
        exact: Option<f64>,
        sketch: Option<QuantileSketch>,
    },
}

impl PartialValue {
    /// The neutral element of a measure kind.
    pub fn empty(agg: AggKind, q: Option<f64>) -> PartialValue {
        match agg {
            AggKind::Count => PartialValue::Count(0),
            AggKind::Sum => PartialValue::Sum(None),
            AggKind::Min => PartialValue::Min(None),
            AggKind::Max => PartialValue::Max(None),
            AggKind::Avg => PartialValue::Avg { sum: 0.0, n: 0 },
            AggKind::CountDistinct => PartialValue::Distinct {
                exact: Some(0),
                sketch: None,
            },
            AggKind::Quantile => PartialValue::Quantile {
                q: q.unwrap_or(0.5),
                exact: None,
                sketch: None,
            },
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            PartialValue::Distinct { exact, sketch } => {
                *exact == Some(0) && sketch.as_ref().is_none_or(|h| h.count() == 0)
            }
            PartialValue::Quantile { exact, sketch, .. } => {
                exact.is_none() && sketch.as_ref().is_none_or(|s| s.is_empty())
            }
            _ => false,
        }
    }

    /// Folds `other` (the same measure) into `self`.
    pub fn merge(&mut self, other: &PartialValue) {
        fn opt(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
            match (a, b) {
                (Some(x), Some(y)) => Some(f(x, y)),
                (x, None) => x,
                (None, y) => y,
            }
        }
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other.clone();
            return;
        }
        match (self, other) {
            (PartialValue::Count(a), PartialValue::Count(b)) => *a += b,
            (PartialValue::Sum(a), PartialValue::Sum(b)) => *a = opt(*a, *b, |x, y| x + y),
            (PartialValue::Min(a), PartialValue::Min(b)) => *a = opt(*a, *b, f64::min),
            (PartialValue::Max(a), PartialValue::Max(b)) => *a = opt(*a, *b, f64::max),
            (PartialValue::Avg { sum, n }, PartialValue::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (
                PartialValue::Distinct { exact, sketch },
                PartialValue::Distinct { sketch: s2, .. },
            ) => {
                *exact = None;
                match (sketch.as_mut(), s2) {
                    (Some(a), Some(b)) => a.merge(b),
                    (None, Some(b)) => *sketch = Some(b.clone()),
                    _ => {}
                }
            }
            (
                PartialValue::Quantile { exact, sketch, .. },
                PartialValue::Quantile { sketch: s2, .. },
            ) => {
                *exact = None;
                match (sketch.as_mut(), s2) {
                    (Some(a), Some(b)) => a.merge(b),
                    (None, Some(b)) => *sketch = Some(b.clone()),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The value and whether it is exact.
    pub fn finish(&self) -> (Option<f64>, bool) {
        match self {
            PartialValue::Count(c) => (Some(*c as f64), true),
            PartialValue::Sum(v) | PartialValue::Min(v) | PartialValue::Max(v) => (*v, true),
            PartialValue::Avg { sum, n } => ((*n > 0).then(|| sum / *n as f64), true),
            PartialValue::Distinct { exact, sketch } => match exact {
                Some(c) => (Some(*c as f64), true),
                None => (sketch.as_ref().map(|h| h.count() as f64), false),
            },
            PartialValue::Quantile { q, exact, sketch } => match exact {
                Some(v) => (Some(*v), true),
                None => (sketch.as_ref().and_then(|s| s.quantile(*q)), false),
            },
        }
    }
}

/// Mergeable values of one group (one entry per requested measure, by name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partial {
    pub values: BTreeMap<String, PartialValue>,
}

impl Partial {
    pub fn merge(&mut self, other: &Partial) {
        for (name, v) in &other.values {
            match self.values.get_mut(name) {
                Some(mine) => mine.merge(v),
                None => {
                    self.values.insert(name.clone(), v.clone());
                }
            }
        }
    }

    pub fn finish(&self) -> Point {
        let mut exact = true;
        let values = self
            .values
            .iter()
            .map(|(name, v)| {
                let (value, e) = v.finish();
                exact &= e;
                (name.clone(), value)
            })
            .collect();
        Point { values, exact }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_merge_exactly_where_they_can() {
        let mut a = PartialValue::Sum(Some(2.0));
        a.merge(&PartialValue::Sum(Some(3.5)));
        assert_eq!(a.finish(), (Some(5.5), true));
        let mut m = PartialValue::empty(AggKind::Min, None);
        m.merge(&PartialValue::Min(Some(4.0)));
        m.merge(&PartialValue::Min(None));
        m.merge(&PartialValue::Min(Some(1.0)));
        assert_eq!(m.finish(), (Some(1.0), true));
        let mut avg = PartialValue::Avg { sum: 10.0, n: 4 };
        avg.merge(&PartialValue::Avg { sum: 2.0, n: 2 });
        assert_eq!(avg.finish(), (Some(2.0), true));

        let hll = |items: std::ops::Range<u32>| {
            let mut h = Hll::new();
            items.for_each(|i| h.add(i.to_string().as_bytes()));
            h
        };
        // One non-empty part keeps its exact value; two fall back to the union sketch.
        let mut d = PartialValue::empty(AggKind::CountDistinct, None);
        let part = |r: std::ops::Range<u32>| PartialValue::Distinct {
            exact: Some(r.len() as u64),
            sketch: Some(hll(r)),
        };
        d.merge(&part(0..100));
        assert_eq!(d.finish(), (Some(100.0), true));
        d.merge(&part(50..150));
        let (v, exact) = d.finish();
        assert!(!exact);
        assert!((v.unwrap_or_default() - 150.0).abs() < 5.0, "{v:?}");
    }
}
