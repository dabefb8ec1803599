//! The parameters every query endpoint reads the same way: times (`from`, `to`, `as_of`),
//! `exact`, the `filter`s, and the names of dimensions and measures; each refusal names its
//! parameter.

use tributary_shared::bucket::{TIME_FORMATS, format_rfc3339, parse_time};
use tributary_shared::event::MAX_EVENT_TIME_MS;
use tributary_shared::view::ViewPlan;

use super::{Limits, Range, one};
use crate::error::ApiError;

/// Times a query may name: the range events may have (bucket arithmetic stays in range, and
/// every time an answer repeats prints as a four-digit-year RFC 3339 time).
const TIME_RANGE: std::ops::RangeInclusive<i64> = 0..=MAX_EVENT_TIME_MS;

/// A parameter given with no value: refused rather than read as absent, so a client that
/// meant to send something learns it did not (the OpenAPI document allows no empty value).
pub(super) fn empty(key: &'static str) -> ApiError {
    ApiError::param(
        key,
        "bad_parameter",
        format!("{key} is empty: give a value, or leave {key} out for its default"),
    )
}

/// An RFC 3339 time or a date, clamped to the calendar events can have (1970 ..= 9999): no
/// event lies outside it, so a range reaching past it asks for nothing more.
fn time(pairs: &[(String, String)], key: &'static str) -> Result<Option<i64>, ApiError> {
    match one(pairs, key) {
        None => Ok(None),
        Some("") => Err(empty(key)),
        Some(s) => {
            let t = parse_time(s).ok_or_else(|| {
                ApiError::param(
                    key,
                    "bad_parameter",
                    format!("{key}={s:?} is not a time: use {TIME_FORMATS}"),
                )
            })?;
            Ok(Some(t.clamp(*TIME_RANGE.start(), *TIME_RANGE.end())))
        }
    }
}

pub(super) fn dimension(
    view: &ViewPlan,
    param: &'static str,
    name: &str,
) -> Result<usize, ApiError> {
    view.dimension_index(name).ok_or_else(|| {
        let known: Vec<&str> = view.dimensions.iter().map(|d| d.name.as_str()).collect();
        ApiError::param(
            param,
            "unknown_dimension",
            format!(
                "{param}: view {:?} has no dimension {name:?}; dimensions: {}",
                view.name,
                known.join(", ")
            ),
        )
    })
}

pub(super) fn measure(view: &ViewPlan, param: &'static str, name: &str) -> Result<usize, ApiError> {
    view.measures
        .iter()
        .position(|m| m.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = view.measures.iter().map(|m| m.name.as_str()).collect();
            ApiError::param(
                param,
                "unknown_measure",
                format!(
                    "{param}: view {:?} has no measure {name:?}; measures: {}",
                    view.name,
                    known.join(", ")
                ),
            )
        })
}

/// `exact=true|false` (default false).
fn exact(pairs: &[(String, String)]) -> Result<bool, ApiError> {
    match one(pairs, "exact") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some("") => Err(empty("exact")),
        Some(other) => Err(ApiError::param(
            "exact",
            "bad_parameter",
            format!("exact={other:?}: expected true or false"),
        )),
    }
}

/// `as_of`: not in the future, and not older than the history keeps.
fn as_of(pairs: &[(String, String)], now_ms: i64, limits: Limits) -> Result<Option<i64>, ApiError> {
    let Some(t) = time(pairs, "as_of")? else {
        return Ok(None);
    };
    if t > now_ms {
        return Err(ApiError::param(
            "as_of",
            "bad_parameter",
            format!(
                "as_of={} is in the future (now is {})",
                format_rfc3339(t),
                format_rfc3339(now_ms)
            ),
        ));
    }
    let oldest = now_ms - limits.history_retention_ms;
    if t < oldest {
        return Err(ApiError::param(
            "as_of",
            "out_of_history",
            format!(
                "as_of={} is older than the history kept ({} back, batch.history_retention): the oldest answerable is {}",
                format_rfc3339(t),
                humantime::format_duration(std::time::Duration::from_millis(
                    limits.history_retention_ms.max(0) as u64
                )),
                format_rfc3339(oldest)
            ),
        ));
    }
    Ok(Some(t))
}

/// `exact=true` promises values that are exact: a set filter merges several rows of the
/// cube, which for distinct counts and quantiles is a sketch merge, never exact.
pub(super) fn check_exact_measures(
    view: &ViewPlan,
    range: &Range,
    measures: &[usize],
) -> Result<(), ApiError> {
    if !range.exact {
        return Ok(());
    }
    let Some((d, _)) = range.filters.iter().find(|(_, v)| v.len() > 1) else {
        return Ok(());
    };
    let sketched: Vec<&str> = measures
        .iter()
        .filter_map(|m| view.measures.get(*m))
        .filter(|m| m.agg.merges_by_sketch())
        .map(|m| m.name.as_str())
        .collect();
    if sketched.is_empty() {
        return Ok(());
    }
    Err(ApiError::param(
        "exact",
        "not_exact",
        format!(
            "exact=true: {} over several values of {:?} merge sketches and are never exact; filter one value, or leave out exact",
            sketched.join(", "),
            view.dimensions.get(*d).map_or("?", |d| d.name.as_str())
        ),
    ))
}

/// `from`/`to` (default: the last 24 hours, up to `as_of` when given), the `filter`s,
/// `exact` and `as_of`.
pub(super) fn range(
    view: &ViewPlan,
    pairs: &[(String, String)],
    now_ms: i64,
    limits: Limits,
) -> Result<Range, ApiError> {
    let as_of = as_of(pairs, now_ms, limits)?;
    let exact = exact(pairs)?;
    // Defaults relative to `as_of`, so the same `as_of` query is the same answer later.
    let to_ms = time(pairs, "to")?.unwrap_or(as_of.unwrap_or(now_ms));
    let from_ms = time(pairs, "from")?.unwrap_or((to_ms - 24 * 3_600_000).max(0));
    if from_ms >= to_ms {
        return Err(ApiError::param(
            "from",
            "bad_range",
            format!(
                "from ({}) must be before to ({})",
                format_rfc3339(from_ms),
                format_rfc3339(to_ms)
            ),
        ));
    }
    let mut filters: Vec<(usize, Vec<String>)> = Vec::new();
    for (_, f) in pairs.iter().filter(|(k, _)| k == "filter") {
        let Some((dim, values)) = f.split_once(':') else {
            return Err(ApiError::param(
                "filter",
                "bad_parameter",
                format!("filter={f:?}: expected dimension:value or dimension:v1|v2"),
            ));
        };
        let d = dimension(view, "filter", dim)?;
        if filters.iter().any(|(x, _)| *x == d) {
            return Err(ApiError::param(
                "filter",
                "bad_parameter",
                format!(
                    "filter: dimension {dim:?} is filtered twice; list its values as {dim}:a|b"
                ),
            ));
        }
        let mut values: Vec<String> = values.split('|').map(str::to_string).collect();
        values.sort();
        values.dedup();
        filters.push((d, values));
    }
    let listed: usize = filters.iter().map(|(_, v)| v.len()).sum();
    if listed > limits.max_filter_values {
        return Err(ApiError::param(
            "filter",
            "too_many_values",
            format!(
                "the filters list {listed} values; at most {} (serving.max_filter_values)",
                limits.max_filter_values
            ),
        ));
    }
    Ok(Range {
        from_ms,
        to_ms,
        filters,
        exact,
        as_of,
    })
}
