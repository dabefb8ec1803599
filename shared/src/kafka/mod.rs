//! Kafka helpers both consumers need: client settings, the events-topic check, the
//! dead-letter topic, partition end offsets from librdkafka's statistics, and the consumer
//! group watchdog ([`group`]).

pub mod group;

pub use group::{ALONE_FOR, GroupAction, GroupWatch, Membership, MembershipEvent};

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
    #[error("kafka admin at {brokers}: {message}")]
    Admin { brokers: String, message: String },
}

/// The client settings every Kafka client of the project starts from.
pub fn client_config(source: &crate::config::SourceConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &source.brokers)
        // New partitions are noticed (and rebalanced) within seconds, not librdkafka's 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000");
    c
}

/// The settings both consumers (speed, archive) start from: their own group, offsets kept by
/// the consumer itself (Redis or the archive state is the commit point; Kafka commits are
/// advisory), reading from the start of a partition nothing was committed for, and
/// statistics every 2 s (partition end offsets, see [`HighWatermarks`]).
pub fn consumer_config(
    source: &crate::config::SourceConfig,
    group: &str,
    session_timeout: Duration,
) -> ClientConfig {
    let mut c = client_config(source);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "2000");
    c
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

/// Partition count of `topic`, `None` when it does not exist.
async fn partitions_if_exists(brokers: &str, topic: &str) -> Result<Option<i32>, TopicError> {
    match topic_partitions(brokers, topic).await {
        Ok(n) => Ok(Some(n)),
        Err(TopicError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes sure `<topic>.dlq` exists with at least `partitions` partitions (the events topic's
/// count, so a dead letter keeps its source partition): created when missing, grown when
/// smaller. A broker without CreatePartitions (Tansu 0.6) keeps the smaller count; dead
/// letters then wrap around its partitions. Returns the DLQ's partition count.
pub async fn ensure_dlq(
    config: &crate::config::Config,
    partitions: i32,
) -> Result<i32, TopicError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let brokers = &config.source.brokers;
    let dlq = config.source.dlq_topic();
    let existing = partitions_if_exists(brokers, &dlq).await?;
    if existing.is_some_and(|n| n >= partitions) {
        return Ok(existing.unwrap_or(partitions));
    }
    let admin_err = |message: String| TopicError::Admin {
        brokers: brokers.clone(),
        message,
    };
    let admin: AdminClient<DefaultClientContext> = client_config(&config.source)
        .create()
        .map_err(|e| admin_err(e.to_string()))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match existing {
        None => {
            let new = NewTopic::new(&dlq, partitions, TopicReplication::Fixed(1));
            let res = admin
                .create_topics([&new], &opts)
                .await
                .map_err(|e| admin_err(format!("create dead-letter topic {dlq}: {e}")))?;
            for r in res {
                match r {
                    Ok(_) => tracing::info!(topic = %dlq, partitions, "created dead-letter topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, code)) => {
                        return Err(admin_err(format!("create dead-letter topic {t}: {code}")));
                    }
                }
            }
            Ok(partitions_if_exists(brokers, &dlq)
                .await?
                .unwrap_or(partitions))
        }
        Some(n) => {
            let grow = NewPartitions::new(&dlq, partitions as usize);
            let grown = match admin.create_partitions([&grow], &opts).await {
                Ok(res) => res.into_iter().all(|r| r.is_ok()),
                Err(_) => false,
            };
            if grown {
                tracing::info!(topic = %dlq, from = n, to = partitions, "grew the dead-letter topic with the events topic");
                Ok(partitions)
            } else {
                tracing::warn!(topic = %dlq, partitions = n, events_partitions = partitions,
                    "cannot grow the dead-letter topic (the broker refused CreatePartitions); dead letters of the new partitions go to its existing ones");
                Ok(n)
            }
        }
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
