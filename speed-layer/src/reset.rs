//! `speed-layer reset --to T`: rebuild the speed layer's Redis state from Kafka, from time `T`
//! on. Used after Redis lost its data (T = now - retention) or to drop a bad stretch of
//! aggregates.
//!
//! Every view's keys are deleted, then each view's stored offset per partition is set to the
//! first offset at or after `T - allowed_lateness` (Kafka's time index) with the stored
//! maximum event time `T`: on its next assignment the speed layer seeks there, and its
//! watermark (`T - allowed_lateness`) drops the events before it as late, so no bucket is
//! applied twice. Run it with the speed layer stopped.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use tributary_shared::Config;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::layout::RedisKeys;

use crate::watermark::Stored;

#[derive(Debug, Serialize)]
pub struct ResetSummary {
    pub to: String,
    pub keys_deleted: u64,
    /// partition → first offset the speed layer will read.
    pub offsets: std::collections::BTreeMap<i32, i64>,
}

/// First offset at or after `ts_ms` per partition (the end offset where no record is that
/// late).
async fn offsets_for_time(config: &Config, ts_ms: i64) -> anyhow::Result<Vec<(i32, i64)>> {
    let partitions =
        tributary_shared::kafka::topic_partitions(&config.source.brokers, &config.source.topic)
            .await?;
    let (brokers, topic) = (config.source.brokers.clone(), config.source.topic.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "tributary-reset")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Offset(ts_ms))?;
        }
        let found = consumer
            .offsets_for_times(tpl, Duration::from_secs(15))
            .with_context(|| format!("look up offsets by time on {topic}"))?;
        let mut out = Vec::new();
        for e in found.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                // No record at or after the time: start at the end.
                _ => {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, e.partition(), Duration::from_secs(10))
                        .with_context(|| format!("end offset of {topic}/{}", e.partition()))?;
                    high
                }
            };
            out.push((e.partition(), offset));
        }
        Ok(out)
    })
    .await?
}

/// Resets every view of `config` to time `to_ms`.
pub async fn reset(config: &Config, to_ms: i64) -> anyhow::Result<ResetSummary> {
    let lateness = config.speed.allowed_lateness.as_millis() as i64;
    let offsets = offsets_for_time(config, to_ms.saturating_sub(lateness)).await?;
    let client = redis::Client::open(crate::redis_url(config)?).context("redis.url")?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connect to redis at {}", config.redis.url))?;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let mut deleted = 0u64;
    for view in &config.views {
        // The offsets first: a consumer still running is fenced from here on.
        let offsets_key = keys.offsets(&view.name, &config.source.topic);
        let stored: Vec<(String, String)> = offsets
            .iter()
            .map(|(p, o)| {
                let s = Stored {
                    next_offset: *o,
                    max_event_time_ms: to_ms,
                };
                (p.to_string(), s.to_string())
            })
            .collect();
        let pattern = format!("{}:*", keys.view(&view.name));
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await?;
            let batch: Vec<String> = batch.into_iter().filter(|k| *k != offsets_key).collect();
            if !batch.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&batch)
                    .query_async(&mut con)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: () = redis::cmd("DEL")
            .arg(&offsets_key)
            .query_async(&mut con)
            .await?;
        if !stored.is_empty() {
            let _: () = redis::cmd("HSET")
                .arg(&offsets_key)
                .arg(stored)
                .query_async(&mut con)
                .await?;
        }
        tracing::info!(view = %view.name, "speed layer state reset");
    }
    Ok(ResetSummary {
        to: format_rfc3339(to_ms),
        keys_deleted: deleted,
        offsets: offsets.into_iter().collect(),
    })
}
