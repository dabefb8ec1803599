//! The SQL text of a view's recompute over one date of the master dataset: one query that
//! filters the date's rows by the view's `where`, deduplicates them by `event_id`, encodes
//! them once ([`crate::encode`]) and aggregates every granularity and grouping set of the
//! dimensions (the cube) with `GROUPING SETS`. One plan per date is what lets DataFusion bound
//! its memory (each operator spills) and lets Ballista distribute it (nothing is held between
//! queries). Kept apart from the engine, which only runs it, so the query reads as a whole.

use tributary_shared::config::AggKind;
use tributary_shared::view::{FieldRef, FilterValue, ViewPlan};

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
    // 1. The view's events, one row per `event_id`. Producer duplicates are resends of the
    //    same event; `min` per column keeps one deterministically (and, were two records with
    //    one id to differ, picks the same values on every run, so reruns stay idempotent).
    let mut dedup = vec!["min(CAST(event_time AS BIGINT)) AS ts".to_string()];
    for c in input_columns(view) {
        dedup.push(format!("min({col}) AS {col}", col = ident(&c)));
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

    // 3. The cube: every granularity × subset of the dimensions, in one aggregation.
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
    select.push(format!("count(*) AS {}", ident(columns::ROWS)));
    for m in &view.measures {
        let f = m.field_name.as_deref().unwrap_or_default();
        let value = ident(&columns::value(&m.name));
        match m.agg {
            AggKind::Count => select.push(format!("count(*) AS {value}")),
            AggKind::Sum => select.push(format!("tributary_sum({}) AS {value}", num(f))),
            AggKind::Min => select.push(format!("min({}) AS {value}", num(f))),
            AggKind::Max => select.push(format!("max({}) AS {value}", num(f))),
            AggKind::Avg => {
                select.push(format!(
                    "tributary_sum({}) AS {}",
                    num(f),
                    ident(&columns::avg_sum(&m.name))
                ));
                select.push(format!(
                    "count({}) AS {}",
                    num(f),
                    ident(&columns::avg_n(&m.name))
                ));
            }
            AggKind::CountDistinct => {
                select.push(format!("tributary_count_distinct({}) AS {value}", key(f)));
                select.push(format!(
                    "tributary_hll_observed({}) AS {}",
                    obs(f),
                    ident(&columns::sketch(&m.name))
                ));
            }
            AggKind::Quantile => {
                let q = m.q.unwrap_or(0.5);
                select.push(format!(
                    "tributary_quantile_cont({}, {q:?}) AS {value}",
                    num(f)
                ));
                select.push(format!(
                    "tributary_qsketch_observed({}) AS {}",
                    bucket(f),
                    ident(&columns::sketch(&m.name))
                ));
            }
        }
    }
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
        "WITH events AS ({events}), encoded AS (SELECT {} FROM events) \
         SELECT {} FROM encoded GROUP BY GROUPING SETS ({}) ORDER BY {}",
        encoded.join(", "),
        select.join(", "),
        sets.join(", "),
        order.join(", ")
    )
}
