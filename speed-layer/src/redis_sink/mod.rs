//! Writes flushes to Redis, one atomic Lua script per view: the view's offsets are compared and
//! set in the same script that applies its aggregates, so a flush is applied entirely or not
//! at all, exactly once, and a consumer that lost its partitions is fenced off.

use std::time::Duration;

use tributary_shared::layout::RedisKeys;
use tributary_shared::redis_client::{RedisClient, RedisConnectError, RedisConnection};
use tributary_shared::view::ViewPlan;

use crate::aggregate::{Flush, ViewInputs};
use crate::watermark::Stored;

mod args;

use args::{build_args, hll_pipeline};

/// Applies one view's flush. KEYS: the view's offsets hash, epoch, rebuild hash, stats and
/// flush counter.
/// ARGV: the epoch this consumer holds, now (ms), the partition count, (partition, expected,
/// new) triples, then ops until the end: `I key field n` HINCRBY · `F key field x`
/// HINCRBYFLOAT · `m`/`M key field x` keep min/max · `S key member` SADD · `A key n m1..mn`
/// SADD many · `X key ms` PEXPIREAT · `D key` DEL.
///
/// Redis does not roll back a script that fails halfway, so everything that could fail is
/// checked before the first write: the epoch (`LOST` when the view's state is gone, `FENCED`
/// when another process rebuilt it), every partition's offset (`FENCED` when another consumer
/// moved on), and every float increment (`REFUSED` if a sum would leave the finite range;
/// events cannot make that happen, see `MAX_MAGNITUDE`, so it means the state was tampered
/// with). Then the data, then the offsets and the flush counter, then: if a rebuild is
/// running and every partition has reached its target, the rebuild record is deleted.
const APPLY_LUA: &str = include_str!("apply.lua");

/// Members per SADD op: Lua's `unpack` has a stack limit.
const SADD_CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Another consumer moved the partitions on, or another process rebuilt the view.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The view's state is gone from Redis: it must be rebuilt.
    #[error("the view's state is gone from redis: {0}")]
    Lost(String),
    /// The flush does not fit what Redis holds (tampered state): the view must be rebuilt.
    #[error("refused: {0}")]
    Refused(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl SinkError {
    fn classify(e: redis::RedisError) -> SinkError {
        let text = e.to_string();
        if text.contains("FENCED") {
            SinkError::Fenced(text)
        } else if text.contains("LOST") {
            SinkError::Lost(text)
        } else if text.contains("REFUSED") {
            SinkError::Refused(text)
        } else {
            SinkError::Redis(e)
        }
    }

    /// Worth retrying as is (Redis unreachable, loading, read-only during a failover, out of
    /// memory), as opposed to a refusal that needs the consumer to reload or rebuild first.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Fenced(_) | SinkError::Lost(_) | SinkError::Refused(_) => false,
            SinkError::Redis(e) => {
                let text = e.to_string();
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || [
                        "LOADING",
                        "READONLY",
                        "OOM",
                        "BUSY",
                        "TRYAGAIN",
                        "CLUSTERDOWN",
                        "MASTERDOWN",
                    ]
                    .iter()
                    .any(|k| text.contains(k))
            }
        }
    }
}

/// The Redis side of the speed layer (cheap to clone: one shared, reconnecting connection).
#[derive(Clone)]
pub struct RedisSink {
    con: RedisConnection,
    script: redis::Script,
    keys: RedisKeys,
    topic: String,
    retention_ms: i64,
}

impl RedisSink {
    pub async fn connect(
        client: &RedisClient,
        keys: RedisKeys,
        topic: String,
        retention: Duration,
    ) -> Result<Self, RedisConnectError> {
        let con = client.connect().await?;
        Ok(RedisSink {
            con,
            script: redis::Script::new(APPLY_LUA),
            keys,
            topic,
            retention_ms: retention.as_millis() as i64,
        })
    }

    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// Applies a flush, view by view (each view atomically).
    /// `epochs[v]` is the epoch this consumer holds for view `v`.
    pub async fn write(
        &mut self,
        flush: &Flush,
        views: &[ViewPlan],
        inputs: &[ViewInputs],
        epochs: &[String],
    ) -> Result<(), SinkError> {
        for vf in &flush.views {
            let (Some(plan), Some(inp), Some(epoch)) =
                (views.get(vf.view), inputs.get(vf.view), epochs.get(vf.view))
            else {
                continue;
            };
            if vf.offsets.is_empty()
                && vf.data.cells.is_empty()
                && vf.data.late_dropped == 0
                && vf.dedup.is_empty()
                && vf.dedup_dropped.is_empty()
            {
                continue;
            }
            // HyperLogLog adds are idempotent, so they need no transaction: a replay after a
            // crash, or a fenced consumer, adds elements that are there anyway. Plain
            // pipelined PFADDs cost Redis far less than the same adds inside the script.
            if let Some(pipe) = hll_pipeline(&self.keys, self.retention_ms, vf, plan, inp) {
                pipe.query_async::<()>(&mut self.con).await?;
            }
            let args = build_args(&self.keys, &self.topic, self.retention_ms, vf, plan, inp);
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(self.keys.offsets(&plan.name, &self.topic))
                .key(self.keys.epoch(&plan.name))
                .key(self.keys.rebuild(&plan.name))
                .key(self.keys.view_stats(&plan.name))
                .key(self.keys.flushes(&plan.name))
                .arg(epoch)
                .arg(chrono::Utc::now().timestamp_millis());
            for a in args {
                invocation.arg(a);
            }
            invocation
                .invoke_async::<()>(&mut self.con)
                .await
                .map_err(SinkError::classify)?;
        }
        Ok(())
    }

