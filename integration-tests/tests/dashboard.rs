//! The dashboard in a real headless Chromium against a real serving layer over real Redis:
//! the page loads, picks a view, draws points; a screenshot is written to
//! `target/test-artifacts/dashboard.png`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{oneshot, watch};
use tributary_it::generator::{Generator, GeneratorOptions};
use tributary_it::*;

async fn run_chromium(args: &[String]) -> anyhow::Result<String> {
    let bin = chromium();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&bin)
            .args(CHROMIUM_FLAGS)
            .arg("--virtual-time-budget=10000")
            .args(args)
            .output(),
    )
    .await
    .context("chromium did not finish in 90 s")?
    .with_context(|| format!("run {bin} (installed by `make up`: apt-get install chromium)"))?;
    if !out.status.success() {
        bail!(
            "{bin} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_loads_a_view_and_draws_points_in_headless_chromium() -> anyhow::Result<()> {
    let prefix = unique("dash");
    let store = tempfile::tempdir()?;
    let config = example_config(&[
        ("SOURCE__BROKERS", brokers()),
        ("REDIS__URL", redis_url()),
        ("REDIS__KEY_PREFIX", prefix.clone()),
        ("STORE__URL", format!("file://{}", store.path().display())),
        ("SERVING__LISTEN", "127.0.0.1:0".into()),
    ])?;

    // Two hours of events up to now, straight into Redis through the speed pipeline.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("events.jsonl");
    let now = now_ms();
    let mut g = Generator::new(GeneratorOptions {
        seed: 7,
        late: 0.0,
        malformed: 0.0,
        duplicates: 0.0,
        start_ms: now - 2 * 3_600_000,
        span_ms: 2 * 3_600_000,
        count: 20_000,
    });
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
    for i in 0..20_000 {
        writeln!(w, "{}", g.event(i))?;
    }
    w.flush()?;
    drop(w);
    let summary = tributary_speed_layer::replay::replay(&config, &file, None).await?;
    assert!(summary.applied > 1000, "{summary:?}");

    let (tx, rx) = watch::channel(false);
    let (bound_tx, bound_rx) = oneshot::channel();
    let server = tokio::spawn(tributary_serving_layer::serve(config, rx, Some(bound_tx)));
    let addr = bound_rx.await.context("serving layer did not bind")?;
    let url = format!("http://{addr}/?view=checkouts");

    let dom = run_chromium(&["--dump-dom".into(), url.clone()]).await?;
    assert!(
        dom.contains(r#"data-loaded="series""#),
        "the page did not load a series: {}",
        &dom[..dom.len().min(3000)]
    );
    let points = dom.matches(r#"class="point""#).count();
    // Two measures over the two or three hours of data, at the default hourly granularity.
    assert!(points >= 4, "only {points} points drawn");
    assert!(
        dom.contains(r#"data-source="speed""#),
        "speed points are marked"
    );
    assert!(
        dom.contains("<option>checkouts</option>"),
        "the view list is filled"
    );
    assert!(dom.contains("Batch"), "the status panel is drawn");
    // Axis numbers as people write them, the status counts as text (no raw JSON), and the
    // page as wide as the window at 1400 px.
    assert!(!dom.contains("e+"), "an axis label in exponent notation");
    assert!(!dom.contains("{&quot;"), "raw JSON in the status panel");
    let wide = run_chromium(&[
        "--dump-dom".into(),
        "--window-size=1400,1000".into(),
        url.clone(),
    ])
    .await?;
    assert!(
        wide.contains(r#"data-scrolls-sideways="false""#),
        "the page scrolls sideways at 1400 px"
    );

    // Exact only: no batch run yet, so every bucket is pending, none speed.
    let exact = run_chromium(&["--dump-dom".into(), format!("{url}&exact=true")]).await?;
    assert!(
        exact.contains(r#"data-loaded="series""#),
        "exact only: {}",
        &exact[..exact.len().min(3000)]
    );
    assert!(
        exact.contains(r#"data-source="pending""#) && !exact.contains(r#"data-source="speed""#),
        "exact only shows pending buckets, never speed ones"
    );

    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1400,1000".into(),
        url,
    ])
    .await?;
    let size = std::fs::metadata(&shot)
        .with_context(|| format!("no screenshot at {}", shot.display()))?
        .len();
    assert!(size > 20_000, "screenshot is only {size} bytes");

    let _ = tx.send(true);
    server.await??;
    Ok(())
}
