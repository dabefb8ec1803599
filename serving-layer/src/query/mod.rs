//! Query parameters of `series` and `top`, validated against the view: every 400 names the
//! parameter and says what would be accepted.

use tributary_shared::Granularity;
use tributary_shared::selection::Selection;
use tributary_shared::view::ViewPlan;

use crate::error::ApiError;

mod params;

use params::{check_exact_measures, dimension, empty, measure, range};

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
    /// The query written out in full and unambiguously (filter values length-prefixed), as a
    /// key for answers kept per query: equal keys, equal queries. Written by hand rather
    /// than with `Debug`: it is built on every request, and `Debug` was ~4 % of one's CPU.
    pub fn key(&self, view: &str) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(96);
        let r = &self.range;
        let _ = write!(
            s,
            "{view}|{}|{}|{}|{}|{:?}|m",
            self.granularity, r.from_ms, r.to_ms, r.exact, r.as_of
        );
        for m in &self.measures {
            let _ = write!(s, "{m},");
        }
        s.push_str("|g");
        for d in &self.group_by {
            let _ = write!(s, "{d},");
        }
        s.push_str("|f");
        for (d, values) in &r.filters {
            let _ = write!(s, "{d}:");
            for v in values {
                let _ = write!(s, "{}:{v},", v.len());
            }
            s.push(';');
        }
        s
    }

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

/// A parameter that must be given, with a value.
fn required<'a>(pairs: &'a [(String, String)], key: &'static str) -> Result<&'a str, ApiError> {
    match one(pairs, key) {
        Some("") => Err(empty(key)),
        Some(v) => Ok(v),
        None => Err(ApiError::param(
            key,
            "missing_parameter",
            format!("{key} is required"),
        )),
    }
}

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
        let dimension = dimension(view, "dimension", required(pairs, "dimension")?)?;
        let measure = measure(view, "measure", required(pairs, "measure")?)?;
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
