//! The two data sources behind the API: the batch views (object store, cached) and the speed
//! layer's Redis. Redis is reached lazily with short timeouts, so a Redis outage slows no
//! request down and the batch part is still served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use object_store::ObjectStore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;
use tributary_batch_layer::read::BatchReader;
use tributary_shared::layout::RedisKeys;
use tributary_shared::series::{Partial, Series};
use tributary_shared::{Config, EventSchema, ViewPlan};
use tributary_speed_layer::read::{SpeedQuery, read, read_totals};

/// How long a Redis connect or command may take before the speed side is reported unreadable.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect, the next attempt waits this long (requests in between fail fast).
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// How long a read speed watermark is reused.
pub const WATERMARK_REFRESH: Duration = Duration::from_millis(100);

/// Rendered points of buckets whose answer can no longer change, per key (the query's shape:
/// view, granularity, filters, group-by, measures, and the source: a batch manifest version,
/// or the speed layer for sealed buckets, which ended at or before the speed watermark) and
/// bucket. Entries expire after a while, so a `speed-layer reset` is seen.
pub struct PointCache {
    shapes: std::sync::Mutex<HashMap<String, Buckets>>,
    ttl: Duration,
    max_entries: usize,
}

/// A key's cached buckets: bucket start → (when cached, points).
type Buckets = HashMap<i64, (Instant, CachedPoints)>;

/// One bucket's points per output group, rendered.
pub type CachedPoints = Arc<Vec<(Vec<Option<String>>, crate::merge::RenderedPoint)>>;

impl PointCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        PointCache {
            shapes: Default::default(),
            ttl,
            max_entries,
        }
    }

    /// The cached entries of `buckets` for one query shape (one lock for all of them).
    pub fn get_many(&self, shape: &str, buckets: &[i64]) -> Vec<Option<CachedPoints>> {
        let guard = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entries) = guard.get(shape) else {
            return vec![None; buckets.len()];
        };
        buckets
            .iter()
            .map(|b| {
                entries
                    .get(b)
                    .filter(|(t, _)| t.elapsed() < self.ttl)
                    .map(|(_, e)| e.clone())
            })
            .collect()
    }

    pub fn put_many(&self, shape: &str, entries: Vec<(i64, CachedPoints)>) {
        if entries.is_empty() {
            return;
        }
        let mut guard = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = guard.values().map(HashMap::len).sum();
        if held + entries.len() > self.max_entries {
            // Cheap bound: drop the expired, and everything if still full.
            let ttl = self.ttl;
            for e in guard.values_mut() {
                e.retain(|_, (t, _)| t.elapsed() < ttl);
            }
            guard.retain(|_, e| !e.is_empty());
            if guard.values().map(HashMap::len).sum::<usize>() + entries.len() > self.max_entries {
                guard.clear();
            }
        }
        let now = Instant::now();
        let shape_entries = match guard.get_mut(shape) {
            Some(e) => e,
            None => guard.entry(shape.to_string()).or_default(),
        };
        for (b, e) in entries {
            shape_entries.insert(b, (now, e));
        }
    }
}

/// The speed watermark as last read, and when.
#[derive(Default)]
struct WatermarkSlot {
    read_at: Option<Instant>,
    value: Option<i64>,
}

pub struct Sources {
    pub points: PointCache,
    pub config: Config,
    pub views: Vec<ViewPlan>,
    pub keys: RedisKeys,
    pub store: Arc<dyn ObjectStore>,
    pub batch: BatchReader,
    redis_url: String,
    redis: Mutex<RedisSlot>,
    watermark: std::sync::Mutex<WatermarkSlot>,
    inflight: std::sync::Mutex<HashMap<String, SharedRead>>,
}

/// A speed read several identical requests wait on.
type SharedRead = Shared<BoxFuture<'static, Result<Arc<Series>, SourceError>>>;

#[derive(Default)]
struct RedisSlot {
    con: Option<ConnectionManager>,
    last_failure: Option<Instant>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("redis unavailable: {0}")]
    Redis(String),
}

impl Sources {
    pub fn new(config: Config) -> anyhow::Result<Sources> {
        let schema = EventSchema::from_config(&config);
        let views = ViewPlan::compile_all(&config, &schema)?;
        let store = tributary_shared::store::open_store(&config.store)
            .map_err(|e| anyhow::anyhow!("store.url: {e}"))?;
        let redis_url = tributary_speed_layer::redis_url(&config)?;
        Ok(Sources {
            points: PointCache::new(Duration::from_secs(300), 200_000),
            keys: RedisKeys::new(config.redis.key_prefix.clone()),
            batch: BatchReader::new(store.clone(), Duration::from_secs(1)),
            store,
            views,
            redis_url,
            redis: Mutex::new(RedisSlot::default()),
            watermark: Default::default(),
            inflight: Default::default(),
            config,
        })
    }

