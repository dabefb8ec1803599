//! `GET /v1/views/{view}/top`: a dimension's values ranked by one measure over a range, each
//! bucket's partial values from its layer merged (sketches where a merge is not exact).

use std::collections::BTreeMap;

use tributary_batch_layer::read::BatchQuery;
use tributary_shared::Granularity;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::series::Partial;
use tributary_shared::view::ViewPlan;
use tributary_speed_layer::read::SpeedQuery;

use super::{Prologue, prologue, too_many_groups};
use crate::error::ApiError;
use crate::query::TopParams;
use crate::response::{Covered, TopResponse, TopRow};
use crate::sources::{SourceError, Sources};

pub async fn top(
    src: &Sources,
    view: &ViewPlan,
    p: &TopParams,
    now_ms: i64,
) -> Result<TopResponse, ApiError> {
    let (from, to) = (p.range.from_ms, p.range.to_ms);
    // The coarsest kept granularity both ends align to reads the fewest rows and keys.
    let mut grans = view.granularities.clone();
    grans.sort();
    let g = grans
        .iter()
        .rev()
        .find(|g| g.floor(from) == from && g.floor(to) == to)
        .or(grans.first())
        .copied()
        .unwrap_or(Granularity::Minute);
    let max = src.config.serving.max_buckets as u64;
    if g.count(from, to) > max {
        return Err(ApiError::param(
            "from",
            "too_many_buckets",
            format!(
                "{} {g} buckets between from and to; at most {max}: align from/to to hours or days",
                g.count(from, to)
            ),
        ));
    }
    let measure = &view.measures[p.measure];
    let sketched = measure.agg.merges_by_sketch();
    if p.range.exact && sketched && g.count(from, to) > 1 {
        return Err(ApiError::param(
            "exact",
            "not_exact",
            format!(
                "exact=true: {} ({}) over {} {g} buckets merges sketches and is never exact; ask for one {g} bucket, or leave out exact",
                measure.name,
                measure.agg.as_str(),
                g.count(from, to)
            ),
        ));
    }
    let max_groups = src.config.serving.max_groups;
    let Prologue {
        manifest,
        horizon,
        batch: batch_buckets,
        speed: speed_buckets,
        missing,
        pending,
        mut unreadable,
        mut errors,
    } = prologue(src, view, g, &p.range, now_ms).await;
    // Without speed, the rows cover the settled buckets; with it, the whole range.
    let covered = if p.range.with_speed() {
        Some(Covered {
            from: format_rfc3339(from),
            to: format_rfc3339(to),
        })
    } else {
        match (batch_buckets.first(), batch_buckets.last()) {
            (Some(first), Some(last)) => Some(Covered {
                from: format_rfc3339(*first),
                to: format_rfc3339(g.end(*last)),
            }),
            _ => None,
        }
    };
    let mut rebuilding: Vec<i64> = Vec::new();
    let mut totals: BTreeMap<Option<String>, (Partial, &'static str)> = BTreeMap::new();
    let mut add = |group: Vec<Option<String>>, part: &Partial, source: &'static str| {
        let key = group.into_iter().next().flatten();
        match totals.get_mut(&key) {
            Some((t, s)) => {
                t.merge(part);
                if *s != source {
                    *s = "batch+speed";
                }
            }
            None => {
                totals.insert(key, (part.clone(), source));
            }
        }
    };
    if let (Some(m), Some(first), Some(last)) =
        (&manifest, batch_buckets.first(), batch_buckets.last())
    {
        let q = BatchQuery {
            granularity: g,
            from_ms: *first,
            to_ms: g.end(*last),
            selection: p.selection(),
        };
        match src.batch.read_partials(view, m, &q).await {
            Ok(s) if s.len() > max_groups => {
                return Err(too_many_groups("dimension", s.len(), max_groups));
            }
            Ok(s) => {
                for (group, points) in s {
                    for part in points.values() {
                        add(group.clone(), part, "batch");
                    }
                }
            }
            Err(e) => {
                errors.push(format!("batch view unreadable: {e}"));
                unreadable.extend(&batch_buckets);
            }
        }
    }
    if !speed_buckets.is_empty() {
        match src.view_state(&view.name).await {
            Err(e) => {
                errors.push(format!("speed layer unreadable: {e}"));
                unreadable.extend(&speed_buckets);
            }
            Ok(state) if !state.serving() => rebuilding.extend(&speed_buckets),
            Ok(state) => {
                let q = SpeedQuery {
                    granularity: g,
                    buckets: speed_buckets.clone(),
                    selection: p.selection(),
                    epoch: state.epoch.clone(),
                    max_groups,
                };
                match src.speed_totals(view, q).await {
                    Ok(s) => {
                        for (group, part) in s {
                            add(group, &part, "speed");
                        }
                    }
                    Err(SourceError::TooManyGroups(n)) => {
                        return Err(too_many_groups("dimension", n, max_groups));
                    }
                    Err(SourceError::Rebuilding) => rebuilding.extend(&speed_buckets),
                    Err(e) => {
                        errors.push(format!("speed layer unreadable: {e}"));
                        unreadable.extend(&speed_buckets);
                    }
                }
            }
        }
    }
    if totals.len() > max_groups {
        return Err(too_many_groups("dimension", totals.len(), max_groups));
    }
    let mut rows: Vec<TopRow> = totals
        .into_iter()
        .map(|(value, (part, source))| {
            let pt = part.finish();
            TopRow {
                value,
                measure_value: pt.values.get(&measure.name).copied().flatten(),
                exact: pt.exact,
                source: source.into(),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.measure_value
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.measure_value.unwrap_or(f64::NEG_INFINITY))
            .then_with(|| a.value.cmp(&b.value))
    });
    rows.truncate(p.k);
    Ok(TopResponse {
        view: view.name.clone(),
        dimension: view.dimensions[p.dimension].name.clone(),
        measure: measure.name.clone(),
        from: format_rfc3339(from),
        to: format_rfc3339(to),
        granularity: g.to_string(),
        exact: p.range.exact,
        as_of: p.range.as_of.map(format_rfc3339),
        manifest_version: manifest.as_ref().map(|m| m.version),
        batch_horizon: horizon.map(format_rfc3339),
        covered,
        rows,
        missing: missing.into_iter().map(format_rfc3339).collect(),
        pending: pending.into_iter().map(format_rfc3339).collect(),
        rebuilding: rebuilding.into_iter().map(format_rfc3339).collect(),
        unreadable: unreadable.into_iter().map(format_rfc3339).collect(),
        errors,
    })
}
