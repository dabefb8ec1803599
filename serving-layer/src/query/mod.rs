//! Query parameters of `series` and `top`, validated against the view: every 400 names the
//! parameter and says what would be accepted.

use tributary_shared::Granularity;
use tributary_shared::bucket::{TIME_FORMATS, format_rfc3339, parse_time};
use tributary_shared::event::MAX_EVENT_TIME_MS;
use tributary_shared::selection::Selection;
use tributary_shared::view::ViewPlan;

use crate::error::ApiError;

/// Raw query pairs, in order (`filter` repeats).
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The parameters both endpoints share.
#[derive(Debug, Clone)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
    pub filters: Vec<(usize, Vec<String>)>,
    /// `exact=true`: only the batch layer's exact answers; other buckets are `pending`.
    pub exact: bool,
    /// `as_of`: the batch views as they stood at this instant (epoch ms); no speed part.
    pub as_of: Option<i64>,
}

impl Range {
    /// Whether the speed layer may answer (neither `exact` nor `as_of`).
    pub fn with_speed(&self) -> bool {
        !self.exact && self.as_of.is_none()
    }
}

/// A validated `series` query.
#[derive(Debug, Clone)]
pub struct SeriesParams {
    pub granularity: Granularity,
    pub measures: Vec<usize>,
    pub group_by: Vec<usize>,
    pub range: Range,
}

/// The largest `k` of `top`.
pub const MAX_K: usize = 1000;

/// A validated `top` query.
#[derive(Debug, Clone)]
pub struct TopParams {
    pub dimension: usize,
    pub measure: usize,
    pub k: usize,
    pub range: Range,
}

impl SeriesParams {
    /// What both layers read for this query.
    pub fn selection(&self) -> Selection {
        Selection {
            filters: self.range.filters.clone(),
            group_by: self.group_by.clone(),
            measures: self.measures.clone(),
        }
    }
}

impl TopParams {
    /// What both layers read for this query: the measure per value of the dimension.
    pub fn selection(&self) -> Selection {
        Selection {
            filters: self.range.filters.clone(),
            group_by: vec![self.dimension],
            measures: vec![self.measure],
        }
    }
}

const KNOWN_SERIES: &[&str] = &[
    "measures",
    "from",
    "to",
    "granularity",
    "group_by",
    "filter",
    "exact",
    "as_of",
];
const KNOWN_TOP: &[&str] = &[
    "dimension",
    "measure",
    "k",
    "from",
    "to",
    "filter",
    "exact",
    "as_of",
];

fn reject_unknown(pairs: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(ApiError {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "unknown_parameter",
            message: format!(
                "unknown query parameter {k:?}; accepted: {}",
                known.join(", ")
            ),
            parameter: None,
        });
    }
    Ok(())
}

/// What one query may cost (from `[serving]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_buckets: usize,
    pub max_groups: usize,
    pub max_filter_values: usize,
    /// How far back `as_of` may reach (`batch.history_retention`).
    pub history_retention_ms: i64,
}

impl Limits {
    pub fn of(config: &tributary_shared::Config) -> Self {
        Limits {
            max_buckets: config.serving.max_buckets,
            max_groups: config.serving.max_groups,
            max_filter_values: config.serving.max_filter_values,
            history_retention_ms: config.batch.history_retention.as_millis() as i64,
        }
    }
}

/// Times a query may name: the range events may have (bucket arithmetic stays in range, and
/// every time an answer repeats prints as a four-digit-year RFC 3339 time).
const TIME_RANGE: std::ops::RangeInclusive<i64> = 0..=MAX_EVENT_TIME_MS;

