//! The SQL text of a view's recompute over one date of the master dataset: one query that
//! filters the date's rows by the view's `where`, deduplicates them by `event_id`, encodes
//! them once ([`crate::encode`]), aggregates them once into the view's finest groups (every
//! granularity's bucket and every dimension) as partial states, and rolls those up into every
//! granularity and grouping set of the dimensions (the cube) with `GROUPING SETS`.
//!
//! The rollup is what makes the cube cheap: a date's events are aggregated once, not once per
//! grouping set (12 for three granularities and two dimensions), and the grouping sets run
//! over the finest groups (tens of thousands) instead of the events (millions). Every state
//! merges exactly ([`crate::udaf::Mode`]), so the result is the one the cube over the events
//! gives, to the byte (the tests below compare the two).
//!
//! One plan per date is what lets DataFusion bound its memory (each operator spills) and lets
//! Ballista distribute it (nothing is held between queries). Kept apart from the engine,
//! which only runs it, so the query reads as a whole.

use tributary_shared::config::{AggKind, FieldType};
use tributary_shared::view::{FieldRef, FilterValue, Measure, ViewPlan};

use crate::view_file::columns;

/// Column of the result naming the granularity (its index in the view's list).
pub const GRANULARITY: &str = "__granularity";

/// `"name"` with quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(v: &FilterValue) -> String {
    match v {
        FilterValue::Str(s) => format!("'{}'", s.replace('\'', "''")),
        FilterValue::Num(n) => format!("{n:?}"),
        FilterValue::Bool(b) => b.to_string(),
    }
}

/// The master column a view's filter on `name` reads (`type` is stored under its own name).
pub fn filter_column(field: FieldRef, name: &str) -> String {
    match field {
        FieldRef::Type => "type".to_string(),
        FieldRef::Declared(_) => name.to_string(),
    }
}

/// The input columns a view reads, besides the event time: dimensions and measure fields.
pub fn input_columns(view: &ViewPlan) -> Vec<String> {
    let mut cols: Vec<String> = view.dimensions.iter().map(|d| d.name.clone()).collect();
    for m in &view.measures {
        if let Some(f) = &m.field_name
            && !cols.contains(f)
        {
            cols.push(f.clone());
        }
    }
    cols
}

/// Whether an input column of the view (a dimension or a measure's field) holds text.
fn is_text(view: &ViewPlan, column: &str) -> bool {
    let dimensions = view
        .dimensions
        .iter()
        .filter(|d| d.name == column)
        .map(|d| Some(d.field_type));
    let fields = view
        .measures
        .iter()
        .filter(|m| m.field_name.as_deref() == Some(column))
        .map(|m| m.field_type);
    dimensions
        .chain(fields)
        .any(|t| t == Some(FieldType::String))
}

/// The measures' fields, each once, in the order they are first named.
fn fields_of(view: &ViewPlan) -> Vec<&str> {
    let mut fields: Vec<&str> = Vec::new();
    for f in view.measures.iter().filter_map(|m| m.field_name.as_deref()) {
        if !fields.contains(&f) {
            fields.push(f);
        }
    }
    fields
}

/// Names of the encoded columns of a field (internal to the query).
fn num(field: &str) -> String {
    ident(&format!("__num:{field}"))
}
fn key(field: &str) -> String {
    ident(&format!("__key:{field}"))
}
fn obs(field: &str) -> String {
    ident(&format!("__hll:{field}"))
}
fn bucket(field: &str) -> String {
    ident(&format!("__qb:{field}"))
}
fn t(i: usize) -> String {
    ident(&format!("__t{i}"))
}

