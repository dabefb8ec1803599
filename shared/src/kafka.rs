//! Kafka helpers both consumers need: the events-topic check and partition end offsets from
//! librdkafka's statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::statistics::Statistics;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot read metadata from kafka at {brokers}: {source}")]
    Metadata {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "the events topic {topic:?} does not exist on {brokers}; create it first (topics are not auto-created)"
    )]
    Missing { topic: String, brokers: String },
    #[error("metadata probe failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Number of partitions of `topic`, or a clear error naming it when it does not exist.
pub async fn topic_partitions(brokers: &str, topic: &str) -> Result<i32, TopicError> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    let meta = tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create()?;
        probe.fetch_metadata(Some(&t), Duration::from_secs(10))
    })
    .await?
    .map_err(|source| TopicError::Metadata {
        brokers: brokers.to_string(),
        source,
    })?;
    match meta.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(TopicError::Missing {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        }),
    }
}

/// End offset of each partition of one topic, fed by the `stats` callback
/// (`statistics.interval.ms`), read by the consumer loops for lag and idleness.
#[derive(Debug, Clone, Default)]
pub struct HighWatermarks(Arc<Mutex<HashMap<i32, i64>>>);

impl HighWatermarks {
    /// Records the end offsets a statistics report gives for `topic`.
    pub fn record(&self, statistics: &Statistics, topic: &str) {
        let (Some(t), Ok(mut hw)) = (statistics.topics.get(topic), self.0.lock()) else {
            return;
        };
        for (p, s) in &t.partitions {
            if *p >= 0 && s.hi_offset >= 0 {
                let e = hw.entry(*p).or_insert(s.hi_offset);
                *e = (*e).max(s.hi_offset);
            }
        }
    }

    /// Records an end offset seen another way (the consumer reached the partition's end).
    pub fn observe(&self, partition: i32, end: i64) {
        if let Ok(mut hw) = self.0.lock() {
            let e = hw.entry(partition).or_insert(end);
            *e = (*e).max(end);
        }
    }

    pub fn snapshot(&self) -> HashMap<i32, i64> {
        self.0.lock().map(|h| h.clone()).unwrap_or_default()
    }
}
