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

/// Notices a consumer group that stopped handing some partition to anyone, and says what to
/// do about it.
///
/// Brokers are not perfect: Tansu 0.6 (the local stack's) keeps a member that expired on the
/// heartbeat path in its assignment and hands the survivors their old, possibly empty,
/// assignment forever; a LeaveGroup resets that. Worse, after a new member joins such a group
/// it can wait forever for a leader that is gone, and then nothing a client sends helps (only
/// a broker restart). So each consumer watches the group's committed offsets (both consumers
/// commit after every flush): a partition it does not own, with records nobody has read,
/// whose committed offset has not moved for `stall_after` is stalled. The first answers are
/// [`GroupAction::Rejoin`] (leave the group, join again); when rejoining did not help twice,
/// [`GroupAction::AssignAll`]: read every partition without the group for a while (exactly
/// once still holds: every write is fenced by the offsets or state it was read from), then
/// [`GroupAction::BackToGroup`]. Harmless on a healthy broker: an owner that makes progress
/// commits, and an idle partition has nothing unread.
#[derive(Debug)]
pub struct GroupWatch {
    topic: String,
    stall_after: Duration,
    /// Per partition: the committed offset last seen and since when it has not moved.
    seen: HashMap<i32, (i64, std::time::Instant)>,
    /// Rejoins in a row that did not end the stall.
    rejoins: u32,
    /// Reading every partition without the group since then.
    alone_since: Option<std::time::Instant>,
}

/// What a consumer should do about its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    Nothing,
    /// Leave the group and join it again (these partitions stalled).
    Rejoin(Vec<i32>),
    /// Rejoining did not help: leave the group and assign every partition to itself.
    AssignAll(Vec<i32>),
    /// Enough time without the group: give its partitions back and join it again.
    BackToGroup,
}

/// How long a consumer reads every partition by itself before trying the group again.
pub const ALONE_FOR: Duration = Duration::from_secs(300);

impl GroupWatch {
    pub fn new(topic: impl Into<String>, stall_after: Duration) -> Self {
        GroupWatch {
            topic: topic.into(),
            stall_after,
            seen: HashMap::new(),
            rejoins: 0,
            alone_since: None,
        }
    }

    /// Whether the consumer reads every partition by itself (not through the group).
    pub fn alone(&self) -> bool {
        self.alone_since.is_some()
    }

    /// The next thing to do, given the partitions this consumer owns. Blocking (metadata and
    /// offset requests with short timeouts): call it from `block_in_place` every few seconds.
    pub fn check<C: rdkafka::consumer::ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        owned: &std::collections::HashSet<i32>,
    ) -> GroupAction {
        if let Some(since) = self.alone_since {
            if since.elapsed() >= ALONE_FOR {
                self.alone_since = None;
                self.seen.clear();
                return GroupAction::BackToGroup;
            }
            return GroupAction::Nothing;
        }
        let stalled = self.stalled(consumer, owned);
        if stalled.is_empty() {
            return GroupAction::Nothing;
        }
        self.seen.clear();
        if self.rejoins < 2 {
            self.rejoins += 1;
            GroupAction::Rejoin(stalled)
        } else {
            self.rejoins = 0;
            self.alone_since = Some(std::time::Instant::now());
            GroupAction::AssignAll(stalled)
        }
    }

    /// The partitions that stalled: not owned, records unread, committed offset unmoved for
    /// `stall_after`. A partition that moved clears the count of rejoins.
    fn stalled<C: rdkafka::consumer::ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        owned: &std::collections::HashSet<i32>,
    ) -> Vec<i32> {
        let timeout = Duration::from_secs(5);
        let Ok(meta) = consumer.fetch_metadata(Some(&self.topic), timeout) else {
            return Vec::new();
        };
        let partitions: Vec<i32> = meta
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let Ok(committed) = consumer.committed_offsets(tpl, timeout) else {
            return Vec::new();
        };
        let now = std::time::Instant::now();
        let mut stalled = Vec::new();
        let mut unread = false;
        for e in committed.elements() {
            let p = e.partition();
            let Ok((low, high)) = consumer.fetch_watermarks(&self.topic, p, timeout) else {
                continue;
            };
            let at = match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => low,
            };
            let entry = self.seen.entry(p).or_insert((at, now));
            if entry.0 != at {
                *entry = (at, now);
            }
            if !owned.contains(&p) && at < high {
                unread = true;
                if now.duration_since(entry.1) >= self.stall_after {
                    stalled.push(p);
                }
            }
        }
        if !unread {
            // Every partition others own is read to its end: the group works.
            self.rejoins = 0;
        }
        stalled
    }

    /// Every partition of the topic (for [`GroupAction::AssignAll`]).
    pub fn partitions<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
    ) -> Vec<i32> {
        consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            })
            .unwrap_or_default()
    }
}