    /// Loads what Redis holds for (view, partition) offsets.
    pub async fn load_offsets(
        &mut self,
        view: &str,
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<Option<Stored>>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.keys.offsets(view, &self.topic);
        let fields: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&fields)
            .query_async(&mut self.con)
            .await?;
        Ok(values
            .iter()
            .map(|v| v.as_deref().and_then(Stored::parse))
            .collect())
    }

    /// Loads the event-id hashes of the producer-duplicate filter for some slots of a partition.
    pub async fn load_dedup(
        &mut self,
        view: &str,
        partition: i32,
        slots: std::ops::RangeInclusive<i64>,
    ) -> redis::RedisResult<Vec<(i64, Vec<u64>)>> {
        let slots: Vec<i64> = slots.collect();
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for s in &slots {
            pipe.smembers(self.keys.dedup(view, &self.topic, partition, *s));
        }
        let sets: Vec<Vec<u64>> = pipe.query_async(&mut self.con).await?;
        Ok(slots.into_iter().zip(sets).collect())
    }

    /// A handle on the sink's connection (shared, reconnecting).
    pub fn connection(&self) -> RedisConnection {
        self.con.clone()
    }

    /// Records the events topic's partition count (see `RedisKeys::topic_partitions`).
    pub async fn set_topic_partitions(&mut self, n: i32) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(self.keys.topic_partitions(&self.topic))
            .arg(n)
            .query_async(&mut self.con)
            .await
    }

    /// Counts DLQ records by reason code.
    pub async fn count_dlq(&mut self, by_code: &[(&'static str, u64)]) -> redis::RedisResult<()> {
        if by_code.is_empty() {
            return Ok(());
        }
        let key = self.keys.speed_stats(&self.topic);
        let mut pipe = redis::pipe();
        for (code, n) in by_code {
            pipe.hincr(&key, crate::stats::dlq_field(code), *n).ignore();
        }
        pipe.query_async::<()>(&mut self.con).await
    }
}

/// The view's epoch, created when there is none: for writers that are not consumers (`replay`
/// of a file), which have no Kafka offsets to rebuild from.
pub async fn epoch_or_create<C: redis::aio::ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &str,
) -> redis::RedisResult<String> {
    let fresh = format!(
        "{}-replay-{:08x}",
        chrono::Utc::now().timestamp_millis(),
        rand::random::<u32>()
    );
    let _: Option<String> = redis::cmd("SET")
        .arg(keys.epoch(view))
        .arg(&fresh)
        .arg("NX")
        .query_async(con)
        .await?;
    redis::cmd("GET")
        .arg(keys.epoch(view))
        .query_async(con)
        .await
}

/// Refuses a Redis that may evict keys: every data key has a TTL, so even the `volatile-*`
/// policies would drop aggregates (and offsets with them) under memory pressure, silently.
/// On a Cluster, every master is asked (each has its own settings).
pub async fn check_no_eviction(client: &RedisClient) -> Result<(), EvictionError> {
    for (node, mut con) in client.masters().await? {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut con)
            .await?;
        let policy = info
            .lines()
            .find_map(|l| l.strip_prefix("maxmemory_policy:"))
            .map(|p| p.trim().to_string())
            .unwrap_or_default();
        if policy != "noeviction" {
            return Err(EvictionError::Policy { node, policy });
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum EvictionError {
    #[error(
        "maxmemory-policy is {policy:?} on {node}: Redis could evict the speed layer's keys and silently lose counts. \
         Set it to noeviction (`CONFIG SET maxmemory-policy noeviction`, and `maxmemory-policy noeviction` \
         in redis.conf; on a managed Redis, in its parameter group) and size maxmemory for the retention"
    )]
    Policy { node: String, policy: String },
    #[error("cannot read its memory settings (INFO memory): {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Connect(#[from] RedisConnectError),
}
