//! Mergeable quantile sketch with relative accuracy (DDSketch's logarithmic mapping).
//!
//! A value `x > 0` falls in bucket `ceil(log_γ x)` with `γ = (1+α)/(1-α)`; every value of a
//! bucket is within `α` (1%) of the bucket's representative `2γ^i/(γ+1)`. Counts of buckets
//! only add, so sketches merge by addition: in Redis that is `HINCRBY` on a hash whose fields
//! are [`SketchBucket::field`] names, and the batch layer stores the same buckets.

/// Relative accuracy of every quantile estimate.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Magnitudes below this count as zero (the log mapping has no bucket for them).
pub const MIN_MAGNITUDE: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// The bucket a value falls into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SketchBucket {
    Negative(i32),
    Zero,
    Positive(i32),
}

impl SketchBucket {
    /// The bucket of `x`; `None` for NaN.
    pub fn of(x: f64) -> Option<SketchBucket> {
        if x.is_nan() {
            return None;
        }
        let mag = x.abs();
        if mag < MIN_MAGNITUDE {
            return Some(SketchBucket::Zero);
        }
        // Clamp infinities to the largest finite bucket instead of overflowing the index.
        let idx = (mag.min(f64::MAX).ln() / gamma().ln()).ceil() as i32;
        Some(if x > 0.0 {
            SketchBucket::Positive(idx)
        } else {
            SketchBucket::Negative(idx)
        })
    }

    /// A compact code for the bucket (the sign in the top two bits, the index offset by 2^29
    /// below), so a bucket can be computed once per value and kept in an integer column.
    pub fn code(self) -> u32 {
        const OFFSET: i64 = 1 << 29;
        let (tag, i) = match self {
            SketchBucket::Negative(i) => (0u32, i),
            SketchBucket::Zero => (1, 0),
            SketchBucket::Positive(i) => (2, i),
        };
        (tag << 30) | ((i as i64 + OFFSET) as u32 & ((1 << 30) - 1))
    }

    /// Inverse of [`SketchBucket::code`].
    pub fn from_code(code: u32) -> Option<SketchBucket> {
        const OFFSET: i64 = 1 << 29;
        let i = (code & ((1 << 30) - 1)) as i64 - OFFSET;
        match code >> 30 {
            0 => Some(SketchBucket::Negative(i as i32)),
            1 => Some(SketchBucket::Zero),
            2 => Some(SketchBucket::Positive(i as i32)),
            _ => None,
        }
    }

    /// The hash field name: `p<i>`, `n<i>` or `z`.
    pub fn field(self) -> String {
        let mut out = String::with_capacity(8);
        self.write_field(&mut out);
        out
    }

    /// Appends [`SketchBucket::field`] to `out` (no allocation of its own).
    pub fn write_field(self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        match self {
            SketchBucket::Negative(i) => {
                out.push('n');
                out.push_str(digits.format(i));
            }
            SketchBucket::Zero => out.push('z'),
            SketchBucket::Positive(i) => {
                out.push('p');
                out.push_str(digits.format(i));
            }
        }
    }

    /// Inverse of [`SketchBucket::field`].
    pub fn parse_field(s: &str) -> Option<SketchBucket> {
        match s.as_bytes().first()? {
            b'z' if s.len() == 1 => Some(SketchBucket::Zero),
            b'p' => s[1..].parse().ok().map(SketchBucket::Positive),
            b'n' => s[1..].parse().ok().map(SketchBucket::Negative),
            _ => None,
        }
    }

    /// The value a bucket stands for (within 1% of every value in it).
    pub fn representative(self) -> f64 {
        let g = gamma();
        match self {
            SketchBucket::Zero => 0.0,
            SketchBucket::Positive(i) => 2.0 * g.powi(i) / (g + 1.0),
            SketchBucket::Negative(i) => -2.0 * g.powi(i) / (g + 1.0),
        }
    }
}

