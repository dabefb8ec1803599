//! `serving.cors_origins`: `Access-Control-*` headers only for a configured origin (preflight
//! and actual request, 401s included so a page elsewhere can ask for a key), none for other
//! origins, none at all by default, and any origin with `"*"`.

use reqwest::header::{HeaderMap, ORIGIN};
use reqwest::{Method, StatusCode};

use crate::{KEY_A, Running, config, two_keys};

const DASH: &str = "https://dash.example.com";
const OTHER: &str = "https://elsewhere.example.org";

/// A browser's preflight for a GET with the key header.
async fn preflight(url: &str, origin: &str) -> anyhow::Result<(StatusCode, HeaderMap)> {
    let res = reqwest::Client::new()
        .request(Method::OPTIONS, url)
        .header(ORIGIN, origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await?;
    Ok((res.status(), res.headers().clone()))
}

async fn get(
    url: &str,
    origin: &str,
    key: Option<&str>,
) -> anyhow::Result<(StatusCode, HeaderMap)> {
    let mut req = reqwest::Client::new().get(url).header(ORIGIN, origin);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let res = req.send().await?;
    Ok((res.status(), res.headers().clone()))
}

fn allow_origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_only_for_a_configured_origin() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let server = Running::start(config(
        store.path(),
        &[
            two_keys(),
            ("SERVING__CORS_ORIGINS", format!(r#"["{DASH}"]"#)),
        ],
    )?)
    .await?;
    let views = server.http("/v1/views");

    // The preflight carries no key: it is answered before the key check.
    let (status, h) = preflight(&views, DASH).await?;
    assert!(status.is_success(), "preflight: {status}");
    assert_eq!(allow_origin(&h), Some(DASH), "preflight: {h:?}");
    let allowed = h
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization"),
        "allow-headers {allowed:?}"
    );
    let methods = h
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(methods.contains("GET"), "allow-methods {methods:?}");

    let (status, h) = get(&views, DASH, Some(KEY_A)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(allow_origin(&h), Some(DASH), "GET: {h:?}");
    // A 401 is readable by the page too, so it can ask for a key.
    let (status, h) = get(&views, DASH, None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(allow_origin(&h), Some(DASH), "401: {h:?}");

    let (_, h) = preflight(&views, OTHER).await?;
    assert_eq!(allow_origin(&h), None, "preflight from {OTHER}: {h:?}");
    let (status, h) = get(&views, OTHER, Some(KEY_A)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(allow_origin(&h), None, "GET from {OTHER}: {h:?}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cors_headers_by_default() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let server = Running::start(config(store.path(), &[])?).await?;
    for path in ["/v1/views", "/healthz", "/"] {
        let url = server.http(path);
        let (_, h) = preflight(&url, DASH).await?;
        assert!(cors_headers(&h).is_empty(), "preflight {path}: {h:?}");
        let (status, h) = get(&url, DASH, None).await?;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(cors_headers(&h).is_empty(), "GET {path}: {h:?}");
    }
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_lets_any_origin_in() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let server = Running::start(config(
        store.path(),
        &[("SERVING__CORS_ORIGINS", r#"["*"]"#.into())],
    )?)
    .await?;
    let views = server.http("/v1/views");
    let (_, h) = preflight(&views, OTHER).await?;
    assert_eq!(allow_origin(&h), Some("*"), "preflight: {h:?}");
    let (status, h) = get(&views, OTHER, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(allow_origin(&h), Some("*"), "GET: {h:?}");
    server.stop().await
}
