//! The speed layer: Kafka → real-time approximate aggregates in Redis, exactly once.
//!
//! - [`aggregate`]: parse, filter, bucket and pre-aggregate between flushes;
//! - [`watermark`]: per-partition offsets and event-time watermarks;
//! - [`dedup`]: the optional producer-duplicate filter;
//! - [`redis_sink`]: one atomic, fenced Lua script per view and flush;
//! - [`consumer`]: the rdkafka consumer loop (`speed-layer run`): flush, recovery,
//!   housekeeping, progress; with [`rebalance`];
//! - [`rebuild`]: a view's Redis state rebuilt from Kafka (after Redis lost it, or `reset`);
//! - [`dlq`]: producing dead letters, draining and replaying the dead-letter topic;
//! - [`replay`]: the same pipeline fed from a file (`speed-layer replay`);
//! - [`read`]: the one surface the serving layer reads through: aggregates, and the
//!   [`view_state`], [`progress`] and [`stats`] written beside them;
//! - [`reset`]: `speed-layer reset --to T`;
//! - [`metrics`]: Prometheus metrics.

pub mod aggregate;
pub mod consumer;
pub mod dedup;
pub mod dlq;
pub mod metrics;
pub mod progress;
pub mod read;
pub mod rebalance;
pub mod rebuild;
pub mod redis_sink;
pub mod replay;
pub mod reset;
pub mod stats;
pub mod view_state;
pub mod watermark;

use tokio::sync::watch;
use tributary_shared::{Config, EventSchema, ViewPlan};

use crate::aggregate::Pipeline;

/// Compiles the config's views into a pipeline.
pub fn build_pipeline(config: &Config) -> anyhow::Result<Pipeline> {
    let schema = EventSchema::from_config(config);
    let views = ViewPlan::compile_all(config, &schema)?;
    Ok(Pipeline::new(
        schema,
        views,
        config.speed.allowed_lateness.as_millis() as i64,
        config.speed.max_future_skew.as_millis() as i64,
    )
    .with_dedup_window(
        config.speed.dedup_window.as_millis() as i64,
        config.speed.retention.as_millis() as i64,
    ))
}

/// `speed-layer run`: serves metrics and consumes until `shutdown` turns true.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let metrics = metrics::SpeedMetrics::new();
    let m = metrics.clone();
    tributary_shared::metrics_http::serve_config(
        "speed.metrics_listen",
        &config.speed.metrics_listen,
        std::sync::Arc::new(move || m.render()),
    )
    .await?;
    let pipeline = build_pipeline(&config)?;
    let consumer = consumer::SpeedConsumer::new(config, pipeline, metrics, shutdown).await?;
    consumer.run().await
}
