//! The Lambda merge, per bucket: a bucket that ends at or before the batch horizon comes from
//! the batch view (exact), a later one from Redis while the speed layer still keeps it
//! (`[speed] retention` past its end); a bucket neither holds is reported `missing`, never a
//! silent zero; one whose speed state is being rebuilt from Kafka `rebuilding`; one whose
//! source could not be read `unreadable`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tributary_batch_layer::manifest::Manifest;
use tributary_batch_layer::read::BatchQuery;
use tributary_shared::Granularity;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::series::{Partial, Series};
use tributary_shared::view::ViewPlan;
use tributary_speed_layer::read::SpeedQuery;

use crate::error::ApiError;
use crate::points::{CachedPoints, RenderedPoint};
use crate::query::{Range, SeriesParams, TopParams};
use crate::response::{GroupSeries, SeriesResponse, SourceCounts, TopResponse, TopRow};
use crate::sources::{SourceError, Sources};

/// One output group's point in one bucket.
type GroupPoint = (Vec<Option<String>>, RenderedPoint);

/// Where a bucket's answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Batch,
    Speed,
    Missing,
}

fn classify(end_ms: i64, horizon: Option<i64>, now_ms: i64, retention_ms: i64) -> Source {
    if horizon.is_some_and(|h| end_ms <= h) {
        Source::Batch
    } else if end_ms.saturating_add(retention_ms) > now_ms {
        Source::Speed
    } else {
        Source::Missing
    }
}

/// What `series` and `top` both start from: the manifest, its horizon, each bucket's source.
struct Prologue {
    manifest: Option<Arc<Manifest>>,
    horizon: Option<i64>,
    batch: Vec<i64>,
    speed: Vec<i64>,
    missing: Vec<i64>,
    errors: Vec<String>,
}

