//! Query parameters of `series` and `top`, validated against the view: every 400 names the
//! parameter and says what would be accepted.

use tributary_shared::Granularity;
use tributary_shared::bucket::{format_rfc3339, parse_time};
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
}

/// A validated `series` query.
#[derive(Debug, Clone)]
pub struct SeriesParams {
    pub granularity: Granularity,
    pub measures: Vec<usize>,
    pub group_by: Vec<usize>,
    pub range: Range,
}

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
];
const KNOWN_TOP: &[&str] = &["dimension", "measure", "k", "from", "to", "filter"];

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
}

impl Limits {
    pub fn of(config: &tributary_shared::config::ServingConfig) -> Self {
        Limits {
            max_buckets: config.max_buckets,
            max_groups: config.max_groups,
            max_filter_values: config.max_filter_values,
        }
    }
}

/// Times a query may name: the range events may have (bucket arithmetic stays in range).
const TIME_RANGE: std::ops::RangeInclusive<i64> = 0..=MAX_EVENT_TIME_MS + 1;

fn time(pairs: &[(String, String)], key: &'static str) -> Result<Option<i64>, ApiError> {
    match one(pairs, key) {
        None | Some("") => Ok(None),
        Some(s) => {
            let t = parse_time(s)
                .or_else(|| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::param(
                        key,
                        "bad_parameter",
                        format!("{key}={s:?} is not a time: use RFC 3339 (2026-11-21T10:00:00Z), a date, or epoch milliseconds"),
                    )
                })?;
            if !TIME_RANGE.contains(&t) {
                return Err(ApiError::param(
                    key,
                    "bad_parameter",
                    format!("{key}={s:?} is outside 1970-01-01 ..= 9999-12-31"),
                ));
            }
            Ok(Some(t))
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

/// `from`/`to` (default: the last 24 hours) and the `filter`s.
fn range(
    view: &ViewPlan,
    pairs: &[(String, String)],
    now_ms: i64,
    limits: Limits,
) -> Result<Range, ApiError> {
    let to_ms = time(pairs, "to")?.unwrap_or(now_ms);
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
        let measures = match one(pairs, "measures") {
            None | Some("") => (0..view.measures.len()).collect(),
            Some(list) => {
                // A measure named twice is read and answered once.
                let mut measures = Vec::new();
                for m in list.split(',') {
                    let m = measure(view, "measures", m.trim())?;
                    if !measures.contains(&m) {
                        measures.push(m);
                    }
                }
                measures
            }
        };
        let granularity = match one(pairs, "granularity") {
            None | Some("") => *view
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
            None | Some("") => Vec::new(),
            Some(list) => {
                let mut dims = Vec::new();
                for name in list.split(',') {
                    let d = dimension(view, "group_by", name.trim())?;
                    if !dims.contains(&d) {
                        dims.push(d);
                    }
                }
                dims
            }
        };
        let range = range(view, pairs, now_ms, limits)?;
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

impl TopParams {
    pub fn parse(
        view: &ViewPlan,
        pairs: &[(String, String)],
        now_ms: i64,
        limits: Limits,
    ) -> Result<TopParams, ApiError> {
        reject_unknown(pairs, KNOWN_TOP)?;
        let dimension = match one(pairs, "dimension") {
            Some(d) if !d.is_empty() => dimension(view, "dimension", d)?,
            _ => {
                return Err(ApiError::param(
                    "dimension",
                    "missing_parameter",
                    "dimension is required",
                ));
            }
        };
        let measure = match one(pairs, "measure") {
            Some(m) if !m.is_empty() => measure(view, "measure", m)?,
            _ => {
                return Err(ApiError::param(
                    "measure",
                    "missing_parameter",
                    "measure is required",
                ));
            }
        };
        let k = match one(pairs, "k") {
            None | Some("") => 10,
            Some(k) => k
                .parse::<usize>()
                .ok()
                .filter(|k| (1..=1000).contains(k))
                .ok_or_else(|| {
                    ApiError::param("k", "bad_parameter", format!("k={k:?}: expected 1..1000"))
                })?,
        };
        Ok(TopParams {
            dimension,
            measure,
            k,
            range: range(view, pairs, now_ms, limits)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_shared::{Config, EventSchema};

    fn plan() -> ViewPlan {
        let config = Config::from_toml_str_with_env(
            include_str!("../../infra/tributary.toml"),
            "t",
            Vec::new(),
        )
        .unwrap_or_default();
        ViewPlan::compile_all(&config, &EventSchema::from_config(&config))
            .ok()
            .and_then(|v| v.into_iter().next())
            .unwrap_or_else(|| panic!("example view"))
    }

    fn limits() -> Limits {
        Limits {
            max_buckets: 1000,
            max_groups: 100,
            max_filter_values: 5,
        }
    }

    fn err(q: &str) -> (Option<&'static str>, String, String) {
        match SeriesParams::parse(&plan(), &pairs(Some(q)), 1_763_719_200_000, limits()) {
            Ok(_) => (None, String::new(), String::new()),
            Err(e) => (e.parameter, e.code.to_string(), e.message),
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(err("measures=events,nope").0, Some("measures"));
        assert_eq!(err("granularity=week").0, Some("granularity"));
        assert_eq!(err("group_by=planet").0, Some("group_by"));
        assert_eq!(err("filter=planet:x").0, Some("filter"));
        assert_eq!(err("filter=country").0, Some("filter"));
        assert_eq!(err("from=yesterday").0, Some("from"));
        let (p, code, _) = err("from=2026-11-21T10:00:00Z&to=2026-11-21T09:00:00Z");
        assert_eq!((p, code.as_str()), (Some("from"), "bad_range"));
        let (p, code, msg) = err("granularity=minute&from=2026-11-01&to=2026-11-21");
        assert_eq!(
            (p, code.as_str()),
            (Some("granularity"), "too_many_buckets")
        );
        assert!(msg.contains("28800"), "{msg}");
        assert_eq!(err("colour=red").1, "unknown_parameter");
        // Times outside the calendar the platform keeps are refused, not overflowed.
        for q in [
            "to=9223372036854775807",
            "from=-9223372036854775808",
            "from=-1&to=5",
            "to=253402300800001",
        ] {
            let (p, code, _) = err(q);
            assert!(p == Some("from") || p == Some("to"), "{q}: {p:?}");
            assert_eq!(code, "bad_parameter", "{q}");
        }
        let (p, code, _) = err("filter=country:a|b|c&filter=device:d|e|f");
        assert_eq!((p, code.as_str()), (Some("filter"), "too_many_values"));
        let dup = SeriesParams::parse(
            &plan(),
            &pairs(Some("measures=events,revenue,events&granularity=hour")),
            1_763_719_200_000,
            limits(),
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(
            dup.measures.len(),
            2,
            "a measure named twice is answered once"
        );
        let ok = SeriesParams::parse(
            &plan(),
            &pairs(Some(
                "measures=events&granularity=hour&group_by=country&filter=device:mobile|tablet&from=2026-11-21T00:00:00Z&to=2026-11-21T06:00:00Z",
            )),
            0,
            limits(),
        );
        let ok = ok.unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(
            ok.range.filters,
            vec![(1, vec!["mobile".to_string(), "tablet".to_string()])]
        );
        assert_eq!(ok.group_by, vec![0]);
        assert!(TopParams::parse(&plan(), &pairs(Some("measure=events")), 0, limits()).is_err());
        assert!(
            TopParams::parse(
                &plan(),
                &pairs(Some("dimension=country&measure=events&k=0")),
                0,
                limits()
            )
            .is_err()
        );
    }
}
