//! The phases after the first run's: a second wave and batch run that move the horizon, the
//! DLQ drained, fixed and replayed, and the layers stopping.

use std::time::Duration;

use serde_json::Value;
use tributary_batch_layer::run::{RunRequest, run_once};
use tributary_batch_layer::state::StateStore;
use tributary_it::checks::{check_series, get};
use tributary_it::scenario::{Ev, Resend, add_ends, produce};
use tributary_it::{binary, now_ms, wait_for, write_config};
use tributary_shared::Granularity;
use tributary_shared::bucket::MINUTE_MS;

use crate::fixture::{Ctx, fixture, got, horizon, wait_consumed};

/// Produces `wave2`, waits for both layers, runs the batch again: the minute series.
pub async fn observe_second_run(ctx: &Ctx, wave2: &[Ev]) -> anyhow::Result<(u16, Value)> {
    let more = produce(&ctx.topic, wave2, 25, Resend::SamePartition, 4, &[]).await?;
    let ends2 = add_ends(&ctx.ends, &more);
    wait_consumed(&ctx.config, &ends2).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run_once(
        &ctx.config,
        &ctx.store,
        &ctx.metrics,
        &RunRequest::default(),
    )
    .await?;
    get(&ctx.q("minute", "")).await
}

/// More events arrive up to now; the batch runs again; the horizon moves; still right.
#[test]
fn a_second_wave_and_run_move_the_horizon_and_stay_right() -> anyhow::Result<()> {
    let f = fixture()?;
    let (code, body) = got(&f.second_run)?;
    let h1 = f.h1()?;
    let mut all = f.first_events();
    all.extend(f.wave2.iter().cloned());
    let mut applied = f.wave1.clone();
    applied.extend(f.wave2.iter().cloned());
    assert_eq!(*code, 200, "{body}");
    let h2 = horizon(body)?;
    assert!(
        h2 > h1 + 20 * MINUTE_MS,
        "the horizon moved from {h1} to {h2}"
    );
    let (b, s) = check_series(body, Granularity::Minute, &[], &all, &applied)?;
    assert!(b > 100 && s >= 1, "after wave 2: {b} batch, {s} speed");
    Ok(())
}

/// The DLQ round trip, step by step.
pub struct Dlq {
    /// The first drain's output and the records it wrote.
    pub drained: String,
    pub lines: Vec<Value>,
    /// The records that lacked a time, given one.
    pub fixed: Vec<String>,
    pub replayed: String,
    /// Whether the master dataset grew by the fixed records.
    pub landed: Result<(), String>,
    pub status: Value,
    /// The second drain's output.
    pub drained_again: String,
}

pub async fn observe_dlq(ctx: &Ctx) -> anyhow::Result<Dlq> {
    let dir = tempfile::tempdir()?;
    let (cfg_path, env) = write_config(&ctx.config, dir.path())?;
    let drained_file = dir.path().join("dlq.jsonl");
    let dlq_cli = |args: Vec<String>| {
        let (cfg_path, env) = (cfg_path.clone(), env.clone());
        async move {
            let out = tokio::process::Command::new(binary("speed-layer")?)
                .arg("--config")
                .arg(&cfg_path)
                .arg("dlq")
                .args(args)
                .envs(env)
                .output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            anyhow::ensure!(out.status.success(), "speed-layer dlq: {text}");
            Ok::<_, anyhow::Error>(text)
        }
    };
    let drained = dlq_cli(vec![
        "drain".into(),
        "--out".into(),
        drained_file.display().to_string(),
        "--idle".into(),
        "3s".into(),
    ])
    .await?;
    let lines: Vec<Value> = std::fs::read_to_string(&drained_file)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let fixed_time = now_ms() - 10 * MINUTE_MS;
    let fixed: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let mut ev: Value = serde_json::from_str(l["payload"].as_str()?).ok()?;
            if ev.get("event_time").is_some() || !ev["event_id"].as_str()?.starts_with('m') {
                return None;
            }
            ev["event_time"] = fixed_time.into();
            Some(serde_json::json!({"payload": ev.to_string(), "error": l["error"], "partition": l["partition"], "offset": l["offset"]}).to_string())
        })
        .collect();
    let fixed_file = dir.path().join("fixed.jsonl");
    std::fs::write(&fixed_file, fixed.join("\n"))?;
    let rows_before: u64 = StateStore::new(ctx.store.clone(), &ctx.topic)
        .load_all()
        .await?
        .iter()
        .map(|(_, s)| s.rows)
        .sum();
    let replayed = dlq_cli(vec![
        "replay".into(),
        "--file".into(),
        fixed_file.display().to_string(),
    ])
    .await?;
    let landed = wait_for(
        "the replayed events in the master dataset",
        Duration::from_secs(60),
        || {
            let states = StateStore::new(ctx.store.clone(), &ctx.topic);
            async move {
                let rows: u64 = states.load_all().await?.iter().map(|(_, s)| s.rows).sum();
                Ok((rows == rows_before + 10).then_some(()))
            }
        },
    )
    .await
    .map_err(|e| format!("{e:#}"));
    let (_, status) = get(&format!("{}/v1/status", ctx.server.url)).await?;
    let drained_again = dlq_cli(vec![
        "drain".into(),
        "--out".into(),
        dir.path().join("again.jsonl").display().to_string(),
        "--idle".into(),
        "2s".into(),
    ])
    .await?;
    Ok(Dlq {
        drained,
        lines,
        fixed,
        replayed,
        landed,
        status,
        drained_again,
    })
}

/// Drain the DLQ to a file, fix the events that lacked a time, replay them: both layers
/// take them, nothing new lands in the DLQ, and a second drain finds nothing left.
#[test]
fn dead_letters_drain_fix_and_replay() -> anyhow::Result<()> {
    let f = fixture()?;
    let d = got(&f.dlq)?;
    let out = &d.drained;
    assert!(out.contains("drained 30 record(s)"), "{out}");
    assert!(
        d.lines
            .iter()
            .all(|l| l["error"].as_str().is_some_and(|e| !e.is_empty())),
        "every record says why"
    );
    assert_eq!(d.fixed.len(), 10);
    let out = &d.replayed;
    assert!(out.contains("produced 10 record(s)"), "{out}");
    d.landed.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = &d.status;
    let dlq: u64 = status["speed"]["dlq"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    assert_eq!(dlq, 30, "the fixed events are valid: {status}");
    let out = &d.drained_again;
    assert!(out.contains("drained 0 record(s)"), "{out}");
    Ok(())
}

/// The speed layer, the archive and the server stop cleanly at the end.
#[test]
fn the_layers_stop_cleanly() -> anyhow::Result<()> {
    got(&fixture()?.shutdown)?;
    Ok(())
}
