//! Partition assignment: the consumer context seeks newly assigned partitions to the offsets
//! stored in Redis (the same transaction as the aggregates), so a rebalance never applies a
//! record twice or skips one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tributary_shared::kafka::HighWatermarks;
use tributary_shared::layout::RedisKeys;

use crate::watermark::{PartitionProgress, Stored};

/// Partitions assigned by the last rebalance, with the progress Redis held for them.
#[derive(Default)]
pub struct Assignment {
    pub generation: u64,
    pub partitions: HashMap<i32, PartitionProgress>,
    /// Redis could not be read during the rebalance: the loop must load and seek itself.
    pub reload: bool,
}

/// Consumer context: seeks newly assigned partitions to the offsets stored in Redis.
pub struct SpeedContext {
    pub redis: tributary_shared::redis_client::RedisClient,
    pub keys: RedisKeys,
    pub topic: String,
    pub views: Vec<String>,
    pub assignment: Arc<Mutex<Assignment>>,
    pub high_watermarks: HighWatermarks,
    pub dedup: bool,
}

impl SpeedContext {
    /// Runs inside the rebalance callback, so it uses a short blocking Redis connection.
    fn load_sync(&self, partitions: &[i32]) -> redis::RedisResult<HashMap<i32, PartitionProgress>> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let mut con = self.redis.blocking()?;
        let mut per_view = Vec::with_capacity(self.views.len());
        let fields: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
        for v in &self.views {
            let values: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.offsets(v, &self.topic))
                .arg(&fields)
                .query(&mut *con)?;
            per_view.push(values);
        }
        Ok(progress_from(partitions, &per_view))
    }
}

impl SpeedContext {
    /// The progress Redis holds for `partitions`, and whether the loop must still load it
    /// itself (Redis unreadable now, or the duplicate filter's ids to load).
    pub fn load(&self, partitions: &[i32]) -> (HashMap<i32, PartitionProgress>, bool) {
        match self.load_sync(partitions) {
            Ok(progress) => (progress, self.dedup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read offsets from redis; will retry");
                let unknown = vec![Vec::new(); self.views.len()];
                (progress_from(partitions, &unknown), true)
            }
        }
    }

    /// A `TopicPartitionList` of `partitions`, each at the offset Redis holds (or where the
    /// group left it when Redis holds none).
    pub fn positions(
        &self,
        partitions: &[i32],
        progress: &HashMap<i32, PartitionProgress>,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let at = progress
                .get(p)
                .and_then(PartitionProgress::resume_offset)
                .map_or(Offset::Stored, Offset::Offset);
            let _ = tpl.add_partition_offset(&self.topic, *p, at);
        }
        tpl
    }
}

/// Per partition, the progress of every view from what Redis returned (`per_view[v][i]` is
/// view `v`'s stored value for `partitions[i]`).
pub fn progress_from(
    partitions: &[i32],
    per_view: &[Vec<Option<String>>],
) -> HashMap<i32, PartitionProgress> {
    partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stored = per_view
                .iter()
                .map(|vals| {
                    vals.get(i)
                        .and_then(|v| v.as_deref())
                        .and_then(Stored::parse)
                })
                .collect();
            (*p, PartitionProgress::new(stored))
        })
        .collect()
}

impl ClientContext for SpeedContext {
    fn stats(&self, statistics: Statistics) {
        self.high_watermarks.record(&statistics, &self.topic);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::error!(%error, reason, "librdkafka");
    }
}

impl ConsumerContext for SpeedContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let Ok(mut state) = self.assignment.lock() else {
            return;
        };
        state.generation += 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let (progress, reload) = self.load(&partitions);
                for (p, pp) in &progress {
                    if let Some(o) = pp.resume_offset() {
                        let _ = tpl.set_partition_offset(&self.topic, *p, Offset::Offset(o));
                    }
                }
                state.partitions = progress;
                state.reload = reload;
                tracing::info!(?partitions, "partitions assigned");
                if let Err(e) = base.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            _ => {
                tracing::info!("partitions revoked");
                state.partitions.clear();
                if let Err(e) = base.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
        }
    }
}