/// A quantile sketch: the counts of its non-empty buckets, in bucket order, each bucket once.
///
/// A sorted vector, not a map: sketches are mostly built from sorted input (view files, the
/// batch's aggregate) and merged with each other (a query's cells, a ledger's groups), and a
/// merge of two sorted runs is one pass with no allocation per bucket (as a `BTreeMap`, its
/// inserts showed in the accuracy ledger's profile: docs/benchmarks.md, "The ledger's cost,
/// profiled"). Its size stays the number of non-empty buckets, whatever the values' range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantileSketch {
    buckets: Vec<(SketchBucket, u64)>,
}

impl QuantileSketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sketch of bucket counts, in any order and with repeats (sorted once here); in bucket
    /// order, it is built in one pass.
    pub fn from_buckets(buckets: impl IntoIterator<Item = (SketchBucket, u64)>) -> Self {
        let buckets = buckets.into_iter();
        let mut sketch = QuantileSketch {
            buckets: Vec::with_capacity(buckets.size_hint().0),
        };
        let mut sorted = true;
        for (b, c) in buckets {
            if c == 0 {
                continue;
            }
            match sketch.buckets.last_mut() {
                Some((last, n)) if *last == b => *n += c,
                Some((last, _)) if *last > b => {
                    sorted = false;
                    sketch.buckets.push((b, c));
                }
                _ => sketch.buckets.push((b, c)),
            }
        }
        if !sorted {
            sketch.buckets.sort_unstable_by_key(|(b, _)| *b);
            sketch.buckets.dedup_by(|(b, c), (kept, n)| {
                let same = b == kept;
                if same {
                    *n += *c;
                }
                same
            });
        }
        sketch
    }

    pub fn insert(&mut self, x: f64) {
        if let Some(b) = SketchBucket::of(x) {
            self.add(b, 1);
        }
    }

    /// Adds `count` to a bucket.
    pub fn add(&mut self, b: SketchBucket, count: u64) {
        if count == 0 {
            return;
        }
        match self.buckets.last_mut() {
            None => self.buckets.push((b, count)),
            Some((last, _)) if *last < b => self.buckets.push((b, count)),
            _ => match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => self.buckets[i].1 += count,
                Err(i) => self.buckets.insert(i, (b, count)),
            },
        }
    }

    /// Adds `count` to a bucket given by its field name; unknown names are ignored.
    pub fn add_field(&mut self, field: &str, count: u64) {
        if let Some(b) = SketchBucket::parse_field(field) {
            self.add(b, count);
        }
    }

    pub fn merge(&mut self, other: &QuantileSketch) {
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        self.buckets = merge_sorted_counts(&self.buckets, &other.buckets);
    }

    /// [`merge`](Self::merge), taking `other`: kept as it is when this sketch is empty (the
    /// first cell of a read), with no copy.
    pub fn merge_owned(&mut self, other: QuantileSketch) {
        if self.buckets.is_empty() {
            *self = other;
        } else {
            self.merge(&other);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, c)| c).sum()
    }

    /// Number of non-empty buckets (the sketch's size).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Bucket field names and counts.
    pub fn fields(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.buckets.iter().map(|(b, c)| (b.field(), *c))
    }

    /// Estimate of the `q` quantile, rank `q·(n-1)` like `quantile_cont`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // Value order: negatives by descending magnitude (stored the other way round), zero,
        // positives ascending.
        let negatives = self
            .buckets
            .partition_point(|(b, _)| matches!(b, SketchBucket::Negative(_)));
        let (neg, rest) = self.buckets.split_at(negatives);
        let rank = q * (n - 1) as f64;
        let mut seen = 0u64;
        for (b, c) in neg.iter().rev().chain(rest) {
            seen += c;
            if seen as f64 > rank {
                return Some(b.representative());
            }
        }
        rest.last().or(neg.first()).map(|(b, _)| b.representative())
    }

    /// Compact text form stored in batch view files: `field:count,field:count`.
    /// Integers are written with `itoa` rather than `write!`: this runs for every row of a
    /// view file, and `core::fmt` was most of its time (1.7 % of a 10M-event day's run).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.buckets.len() * 10);
        let mut digits = itoa::Buffer::new();
        for (i, (b, c)) in self.buckets.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            b.write_field(&mut out);
            out.push(':');
            out.push_str(digits.format(*c));
        }
        out
    }

    /// Inverse of [`QuantileSketch::encode`]; `None` on malformed input.
    pub fn decode(s: &str) -> Option<QuantileSketch> {
        let mut sketch = QuantileSketch::new();
        if s.is_empty() {
            return Some(sketch);
        }
        for part in s.split(',') {
            let (f, c) = part.split_once(':')?;
            SketchBucket::parse_field(f)?;
            sketch.add_field(f, c.parse().ok()?);
        }
        Some(sketch)
    }
}

