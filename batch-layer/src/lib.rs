//! The batch layer: the immutable Parquet master dataset and exact views.
//!
//! - [`archive`](mod@archive): Kafka → Parquet master dataset, committed per partition by
//!   [`state`];
//! - [`master`]: the master dataset's schema and Parquet encoding;
//! - [`snapshot`]: the committed files a run reads, and the [`horizon`];
//! - [`compute`]: a view's date recomputed with DataFusion: the [`sql`] it runs, over values
//!   [`encode`]d once, calling the aggregate functions of [`udaf`] (mergeable sketches, exact
//!   distinct count and quantile); the result is written in the [`view_file`] format; its
//!   memory is the [`budget`]'s;
//! - [`run`](mod@run), [`schedule`](mod@schedule): runs, their [`lock`], each view's
//!   [`manifest`] and the run's [`report`];
//! - [`evolution`]: what a change of `[fields]` may do to views already computed;
//! - [`read`]: the read API the serving layer uses;
//! - [`ballista`](mod@ballista): the same queries on an Apache DataFusion Ballista cluster
//!   (`batch-layer scheduler`, `batch-layer executor`, `engine = "ballista://…"`);
//! - [`metrics`]: Prometheus metrics.

pub mod archive;
pub mod ballista;
pub mod budget;
pub mod compute;
pub mod encode;
pub mod evolution;
pub mod history;
pub mod horizon;
pub mod ledger;
pub mod lock;
pub mod manifest;
pub mod master;
pub mod metrics;
pub mod read;
pub mod report;
pub mod run;
pub mod schedule;
pub mod snapshot;
pub mod sql;
pub mod state;
pub mod udaf;
pub mod view_file;

use anyhow::Context;
use std::sync::Arc;
use tokio::sync::watch;
use tributary_shared::Config;

/// `batch-layer archive`: serves metrics and archives until `shutdown`.
pub async fn archive(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let metrics = serve_metrics(&config).await?;
    let store = tributary_shared::store::open_store(&config.store).context("store.url")?;
    let archiver = archive::Archiver::new(config, store, metrics, shutdown).await?;
    archiver.run().await
}

/// `batch-layer run` / `backfill`: one run, then exit (1 when a view failed or the lock is
/// held).
pub async fn run(config: Config, request: run::RunRequest) -> anyhow::Result<()> {
    let metrics = metrics::BatchMetrics::new();
    let store = tributary_shared::store::open_store(&config.store).context("store.url")?;
    refuse_type_changes(&config, &store).await?;
    let report = run::run_once(&config, &store, &metrics, &request).await?;
    for (view, r) in &report.views {
        println!(
            "{view}: {} date(s) recomputed, {} events, manifest version {}",
            r.dates_computed.len(),
            r.events,
            r.manifest_version
                .map_or("-".to_string(), |v| v.to_string())
        );
    }
    println!(
        "run {} done in {:.2}s; horizon {}",
        report.run_id,
        report.seconds,
        report.horizon.as_deref().unwrap_or("none yet")
    );
    Ok(())
}

/// `batch-layer schedule`: metrics server and the cron loop until `shutdown`.
pub async fn schedule(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let metrics = serve_metrics(&config).await?;
    let store = tributary_shared::store::open_store(&config.store).context("store.url")?;
    refuse_type_changes(&config, &store).await?;
    schedule::schedule(&config, &store, &metrics, shutdown).await
}

/// `batch-layer scheduler`: Ballista's scheduler with Tributary's functions and store.
pub async fn scheduler(config: Config) -> anyhow::Result<()> {
    ballista::scheduler(config).await
}

/// `batch-layer executor`: a Ballista executor with Tributary's functions and store.
pub async fn executor(config: Config, bind: Option<String>) -> anyhow::Result<()> {
    ballista::executor(config, bind).await
}

/// [`evolution::check_field_types`], a refusal exiting like a bad config key.
async fn refuse_type_changes(
    config: &Config,
    store: &Arc<dyn object_store::ObjectStore>,
) -> anyhow::Result<()> {
    match evolution::check_field_types(config, store).await {
        Ok(()) => Ok(()),
        Err(evolution::EvolutionError::Refused(msg)) => {
            Err(tributary_shared::cli::ConfigRefused(msg).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context("reading the views' manifests")),
    }
}

async fn serve_metrics(config: &Config) -> anyhow::Result<Arc<metrics::BatchMetrics>> {
    let metrics = metrics::BatchMetrics::new();
    let m = metrics.clone();
    tributary_shared::metrics_http::serve_config(
        "batch.metrics_listen",
        &config.batch.metrics_listen,
        Arc::new(move || m.render()),
    )
    .await?;
    Ok(metrics)
}