async fn prologue(
    src: &Sources,
    view: &ViewPlan,
    g: Granularity,
    range: &Range,
    now_ms: i64,
) -> Prologue {
    let retention = src.config.speed.retention.as_millis() as i64;
    let mut errors = Vec::new();
    let manifest = match src.batch.manifest(&view.name).await {
        Ok(m) => m,
        Err(e) => {
            errors.push(format!("batch view unreadable: {e}"));
            None
        }
    };
    let horizon = manifest.as_ref().and_then(|m| m.horizon_ms);
    let (mut batch, mut speed, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for b in g.buckets(range.from_ms, range.to_ms) {
        match classify(g.end(b), horizon, now_ms, retention) {
            Source::Batch => batch.push(b),
            Source::Speed => speed.push(b),
            Source::Missing => missing.push(b),
        }
    }
    Prologue {
        manifest,
        horizon,
        batch,
        speed,
        missing,
        errors,
    }
}

fn too_many_groups(param: &'static str, n: usize, max: usize) -> ApiError {
    ApiError::param(
        param,
        "too_many_groups",
        format!(
            "{param}: the answer would have {n} groups or more; at most {max} (serving.max_groups): filter it, or group by a dimension with fewer values"
        ),
    )
}

pub async fn series(
    src: &Sources,
    view: &ViewPlan,
    p: &SeriesParams,
    now_ms: i64,
) -> Result<SeriesResponse, ApiError> {
    let g = p.granularity;
    let max_groups = src.config.serving.max_groups;
    let Prologue {
        manifest,
        horizon,
        batch: batch_buckets,
        speed: speed_buckets,
        missing,
        mut errors,
    } = prologue(src, view, g, &p.range, now_ms).await;
    let mut unreadable: BTreeSet<i64> = BTreeSet::new();
    let mut rebuilding: BTreeSet<i64> = BTreeSet::new();

    // Bucket times formatted once per request, not once per group.
    let times: BTreeMap<i64, String> = g
        .buckets(p.range.from_ms, p.range.to_ms)
        .map(|b| (b, format_rfc3339(b)))
        .collect();
    let time = |t: i64| times.get(&t).cloned().unwrap_or_else(|| format_rfc3339(t));
    // What a bucket's answer depends on besides its source's version.
    let shape = format!(
        "{}|{g}|{:?}|{:?}|{:?}",
        view.name, p.range.filters, p.group_by, p.measures
    );

    // Batch side. A manifest version's buckets never change, so their rendered points are
    // cached per version; a new manifest is a new cache key.
    let mut batch = Rendered::new();
    if let (Some(m), Some(first), Some(last)) =
        (&manifest, batch_buckets.first(), batch_buckets.last())
    {
        let version_shape = format!("batch|{}|{}|{shape}", m.version, m.run_id);
        let cached = src.points.get_many(&version_shape, &batch_buckets);
        if cached.iter().all(Option::is_some) {
            for (b, groups) in batch_buckets.iter().zip(cached.into_iter().flatten()) {
                add_cached(&mut batch, *b, &groups);
            }
        } else {
            let q = BatchQuery {
                granularity: g,
                from_ms: *first,
                to_ms: g.end(*last),
                filters: p.range.filters.clone(),
                group_by: p.group_by.clone(),
                measures: p.measures.clone(),
            };
            match src.batch.read(view, m, &q).await {
                Ok(s) if s.len() > max_groups => {
                    return Err(too_many_groups("group_by", s.len(), max_groups));
                }
                Ok(s) => render_into(
                    src,
                    (&version_shape, &batch_buckets),
                    "batch",
                    &time,
                    &s,
                    &mut batch,
                )?,
                Err(e) => {
                    errors.push(format!("batch view unreadable: {e}"));
                    unreadable.extend(&batch_buckets);
                }
            }
        }
    }

    // Speed side. A bucket that ends at or before the view's watermark is sealed: the speed
    // layer drops every later event for it as late, so its answer is cached (per epoch: a
    // rebuilt view is a new key); only the open buckets are read from Redis, in one read.
    let mut speed = Rendered::new();
    let mut speed_wm = None;
    if !speed_buckets.is_empty() {
        let lateness = src.config.speed.allowed_lateness.as_millis() as i64;
        match src.view_state(&view.name).await {
            Err(e) => {
                errors.push(format!("speed layer unreadable: {e}"));
                unreadable.extend(&speed_buckets);
            }
            Ok(state) if !state.serving() => rebuilding.extend(&speed_buckets),
            Ok(state) => {
                speed_wm = state.watermark(lateness);
                let speed_shape = format!(
                    "speed|{}|{shape}",
                    state.epoch.as_deref().unwrap_or_default()
                );
                let sealed = |b: i64| speed_wm.is_some_and(|w| g.end(b) <= w);
                let mut to_read = Vec::new();
                let cached = src.points.get_many(&speed_shape, &speed_buckets);
                for (b, hit) in speed_buckets.iter().zip(cached) {
                    match hit.filter(|_| sealed(*b)) {
                        Some(groups) => add_cached(&mut speed, *b, &groups),
                        None => to_read.push(*b),
                    }
                }
                if !to_read.is_empty() {
                    let q = SpeedQuery {
                        granularity: g,
                        buckets: to_read.clone(),
                        filters: p.range.filters.clone(),
                        group_by: p.group_by.clone(),
                        measures: p.measures.clone(),
                        epoch: state.epoch.clone(),
                        max_groups,
                    };
                    let key = format!("{speed_shape}|{to_read:?}");
                    match src.speed_series(key, view, q).await {
                        Ok(s) => {
                            let sealed_read: Vec<i64> =
                                to_read.iter().copied().filter(|b| sealed(*b)).collect();
                            render_into(
                                src,
                                (&speed_shape, &sealed_read),
                                "speed",
                                &time,
                                &s,
                                &mut speed,
                            )?
                        }
                        Err(SourceError::TooManyGroups(n)) => {
                            return Err(too_many_groups("group_by", n, max_groups));
                        }
                        Err(SourceError::Rebuilding) => {
                            // Lost or rebuilt while this request read it: none of its buckets
                            // is served, cached or not.
                            speed.clear();
                            rebuilding.extend(&speed_buckets);
                            speed_wm = None;
                        }
                        Err(e) => {
                            errors.push(format!("speed layer unreadable: {e}"));
                            unreadable.extend(&to_read);
                            speed_wm = None;
                        }
                    }
                }
            }
        }
    }

    let mut groups: BTreeSet<Vec<Option<String>>> =
        batch.keys().chain(speed.keys()).cloned().collect();
    if groups.len() > max_groups {
        return Err(too_many_groups("group_by", groups.len(), max_groups));
    }
    if p.group_by.is_empty() {
        groups.insert(Vec::new());
    }
    // The points without values are the same in every group: rendered once.
    let no_values = BTreeMap::new();
    let mut gaps: Vec<(i64, RenderedPoint)> = Vec::new();
    for (set, label) in [
        (missing.clone(), "missing"),
        (rebuilding.iter().copied().collect(), "rebuilding"),
        (unreadable.iter().copied().collect(), "unreadable"),
    ] {
        for t in set {
            gaps.push((t, RenderedPoint::new(&time(t), label, false, &no_values)?));
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let mut points: BTreeMap<i64, RenderedPoint> = speed.remove(&group).unwrap_or_default();
        points.extend(batch.remove(&group).unwrap_or_default());
        for (t, pt) in &gaps {
            points.insert(*t, pt.clone());
        }
        out.push(GroupSeries {
            group: p
                .group_by
                .iter()
                .zip(group.iter())
                .map(|(d, v)| (view.dimensions[*d].name.clone(), v.clone()))
                .collect(),
            points: points.into_values().collect(),
        });
    }
    let served = |bs: &[i64]| {
        bs.iter()
            .filter(|b| !unreadable.contains(b) && !rebuilding.contains(b))
            .count()
    };
    let counts = SourceCounts {
        batch: served(&batch_buckets),
        speed: served(&speed_buckets),
        missing: missing.len(),
        rebuilding: rebuilding.len(),
        unreadable: unreadable.len(),
    };
    Ok(SeriesResponse {
        view: view.name.clone(),
        granularity: g.to_string(),
        from: format_rfc3339(p.range.from_ms),
        to: format_rfc3339(p.range.to_ms),
        batch_horizon: horizon.map(format_rfc3339),
        speed_watermark: speed_wm.map(format_rfc3339),
        series: out,
        buckets: counts,
        missing: missing.into_iter().map(format_rfc3339).collect(),
        rebuilding: rebuilding.into_iter().map(format_rfc3339).collect(),
        unreadable: unreadable.into_iter().map(format_rfc3339).collect(),
        errors,
    })
}

/// Output group → bucket start → rendered point.
type Rendered = BTreeMap<Vec<Option<String>>, BTreeMap<i64, RenderedPoint>>;

/// Adds a cached bucket's points to `out`.
fn add_cached(out: &mut Rendered, bucket: i64, groups: &CachedPoints) {
    for (group, point) in groups.iter() {
        out.entry(group.clone())
            .or_default()
            .insert(bucket, point.clone());
    }
}

/// Renders a layer's answer into `out` (points labelled `source`), and caches the buckets
/// `cache.1` under the key `cache.0` (a bucket without points is cached as such).
fn render_into(
    src: &Sources,
    cache: (&str, &[i64]),
    source: &'static str,
    time: &dyn Fn(i64) -> String,
    answer: &Series,
    out: &mut Rendered,
) -> Result<(), ApiError> {
    let (key, cached) = cache;
    let mut per_bucket: BTreeMap<i64, Vec<GroupPoint>> =
        cached.iter().map(|b| (*b, Vec::new())).collect();
    for (group, points) in answer {
        for (&b, point) in points {
            let rendered = RenderedPoint::new(&time(b), source, point.exact, &point.values)?;
            if let Some(v) = per_bucket.get_mut(&b) {
                v.push((group.clone(), rendered.clone()));
            }
            out.entry(group.clone()).or_default().insert(b, rendered);
        }
    }
    src.points.put_many(
        key,
        per_bucket
            .into_iter()
            .map(|(b, groups)| (b, Arc::new(groups)))
            .collect(),
    );
    Ok(())
}

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
    let max_groups = src.config.serving.max_groups;
    let Prologue {
        manifest,
        horizon,
        batch: batch_buckets,
        speed: speed_buckets,
        missing,
        mut errors,
    } = prologue(src, view, g, &p.range, now_ms).await;
    let mut unreadable: Vec<i64> = Vec::new();
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
            filters: p.range.filters.clone(),
            group_by: vec![p.dimension],
            measures: vec![p.measure],
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
                    filters: p.range.filters.clone(),
                    group_by: vec![p.dimension],
                    measures: vec![p.measure],
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
    let measure = &view.measures[p.measure];
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
        batch_horizon: horizon.map(format_rfc3339),
        rows,
        missing: missing.into_iter().map(format_rfc3339).collect(),
        rebuilding: rebuilding.into_iter().map(format_rfc3339).collect(),
        unreadable: unreadable.into_iter().map(format_rfc3339).collect(),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_classified_by_horizon_and_retention() {
        let h = 10_000;
        // Ends at the horizon: batch. After it: speed while retained, else missing.
        assert_eq!(classify(10_000, Some(h), 20_000, 50_000), Source::Batch);
        assert_eq!(classify(10_001, Some(h), 20_000, 50_000), Source::Speed);
        assert_eq!(classify(10_001, None, 70_000, 50_000), Source::Missing);
        assert_eq!(classify(5_000, None, 20_000, 50_000), Source::Speed);
    }
}
