//! `GET /v1/views/{view}/series`: per bucket, the batch view's points (cached per manifest
//! version) or the speed layer's (sealed buckets cached, open ones read from Redis); the
//! whole answer kept until a flush or a batch run changes it (see `answers`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use axum::body::Bytes;
use tributary_batch_layer::read::BatchQuery;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::series::Series;
use tributary_shared::view::ViewPlan;
use tributary_speed_layer::read::{SpeedQuery, StateVersion, ViewState};

use super::{Prologue, prologue, too_many_groups};
use crate::answers::SeriesAnswer;
use crate::error::ApiError;
use crate::points::{BatchPart, CachedPoints, RenderedPoint};
use crate::query::SeriesParams;
use crate::response::{GroupSeries, SeriesResponse, SourceCounts};
use crate::sources::{SourceError, Sources};

pub async fn series(
    src: &Sources,
    view: &ViewPlan,
    p: &SeriesParams,
    now_ms: i64,
) -> Result<SeriesAnswer, ApiError> {
    let pro = prologue(src, view, p.granularity, &p.range, now_ms).await;
    // The speed state decides which speed buckets are sealed or rebuilding (re-read from
    // Redis at most every `STATE_REFRESH`).
    let state = match pro.speed.is_empty() {
        true => None,
        false => Some(src.view_state(&view.name).await),
    };
    // A kept answer is served when nothing it was computed from has changed since (see
    // `answers`); its version is read before any of this request's own reads.
    let query = p.key(&view.name);
    let version = answer_version(src, view, &pro, state.as_ref()).await;
    if let Some(v) = &version
        && let Some(kept) = src.answers.get(&query, v)
    {
        return Ok(SeriesAnswer::Kept(kept));
    }
    let answer = compute(src, view, p, pro, state).await?;
    let body = Bytes::from(answer.to_json()?);
    let whole =
        answer.errors.is_empty() && answer.unreadable.is_empty() && answer.rebuilding.is_empty();
    if whole && let Some(v) = version {
        src.answers.put(&query, v, body.clone());
    }
    Ok(SeriesAnswer::Computed {
        body,
        partial: !answer.unreadable.is_empty(),
    })
}

/// The version of what an answer is computed from: the manifest, each bucket's source, and
/// when speed buckets are asked for, the speed state's version (see
/// `tributary_speed_layer::read::read_version`) and watermark (`None`: something is
/// unreadable or rebuilding, and such answers are not kept).
async fn answer_version(
    src: &Sources,
    view: &ViewPlan,
    pro: &Prologue,
    state: Option<&Result<ViewState, SourceError>>,
) -> Option<String> {
    if !pro.errors.is_empty() || !pro.unreadable.is_empty() {
        return None;
    }
    let speed = match state {
        None => None,
        Some(Ok(state)) if state.serving() => {
            let version = src.speed_version(&view.name).await.ok()??;
            // The state (re-read every `STATE_REFRESH`) must be of the same build.
            if state.epoch.as_ref() != Some(&version.epoch) {
                return None;
            }
            let lateness = src.config.speed.allowed_lateness.as_millis() as i64;
            Some((version, state.watermark(lateness)))
        }
        Some(_) => return None,
    };
    // Each bucket's source: the buckets of a query's range fall, in order, into the batch
    // (up to the horizon), then missing (past the speed layer's retention), then speed (or,
    // for `exact` and `as_of`, pending or missing), so with the range (in the query's key)
    // and the horizon, the counts say which bucket is which.
    let mut v = String::with_capacity(96);
    let _ = write!(
        v,
        "{:?}|{:?}|{}|{}|{}|{}",
        pro.manifest.as_ref().map(|m| (m.version, &m.run_id)),
        pro.horizon,
        pro.batch.len(),
        pro.missing.len(),
        pro.speed.len(),
        pro.pending.len()
    );
    if let Some((
        StateVersion {
            epoch,
            applied,
            flushes,
        },
        watermark,
    )) = speed
    {
        let _ = write!(v, "|{epoch}|{applied}|{flushes}|{watermark:?}");
    }
    Some(v)
}

