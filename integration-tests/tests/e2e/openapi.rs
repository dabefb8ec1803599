//! The OpenAPI document against the server it describes: schemathesis (PyPI, in the stack's
//! virtualenv) generates requests from the document, valid and invalid, and runs all its
//! checks on the answers: no server error, every status and body as documented, every valid
//! request accepted, every invalid one refused. Runs after both batch runs, so the answers
//! carry batch, speed, `as_of` history and ledger rows. `integration-tests/schemathesis/
//! hooks.py` keeps generated queries to the rules between parameters the document states in
//! words (from before to, the limits); `TRIBUTARY_FUZZ_SEED` replays or varies a run and
//! `TRIBUTARY_FUZZ_SECONDS` makes schemathesis repeat fuzzing until that much time is spent.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tributary_it::checks::get;
use tributary_it::venv_program;

use crate::fixture::{Ctx, fixture, got};

/// The seed `make test` runs with (any other through `TRIBUTARY_FUZZ_SEED`).
const SEED: u64 = 20_261_204;

/// What the run printed, how it ended, and the document it read.
pub struct Fuzzed {
    pub seed: u64,
    pub success: bool,
    pub output: String,
    pub elapsed: Duration,
    pub document: Value,
    /// The run's JUnit report: one test case per operation it exercised.
    pub junit: String,
}

pub async fn observe(ctx: &Ctx) -> anyhow::Result<Fuzzed> {
    let url = &ctx.server.url;
    let (_, document) = get(&format!("{url}/openapi.json")).await?;
    let seed = match std::env::var("TRIBUTARY_FUZZ_SEED") {
        Ok(s) => s.parse().context("TRIBUTARY_FUZZ_SEED")?,
        Err(_) => SEED,
    };
    let budget: Vec<String> = match std::env::var("TRIBUTARY_FUZZ_SECONDS") {
        Ok(s) => vec![
            "--max-time".into(),
            s.parse::<u32>()
                .context("TRIBUTARY_FUZZ_SECONDS")?
                .to_string(),
        ],
        Err(_) => Vec::new(),
    };
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis/hooks.py");
    let work = tempfile::tempdir()?;
    let start = Instant::now();
    let out = tokio::process::Command::new(venv_program("schemathesis")?)
        .current_dir(work.path())
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .env("TRIBUTARY_API", url)
        .args(["run", &format!("{url}/openapi.json")])
        .args(["--checks", "all", "--max-examples", "100", "--workers", "2"])
        .args(&budget)
        .args(["--seed", &seed.to_string(), "--generation-database", "none"])
        .args(["--request-timeout", "10", "--no-color", "--report", "junit"])
        .arg("--report-junit-path")
        .arg(work.path().join("junit.xml"))
        .output()
        .await
        .context("running schemathesis")?;
    Ok(Fuzzed {
        seed,
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        elapsed: start.elapsed(),
        document,
        junit: std::fs::read_to_string(work.path().join("junit.xml")).unwrap_or_default(),
    })
}

/// schemathesis finds nothing: the document says exactly what the server accepts and answers.
#[test]
fn the_openapi_document_agrees_with_the_server() -> anyhow::Result<()> {
    let f = got(&fixture()?.openapi)?;
    eprintln!(
        "schemathesis (seed {}) ran {:.0?}:\n{}",
        f.seed, f.elapsed, f.output
    );
    assert!(
        f.success,
        "schemathesis found disagreements (seed {}; replay with TRIBUTARY_FUZZ_SEED={}):\n{}",
        f.seed, f.seed, f.output
    );
    // It ran cases against every view's operations, not just loaded the document.
    for path in [
        "/v1/views/checkouts/series",
        "/v1/views/checkouts/top",
        "/v1/views/checkouts/accuracy",
        "/v1/views/all_types/series",
        "/v1/views/all_types/top",
    ] {
        let case = format!("name=\"GET {path}\"");
        assert!(f.junit.contains(&case), "{path} not tested: {}", f.junit);
    }
    Ok(())
}

/// One path per view with that view's names as enums; no bearer scheme on an open server.
#[test]
fn the_document_is_this_servers() -> anyhow::Result<()> {
    let doc = &got(&fixture()?.openapi)?.document;
    let params = |path: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let enum_of = |path: &str, name: &str| {
        params(path)
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["schema"]["enum"].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        enum_of("/v1/views/checkouts/series", "granularity"),
        serde_json::json!(["minute", "hour", "day"])
    );
    assert_eq!(
        enum_of("/v1/views/all_types/series", "granularity"),
        serde_json::json!(["day"])
    );
    assert_eq!(
        enum_of("/v1/views/all_types/top", "measure"),
        serde_json::json!(["events"])
    );
    assert!(doc["paths"]["/v1/views/{view}/series"].is_null());
    assert!(doc["components"]["securitySchemes"].is_null(), "{doc}");
    Ok(())
}
