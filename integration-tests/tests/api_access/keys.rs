//! `serving.api_keys`: 401 with the JSON error body and a bearer challenge on `/v1` and
//! `/metrics` without a valid key, 200 with each configured key, the open paths stay open,
//! the OpenAPI document declares the scheme, and no key reaches the logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use serde_json::{Value, json};

use crate::{KEY_A, KEY_B, Running, WRONG_KEY, config, two_keys};

const PROTECTED: [&str; 6] = [
    "/v1/views",
    "/v1/views/checkouts",
    "/v1/views/checkouts/series?granularity=hour",
    "/v1/views/checkouts/top?dimension=country&measure=events",
    "/v1/status",
    "/metrics",
];

/// Everything the process logs at debug level and above, for the test that looks for keys.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        // Another test of this binary may have set it first; then that one captures.
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
) -> anyhow::Result<(StatusCode, Option<String>, String)> {
    let mut req = client.get(url);
    if let Some(auth) = auth {
        req = req.header(AUTHORIZATION, auth);
    }
    let res = req.send().await?;
    let challenge = res
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((res.status(), challenge, res.text().await?))
}

/// A 401 as the API renders it: the JSON error body naming the header, and the challenge.
fn assert_401(
    what: &str,
    (status, challenge, body): &(StatusCode, Option<String>, String),
    code: &str,
) -> anyhow::Result<()> {
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    let challenge = challenge.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer realm="),
        "{what}: WWW-Authenticate {challenge:?}"
    );
    assert_eq!(
        challenge.contains(r#"error="invalid_token""#),
        code == "invalid_api_key",
        "{what}: WWW-Authenticate {challenge:?}"
    );
    let body: Value = serde_json::from_str(body)?;
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Authorization"), "{what}: {body}");
    for key in [KEY_A, KEY_B, WRONG_KEY] {
        assert!(
            !message.contains(key),
            "{what}: the body echoes a key: {body}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_v1_and_metrics_and_leave_the_rest_open() -> anyhow::Result<()> {
    let logs = captured_logs();
    let store = tempfile::tempdir()?;
    let server = Running::start(config(store.path(), &[two_keys()])?).await?;
    let client = reqwest::Client::new();

    for path in PROTECTED {
        let url = server.http(path);
        let none = send(&client, &url, None).await?;
        assert_401(&format!("{path} without a key"), &none, "missing_api_key")?;
        let wrong = send(&client, &url, Some(&format!("Bearer {WRONG_KEY}"))).await?;
        assert_401(
            &format!("{path} with a wrong key"),
            &wrong,
            "invalid_api_key",
        )?;
        let basic = send(&client, &url, Some(&format!("Basic {KEY_A}"))).await?;
        assert_401(&format!("{path} with Basic"), &basic, "missing_api_key")?;
        // A prefix or an extension of a real key is a wrong key too.
        let prefix = send(&client, &url, Some(&format!("Bearer {}", &KEY_A[..20]))).await?;
        assert_401(&format!("{path} with a prefix"), &prefix, "invalid_api_key")?;
        let longer = send(&client, &url, Some(&format!("Bearer {KEY_A}0"))).await?;
        assert_401(
            &format!("{path} with a longer key"),
            &longer,
            "invalid_api_key",
        )?;

        for key in [KEY_A, KEY_B] {
            let (status, _, body) = send(&client, &url, Some(&format!("Bearer {key}"))).await?;
            assert_eq!(status, StatusCode::OK, "{path} with a key: {body}");
        }
        // The scheme is case-insensitive (RFC 7235).
        let (status, _, body) = send(&client, &url, Some(&format!("bearer {KEY_B}"))).await?;
        assert_eq!(status, StatusCode::OK, "{path} with `bearer`: {body}");
    }
    // An unknown /v1 path tells nothing without a key.
    let unknown = send(&client, &server.http("/v1/nothing-here"), None).await?;
    assert_401("/v1/nothing-here", &unknown, "missing_api_key")?;

    for path in ["/", "/healthz", "/readyz", "/openapi.json"] {
        let (status, _, body) = send(&client, &server.http(path), None).await?;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path} must stay open");
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    // Rejections are counted by reason.
    let (_, _, metrics) = send(
        &client,
        &server.http("/metrics"),
        Some(&format!("Bearer {KEY_A}")),
    )
    .await?;
    for reason in ["missing", "malformed", "invalid"] {
        let line = format!(r#"tributary_serving_auth_rejected_total{{reason="{reason}"}}"#);
        assert!(metrics.contains(&line), "no {line} in:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"route="/v1/views",status="401""#),
        "401s are counted per route:\n{metrics}"
    );

    server.stop().await?;
    let logs =
        String::from_utf8_lossy(&logs.lock().map_err(|_| anyhow::anyhow!("lock"))?).into_owned();
    assert!(
        logs.contains("status=401"),
        "the log capture saw no request lines: {logs}"
    );
    for key in [KEY_A, KEY_B, WRONG_KEY] {
        assert!(!logs.contains(key), "a key was logged");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_api_is_open() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let server = Running::start(config(store.path(), &[])?).await?;
    let client = reqwest::Client::new();
    for path in PROTECTED {
        let (status, challenge, body) = send(&client, &server.http(path), None).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(challenge, None, "{path}");
    }
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_declares_the_bearer_scheme() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let server = Running::start(config(store.path(), &[two_keys()])?).await?;
    let doc: Value = reqwest::get(server.http("/openapi.json"))
        .await?
        .json()
        .await?;
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let protected = [
        "/v1/views",
        "/v1/views/checkouts",
        "/v1/views/checkouts/series",
        "/v1/views/checkouts/top",
        "/v1/views/checkouts/accuracy",
        "/v1/status",
        "/metrics",
    ];
    for path in protected {
        let op = &doc["paths"][path]["get"];
        assert!(op.is_object(), "openapi lacks GET {path}");
        assert_eq!(op["security"], json!([{"bearer": []}]), "{path}: {op}");
        assert_eq!(
            op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{path}: {op}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        let op = &doc["paths"][path]["get"];
        assert!(op.is_object(), "openapi lacks GET {path}");
        assert!(op.get("security").is_none(), "{path} is open: {op}");
        assert!(op["responses"].get("401").is_none(), "{path}: {op}");
    }
    server.stop().await
}
