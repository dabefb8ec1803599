//! Rebuilding a view's Redis state from Kafka: after Redis lost it (a restart without
//! persistence, a failover, `FLUSHALL`), on the first start, or on an operator's `reset`.
//!
//! Every flush checks the view's epoch key (see `redis_sink`); when it is gone the flush is
//! refused and the consumer calls [`Rebuilder::ensure`]. One process rebuilds (a lock key in
//! the view's slot), the others wait for the new epoch:
//! 1. the view's keys are deleted (whatever survived is not trusted);
//! 2. it restarts at `from`: the batch horizon (buckets before it are served by the batch
//!    view), or the start of retention when there is no batch view yet, floored to the view's
//!    coarsest bucket so no bucket the speed layer serves is rebuilt half;
//! 3. each partition's offset is set to the first record produced at or after
//!    `from - allowed_lateness - max_future_skew` (Kafka's offsets-for-times) with the
//!    newest event time `from + allowed_lateness`, so the watermark starts at `from`: earlier
//!    events are dropped as late (none of them lands in a bucket before `from`, which would
//!    be a bucket rebuilt in part) and later ones applied once; its end offset becomes the
//!    rebuild's target;
//! 4. one script writes the offsets, the rebuild record and the new epoch, atomically.
//!
//! Consumers then find their flushes fenced (new epoch, new offsets), reload and seek. The
//! flush that brings the last partition to its target deletes the rebuild record; until then
//! the serving layer answers the view's speed buckets as `rebuilding`.

use std::sync::Arc;
use std::time::Duration;

use object_store::{ObjectStore, ObjectStoreExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use redis::aio::ConnectionLike;
use serde::Deserialize;
use tributary_shared::Config;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::layout::{RedisKeys, paths};
use tributary_shared::redis_client::{RedisClient, RedisConnectError};
use tributary_shared::view::ViewPlan;

/// How long one process may hold a view's rebuild lock (it is released at the end).
const LOCK_TTL: Duration = Duration::from_secs(120);

/// Sets the view's new state atomically. KEYS: offsets, epoch, rebuild, lock. ARGV: lock
/// token, new epoch, from_ms, started_ms, reason, each partition's newest event time, then
/// (partition, start offset, target) triples.
const INIT_LUA: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return redis.error_reply('NOLOCK the rebuild lock was lost')
end
redis.call('DEL', KEYS[1], KEYS[3])
local targets = {}
local i = 7
while i <= #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. ':' .. ARGV[6])
  if tonumber(ARGV[i + 2]) > tonumber(ARGV[i + 1]) then
    table.insert(targets, 't:' .. ARGV[i])
    table.insert(targets, ARGV[i + 2])
  end
  i = i + 3
end
if #targets > 0 then
  redis.call('HSET', KEYS[3], 'epoch', ARGV[2], 'from_ms', ARGV[3], 'started_ms', ARGV[4],
    'reason', ARGV[5], unpack(targets))
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[4])
return 'OK'
"#;

/// Why a view is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The epoch key is gone: Redis lost the view's data, or the view never had any.
    Lost,
    /// `speed-layer reset --to T`.
    Reset,
    /// A flush was refused as inconsistent with what Redis holds.
    Corrupt,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Lost => "lost",
            Reason::Reset => "reset",
            Reason::Corrupt => "corrupt",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Connect(#[from] RedisConnectError),
    #[error("kafka at {brokers}: {message}")]
    Kafka { brokers: String, message: String },
    #[error(
        "view {view}: another process has held the rebuild lock for over {secs} s without finishing"
    )]
    Stuck { view: String, secs: u64 },
}

/// What a finished rebuild set up (for logs and `reset`'s summary).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rebuilt {
    pub view: String,
    pub epoch: String,
    pub from: String,
    pub keys_deleted: u64,
    /// partition → (first offset read again, offset to reach).
    pub offsets: std::collections::BTreeMap<i32, (i64, i64)>,
}

/// The part of a manifest the speed layer needs.
#[derive(Deserialize)]
struct ManifestHorizon {
    horizon_ms: Option<i64>,
}

