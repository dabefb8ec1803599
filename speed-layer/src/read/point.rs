//! What a read merges its cells into: per output group and bucket, the counts and numeric
//! stats added, the sketches merged, and the member cells kept for the distinct union.
//!
//! A point holds its fields by position in the read's field lists, and its member cells by
//! index, not by name: a ledger read merges tens of thousands of cells, and a map keyed by
//! field name per point (with a copy of each member's key) showed in its profile.

use std::collections::BTreeMap;

use tributary_shared::config::AggKind;
use tributary_shared::selection::Selection;
use tributary_shared::sketch::QuantileSketch;
use tributary_shared::view::{Measure, ViewPlan};

/// The fields a read takes from each cell: each list sorted, without repeats.
#[derive(Debug)]
pub(super) struct Fields {
    /// Fields whose stats (sum, n, min, max) the measures use.
    pub(super) numeric: Vec<String>,
    /// Per [`Fields::numeric`], which of its stats the measures use.
    pub(super) stats: Vec<Stats>,
    pub(super) quantile: Vec<String>,
    pub(super) distinct: Vec<String>,
}

/// The stats of a numeric field a read takes: a cell's hash holds all four of each field it
/// has a value of (the sink writes them together), and a ledger read of tens of thousands of
/// cells asks only for those its measures use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Stats {
    pub(super) sum: bool,
    /// Only `avg` uses the count of values; the others know a cell has values from their own
    /// stat being there.
    pub(super) n: bool,
    pub(super) min: bool,
    pub(super) max: bool,
}

impl Stats {
    /// The hash fields of `field`'s stats, in the order a reply gives them.
    fn hash_fields<'a>(&self, field: &'a str) -> impl Iterator<Item = String> + 'a {
        [
            (self.sum, "sum"),
            (self.n, "n"),
            (self.min, "min"),
            (self.max, "max"),
        ]
        .into_iter()
        .filter(|(wanted, _)| *wanted)
        .map(move |(_, stat)| format!("{stat}:{field}"))
    }
}

impl Fields {
    pub(super) fn of(view: &ViewPlan, selection: &Selection) -> Fields {
        let mut numeric: Vec<String> = [AggKind::Sum, AggKind::Min, AggKind::Max, AggKind::Avg]
            .into_iter()
            .flat_map(|k| selection.fields(view, k))
            .collect();
        numeric.sort();
        numeric.dedup();
        let stats = numeric
            .iter()
            .map(|f| {
                let mut stats = Stats::default();
                for kind in [AggKind::Sum, AggKind::Min, AggKind::Max, AggKind::Avg] {
                    if !selection.fields(view, kind).contains(f) {
                        continue;
                    }
                    match kind {
                        AggKind::Sum => stats.sum = true,
                        AggKind::Min => stats.min = true,
                        AggKind::Max => stats.max = true,
                        _ => (stats.sum, stats.n) = (true, true),
                    }
                }
                stats
            })
            .collect();
        Fields {
            numeric,
            stats,
            quantile: selection.fields(view, AggKind::Quantile),
            distinct: selection.fields(view, AggKind::CountDistinct),
        }
    }

    /// The hash fields a read asks each cell for: `count`, then each numeric field's stats.
    pub(super) fn hash_fields(&self) -> Vec<String> {
        let mut fields = vec!["count".to_string()];
        for (f, stats) in self.numeric.iter().zip(&self.stats) {
            fields.extend(stats.hash_fields(f));
        }
        fields
    }

    /// Where a measure's field is in `list`.
    pub(super) fn position(list: &[String], measure: &Measure) -> Option<usize> {
        let f = measure.field_name.as_ref()?;
        list.iter().position(|x| x == f)
    }
}