/// The whole recompute of one date of `view` over `table` (the date's master files). Rows
/// come out ordered by granularity, grouping set, bucket and dimensions (the group keys), so
/// a view file's bytes do not depend on the engine or its parallelism.
pub fn view_sql(view: &ViewPlan, table: &str) -> String {
    // The finest groups: every granularity's bucket (they need not nest: grouping by all of
    // them is as fine as the finest and right for any) and every dimension.
    let mut keys: Vec<String> = (0..view.granularities.len()).map(t).collect();
    keys.extend(view.dimensions.iter().map(|d| ident(&d.name)));
    let mut finest = keys.clone();
    finest.push(format!("count(*) AS {}", ident(FINEST_ROWS)));
    let mut select = Vec::new();
    for (i, m) in view.measures.iter().enumerate() {
        for (j, part) in parts(m).into_iter().enumerate() {
            let column = state_column(i, j);
            if let Some(state) = &part.state {
                finest.push(format!("{state} AS {column}"));
            }
            let merge = part.merge.replace(STATE, &column);
            select.push(format!("{merge} AS {}", part.column));
        }
    }
    format!(
        "{}, finest AS (SELECT {} FROM encoded GROUP BY {}) {}",
        events_sql(view, table),
        finest.join(", "),
        keys.join(", "),
        cube_over(
            view,
            "finest",
            &format!("sum({})", ident(FINEST_ROWS)),
            select
        )
    )
}

/// The same result as [`view_sql`], with the grouping sets over the events themselves: the
/// plain form of the query, which the rollup must match to the byte. The engine runs it for a
/// date whose rollup would not fit the memory budget ([`rollup_fits`]): the rollup's coarse
/// groups hold every event's state once per grouping set in its second aggregation, whose
/// partial states arrive at the final one in batches too large to spill (a 50M-event day
/// asked for 464 MB at once of a 2 GiB budget), where the plain cube's aggregation over the
/// events emits and spills as it goes.
pub fn cube_sql(view: &ViewPlan, table: &str) -> String {
    let select = view
        .measures
        .iter()
        .flat_map(parts)
        .map(|part| format!("{} AS {}", part.raw, part.column))
        .collect();
    format!(
        "{} {}",
        events_sql(view, table),
        cube_over(view, "encoded", "count(*)", select)
    )
}

/// Whether the rollup of a date of `input_rows` master rows fits `memory_limit`: the states
/// its grouping sets hold, at most one per master row (before the `where` and deduplication)
/// and grouping set, each about [`state_bytes`], with room to spare. The 10M-event day of the
/// benchmark (~1.2 GB at the peak) fits the default budget (half of 24 GiB); a 50M-event day
/// within 2 GiB runs the plain cube.
pub fn rollup_fits(view: &ViewPlan, input_rows: u64, memory_limit: u64) -> bool {
    let sets = (view.granularities.len() as u64) << view.dimensions.len();
    let needed = input_rows
        .saturating_mul(sets)
        .saturating_mul(state_bytes(view));
    needed <= memory_limit
}

/// Bytes a grouping set's group holds per event it counts, about: a distinct key (16) and an
/// HyperLogLog observation (3), a value (8) and a sketch bucket (12), an exact sum's partials.
fn state_bytes(view: &ViewPlan) -> u64 {
    8 + view
        .measures
        .iter()
        .map(|m| match m.agg {
            AggKind::Count | AggKind::Min | AggKind::Max => 0,
            AggKind::Sum | AggKind::Avg => 16,
            AggKind::CountDistinct => 19,
            AggKind::Quantile => 20,
        })
        .sum::<u64>()
}

/// The rows of the finest groups (a column of the rollup's inner query).
const FINEST_ROWS: &str = "__n";

/// Where a part's merge expression names its state column.
const STATE: &str = "{state}";

fn state_column(measure: usize, part: usize) -> String {
    ident(&format!("__s{measure}_{part}"))
}

/// One column a measure writes to the view file, three ways: over the events, as a partial
/// state over the events (none when the part needs none: `count`), and merging those states.
struct Part {
    column: String,
    raw: String,
    state: Option<String>,
    merge: String,
}

