//! The Lambda merge, per bucket: a bucket that ends at or before the batch horizon comes from
//! the batch view (exact), a later one from Redis while the speed layer still keeps it
//! (`[speed] retention` past its end); a bucket neither holds is reported `missing`, never a
//! silent zero; one whose speed state is being rebuilt from Kafka `rebuilding`; one whose
//! source could not be read `unreadable`.
//!
//! `exact=true` leaves the speed layer out: a bucket the batch has not settled is `pending`.
//! `as_of` answers from the manifest version current at that instant, without speed: a
//! bucket after that version's horizon is `missing`.
//!
//! Here: each bucket's source and what both endpoints start from ([`Prologue`]); the
//! endpoints themselves in [`series`] and [`top`].

mod series;
mod top;

pub use series::series;
pub use top::top;

use std::sync::Arc;

use tributary_batch_layer::read::Manifest;
use tributary_batch_layer::run::definition;
use tributary_shared::Granularity;
use tributary_shared::view::ViewPlan;

use crate::error::ApiError;
use crate::query::Range;
use crate::sources::Sources;

/// Where a bucket's answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Batch,
    Speed,
    Missing,
    /// Not settled by the batch yet, and the query asked for exact answers only.
    Pending,
}

pub(super) fn classify(
    end_ms: i64,
    horizon: Option<i64>,
    now_ms: i64,
    retention_ms: i64,
    range: &Range,
) -> Source {
    if horizon.is_some_and(|h| end_ms <= h) {
        Source::Batch
    } else if range.as_of.is_some() {
        Source::Missing
    } else if range.exact {
        Source::Pending
    } else if end_ms.saturating_add(retention_ms) > now_ms {
        Source::Speed
    } else {
        Source::Missing
    }
}

/// What `series` and `top` both start from: the manifest, its horizon, each bucket's source.
pub(super) struct Prologue {
    pub(super) manifest: Option<Arc<Manifest>>,
    pub(super) horizon: Option<i64>,
    pub(super) batch: Vec<i64>,
    pub(super) speed: Vec<i64>,
    pub(super) missing: Vec<i64>,
    pub(super) pending: Vec<i64>,
    /// Buckets no layer could answer for (only with `as_of`: its version was unreadable).
    pub(super) unreadable: Vec<i64>,
    pub(super) errors: Vec<String>,
}

pub(super) async fn prologue(
    src: &Sources,
    view: &ViewPlan,
    g: Granularity,
    range: &Range,
    now_ms: i64,
) -> Prologue {
    let retention = src.config.speed.retention.as_millis() as i64;
    let mut errors = Vec::new();
    let read = match range.as_of {
        Some(t) => src.batch.manifest_as_of(&view.name, t).await,
        None => src.batch.manifest(&view.name).await,
    };
    let mut manifest = match read {
        Ok(m) => m,
        Err(e) => {
            errors.push(format!("batch view unreadable: {e}"));
            None
        }
    };
    // A version computed under another definition of the view has other grouping sets and
    // columns: read with today's plan it could answer wrong numbers, so it answers none.
    if range.as_of.is_some()
        && let Some(m) = &manifest
        && m.definition != definition(&src.config, view)
    {
        errors.push(format!(
            "batch view unreadable as of then: manifest version {} was computed under an earlier definition of view {:?}",
            m.version, view.name
        ));
        manifest = None;
    }
    // As of an instant only the batch answers: if it could not be read, no bucket is known
    // to be missing, they are all unreadable.
    let unreadable_as_of = range.as_of.is_some() && !errors.is_empty();
    let horizon = manifest.as_ref().and_then(|m| m.horizon_ms);
    let (mut batch, mut speed, mut missing, mut pending, mut unreadable) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in g.buckets(range.from_ms, range.to_ms) {
        if unreadable_as_of {
            unreadable.push(b);
            continue;
        }
        match classify(g.end(b), horizon, now_ms, retention, range) {
            Source::Batch => batch.push(b),
            Source::Speed => speed.push(b),
            Source::Missing => missing.push(b),
            Source::Pending => pending.push(b),
        }
    }
    Prologue {
        manifest,
        horizon,
        batch,
        speed,
        missing,
        pending,
        unreadable,
        errors,
    }
}

pub(super) fn too_many_groups(param: &'static str, n: usize, max: usize) -> ApiError {
    ApiError::param(
        param,
        "too_many_groups",
        format!(
            "{param}: the answer would have {n} groups or more; at most {max} (serving.max_groups): filter it, or group by a dimension with fewer values"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(exact: bool, as_of: Option<i64>) -> Range {
        Range {
            from_ms: 0,
            to_ms: 1,
            filters: Vec::new(),
            exact,
            as_of,
        }
    }

    #[test]
    fn buckets_are_classified_by_horizon_and_retention() {
        let h = 10_000;
        let plain = range(false, None);
        // Ends at the horizon: batch. After it: speed while retained, else missing.
        assert_eq!(
            classify(10_000, Some(h), 20_000, 50_000, &plain),
            Source::Batch
        );
        assert_eq!(
            classify(10_001, Some(h), 20_000, 50_000, &plain),
            Source::Speed
        );
        assert_eq!(
            classify(10_001, None, 70_000, 50_000, &plain),
            Source::Missing
        );
        assert_eq!(classify(5_000, None, 20_000, 50_000, &plain), Source::Speed);
        // Exact only: what the batch has not settled is pending, never speed.
        let exact = range(true, None);
        assert_eq!(
            classify(10_000, Some(h), 20_000, 50_000, &exact),
            Source::Batch
        );
        assert_eq!(
            classify(10_001, Some(h), 20_000, 50_000, &exact),
            Source::Pending
        );
        assert_eq!(
            classify(10_001, None, 70_000, 50_000, &exact),
            Source::Pending
        );
        // As of an instant: past that version's horizon is missing (it was not answered then).
        let as_of = range(true, Some(15_000));
        assert_eq!(
            classify(10_000, Some(h), 20_000, 50_000, &as_of),
            Source::Batch
        );
        assert_eq!(
            classify(10_001, Some(h), 20_000, 50_000, &as_of),
            Source::Missing
        );
    }
}