/// Two runs of (key, count) in key order, each key once per run, merged into one in key order
/// (counts of a key in both added): the sketch's merge, and the batch aggregate's over bucket
/// codes.
pub fn merge_sorted_counts<K: Ord + Copy>(a: &[(K, u64)], b: &[(K, u64)]) -> Vec<(K, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        match x.0.cmp(&y.0) {
            std::cmp::Ordering::Less => {
                out.push(x);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(y);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((x.0, x.1 + y.1));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Exact quantile by linear interpolation between closest ranks (DuckDB `quantile_cont`,
/// numpy's default) over sorted values.
pub fn exact_quantile_cont(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// [`exact_quantile_cont`] over unsorted values, selecting the two closest ranks instead of
/// sorting (the values are reordered).
pub fn exact_quantile_cont_unsorted(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo_i = pos.floor() as usize;
    let hi_i = pos.ceil() as usize;
    let (_, lo, above) = values.select_nth_unstable_by(lo_i, f64::total_cmp);
    let lo = *lo;
    let hi = if hi_i == lo_i {
        lo
    } else {
        // The next rank is the smallest value above the lower one.
        above.iter().copied().min_by(f64::total_cmp).unwrap_or(lo)
    };
    Some(lo + (hi - lo) * (pos - lo_i as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_codes_round_trip() {
        for x in [
            -1e300,
            -1e6,
            -3.5,
            -1e-9,
            0.0,
            1e-9,
            0.5,
            1.0,
            230.0,
            1e12,
            f64::MAX,
        ] {
            let b = SketchBucket::of(x).expect("not NaN");
            assert_eq!(SketchBucket::from_code(b.code()), Some(b), "{x}");
        }
        assert_eq!(SketchBucket::from_code(3 << 30), None);
    }

    #[test]
    fn bucket_fields_round_trip() {
        for x in [-1e6, -3.5, -1e-10, 0.0, 1e-10, 0.5, 1.0, 230.0, 1e12] {
            let b = SketchBucket::of(x).expect("not NaN");
            assert_eq!(SketchBucket::parse_field(&b.field()), Some(b));
            let rep = b.representative();
            if x.abs() >= MIN_MAGNITUDE {
                assert!(
                    ((rep - x) / x).abs() <= RELATIVE_ACCURACY + 1e-12,
                    "{x} -> {rep}"
                );
            }
        }
        assert_eq!(SketchBucket::of(f64::NAN), None);
        assert!(SketchBucket::of(f64::INFINITY).is_some());
        assert_eq!(SketchBucket::parse_field("x1"), None);
        assert_eq!(SketchBucket::parse_field("zz"), None);
    }

    #[test]
    fn quantiles_are_within_one_percent_and_merge() {
        // A skewed distribution with negatives and zeros.
        let values: Vec<f64> = (0..20_000)
            .map(|i| {
                let x = (i as f64 * 0.618_033_988_7).fract();
                if i % 10 == 0 {
                    -x * 50.0
                } else if i % 97 == 0 {
                    0.0
                } else {
                    x.powi(3) * 5000.0 + 1.0
                }
            })
            .collect();
        let (a, b) = values.split_at(7_000);
        let mut s1 = QuantileSketch::new();
        a.iter().for_each(|x| s1.insert(*x));
        let mut s2 = QuantileSketch::new();
        b.iter().for_each(|x| s2.insert(*x));
        s1.merge(&s2);
        assert_eq!(s1.count(), 20_000);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.01, 0.05, 0.5, 0.95, 0.99] {
            let want = exact_quantile_cont(&sorted, q).expect("non-empty");
            let got = s1.quantile(q).expect("non-empty");
            // The rank of the estimate lies between the neighbours of the exact rank.
            let lo = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let hi = sorted[(q * (sorted.len() - 1) as f64).ceil() as usize];
            let tol = RELATIVE_ACCURACY * lo.abs().max(hi.abs()) + 1e-9;
            assert!(
                got >= lo.min(hi) - tol && got <= lo.max(hi) + tol,
                "q={q} want≈{want} got={got}"
            );
        }
        let decoded = QuantileSketch::decode(&s1.encode()).expect("round trip");
        assert_eq!(decoded, s1);
        assert_eq!(QuantileSketch::decode("p1:x"), None);
        assert_eq!(QuantileSketch::new().quantile(0.5), None);
    }

    #[test]
    fn buckets_in_any_order_make_the_same_sketch() {
        let b = |x: f64| SketchBucket::of(x).expect("not NaN");
        let values = [5.0, -2.0, 0.0, 300.0, 5.0, -40.0, 1.5, 0.0, -2.0, 7e6];
        let mut inserted = QuantileSketch::new();
        values.iter().for_each(|x| inserted.insert(*x));
        let mut sorted: Vec<(SketchBucket, u64)> = values.iter().map(|x| (b(*x), 1)).collect();
        sorted.sort();
        let shuffled = values.iter().rev().map(|x| (b(*x), 1));
        assert_eq!(QuantileSketch::from_buckets(sorted), inserted);
        assert_eq!(QuantileSketch::from_buckets(shuffled), inserted);
        assert_eq!(inserted.count(), 10);
        assert_eq!(inserted.bucket_count(), 7);
        // Merging in either direction, and into an empty sketch, gives the union.
        let (mut left, mut right) = (QuantileSketch::new(), QuantileSketch::new());
        values[..4].iter().for_each(|x| left.insert(*x));
        values[4..].iter().for_each(|x| right.insert(*x));
        let mut other_way = right.clone();
        other_way.merge(&left);
        left.merge(&right);
        assert_eq!(left, inserted);
        assert_eq!(other_way, inserted);
        let mut empty = QuantileSketch::new();
        empty.merge(&inserted);
        assert_eq!(empty, inserted);
        let (mut owned, mut into_empty) = (right.clone(), QuantileSketch::new());
        into_empty.merge_owned(right);
        owned.merge_owned(QuantileSketch::from_buckets(
            values[..4].iter().map(|x| (b(*x), 1)),
        ));
        assert_eq!(owned, inserted);
        assert_eq!(into_empty.count(), 6);
        // Value order across signs: the smallest is the most negative, the largest the last.
        let near = |got: Option<f64>, want: f64| {
            let got = got.expect("non-empty");
            assert!(
                (got - want).abs() <= want.abs() * RELATIVE_ACCURACY,
                "{got} vs {want}"
            );
        };
        near(inserted.quantile(0.0), -40.0);
        near(inserted.quantile(0.15), -2.0);
        near(inserted.quantile(1.0), 7e6);
        let mut negatives = QuantileSketch::new();
        [-1.0, -10.0, -100.0]
            .iter()
            .for_each(|x| negatives.insert(*x));
        near(negatives.quantile(0.0), -100.0);
        near(negatives.quantile(1.0), -1.0);
    }

    #[test]
    fn exact_quantile_interpolates() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(exact_quantile_cont(&v, 0.5), Some(2.5));
        assert_eq!(exact_quantile_cont(&v, 0.0), Some(1.0));
        assert_eq!(exact_quantile_cont(&v, 1.0), Some(4.0));
        assert_eq!(exact_quantile_cont(&[], 0.5), None);
        let mut shuffled = [4.0, 1.0, 3.0, 2.0, 2.0];
        assert_eq!(exact_quantile_cont_unsorted(&mut shuffled, 0.9), Some(3.6));
        assert_eq!(exact_quantile_cont_unsorted(&mut [7.0], 0.3), Some(7.0));
    }
}