/// The answer, computed: the batch part (cached per manifest version), the speed part
/// (sealed buckets cached per epoch, open ones read from Redis), the gaps.
async fn compute(
    src: &Sources,
    view: &ViewPlan,
    p: &SeriesParams,
    pro: Prologue,
    state: Option<Result<ViewState, SourceError>>,
) -> Result<SeriesResponse, ApiError> {
    let g = p.granularity;
    let max_groups = src.config.serving.max_groups;
    let Prologue {
        manifest,
        horizon,
        batch: batch_buckets,
        speed: speed_buckets,
        missing,
        pending,
        unreadable,
        mut errors,
    } = pro;
    let mut unreadable: BTreeSet<i64> = unreadable.into_iter().collect();
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
    // cached per version; a new manifest is a new cache key. The part a query needs, grouped
    // per output group, is kept whole too: a chart polled again reuses it as is.
    let mut batch: Option<Arc<BatchPart>> = None;
    if let (Some(m), Some(first), Some(last)) =
        (&manifest, batch_buckets.first(), batch_buckets.last())
    {
        let version_shape = format!("batch|{}|{}|{shape}", m.version, m.run_id);
        if let Some(part) = src.points.part(&version_shape, *first, *last) {
            batch = Some(part);
        } else {
            let mut rendered = Rendered::new();
            let cached = src.points.get_many(&version_shape, &batch_buckets);
            let mut complete = true;
            if cached.iter().all(Option::is_some) {
                for (b, groups) in batch_buckets.iter().zip(cached.into_iter().flatten()) {
                    add_cached(&mut rendered, *b, &groups);
                }
            } else {
                let q = BatchQuery {
                    granularity: g,
                    from_ms: *first,
                    to_ms: g.end(*last),
                    selection: p.selection(),
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
                        &mut rendered,
                    )?,
                    Err(e) => {
                        errors.push(format!("batch view unreadable: {e}"));
                        unreadable.extend(&batch_buckets);
                        complete = false;
                    }
                }
            }
            let part: BatchPart = rendered
                .into_iter()
                .map(|(group, points)| (group, points.into_iter().collect()))
                .collect();
            let part = Arc::new(part);
            if complete {
                src.points
                    .put_part(&version_shape, *first, *last, part.clone());
            }
            batch = Some(part);
        }
    }

    // Speed side. A bucket that ends at or before the view's watermark is sealed: the speed
    // layer drops every later event for it as late, so its answer is cached (per epoch: a
    // rebuilt view is a new key); only the open buckets are read from Redis, in one read.
    let mut speed = Rendered::new();
    let mut speed_wm = None;
    if let Some(state) = state {
        let lateness = src.config.speed.allowed_lateness.as_millis() as i64;
        match state {
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
                        selection: p.selection(),
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

    let no_batch = BatchPart::new();
    let batch: &BatchPart = batch.as_deref().unwrap_or(&no_batch);
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
        (pending.clone(), "pending"),
        (rebuilding.iter().copied().collect(), "rebuilding"),
        (unreadable.iter().copied().collect(), "unreadable"),
    ] {
        for t in set {
            gaps.push((t, RenderedPoint::new(&time(t), label, false, &no_values)?));
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        // Speed points and gaps (a gap wins), then merged in bucket order with the batch ones
        // (a gap wins there too: a batch bucket whose read failed; speed and batch buckets
        // never overlap).
        let mut later: BTreeMap<i64, RenderedPoint> = speed.remove(&group).unwrap_or_default();
        for (t, pt) in &gaps {
            later.insert(*t, pt.clone());
        }
        let batch_points: &[(i64, RenderedPoint)] =
            batch.get(&group).map(Vec::as_slice).unwrap_or_default();
        out.push(GroupSeries {
            group: p
                .group_by
                .iter()
                .zip(group.iter())
                .map(|(d, v)| (view.dimensions[*d].name.clone(), v.clone()))
                .collect(),
            points: merge_points(batch_points, later),
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
        pending: pending.len(),
        rebuilding: rebuilding.len(),
        unreadable: unreadable.len(),
    };
    Ok(SeriesResponse {
        view: view.name.clone(),
        granularity: g.to_string(),
        from: format_rfc3339(p.range.from_ms),
        to: format_rfc3339(p.range.to_ms),
        exact: p.range.exact,
        as_of: p.range.as_of.map(format_rfc3339),
        manifest_version: manifest.as_ref().map(|m| m.version),
        batch_horizon: horizon.map(format_rfc3339),
        speed_watermark: speed_wm.map(format_rfc3339),
        series: out,
        buckets: counts,
        missing: missing.into_iter().map(format_rfc3339).collect(),
        pending: pending.into_iter().map(format_rfc3339).collect(),
        rebuilding: rebuilding.into_iter().map(format_rfc3339).collect(),
        unreadable: unreadable.into_iter().map(format_rfc3339).collect(),
        errors,
    })
}

/// One group's points in bucket order: the batch ones (already in order) merged with the
/// others (speed points and gaps); a gap in a batch bucket (its read failed) wins.
fn merge_points(
    batch: &[(i64, RenderedPoint)],
    mut others: BTreeMap<i64, RenderedPoint>,
) -> Vec<RenderedPoint> {
    let mut out = Vec::with_capacity(batch.len() + others.len());
    for (t, point) in batch {
        loop {
            match others.first_entry() {
                Some(e) if e.key() < t => out.push(e.remove()),
                _ => break,
            }
        }
        out.push(others.remove(t).unwrap_or_else(|| point.clone()));
    }
    out.extend(others.into_values());
    out
}

/// One output group's point in one bucket.
type GroupPoint = (Vec<Option<String>>, RenderedPoint);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: i64, source: &'static str) -> RenderedPoint {
        RenderedPoint::new(&t.to_string(), source, true, &BTreeMap::new())
            .unwrap_or_else(|e| panic!("{}", e.message))
    }

    fn sources(points: &[RenderedPoint]) -> Vec<String> {
        points
            .iter()
            .map(|p| serde_json::to_string(p).unwrap_or_default())
            .collect()
    }

    #[test]
    fn points_are_merged_in_bucket_order_and_a_gap_wins_over_a_batch_point() {
        let batch = vec![
            (1, point(1, "batch")),
            (2, point(2, "batch")),
            (4, point(4, "batch")),
        ];
        let others: BTreeMap<i64, RenderedPoint> = [
            (0, point(0, "missing")),
            (2, point(2, "unreadable")),
            (3, point(3, "speed")),
            (5, point(5, "speed")),
        ]
        .into_iter()
        .collect();
        let want = [
            point(0, "missing"),
            point(1, "batch"),
            point(2, "unreadable"),
            point(3, "speed"),
            point(4, "batch"),
            point(5, "speed"),
        ];
        assert_eq!(sources(&merge_points(&batch, others)), sources(&want));
        assert_eq!(
            sources(&merge_points(&[], BTreeMap::new())),
            Vec::<String>::new()
        );
    }
}
