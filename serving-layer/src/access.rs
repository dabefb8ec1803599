//! Who may call the API: bearer API keys on `/v1` and `/metrics` (`serving.api_keys`), the
//! browser origins CORS lets in (`serving.cors_origins`), and how the OpenAPI document says so.
//!
//! `/`, `/healthz`, `/readyz` and `/openapi.json` stay open: a load balancer probes them and the
//! dashboard page has to load before it can ask for a key.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tributary_shared::secret::Secret;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

use crate::api::App;
use crate::error::ApiError;

/// Name of the security scheme in the OpenAPI document.
pub const BEARER_SCHEME: &str = "bearer";

/// Whether a request path needs a key (when keys are configured): the data and the metrics.
pub fn is_protected(path: &str) -> bool {
    path == "/metrics" || path == "/v1" || path.starts_with("/v1/")
}

/// The configured API keys, kept as SHA-256 digests: comparing digests of equal length in
/// constant time tells an attacker neither a key's bytes nor its length.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[Secret]) -> Self {
        ApiKeys {
            digests: keys.iter().map(|k| sha256(k.expose().as_bytes())).collect(),
        }
    }

    /// No keys configured: the API is open.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared, whichever matches, so the
    /// time taken does not tell which one did.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = sha256(presented);
        let hit = self
            .digests
            .iter()
            .fold(Choice::from(0), |hit, d| hit | d.ct_eq(&presented));
        hit.into()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Why a request was refused; the label of `tributary_serving_auth_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <key>`.
    Malformed,
    /// A bearer key that is not configured.
    Invalid,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::Invalid => "invalid",
        }
    }

    fn into_error(self) -> ApiError {
        match self {
            Rejection::Missing => ApiError::unauthorized(
                "missing_api_key",
                "this server needs an API key: send the header `Authorization: Bearer <key>`",
            ),
            Rejection::Malformed => ApiError::unauthorized(
                "missing_api_key",
                "the `Authorization` header must be `Bearer <key>`",
            ),
            Rejection::Invalid => ApiError::unauthorized(
                "invalid_api_key",
                "the API key in the `Authorization` header is not valid",
            ),
        }
    }

    /// RFC 6750's challenge: `invalid_token` only when a token was sent.
    fn challenge(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Rejection::Invalid => r#"Bearer realm="tributary", error="invalid_token""#,
            Rejection::Missing | Rejection::Malformed => r#"Bearer realm="tributary""#,
        })
    }
}

/// The key of `Authorization: Bearer <key>` (scheme case-insensitive, RFC 7235), as bytes: a
/// header that is not UTF-8 is still compared, never logged.
fn bearer_token(headers: &HeaderMap) -> Result<&[u8], Rejection> {
    let value = headers.get(AUTHORIZATION).ok_or(Rejection::Missing)?;
    let bytes = value.as_bytes();
    let space = bytes
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Rejection::Malformed)?;
    let (scheme, rest) = bytes.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Rejection::Malformed);
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(Rejection::Malformed);
    }
    Ok(token)
}

/// Checks a request against the keys; `Ok` lets it through.
pub fn check(keys: &ApiKeys, path: &str, headers: &HeaderMap) -> Result<(), Rejection> {
    if keys.is_open() || !is_protected(path) {
        return Ok(());
    }
    let token = bearer_token(headers)?;
    if keys.accepts(token) {
        Ok(())
    } else {
        Err(Rejection::Invalid)
    }
}

/// Middleware: a 401 with the API's JSON error body and a `WWW-Authenticate` challenge for a
/// protected path without a valid key. Neither the header nor the key is ever logged.
pub async fn require_key(
    State(app): State<std::sync::Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    match check(&app.keys, req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            app.metrics.auth_rejected(why.as_str());
            let mut res = why.into_error().into_response();
            res.headers_mut().insert(WWW_AUTHENTICATE, why.challenge());
            res
        }
    }
}

/// An origin in `serving.cors_origins` that is not a valid header value.
#[derive(Debug, thiserror::Error)]
#[error("serving.cors_origins[{index}]: {origin:?} is not a valid Origin header value")]
pub struct CorsError {
    index: usize,
    origin: String,
}