/// Sum, count, min, max of a numeric field across merged cells.
#[derive(Debug, Clone, Copy)]
pub(super) struct Num {
    pub(super) sum: f64,
    /// Values counted when `n` was read ([`Stats::n`]); otherwise the cells with values,
    /// which says as well whether there are any.
    pub(super) n: u64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Num {
    pub(super) const EMPTY: Num = Num {
        sum: 0.0,
        n: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    pub(super) fn absorb(&mut self, o: &Num) {
        self.sum += o.sum;
        self.n += o.n;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// One output point's merged cells.
#[derive(Debug)]
pub(super) struct Merged {
    pub(super) count: u64,
    /// Per [`Fields::numeric`].
    pub(super) numeric: Vec<Num>,
    /// Member cells, indices into [`Gathered::cells`], for the distinct union.
    pub(super) members: Vec<u32>,
    /// Per [`Fields::quantile`].
    pub(super) sketches: Vec<QuantileSketch>,
}

impl Merged {
    pub(super) fn new(fields: &Fields) -> Merged {
        Merged {
            count: 0,
            numeric: vec![Num::EMPTY; fields.numeric.len()],
            members: Vec::new(),
            sketches: vec![QuantileSketch::default(); fields.quantile.len()],
        }
    }

    /// The numeric stats of a measure's field, when any value was seen.
    pub(super) fn stats(&self, fields: &Fields, measure: &Measure) -> Option<&Num> {
        let i = Fields::position(&fields.numeric, measure)?;
        self.numeric.get(i).filter(|n| n.n > 0)
    }

    /// The merged sketch of a measure's field.
    pub(super) fn sketch(&self, fields: &Fields, measure: &Measure) -> Option<&QuantileSketch> {
        self.sketches
            .get(Fields::position(&fields.quantile, measure)?)
    }

    /// Adds another point's cells to this one (same fields).
    pub(super) fn absorb(&mut self, other: &Merged) {
        self.count += other.count;
        for (a, b) in self.numeric.iter_mut().zip(&other.numeric) {
            a.absorb(b);
        }
        self.members.extend_from_slice(&other.members);
        for (a, b) in self.sketches.iter_mut().zip(&other.sketches) {
            a.merge(b);
        }
    }
}

/// An output point: (output group, bucket).
pub(super) type PointKey = (Vec<Option<String>>, i64);

/// Merged cells per output point.
pub(super) type Points = BTreeMap<PointKey, Merged>;

/// A read's merged points and what they refer to.
pub(super) struct Gathered {
    pub(super) points: Points,
    /// Every cell merged: (bucket, group encoding), indexed by [`Merged::members`].
    pub(super) cells: Vec<(i64, String)>,
    pub(super) fields: Fields,
}

impl Gathered {
    /// The point `key`, empty when new.
    pub(super) fn point(&mut self, key: PointKey) -> &mut Merged {
        let fields = &self.fields;
        self.points
            .entry(key)
            .or_insert_with(|| Merged::new(fields))
    }

    /// Each bucket's total over every output group: the points merged per bucket (under the
    /// empty group), with the same cells and fields.
    pub(super) fn totals(&self) -> Points {
        let mut totals = Points::new();
        for ((_, b), m) in &self.points {
            totals
                .entry((Vec::new(), *b))
                .or_insert_with(|| Merged::new(&self.fields))
                .absorb(m);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_asks_only_for_the_stats_its_measures_use() {
        let config = tributary_shared::Config::from_toml_str_with_env(
            r#"
[fields]
amount = "float"
latency = "float"

[[views]]
name = "v"
dimensions = []
granularities = ["minute"]
measures = [
  { name = "events", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "max_amount", agg = "max", field = "amount" },
  { name = "avg_latency", agg = "avg", field = "latency" },
  { name = "min_latency", agg = "min", field = "latency" },
]
"#,
            "test",
            Vec::new(),
        )
        .expect("valid config");
        let schema = tributary_shared::EventSchema::from_config(&config);
        let view = ViewPlan::compile_all(&config, &schema)
            .expect("plan")
            .remove(0);
        let select = |measures: Vec<usize>| {
            Fields::of(
                &view,
                &Selection {
                    measures,
                    ..Selection::default()
                },
            )
            .hash_fields()
        };
        assert_eq!(
            select(vec![0, 1, 2, 3, 4]),
            [
                "count",
                "sum:amount",
                "max:amount",
                "sum:latency",
                "n:latency",
                "min:latency"
            ]
        );
        assert_eq!(select(vec![2]), ["count", "max:amount"]);
        assert_eq!(select(vec![0]), ["count"]);
    }

    #[test]
    fn totals_merge_each_buckets_points_and_keep_their_cells() {
        let fields = Fields {
            numeric: vec!["amount".into()],
            stats: vec![Stats::default()],
            quantile: vec!["latency".into()],
            distinct: vec!["user".into()],
        };
        let mut g = Gathered {
            points: Points::new(),
            cells: vec![(0, "a".into()), (0, "b".into()), (60, "a".into())],
            fields,
        };
        let cell = |g: &mut Gathered, group: &str, b: i64, member: u32, x: f64| {
            let m = g.point((vec![Some(group.to_string())], b));
            m.count += 1;
            m.numeric[0].absorb(&Num {
                sum: x,
                n: 1,
                min: x,
                max: x,
            });
            m.members.push(member);
            m.sketches[0].insert(x);
        };
        cell(&mut g, "a", 0, 0, 2.0);
        cell(&mut g, "b", 0, 1, 5.0);
        cell(&mut g, "a", 60, 2, 7.0);
        let totals = g.totals();
        assert_eq!(totals.len(), 2);
        let t0 = &totals[&(Vec::new(), 0)];
        assert_eq!(t0.count, 2);
        let n = t0.numeric[0];
        assert_eq!((n.sum, n.n, n.min, n.max), (7.0, 2, 2.0, 5.0));
        assert_eq!(t0.members, vec![0, 1]);
        assert_eq!(t0.sketches[0].count(), 2);
        let t60 = &totals[&(Vec::new(), 60)];
        assert_eq!((t60.count, t60.members.clone()), (1, vec![2]));
        // A field no point saw a value of has no stats.
        let empty = Merged::new(&g.fields);
        assert!(empty.numeric[0].n == 0 && empty.sketches[0].is_empty());
    }
}
