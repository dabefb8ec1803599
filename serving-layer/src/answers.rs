//! Whole `series` answers, kept serialized per query with the version of everything they
//! were computed from.
//!
//! Dashboards poll: the same query comes again and again, and between two flushes of the
//! speed layer (and two batch runs) its answer cannot change. An answer is kept with its
//! version (the batch manifest, each bucket's source, and the speed state's epoch, watermark,
//! applied offsets and flush counter, read from Redis before the answer's own reads); a
//! request whose version is the same gets the kept bytes. A stale answer cannot be served:
//! any flush changes the version, so the next request reads the new state. What this saves is the merge, the
//! rendering and the ~25 Redis commands of the open buckets, per request.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// A `series` answer as sent.
pub struct SeriesAnswer {
    /// Its JSON.
    pub body: Bytes,
    /// Whether it lists buckets it could not read.
    pub partial: bool,
    /// Whether it was kept from an earlier request (not computed for this one).
    pub kept: bool,
}

impl IntoResponse for SeriesAnswer {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body,
        )
            .into_response()
    }
}

/// Query (view and validated parameters) → the answer last computed for it, with its version.
/// One entry per query: a new version replaces the old one.
pub struct AnswerCache {
    cache: moka::sync::Cache<Arc<str>, Arc<(String, Bytes)>>,
}

impl AnswerCache {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        AnswerCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|query: &Arc<str>, kept: &Arc<(String, Bytes)>| {
                    (query.len() + kept.0.len() + kept.1.len() + 128).min(u32::MAX as usize) as u32
                })
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The answer kept for `query`, if it was computed at `version`.
    pub fn get(&self, query: &str, version: &str) -> Option<Bytes> {
        let kept = self.cache.get(query)?;
        (kept.0 == version).then(|| kept.1.clone())
    }

    pub fn put(&self, query: &str, version: String, body: Bytes) {
        self.cache.insert(query.into(), Arc::new((version, body)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_served_only_at_the_version_it_was_computed_at() {
        let cache = AnswerCache::new(Duration::from_secs(60), 1 << 20);
        assert_eq!(cache.get("q", "v1"), None);
        cache.put("q", "v1".into(), Bytes::from_static(b"one"));
        assert_eq!(cache.get("q", "v1"), Some(Bytes::from_static(b"one")));
        assert_eq!(cache.get("q", "v2"), None);
        assert_eq!(cache.get("other", "v1"), None);
        cache.put("q", "v2".into(), Bytes::from_static(b"two"));
        assert_eq!(cache.get("q", "v1"), None);
        assert_eq!(cache.get("q", "v2"), Some(Bytes::from_static(b"two")));
    }
}
