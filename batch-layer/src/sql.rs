//! The SQL text of a view's recompute: the filter-and-deduplicate query over a date's master
//! rows, then one aggregate query per granularity and grouping set of the cube; and the columns
//! a view reads. Kept apart from the engine, which only runs them, so the queries read as a
//! whole.

use tributary_shared::Granularity;
use tributary_shared::config::AggKind;
use tributary_shared::view::{FieldRef, FilterValue, ViewPlan};

use crate::encode;
use crate::view_file::columns;

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

/// The fields of the view's measures of one kind (each once).
pub fn fields_of(view: &ViewPlan, agg: AggKind) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for m in &view.measures {
        if m.agg == agg
            && let Some(f) = &m.field_name
            && !fields.contains(f)
        {
            fields.push(f.clone());
        }
    }
    fields
}

/// Step 1: the view's events of the date, one row per `event_id`. Producer duplicates are
/// resends of the same event; grouping by `event_id` with `min` per column keeps one
/// deterministically (and, were two records with one id to differ, picks the same values on
/// every run, so reruns stay idempotent).
pub fn dedup_sql(view: &ViewPlan, table: &str) -> String {
    let mut select = vec!["min(CAST(event_time AS BIGINT)) AS ts".to_string()];
    for c in input_columns(view) {
        select.push(format!("min({col}) AS {col}", col = ident(&c)));
    }
    let mut sql = format!("SELECT {} FROM {}", select.join(", "), ident(table));
    if !view.filters.is_empty() {
        let conds: Vec<String> = view
            .filters
            .iter()
            .map(|(name, field, value)| {
                let column = ident(&filter_column(*field, name));
                format!("{column} = {}", literal(value))
            })
            .collect();
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" GROUP BY event_id");
    sql
}

/// Step 2: one granularity and grouping set (`mask` bit `i` = dimension `i` grouped).
pub fn aggregate_sql(view: &ViewPlan, table: &str, g: Granularity, mask: u32) -> String {
    let ms = g.millis();
    let mut select = vec![
        // Floor division that is right for times before 1970 too.
        format!("ts - ((ts % {ms}) + {ms}) % {ms} AS t"),
        format!("CAST({mask} AS INT) AS gset"),
    ];
    let mut group = vec![format!("ts - ((ts % {ms}) + {ms}) % {ms}")];
    for (i, d) in view.dimensions.iter().enumerate() {
        if mask & (1 << i) != 0 {
            select.push(format!(
                "CAST({} AS VARCHAR) AS {}",
                ident(&d.name),
                ident(&columns::dim(&d.name))
            ));
            group.push(ident(&d.name));
        } else {
            select.push(format!(
                "CAST(NULL AS VARCHAR) AS {}",
                ident(&columns::dim(&d.name))
            ));
        }
    }
    select.push(format!("count(*) AS {}", ident(columns::ROWS)));
    for m in &view.measures {
        let field = m.field_name.as_deref().map(ident).unwrap_or_default();
        let num = format!("CAST({field} AS DOUBLE)");
        let value = ident(&columns::value(&m.name));
        match m.agg {
            AggKind::Count => select.push(format!("count(*) AS {value}")),
            AggKind::Sum => select.push(format!("sum({num}) AS {value}")),
            AggKind::Min => select.push(format!("min({num}) AS {value}")),
            AggKind::Max => select.push(format!("max({num}) AS {value}")),
            AggKind::Avg => {
                select.push(format!(
                    "sum({num}) AS {}",
                    ident(&columns::avg_sum(&m.name))
                ));
                select.push(format!(
                    "count({num}) AS {}",
                    ident(&columns::avg_n(&m.name))
                ));
            }
            AggKind::CountDistinct => {
                // Over the columns `encode` added (the field's text interned / hashed once).
                let f = m.field_name.as_deref().unwrap_or_default();
                select.push(format!(
                    "tributary_count_distinct_ids({}) AS {value}",
                    ident(&encode::id_column(f))
                ));
                select.push(format!(
                    "tributary_hll_observed({}) AS {}",
                    ident(&encode::hll_column(f)),
                    ident(&columns::sketch(&m.name))
                ));
            }
            AggKind::Quantile => {
                let q = m.q.unwrap_or(0.5);
                select.push(format!("tributary_quantile_cont({num}, {q:?}) AS {value}"));
                let f = m.field_name.as_deref().unwrap_or_default();
                select.push(format!(
                    "tributary_qsketch_observed({}) AS {}",
                    ident(&encode::sketch_column(f)),
                    ident(&columns::sketch(&m.name))
                ));
            }
        }
    }
    format!(
        "SELECT {} FROM {} GROUP BY {}",
        select.join(", "),
        ident(table),
        group.join(", ")
    )
}
