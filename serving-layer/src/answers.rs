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
//!
//! A kept answer is also compressed, once, the first time a client that accepts gzip asks for
//! it (browsers do): a day's chart by country is ~29 KB of JSON and ~3 KB gzipped, and
//! writing the 29 KB was a third of the server's time per kept answer (docs/benchmarks.md).

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// A `series` answer as sent.
pub enum SeriesAnswer {
    /// Kept from an earlier request at the same version (never partial: only whole answers
    /// are kept).
    Kept(Arc<KeptAnswer>),
    /// Computed for this request; `partial`: it lists buckets it could not read.
    Computed { body: Bytes, partial: bool },
}

impl SeriesAnswer {
    pub fn is_kept(&self) -> bool {
        matches!(self, SeriesAnswer::Kept(_))
    }

    pub fn is_partial(&self) -> bool {
        matches!(self, SeriesAnswer::Computed { partial: true, .. })
    }

    /// The response: gzipped when it was kept and the request accepts gzip.
    pub fn respond(self, request: &HeaderMap) -> Response {
        let json = HeaderValue::from_static("application/json");
        // Either encoding may be sent for the same URL: caches must key on the header.
        let vary = HeaderValue::from_static("accept-encoding");
        let body = match self {
            SeriesAnswer::Kept(kept) => {
                if accepts_gzip(request)
                    && let Some(gzip) = kept.gzip()
                {
                    let gzip_header = HeaderValue::from_static("gzip");
                    return (
                        [
                            (header::CONTENT_TYPE, json),
                            (header::CONTENT_ENCODING, gzip_header),
                            (header::VARY, vary),
                        ],
                        gzip,
                    )
                        .into_response();
                }
                kept.body.clone()
            }
            SeriesAnswer::Computed { body, .. } => body,
        };
        ([(header::CONTENT_TYPE, json), (header::VARY, vary)], body).into_response()
    }
}

/// Whether `Accept-Encoding` lists gzip (or `*`) with a non-zero weight.
///
/// Written here rather than taken from tower-http's compression layer: that layer compresses
/// every response as it is sent, and the point is to compress a kept answer once.
pub fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let weight_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !weight_zero
        })
}

/// A kept answer: its version, its JSON and, once asked for, its gzip encoding.
pub struct KeptAnswer {
    version: String,
    pub body: Bytes,
    gzip: OnceLock<Option<Bytes>>,
}

impl KeptAnswer {
    /// The body gzipped (compressed on the first call; `None` if compression failed, which
    /// writing to memory does not).
    fn gzip(&self) -> Option<Bytes> {
        self.gzip
            .get_or_init(|| {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.body.len() / 4),
                    flate2::Compression::default(),
                );
                encoder.write_all(&self.body).ok()?;
                encoder.finish().ok().map(Bytes::from)
            })
            .clone()
    }
}

/// Query (view and validated parameters) → the answer last computed for it, with its version.
/// One entry per query: a new version replaces the old one.
pub struct AnswerCache {
    cache: moka::sync::Cache<Arc<str>, Arc<KeptAnswer>>,
}

impl AnswerCache {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        AnswerCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                // The gzip encoding, when made, is ~a tenth of the body: counted as a third.
                .weigher(|query: &Arc<str>, kept: &Arc<KeptAnswer>| {
                    let bytes = query.len() + kept.version.len() + kept.body.len() * 4 / 3;
                    (bytes + 128).min(u32::MAX as usize) as u32
                })
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The answer kept for `query`, if it was computed at `version`.
    pub fn get(&self, query: &str, version: &str) -> Option<Arc<KeptAnswer>> {
        self.cache.get(query).filter(|kept| kept.version == version)
    }

    pub fn put(&self, query: &str, version: String, body: Bytes) {
        let kept = KeptAnswer {
            version,
            body,
            gzip: OnceLock::new(),
        };
        self.cache.insert(query.into(), Arc::new(kept));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kept: Option<Arc<KeptAnswer>>) -> Option<Bytes> {
        kept.map(|k| k.body.clone())
    }

    #[test]
    fn an_answer_is_served_only_at_the_version_it_was_computed_at() {
        let cache = AnswerCache::new(Duration::from_secs(60), 1 << 20);
        assert_eq!(body(cache.get("q", "v1")), None);
        cache.put("q", "v1".into(), Bytes::from_static(b"one"));
        assert_eq!(body(cache.get("q", "v1")), Some(Bytes::from_static(b"one")));
        assert_eq!(body(cache.get("q", "v2")), None);
        assert_eq!(body(cache.get("other", "v1")), None);
        cache.put("q", "v2".into(), Bytes::from_static(b"two"));
        assert_eq!(body(cache.get("q", "v1")), None);
        assert_eq!(body(cache.get("q", "v2")), Some(Bytes::from_static(b"two")));
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_accept_it_and_only_for_kept_answers() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("header"),
            );
            h
        };
        assert!(accepts_gzip(&accept("gzip, deflate, br")));
        assert!(accepts_gzip(&accept("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&accept("*")));
        assert!(!accepts_gzip(&accept("gzip;q=0, br")));
        assert!(!accepts_gzip(&accept("deflate, br")));
        assert!(!accepts_gzip(&HeaderMap::new()));

        let json = Bytes::from(r#"{"series":[1,2,3]}"#.repeat(100));
        let cache = AnswerCache::new(Duration::from_secs(60), 1 << 20);
        cache.put("q", "v".into(), json.clone());
        let kept = cache.get("q", "v");
        let answer = |kept: Option<Arc<KeptAnswer>>| match kept {
            Some(kept) => SeriesAnswer::Kept(kept),
            None => SeriesAnswer::Computed {
                body: json.clone(),
                partial: false,
            },
        };
        let gzipped = answer(kept.clone()).respond(&accept("gzip"));
        assert_eq!(gzipped.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gzipped.headers()[header::VARY], "accept-encoding");
        let compressed = kept.as_ref().and_then(|k| k.gzip()).expect("gzipped");
        assert!(compressed.len() < json.len() / 10, "{}", compressed.len());
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&compressed[..]),
            &mut plain,
        )
        .expect("gunzip");
        assert_eq!(plain, json);
        // Not accepted, or not kept: the JSON as it is.
        for response in [
            answer(kept).respond(&accept("br")),
            answer(None).respond(&accept("gzip")),
        ] {
            assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
        }
    }
}