/// A parameter given with no value: refused rather than read as absent, so a client that
/// meant to send something learns it did not (the OpenAPI document allows no empty value).
fn empty(key: &'static str) -> ApiError {
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

fn dimension(view: &ViewPlan, param: &'static str, name: &str) -> Result<usize, ApiError> {
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

fn measure(view: &ViewPlan, param: &'static str, name: &str) -> Result<usize, ApiError> {
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
fn check_exact_measures(
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
fn range(
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

impl SeriesParams {
    pub fn parse(
        view: &ViewPlan,
        pairs: &[(String, String)],
        now_ms: i64,
        limits: Limits,
    ) -> Result<SeriesParams, ApiError> {
        reject_unknown(pairs, KNOWN_SERIES)?;
        let max_buckets = limits.max_buckets;
        // An empty list is refused like any empty value: `measures=` could mean no measure
        // or all, and is what both an empty list and a list of one empty name look like.
        let measures = match one(pairs, "measures") {
            None => (0..view.measures.len()).collect(),
            Some("") => return Err(empty("measures")),
            Some(list) => {
                // A measure named twice is read and answered once.
                let mut measures = Vec::new();
                for m in list.split(',') {
                    let m = measure(view, "measures", m)?;
                    if !measures.contains(&m) {
                        measures.push(m);
                    }
                }
                measures
            }
        };
        let granularity = match one(pairs, "granularity") {
            Some("") => return Err(empty("granularity")),
            None => *view
                .granularities
                .first()
                .ok_or_else(|| ApiError::internal("view without granularities"))?,
            Some(g) => {
                let known: Vec<&str> = view.granularities.iter().map(|g| g.as_str()).collect();
                let parsed: Option<Granularity> = g.parse().ok();
                match parsed.filter(|p| view.granularities.contains(p)) {
                    Some(p) => p,
                    None => {
                        return Err(ApiError::param(
                            "granularity",
                            "bad_parameter",
                            format!(
                                "granularity={g:?}: view {:?} is kept at {}",
                                view.name,
                                known.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        let group_by = match one(pairs, "group_by") {
            None => Vec::new(),
            Some("") => return Err(empty("group_by")),
            Some(list) => {
                let mut dims = Vec::new();
                for name in list.split(',') {
                    let d = dimension(view, "group_by", name)?;
                    if !dims.contains(&d) {
                        dims.push(d);
                    }
                }
                dims
            }
        };
        let range = range(view, pairs, now_ms, limits)?;
        check_exact_measures(view, &range, &measures)?;
        let buckets = granularity.count(range.from_ms, range.to_ms) as usize;
        if buckets > max_buckets {
            return Err(ApiError::param(
                "granularity",
                "too_many_buckets",
                format!(
                    "{buckets} {granularity} buckets between from and to; at most {max_buckets} (serving.max_buckets): narrow the range or use a coarser granularity"
                ),
            ));
        }
        Ok(SeriesParams {
            granularity,
            measures,
            group_by,
            range,
        })
    }
}

/// A validated `accuracy` query: the ledger's buckets of one granularity in a range.
#[derive(Debug, Clone)]
pub struct AccuracyParams {
    pub granularity: Granularity,
    pub measures: Vec<usize>,
    pub from_ms: i64,
    pub to_ms: i64,
}

const KNOWN_ACCURACY: &[&str] = &["measures", "from", "to", "granularity"];

impl AccuracyParams {
    /// The same rules as `series` for the parameters they share.
    pub fn parse(
        view: &ViewPlan,
        pairs: &[(String, String)],
        now_ms: i64,
        limits: Limits,
    ) -> Result<AccuracyParams, ApiError> {
        reject_unknown(pairs, KNOWN_ACCURACY)?;
        let series = SeriesParams::parse(view, pairs, now_ms, limits)?;
        Ok(AccuracyParams {
            granularity: series.granularity,
            measures: series.measures,
            from_ms: series.granularity.floor(series.range.from_ms),
            to_ms: series.range.to_ms,
        })
    }
}

impl TopParams {
    pub fn parse(
        view: &ViewPlan,
        pairs: &[(String, String)],
        now_ms: i64,
        limits: Limits,
    ) -> Result<TopParams, ApiError> {
        reject_unknown(pairs, KNOWN_TOP)?;
        let dimension = match one(pairs, "dimension") {
            Some("") => return Err(empty("dimension")),
            Some(d) => dimension(view, "dimension", d)?,
            None => {
                return Err(ApiError::param(
                    "dimension",
                    "missing_parameter",
                    "dimension is required",
                ));
            }
        };
        let measure = match one(pairs, "measure") {
            Some("") => return Err(empty("measure")),
            Some(m) => measure(view, "measure", m)?,
            None => {
                return Err(ApiError::param(
                    "measure",
                    "missing_parameter",
                    "measure is required",
                ));
            }
        };
        let k = match one(pairs, "k") {
            None => 10,
            Some("") => return Err(empty("k")),
            // Digits only: `parse` would also take a sign, which the document does not allow.
            Some(k) => Some(k)
                .filter(|k| k.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| (1..=MAX_K).contains(k))
                .ok_or_else(|| {
                    ApiError::param(
                        "k",
                        "bad_parameter",
                        format!("k={k:?}: expected 1..{MAX_K}"),
                    )
                })?,
        };
        let range = range(view, pairs, now_ms, limits)?;
        check_exact_measures(view, &range, &[measure])?;
        Ok(TopParams {
            dimension,
            measure,
            k,
            range,
        })
    }
}

#[cfg(test)]
mod tests;