/// Rebuilds views of one topic.
pub struct Rebuilder {
    config: Config,
    keys: RedisKeys,
    store: Option<Arc<dyn ObjectStore>>,
    /// For `SCAN`, which walks one node: every master of a Cluster is scanned.
    redis: RedisClient,
}

impl Rebuilder {
    pub fn new(config: &Config) -> Result<Self, RedisConnectError> {
        let store = match tributary_shared::store::open_store(&config.store) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "store.url: cannot open the store; rebuilds start at the retention start");
                None
            }
        };
        Ok(Rebuilder {
            keys: RedisKeys::new(config.redis.key_prefix.clone()),
            config: config.clone(),
            store,
            redis: RedisClient::new(&config.redis)?,
        })
    }

    /// The view's epoch; when it has none, rebuilds the view first (or waits for the process
    /// that does).
    pub async fn ensure<C: ConnectionLike>(
        &self,
        con: &mut C,
        view: &ViewPlan,
        reason: Reason,
    ) -> Result<String, RebuildError> {
        let epoch: Option<String> = redis::cmd("GET")
            .arg(self.keys.epoch(&view.name))
            .query_async(con)
            .await?;
        if let Some(e) = epoch {
            return Ok(e);
        }
        Ok(self.rebuild(con, view, reason, None).await?.epoch)
    }

    /// Rebuilds the view from `from_ms` (default: the batch horizon or the retention start),
    /// unless another process is doing it, in which case its result is awaited.
    pub async fn rebuild<C: ConnectionLike>(
        &self,
        con: &mut C,
        view: &ViewPlan,
        reason: Reason,
        from_ms: Option<i64>,
    ) -> Result<Rebuilt, RebuildError> {
        let name = &view.name;
        let token = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let waited = std::time::Instant::now();
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(self.keys.rebuild_lock(name))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .query_async(con)
                .await?;
            if got.is_some() {
                break;
            }
            // Someone else rebuilds: wait for its epoch (a lost-state rebuild is done once).
            if reason == Reason::Lost {
                let epoch: Option<String> = redis::cmd("GET")
                    .arg(self.keys.epoch(name))
                    .query_async(con)
                    .await?;
                if let Some(epoch) = epoch {
                    return Ok(Rebuilt {
                        view: name.clone(),
                        epoch,
                        from: String::new(),
                        keys_deleted: 0,
                        offsets: Default::default(),
                    });
                }
            }
            if waited.elapsed() > LOCK_TTL * 2 {
                return Err(RebuildError::Stuck {
                    view: name.clone(),
                    secs: waited.elapsed().as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let from = match from_ms {
            Some(t) => t,
            None => self.default_from(view, now).await,
        };
        let from = view
            .granularities
            .iter()
            .max()
            .map_or(from, |g| g.floor(from));
        // The epoch goes first: every flush of the old state is refused from here on.
        redis::cmd("DEL")
            .arg(self.keys.epoch(name))
            .query_async::<()>(con)
            .await?;
        let keys_deleted = self.delete_view_keys(name).await?;
        let lateness = self.config.speed.allowed_lateness.as_millis() as i64;
        let skew = self.config.speed.max_future_skew.as_millis() as i64;
        let offsets = self.offsets_from(from - lateness - skew).await?;
        let epoch = format!("{now}-{:08x}", rand::random::<u32>());
        let script = redis::Script::new(INIT_LUA);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.offsets(name, &self.config.source.topic))
            .key(self.keys.epoch(name))
            .key(self.keys.rebuild(name))
            .key(self.keys.rebuild_lock(name))
            .arg(&token)
            .arg(&epoch)
            .arg(from)
            .arg(now)
            .arg(reason.as_str())
            .arg(from.saturating_add(lateness));
        for (p, (start, target)) in &offsets {
            invocation.arg(*p).arg(*start).arg(*target);
        }
        invocation.invoke_async::<()>(con).await?;
        let remaining: i64 = offsets.values().map(|(s, t)| (t - s).max(0)).sum();
        tracing::warn!(
            view = %name,
            reason = reason.as_str(),
            from = %format_rfc3339(from),
            %epoch,
            keys_deleted,
            offsets_to_apply = remaining,
            "rebuilding the view's speed state from Kafka"
        );
        Ok(Rebuilt {
            view: name.clone(),
            epoch,
            from: format_rfc3339(from),
            keys_deleted,
            offsets,
        })
    }

    /// The batch horizon, or the start of retention when there is none (or it is older).
    async fn default_from(&self, view: &ViewPlan, now: i64) -> i64 {
        let retention_start = now - self.config.speed.retention.as_millis() as i64;
        let horizon = match &self.store {
            Some(store) => match store.get(&paths::view_manifest(&view.name)).await {
                Ok(r) => match r.bytes().await {
                    Ok(b) => serde_json::from_slice::<ManifestHorizon>(&b)
                        .ok()
                        .and_then(|m| m.horizon_ms),
                    Err(e) => {
                        tracing::warn!(view = %view.name, error = %e, "cannot read the batch manifest; rebuilding from the retention start");
                        None
                    }
                },
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => {
                    tracing::warn!(view = %view.name, error = %e, "cannot read the batch manifest; rebuilding from the retention start");
                    None
                }
            },
            None => None,
        };
        horizon.map_or(retention_start, |h| h.max(retention_start))
    }

    /// Deletes every key of the view but its rebuild lock (SCAN, so Redis never blocks), on
    /// every master: on a Cluster the view's keys share one slot, so one master holds them,
    /// but which one can change.
    async fn delete_view_keys(&self, view: &str) -> Result<u64, RebuildError> {
        let mut deleted = 0;
        for (_, mut con) in self.redis.masters().await? {
            deleted += self.delete_view_keys_on(&mut con, view).await?;
        }
        Ok(deleted)
    }

    async fn delete_view_keys_on<C: ConnectionLike>(
        &self,
        con: &mut C,
        view: &str,
    ) -> Result<u64, RebuildError> {
        let pattern = format!("{}:*", self.keys.view(view));
        let lock = self.keys.rebuild_lock(view);
        let mut cursor = 0u64;
        let mut deleted = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(con)
                .await?;
            let batch: Vec<String> = batch.into_iter().filter(|k| *k != lock).collect();
            if !batch.is_empty() {
                let n: u64 = redis::cmd("UNLINK").arg(&batch).query_async(con).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Per partition of the topic: the first offset produced at or after `ts_ms`, and the
    /// partition's end offset now.
    async fn offsets_from(
        &self,
        ts_ms: i64,
    ) -> Result<std::collections::BTreeMap<i32, (i64, i64)>, RebuildError> {
        let brokers = self.config.source.brokers.clone();
        let topic = self.config.source.topic.clone();
        let client = tributary_shared::kafka::client_config(&self.config.source);
        let err = |message: String| RebuildError::Kafka {
            brokers: brokers.clone(),
            message,
        };
        let found = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let consumer: BaseConsumer = client.create().map_err(|e| e.to_string())?;
            let timeout = Duration::from_secs(15);
            let meta = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| format!("metadata of {topic}: {e}"))?;
            let partitions: Vec<i32> = meta
                .topics()
                .first()
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(ts_ms.max(0)))
                    .map_err(|e| e.to_string())?;
            }
            let found = consumer
                .offsets_for_times(tpl, timeout)
                .map_err(|e| format!("offsets for times on {topic}: {e}"))?;
            let mut out = std::collections::BTreeMap::new();
            for e in found.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, e.partition(), timeout)
                    .map_err(|x| format!("end offset of {topic}/{}: {x}", e.partition()))?;
                // No record that late: start at the end. (Tansu 0.6 answers offset 0 instead;
                // reading from further back is slower but still right: the watermark set
                // from `from` drops the older events as late.)
                let start = match e.offset() {
                    Offset::Offset(o) => o.clamp(low, high),
                    _ => high,
                };
                out.insert(e.partition(), (start, high));
            }
            Ok(out)
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(err)?;
        Ok(found)
    }
}
