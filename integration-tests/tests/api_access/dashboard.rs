//! The dashboard of a server with API keys, in headless Chromium over real Redis: the page
//! loads, the API answers 401 and the page asks for a key; a wrong key is refused and asked
//! again; the right one draws the charts and stays for the tab (a reload does not ask).
//! Screenshots go to `target/test-artifacts/dashboard-key-*.png`.

use std::io::Write;
use std::time::Duration;

use serde_json::json;
use tributary_it::generator::{Generator, GeneratorOptions};
use tributary_it::now_ms;

use crate::cdp::Browser;
use crate::{KEY_A, Running, WRONG_KEY, config};

const WAIT: Duration = Duration::from_secs(30);

/// Types `key` into the page's key form and submits it, as a person would.
async fn enter_key(page: &mut Browser, key: &str) -> anyhow::Result<()> {
    let script = format!(
        r#"(() => {{
            const input = document.getElementById("api-key");
            input.value = {key};
            document.getElementById("auth").requestSubmit();
            return true;
        }})()"#,
        key = json!(key)
    );
    page.eval(&script).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_a_key_and_keeps_it_for_the_tab() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let config = config(
        store.path(),
        &[("SERVING__API_KEYS", format!(r#"["{KEY_A}"]"#))],
    )?;

    // Two hours of events up to now, into Redis through the speed pipeline.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("events.jsonl");
    let now = now_ms();
    let count = 5_000;
    let mut g = Generator::new(GeneratorOptions {
        seed: 11,
        late: 0.0,
        malformed: 0.0,
        duplicates: 0.0,
        start_ms: now - 2 * 3_600_000,
        span_ms: 2 * 3_600_000,
        count,
    });
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
    for i in 0..count {
        writeln!(w, "{}", g.event(i))?;
    }
    w.flush()?;
    drop(w);
    let summary = tributary_speed_layer::replay::replay(&config, &file, None).await?;
    assert!(summary.applied > 500, "{summary:?}");

    let server = Running::start(config).await?;
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts)?;

    let mut page = Browser::launch().await?;
    let result = async {
        page.navigate(&server.http("/?view=checkouts")).await?;
        page.wait_for(
            "the key form after the first 401",
            r#"document.body.dataset.auth === "needed" && !document.getElementById("auth").hidden"#,
            WAIT,
        )
        .await?;
        page.screenshot(&artifacts.join("dashboard-key-prompt.png"))
            .await?;

        enter_key(&mut page, WRONG_KEY).await?;
        page.wait_for(
            "the key form again after a wrong key",
            r#"document.body.dataset.auth === "refused" && !document.getElementById("auth").hidden"#,
            WAIT,
        )
        .await?;
        let message = page.eval(r#"document.getElementById("auth-msg").textContent"#).await?;
        assert!(
            message.as_str().unwrap_or_default().contains("refused"),
            "{message}"
        );

        enter_key(&mut page, KEY_A).await?;
        page.wait_for(
            "the series drawn with the key",
            r#"document.body.dataset.loaded === "series""#,
            WAIT,
        )
        .await?;
        page.wait_for(
            "the status panel",
            r#"document.getElementById("status").textContent.includes("Batch")"#,
            WAIT,
        )
        .await?;
        let drawn = page
            .eval(
                r##"({
                    points: document.querySelectorAll('circle.point').length,
                    speed: document.querySelectorAll('[data-source="speed"]').length,
                    views: [...document.querySelectorAll("#view option")].map((o) => o.textContent),
                    formHidden: document.getElementById("auth").hidden,
                    stored: sessionStorage.getItem("tributary.apiKey"),
                })"##,
            )
            .await?;
        // Two measures over the two or three hours of data, at the hourly granularity.
        assert!(drawn["points"].as_u64().unwrap_or(0) >= 4, "{drawn}");
        assert!(drawn["speed"].as_u64().unwrap_or(0) >= 1, "{drawn}");
        assert_eq!(drawn["views"], json!(["checkouts"]), "{drawn}");
        assert_eq!(drawn["formHidden"], json!(true), "{drawn}");
        assert_eq!(drawn["stored"], json!(KEY_A), "{drawn}");
        page.screenshot(&artifacts.join("dashboard-key-loaded.png"))
            .await?;

        // The key stays for the tab: a reload draws again without asking.
        page.eval("window.beforeReload = true").await?;
        page.reload().await?;
        page.wait_for(
            "the series after a reload",
            r#"!window.beforeReload && document.body.dataset.loaded === "series""#,
            WAIT,
        )
        .await?;
        let asked = page.eval(r#"document.body.dataset.auth || "never""#).await?;
        assert_eq!(asked, json!("never"), "the page asked again after a reload");
        anyhow::Ok(())
    }
    .await;
    let closed = page.close().await;
    let stopped = server.stop().await;
    result?;
    closed?;
    stopped
}