/// The CORS layer for `serving.cors_origins`: `None` (no `Access-Control-*` header at all)
/// when the list is empty; `"*"` lets any origin in. Browsers send the key in `Authorization`,
/// so it is among the allowed headers (a bearer header, not a cookie: no credentials mode).
pub fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, CorsError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .enumerate()
            .map(|(index, origin)| {
                HeaderValue::from_str(origin).map_err(|_| CorsError {
                    index,
                    origin: origin.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::HEAD])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    ))
}

/// Adds the `bearer` HTTP security scheme to the OpenAPI document, and to every protected
/// operation its requirement and its 401 answer, following [`is_protected`] so the document
/// and the middleware cannot disagree.
pub struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key from `serving.api_keys`, as `Authorization: Bearer <key>`; needed \
                 on /v1 and /metrics when the server has keys configured.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(scheme));
        for (path, item) in doc.paths.paths.iter_mut() {
            if !is_protected(path) {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for op in operations.into_iter().flatten() {
                op.security = Some(vec![SecurityRequirement::new(
                    BEARER_SCHEME,
                    Vec::<String>::new(),
                )]);
                op.responses.responses.insert(
                    "401".into(),
                    crate::openapi::error_response("No API key, or one the server does not know")
                        .into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(&[
            Secret::new("0123456789abcdef"),
            Secret::new("another-key-of-some-length"),
        ])
    }

    fn auth(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.insert(AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn protects_v1_and_metrics_only() {
        for p in ["/v1/views", "/v1/views/x/series", "/v1", "/metrics"] {
            assert!(is_protected(p), "{p}");
        }
        for p in [
            "/",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/v10",
            "/metricsx",
        ] {
            assert!(!is_protected(p), "{p}");
        }
    }

    #[test]
    fn accepts_each_configured_key_and_nothing_else() {
        let k = keys();
        assert!(k.accepts(b"0123456789abcdef"));
        assert!(k.accepts(b"another-key-of-some-length"));
        for wrong in [&b""[..], b"0123456789abcde", b"0123456789abcdef0", b"x"] {
            assert!(!k.accepts(wrong));
        }
    }

    #[test]
    fn bearer_header_forms() {
        let k = keys();
        let check = |h: &HeaderMap| check(&k, "/v1/views", h);
        assert_eq!(check(&HeaderMap::new()), Err(Rejection::Missing));
        assert_eq!(check(&auth(b"Bearer 0123456789abcdef")), Ok(()));
        assert_eq!(check(&auth(b"bearer  0123456789abcdef ")), Ok(()));
        assert_eq!(
            check(&auth(b"Basic 0123456789abcdef")),
            Err(Rejection::Malformed)
        );
        assert_eq!(check(&auth(b"Bearer")), Err(Rejection::Malformed));
        assert_eq!(check(&auth(b"Bearer   ")), Err(Rejection::Malformed));
        assert_eq!(check(&auth(b"0123456789abcdef")), Err(Rejection::Malformed));
        assert_eq!(
            check(&auth(b"Bearer wrong-key-123456")),
            Err(Rejection::Invalid)
        );
        assert_eq!(check(&auth(b"Bearer \xff\xfe")), Err(Rejection::Invalid));
    }

    #[test]
    fn open_paths_and_open_servers_need_nothing() {
        assert_eq!(check(&keys(), "/healthz", &HeaderMap::new()), Ok(()));
        assert_eq!(
            check(&ApiKeys::new(&[]), "/v1/views", &HeaderMap::new()),
            Ok(())
        );
    }

    #[test]
    fn cors_none_by_default_and_bad_origins_named() {
        assert!(matches!(cors_layer(&[]), Ok(None)));
        assert!(matches!(cors_layer(&["*".into()]), Ok(Some(_))));
        assert!(matches!(
            cors_layer(&["https://dash.example.com".into()]),
            Ok(Some(_))
        ));
        let err = cors_layer(&["https://ok.example".into(), "bad\norigin".into()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("serving.cors_origins[1]"), "{err}");
    }
}
