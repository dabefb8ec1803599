//! `speed-layer reset --to T`: rebuild every view's Redis state from Kafka, from time `T` on
//! (floored to the view's coarsest bucket). For redoing a bad stretch of aggregates; after a
//! loss of Redis the speed layer rebuilds by itself (see `rebuild`).
//!
//! It takes each view's rebuild lock, so it is safe while `speed-layer run` is running: the
//! running consumers find their flushes fenced by the new epoch, reload the offsets the reset
//! wrote and seek there.

use anyhow::Context;
use serde::Serialize;
use tributary_shared::{Config, EventSchema, ViewPlan};

use crate::rebuild::{Reason, Rebuilder, Rebuilt};

#[derive(Debug, Serialize)]
pub struct ResetSummary {
    pub views: Vec<Rebuilt>,
}

/// Resets every view of `config` to time `to_ms`.
pub async fn reset(config: &Config, to_ms: i64) -> anyhow::Result<ResetSummary> {
    let schema = EventSchema::from_config(config);
    let views = ViewPlan::compile_all(config, &schema)?;
    // Kafka first: the rebuild deletes the view's keys before it reads Kafka, and a broker
    // it cannot reach would leave the view empty until the next start.
    tributary_shared::kafka::topic_partitions(&config.source, &config.source.topic).await?;
    let client = tributary_shared::redis_client::RedisClient::new(&config.redis)?;
    let mut con = client.connect().await?;
    let rebuilder = Rebuilder::new(config)?;
    let mut out = Vec::new();
    for view in &views {
        let rebuilt = rebuilder
            .rebuild(&mut con, view, Reason::Reset, Some(to_ms))
            .await
            .with_context(|| format!("reset view {}", view.name))?;
        tracing::info!(view = %view.name, from = %rebuilt.from, "speed layer state reset");
        out.push(rebuilt);
    }
    Ok(ResetSummary { views: out })
}