/// A measure's columns: its value, and for `avg` its sum and count, for `count_distinct` and
/// `quantile` the sketch the speed layer keeps too.
fn parts(m: &Measure) -> Vec<Part> {
    let f = m.field_name.as_deref().unwrap_or_default();
    let value = ident(&columns::value(&m.name));
    // An aggregate of ours: over rows, as a state, merging states (`args` after the first).
    let ours = |column: String, name: &str, input: String, args: &str| Part {
        column,
        raw: format!("{name}({input}{args})"),
        state: Some(format!("{name}_state({input})")),
        merge: format!("{name}_merge({STATE}{args})"),
    };
    // DataFusion's own, whose state is a value: `min` of `min`s, `sum` of `count`s.
    let builtin = |column: String, raw: String, merge: &str| Part {
        column,
        state: Some(raw.clone()),
        raw,
        merge: format!("{merge}({STATE})"),
    };
    match m.agg {
        AggKind::Count => vec![Part {
            column: value,
            raw: "count(*)".into(),
            state: None,
            merge: format!("sum({})", ident(FINEST_ROWS)),
        }],
        AggKind::Sum => vec![ours(value, "tributary_sum", num(f), "")],
        AggKind::Min => vec![builtin(value, format!("min({})", num(f)), "min")],
        AggKind::Max => vec![builtin(value, format!("max({})", num(f)), "max")],
        AggKind::Avg => vec![
            ours(
                ident(&columns::avg_sum(&m.name)),
                "tributary_sum",
                num(f),
                "",
            ),
            builtin(
                ident(&columns::avg_n(&m.name)),
                format!("count({})", num(f)),
                "sum",
            ),
        ],
        AggKind::CountDistinct => vec![
            ours(value, "tributary_count_distinct", key(f), ""),
            ours(
                ident(&columns::sketch(&m.name)),
                "tributary_hll_observed",
                obs(f),
                "",
            ),
        ],
        AggKind::Quantile => {
            let q = format!(", {:?}", m.q.unwrap_or(0.5));
            vec![
                ours(value, "tributary_quantile_cont", num(f), &q),
                ours(
                    ident(&columns::sketch(&m.name)),
                    "tributary_qsketch_observed",
                    bucket(f),
                    "",
                ),
            ]
        }
    }
}

/// `WITH events AS (...), encoded AS (...)`: the view's events, each once, encoded.
fn events_sql(view: &ViewPlan, table: &str) -> String {
    // 1. The view's events, one row per `event_id`. Producer duplicates are resends of the
    //    same event; `min` per column keeps one deterministically (and, were two records with
    //    one id to differ, picks the same values on every run, so reruns stay idempotent).
    //    Text columns take ours, the same `min` held in an arena ([`crate::udaf::min_text`]).
    let mut dedup = vec!["min(CAST(event_time AS BIGINT)) AS ts".to_string()];
    for c in input_columns(view) {
        let min = if is_text(view, &c) {
            "tributary_min_text"
        } else {
            "min"
        };
        dedup.push(format!("{min}({col}) AS {col}", col = ident(&c)));
    }
    let mut events = format!("SELECT {} FROM {}", dedup.join(", "), ident(table));
    if !view.filters.is_empty() {
        let conds: Vec<String> = view
            .filters
            .iter()
            .map(|(name, field, value)| {
                let column = ident(&filter_column(*field, name));
                format!("{column} = {}", literal(value))
            })
            .collect();
        events.push_str(" WHERE ");
        events.push_str(&conds.join(" AND "));
    }
    events.push_str(" GROUP BY event_id");

    // 2. Each event once: its bucket per granularity (floor division, right before 1970
    //    too), dimensions as text, measure inputs as numbers and their encodings.
    let mut encoded = Vec::new();
    for (i, g) in view.granularities.iter().enumerate() {
        let ms = g.millis();
        encoded.push(format!("ts - ((ts % {ms}) + {ms}) % {ms} AS {}", t(i)));
    }
    for d in &view.dimensions {
        encoded.push(format!(
            "CAST({col} AS VARCHAR) AS {col}",
            col = ident(&d.name)
        ));
    }
    for f in fields_of(view) {
        let col = ident(f);
        let uses = |kinds: &[AggKind]| {
            view.measures
                .iter()
                .any(|m| m.field_name.as_deref() == Some(f) && kinds.contains(&m.agg))
        };
        if uses(&[
            AggKind::Sum,
            AggKind::Min,
            AggKind::Max,
            AggKind::Avg,
            AggKind::Quantile,
        ]) {
            encoded.push(format!("CAST({col} AS DOUBLE) AS {}", num(f)));
        }
        if uses(&[AggKind::CountDistinct]) {
            encoded.push(format!(
                "tributary_distinct_key(CAST({col} AS VARCHAR)) AS {}",
                key(f)
            ));
            encoded.push(format!(
                "tributary_hll_observation(CAST({col} AS VARCHAR)) AS {}",
                obs(f)
            ));
        }
        if uses(&[AggKind::Quantile]) {
            encoded.push(format!(
                "tributary_sketch_bucket(CAST({col} AS DOUBLE)) AS {}",
                bucket(f)
            ));
        }
    }
    format!(
        "WITH events AS ({events}), encoded AS (SELECT {} FROM events)",
        encoded.join(", ")
    )
}

