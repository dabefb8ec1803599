//! The two data sources behind the API: the batch views (object store, cached) and the speed
//! layer's Redis. Redis is reached lazily with short timeouts, so a Redis outage slows no
//! request down and the batch part is still served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;
use tributary_batch_layer::read::BatchReader;
use tributary_shared::layout::RedisKeys;
use tributary_shared::{Config, EventSchema, ViewPlan};

/// How long a Redis connect or command may take before the speed side is reported unreadable.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect, the next attempt waits this long (requests in between fail fast).
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// Answers of sealed speed buckets (ended at or before the speed watermark, so final), per
/// query shape and bucket. Entries expire after a while so a `speed-layer reset` is seen.
pub struct SealedCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Instant, SealedEntry)>>,
    ttl: Duration,
    max_entries: usize,
}

/// One bucket's points per output group.
pub type SealedEntry = Arc<Vec<(Vec<Option<String>>, tributary_shared::series::Point)>>;

impl SealedCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        SealedCache {
            entries: Default::default(),
            ttl,
            max_entries,
        }
    }

    pub fn get(&self, key: &str) -> Option<SealedEntry> {
        let guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .get(key)
            .filter(|(t, _)| t.elapsed() < self.ttl)
            .map(|(_, e)| e.clone())
    }

    pub fn put(
        &self,
        key: String,
        groups: Vec<(Vec<Option<String>>, tributary_shared::series::Point)>,
    ) {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if guard.len() >= self.max_entries {
            // Cheap bound: drop the expired, and everything if still full.
            let ttl = self.ttl;
            guard.retain(|_, (t, _)| t.elapsed() < ttl);
            if guard.len() >= self.max_entries {
                guard.clear();
            }
        }
        guard.insert(key, (Instant::now(), Arc::new(groups)));
    }
}

pub struct Sources {
    pub sealed: SealedCache,
    pub config: Config,
    pub views: Vec<ViewPlan>,
    pub keys: RedisKeys,
    pub store: Arc<dyn ObjectStore>,
    pub batch: BatchReader,
    redis_url: String,
    redis: Mutex<RedisSlot>,
}

#[derive(Default)]
struct RedisSlot {
    con: Option<ConnectionManager>,
    last_failure: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
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
            sealed: SealedCache::new(Duration::from_secs(300), 200_000),
            keys: RedisKeys::new(config.redis.key_prefix.clone()),
            batch: BatchReader::new(store.clone(), Duration::from_secs(1)),
            store,
            views,
            redis_url,
            redis: Mutex::new(RedisSlot::default()),
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
