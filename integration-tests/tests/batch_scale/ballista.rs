//! The same views on Apache DataFusion Ballista: a scheduler and two executors started by the
//! test as `batch-layer scheduler` / `batch-layer executor` processes on loopback ports, the
//! master dataset on moto's S3. Their view files equal the local engine's (every column's
//! bytes), the serving layer answers the same JSON, and an executor killed mid-run either
//! leaves the run to the other or fails it with the previous manifest intact.

use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tributary_batch_layer::manifest::Manifest;
use tributary_batch_layer::report::load_report;
use tributary_it::master::{DaySpec, write_day};
use tributary_it::server::Server;
use tributary_it::*;
use tributary_shared::Config;
use tributary_shared::bucket::{DAY_MS, date_string};

use super::memory::config_on;
use super::{assert_same_contents, free_port, view_contents};

/// A `batch-layer` daemon (scheduler or executor), killed when dropped.
async fn spawn(config: &Config, dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Child> {
    let (path, env) = write_config(config, dir)?;
    let log = std::fs::File::create(dir.join(format!("{}.log", args.join("-").replace(':', "_"))))?;
    Ok(Command::new(binary("batch-layer")?)
        .arg("--config")
        .arg(&path)
        .args(args)
        .envs(env)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

async fn listening(port: u16) -> anyhow::Result<()> {
    wait_for(
        &format!("127.0.0.1:{port} listening"),
        Duration::from_secs(60),
        || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballista_computes_the_same_views_and_survives_a_lost_executor() -> anyhow::Result<()> {
    let store_config = s3_store_config(&unique("ballista")).await?;
    let url = store_config.url.clone();
    let scheduler_port = free_port(false)?;
    let work = tempfile::tempdir()?;
    let base = |engine: &str| -> anyhow::Result<Config> {
        let mut c = config_on(
            &url,
            &[
                ("BATCH__ENGINE", engine.to_string()),
                (
                    "BALLISTA__SCHEDULER_BIND",
                    format!("127.0.0.1:{scheduler_port}"),
                ),
                (
                    "BALLISTA__SCHEDULER_URL",
                    format!("127.0.0.1:{scheduler_port}"),
                ),
                ("BALLISTA__EXECUTOR_SLOTS", "2".to_string()),
                // A job that a lost executor leaves waiting is given up after this.
                ("BALLISTA__JOB_TIMEOUT", "30s".to_string()),
                ("BALLISTA__WORK_DIR", work.path().display().to_string()),
            ],
        )?;
        c.store = store_config.clone();
        Ok(c)
    };
    let local = base("local")?;
    let remote = base(&format!("ballista://127.0.0.1:{scheduler_port}"))?;
    let store = open(&local.store)?;
    let topic = local.source.topic.clone();
    let day = (now_ms() / DAY_MS - 2) * DAY_MS;
    let (from, to) = (date_string(day - DAY_MS), date_string(day + DAY_MS));
    for (d, seed) in [(day - DAY_MS, 1), (day, 2)] {
        write_day(
            &store,
            &local,
            &topic,
            &DaySpec {
                day_ms: d,
                events: 60_000,
                partitions: 2,
                seed,
            },
        )
        .await?;
    }

    // The local engine first: the reference files, and the serving layer's answer.
    let (code, out) = batch_cli(&local, &["run"]).await?;
    assert_eq!(code, 0, "local run: {out}");
    let (m1, reference) = view_contents(&store, "checkouts").await?;
    let mut serving = local.clone();
    serving.serving.listen = "127.0.0.1:0".to_string();
    let server = Server::start(serving.clone()).await?;
    let (q_from, q_to) = (day - DAY_MS, day + DAY_MS);
    let local_json = server
        .series("hour", q_from, q_to, "&group_by=country")
        .await?;
    assert!(
        local_json["buckets"]["batch"].as_u64().unwrap_or(0) >= 24,
        "batch buckets served: {local_json}"
    );
    server.stop().await?;

    // A scheduler and two executors.
    let dir = tempfile::tempdir()?;
    let _scheduler = spawn(&remote, dir.path(), &["scheduler"]).await?;
    listening(scheduler_port).await?;
    let mut executors = Vec::new();
    for _ in 0..2 {
        let port = free_port(true)?;
        let bind = format!("127.0.0.1:{port}");
        executors.push(spawn(&remote, dir.path(), &["executor", "--bind", &bind]).await?);
        listening(port).await?;
    }
    // Registration follows the first heartbeat.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (code, out) = batch_cli(&remote, &["backfill", "--from", &from, "--to", &to]).await?;
    assert_eq!(code, 0, "Ballista backfill: {out}");
    assert!(
        out.contains("engine=ballista://"),
        "the log names the engine: {out}"
    );
    let report = load_report(&store).await?.context("last_run.json")?;
    assert!(
        report.engine.starts_with("ballista://"),
        "{}",
        report.engine
    );
    assert_eq!(
        report.views["checkouts"].jobs.len(),
        2,
        "one Ballista job per date: {:?}",
        report.views["checkouts"]
    );
    let (m2, remote_files) = view_contents(&store, "checkouts").await?;
    assert_eq!(m2.version, m1.version + 1, "a new version landed");
    let rows = assert_same_contents(&reference, &remote_files, "local vs Ballista")?;
    assert!(rows > 1000, "{rows} rows compared");
    let server = Server::start(serving).await?;
    let ballista_json = server
        .series("hour", q_from, q_to, "&group_by=country")
        .await?;
    server.stop().await?;
    for key in ["series", "batch_horizon", "buckets"] {
        assert_eq!(
            ballista_json[key], local_json[key],
            "the serving layer's {key}"
        );
    }

    // A job that does not finish within ballista.job_timeout is cancelled and fails its view
    // cleanly (what a job left waiting by a lost executor comes to).
    let mut impatient = remote.clone();
    impatient.ballista.job_timeout = Duration::from_millis(20);
    let (code, out) = batch_cli(&impatient, &["backfill", "--from", &from, "--to", &to]).await?;
    assert_eq!(code, 1, "a timed-out job fails the run: {out}");
    assert!(
        out.contains("ballista.job_timeout") && out.contains("was cancelled"),
        "the error names the key: {out}"
    );
    let (m_timeout, _) = view_contents(&store, "checkouts").await?;
    assert_eq!(m_timeout, m2, "the manifest stays as it was");

    // An executor killed mid-run: the run completes through the other, or fails cleanly
    // leaving the manifest it found.
    let run = tokio::spawn({
        let remote = remote.clone();
        let (from, to) = (from.clone(), to.clone());
        async move { batch_cli(&remote, &["backfill", "--from", &from, "--to", &to]).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut victim = executors.remove(0);
    victim.kill().await?;
    let (code, out) = run.await??;
    let (m3, after) = view_contents(&store, "checkouts").await?;
    eprintln!("run with a lost executor: exit {code}");
    if code == 0 {
        assert_eq!(m3.version, m2.version + 1, "{out}");
        assert_same_contents(&reference, &after, "after a lost executor")?;
    } else {
        assert_eq!(m3, m2, "a failed run leaves the manifest as it was: {out}");
        assert_same_contents(&reference, &after, "the previous version")?;
    }
    // Whatever happened, the surviving executor serves the next run.
    let (code, out) = batch_cli(&remote, &["backfill", "--from", &from, "--to", &to]).await?;
    assert_eq!(code, 0, "a run on the surviving executor: {out}");
    let (_, last) = view_contents(&store, "checkouts").await?;
    assert_same_contents(&reference, &last, "on one executor")?;
    let (m4, _) = Manifest::load(&store, "checkouts")
        .await?
        .context("manifest")?;
    assert!(m4.version > m2.version);
    Ok(())
}
