//! The batch layer: archive (Kafka → Parquet master dataset) and exact views (DataFusion).
//!
//! Not built yet: tracked by the batch-layer issue. The CLI and config contract are in place.

use tributary_shared::Config;

/// Refuses clearly instead of pretending to work.
pub fn not_built_yet(config: &Config, command: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "batch-layer {command} is not implemented yet (store {} ); see the batch-layer issue",
        config.store.url
    )
}
