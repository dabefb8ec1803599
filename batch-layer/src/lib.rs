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

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::watch;
use tributary_shared::Config;

/// Fails with a clear message when the events topic is missing (topics are not auto-created).
pub async fn ensure_topic_exists(config: &Config) -> anyhow::Result<()> {
    let brokers = config.source.brokers.clone();
    let topic = config.source.topic.clone();
    let meta = tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        probe.fetch_metadata(Some(&topic), Duration::from_secs(10))
    })
    .await?
    .with_context(|| {
        format!(
            "cannot read metadata from kafka at {}",
            config.source.brokers
        )
    })?;
    match meta.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => bail!(
            "the events topic {:?} does not exist on {}; create it first (topics are not auto-created)",
            config.source.topic,
            config.source.brokers
        ),
    }
}

/// `batch-layer archive`: serves metrics and archives until `shutdown`.
pub async fn archive(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let metrics = metrics::BatchMetrics::new();
    let listen = config
        .batch
        .metrics_listen
        .parse()
        .context("batch.metrics_listen")?;
    let render = {
        let m = metrics.clone();
        Arc::new(move || m.render())
    };
    let addr = tributary_shared::metrics_http::serve(listen, render)
        .await
        .with_context(|| format!("bind metrics on {listen}"))?;
    tracing::info!(%addr, "metrics listening");
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