    pub fn view(&self, name: &str) -> Option<&ViewPlan> {
        self.views.iter().find(|v| v.name == name)
    }

    pub fn view_names(&self) -> Vec<String> {
        self.views.iter().map(|v| v.name.clone()).collect()
    }

    /// A Redis connection (a cheap clone of the shared, auto-reconnecting manager).
    pub async fn redis(&self) -> Result<ConnectionManager, SourceError> {
        let mut slot = self.redis.lock().await;
        if let Some(c) = &slot.con {
            return Ok(c.clone());
        }
        if slot.last_failure.is_some_and(|t| t.elapsed() < REDIS_RETRY) {
            return Err(SourceError::Redis(
                "not connected (retrying every second)".into(),
            ));
        }
        let attempt = async {
            let client = redis::Client::open(self.redis_url.as_str())?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT))
                .set_number_of_retries(1);
            client.get_connection_manager_with_config(cfg).await
        };
        match tokio::time::timeout(REDIS_TIMEOUT * 2, attempt).await {
            Ok(Ok(c)) => {
                slot.con = Some(c.clone());
                slot.last_failure = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                slot.last_failure = Some(Instant::now());
                Err(SourceError::Redis(e.to_string()))
            }
            Err(_) => {
                slot.last_failure = Some(Instant::now());
                Err(SourceError::Redis("connect timed out".into()))
            }
        }
    }

    /// The speed layer's event-time watermark (minimum over partitions); `None` when Redis is
    /// unreadable or no consumer has published progress. Re-read at most every
    /// [`WATERMARK_REFRESH`]: it only decides which speed buckets are sealed, and a bucket read
    /// as open a moment longer than needed is still right.
    pub async fn speed_watermark(&self) -> Option<i64> {
        {
            let slot = self.watermark.lock().unwrap_or_else(|e| e.into_inner());
            if slot
                .read_at
                .is_some_and(|t| t.elapsed() < WATERMARK_REFRESH)
            {
                return slot.value;
            }
        }
        let keys = self.keys.clone();
        let topic = self.config.source.topic.clone();
        let progress = self
            .with_redis(|mut con| async move {
                tributary_speed_layer::read::progress(&mut con, &keys, &topic)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        // An unreadable Redis is not remembered: the next request asks again (or fails fast
        // in `redis()` while the reconnect waits).
        let progress = progress.ok()?;
        let value = progress
            .values()
            .filter_map(|p| p.get("watermark_ms").and_then(|w| w.as_i64()))
            .min();
        let mut slot = self.watermark.lock().unwrap_or_else(|e| e.into_inner());
        *slot = WatermarkSlot {
            read_at: Some(Instant::now()),
            value,
        };
        value
    }

    /// A speed-layer series read (see `tributary_speed_layer::read::read`). Identical reads
    /// (same `key`: query shape and buckets) that overlap in time share one Redis read: many
    /// dashboards polling the same chart cost Redis one read per round, not one per viewer.
    /// A request never gets an answer read before the previous identical read finished.
    pub async fn speed_series(
        &self,
        key: String,
        view: &ViewPlan,
        q: SpeedQuery,
    ) -> Result<Arc<Series>, SourceError> {
        let con = self.redis().await?;
        let read = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&key) {
                Some(read) => read.clone(),
                None => {
                    let (keys, view) = (self.keys.clone(), view.clone());
                    let read = async move {
                        let mut con = con;
                        match tokio::time::timeout(
                            REDIS_TIMEOUT * 4,
                            read(&mut con, &keys, &view, &q),
                        )
                        .await
                        {
                            Ok(Ok(series)) => Ok(Arc::new(series)),
                            Ok(Err(e)) => Err(SourceError::Redis(e.to_string())),
                            Err(_) => Err(SourceError::Redis("read timed out".into())),
                        }
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key.clone(), read.clone());
                    read
                }
            }
        };
        let out = read.clone().await;
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&key).is_some_and(|r| r.ptr_eq(&read)) {
            inflight.remove(&key);
        }
        out
    }

    /// Mergeable speed-layer totals per group (see `tributary_speed_layer::read::read_totals`).
    pub async fn speed_totals(
        &self,
        view: &ViewPlan,
        q: SpeedQuery,
    ) -> Result<BTreeMap<Vec<Option<String>>, Partial>, SourceError> {
        let (keys, view) = (self.keys.clone(), view.clone());
        self.with_redis(|mut con| async move {
            read_totals(&mut con, &keys, &view, &q)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Runs a Redis read with the timeout; any failure reads as "unavailable".
    pub async fn with_redis<T, F, Fut>(&self, f: F) -> Result<T, SourceError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let con = self.redis().await?;
        match tokio::time::timeout(REDIS_TIMEOUT * 4, f(con)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SourceError::Redis(e)),
            Err(_) => Err(SourceError::Redis("read timed out".into())),
        }
    }
}