/// 3. The cube over `from` (rows with the bucket columns and dimensions): every granularity ×
///    subset of the dimensions, in one aggregation, `rows` counting the events of a group
///    and `measures` the rest of the select list.
fn cube_over(view: &ViewPlan, from: &str, rows: &str, measures: Vec<String>) -> String {
    let n = view.granularities.len();
    let granularity = if n == 1 {
        "CAST(0 AS INT)".to_string()
    } else {
        let arms: Vec<String> = (0..n - 1)
            .map(|i| format!("WHEN grouping({}) = 0 THEN {i}", t(i)))
            .collect();
        format!("CAST(CASE {} ELSE {} END AS INT)", arms.join(" "), n - 1)
    };
    let bucket_start = if n == 1 {
        t(0)
    } else {
        format!("coalesce({})", (0..n).map(t).collect::<Vec<_>>().join(", "))
    };
    let gset = if view.dimensions.is_empty() {
        "0".to_string()
    } else {
        view.dimensions
            .iter()
            .enumerate()
            .map(|(i, d)| format!("(1 - grouping({})) * {}", ident(&d.name), 1 << i))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut select = vec![
        format!("{granularity} AS {}", ident(GRANULARITY)),
        format!("{bucket_start} AS {}", ident(columns::T)),
        format!("CAST({gset} AS INT) AS {}", ident(columns::GSET)),
    ];
    for d in &view.dimensions {
        select.push(format!(
            "{} AS {}",
            ident(&d.name),
            ident(&columns::dim(&d.name))
        ));
    }
    select.push(format!("{rows} AS {}", ident(columns::ROWS)));
    select.extend(measures);
    let mut sets = Vec::new();
    for i in 0..n {
        for mask in 0..(1u32 << view.dimensions.len()) {
            let mut set = vec![t(i)];
            for (d, dim) in view.dimensions.iter().enumerate() {
                if mask & (1 << d) != 0 {
                    set.push(ident(&dim.name));
                }
            }
            sets.push(format!("({})", set.join(", ")));
        }
    }
    let mut order = vec![ident(GRANULARITY), ident(columns::GSET), ident(columns::T)];
    for d in &view.dimensions {
        order.push(ident(&columns::dim(&d.name)));
    }
    format!(
        "SELECT {} FROM {from} GROUP BY GROUPING SETS ({}) ORDER BY {}",
        select.join(", "),
        sets.join(", "),
        order.join(", ")
    )
}

#[cfg(test)]
mod tests;
