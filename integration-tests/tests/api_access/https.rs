//! `serving.tls_cert`/`tls_key`: HTTPS with the local stack's certificate (for 127.0.0.1 and
//! localhost), trusted by a client that has the test CA and refused by one that has not; keys
//! work over it; graceful stop closes the port; unusable files fail the start, naming the key.

use std::time::Duration;

use reqwest::{Certificate, StatusCode};

use crate::{KEY_A, Running, config, secure_file, two_keys};

/// A client that trusts only `ca` (no system roots).
fn client_trusting(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        b = b.add_root_certificate(Certificate::from_pem(&std::fs::read(ca)?)?);
    }
    Ok(b.build()?)
}

fn tls_overrides() -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![
        two_keys(),
        (
            "SERVING__TLS_CERT",
            secure_file("TRIBUTARY_SECURE_CERT")?.display().to_string(),
        ),
        (
            "SERVING__TLS_KEY",
            secure_file("TRIBUTARY_SECURE_KEY")?.display().to_string(),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_test_ca() -> anyhow::Result<()> {
    let ca = secure_file("TRIBUTARY_SECURE_CA")?;
    let store = tempfile::tempdir()?;
    let server = Running::start(config(store.path(), &tls_overrides()?)?).await?;
    let port = server.addr.port();
    let trusted = client_trusting(Some(&ca))?;

    for host in ["127.0.0.1", "localhost"] {
        let base = format!("https://{host}:{port}");
        let res = trusted.get(format!("{base}/healthz")).send().await?;
        assert_eq!(res.status(), StatusCode::OK, "{base}/healthz");
        let res = trusted
            .get(format!("{base}/v1/views"))
            .bearer_auth(KEY_A)
            .send()
            .await?;
        assert_eq!(res.status(), StatusCode::OK, "{base}/v1/views with a key");
        let body: serde_json::Value = res.json().await?;
        assert!(body["views"].is_array(), "{body}");
        let res = trusted.get(format!("{base}/v1/views")).send().await?;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{base}/v1/views");
    }

    // Without the CA the certificate is not trusted: the handshake fails, nothing is sent.
    let err = client_trusting(None)?
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .err()
        .map(|e| format!("{e:?}"));
    let Some(err) = err else {
        anyhow::bail!("a client without the test CA was answered");
    };
    assert!(
        err.contains("UnknownIssuer") || err.to_lowercase().contains("certificate"),
        "expected a certificate error, got {err}"
    );
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain
            .as_ref()
            .map(|r| r.status() != StatusCode::OK)
            .unwrap_or(true),
        "plain HTTP was served on the HTTPS port: {plain:?}"
    );

    // A server that keeps answering after a bad handshake: the listener survived it.
    let res = trusted
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::OK);

    server.stop().await?;
    let after = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(after.is_err(), "the port is still open after a stop");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_fail_the_start_naming_the_key() -> anyhow::Result<()> {
    let cert = secure_file("TRIBUTARY_SECURE_CERT")?;
    let key = secure_file("TRIBUTARY_SECURE_KEY")?;
    let other_key = secure_file("TRIBUTARY_SECURE_UNTRUSTED_KEY")?;
    let store = tempfile::tempdir()?;
    let junk = store.path().join("junk.pem");
    std::fs::write(&junk, "this is not PEM\n")?;
    let path = |p: &std::path::Path| p.display().to_string();

    let cases = [
        (path(&junk), path(&key), "serving.tls_cert"),
        (path(&cert), path(&junk), "serving.tls_key"),
        // A key that is not the certificate's.
        (path(&cert), path(&other_key), "serving.tls_key"),
        // Swapped: a key where the certificate belongs.
        (path(&key), path(&cert), "serving.tls_cert"),
    ];
    for (c, k, named) in cases {
        let cfg = config(
            store.path(),
            &[
                ("SERVING__TLS_CERT", c.clone()),
                ("SERVING__TLS_KEY", k.clone()),
            ],
        )?;
        let started = tokio::time::timeout(Duration::from_secs(10), Running::start(cfg)).await?;
        match started {
            Ok(server) => {
                server.stop().await?;
                anyhow::bail!("started with tls_cert={c} tls_key={k}");
            }
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains(named), "cert={c} key={k}: {msg}");
            }
        }
    }
    Ok(())
}
