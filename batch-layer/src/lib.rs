//! The batch layer: the immutable Parquet master dataset and exact views.
//!
//! - [`archive`]: Kafka → Parquet master dataset, committed per partition by [`state`];
//! - [`master`]: the master dataset's schema and Parquet encoding;
//! - [`horizon`]: the batch horizon from the partition states;
//! - [`metrics`]: Prometheus metrics.
//!
//! The view recomputation (`run`, `schedule`, `backfill`) is not built yet.

pub mod archive;
pub mod horizon;
pub mod master;
pub mod metrics;
pub mod state;

use anyhow::Context;
use std::sync::Arc;
use tokio::sync::watch;
use tributary_shared::Config;

/// `batch-layer archive`: serves metrics and archives until `shutdown`.
pub async fn archive(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let metrics = metrics::BatchMetrics::new();
    let m = metrics.clone();
    tributary_shared::metrics_http::serve_config(
        "batch.metrics_listen",
        &config.batch.metrics_listen,
        Arc::new(move || m.render()),
    )
    .await?;
    let store = tributary_shared::store::open_store(&config.store).context("store.url")?;
    let archiver = archive::Archiver::new(config, store, metrics).await?;
    archiver.run(shutdown).await
}

/// Refuses clearly instead of pretending to work.
pub fn not_built_yet(config: &Config, command: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "batch-layer {command} is not implemented yet (store {}); the view recomputation is still open in the batch-layer issue",
        config.store.url
    )
}
