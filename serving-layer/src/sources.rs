//! The two data sources behind the API: the batch views (object store, cached) and the speed
//! layer's Redis. Redis is reached lazily with short timeouts, so a Redis outage slows no
//! request down and the batch part is still served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use tokio::sync::Mutex;
use tributary_batch_layer::read::BatchReader;
use tributary_shared::layout::RedisKeys;
use tributary_shared::redis_client::{RedisClient, RedisConnectError, RedisConnection};
use tributary_shared::series::{Partial, Series};
use tributary_shared::{Config, EventSchema, ViewPlan};
use tributary_speed_layer::read::{
    ReadError, SpeedQuery, StateVersion, ViewState, read, read_totals, read_version,
};

use crate::answers::AnswerCache;
use crate::points::PointCache;
use crate::single_flight::SingleFlight;

/// How long a Redis connect or command may take before the speed side is reported unreadable.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connect, the next attempt waits this long (requests in between fail fast).
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// How long a view's state read from Redis is reused.
pub const STATE_REFRESH: Duration = Duration::from_millis(100);

/// A view's state in Redis as last read, and when.
struct StateSlot {
    read_at: Instant,
    state: ViewState,
}

pub struct Sources {
    pub points: PointCache,
    pub answers: AnswerCache,
    pub config: Config,
    pub views: Vec<ViewPlan>,
    pub keys: RedisKeys,
    pub store: Arc<dyn ObjectStore>,
    pub batch: BatchReader,
    redis_client: RedisClient,
    redis: Mutex<RedisSlot>,
    states: std::sync::Mutex<HashMap<String, StateSlot>>,
    reads: SingleFlight<Arc<Series>>,
    versions: SingleFlight<Option<StateVersion>>,
}

#[derive(Default)]
struct RedisSlot {
    con: Option<RedisConnection>,
    last_failure: Option<Instant>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("redis unavailable: {0}")]
    Redis(String),
    /// The view's speed state was lost or is being rebuilt: its buckets are `rebuilding`.
    #[error("the view's speed state is being rebuilt")]
    Rebuilding,
    #[error("{0} groups")]
    TooManyGroups(usize),
}

impl From<ReadError> for SourceError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::StateChanged => SourceError::Rebuilding,
            ReadError::TooManyGroups(n) => SourceError::TooManyGroups(n),
            e => SourceError::Redis(e.to_string()),
        }
    }
}

impl Sources {
    pub fn new(config: Config) -> anyhow::Result<Sources> {
        let schema = EventSchema::from_config(&config);
        let views = ViewPlan::compile_all(&config, &schema)?;
        let store = tributary_shared::store::open_store(&config.store)
            .map_err(|e| anyhow::anyhow!("store.url: {e}"))?;
        let redis_client = RedisClient::with_timeout(&config.redis, REDIS_TIMEOUT)?;
        Ok(Sources {
            // A third of the cache budget for whole answers, two for their parts.
            points: PointCache::new(Duration::from_secs(300), config.serving.cache_size / 3 * 2),
            answers: AnswerCache::new(Duration::from_secs(300), config.serving.cache_size / 3),
            keys: RedisKeys::new(config.redis.key_prefix.clone()),
            batch: BatchReader::new(store.clone(), Duration::from_secs(1)),
            store,
            views,
            redis_client,
            redis: Mutex::new(RedisSlot::default()),
            states: Default::default(),
            reads: Default::default(),
            versions: Default::default(),
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
    pub async fn redis(&self) -> Result<RedisConnection, SourceError> {
        let mut slot = self.redis.lock().await;
        if let Some(c) = &slot.con {
            return Ok(c.clone());
        }
        if slot.last_failure.is_some_and(|t| t.elapsed() < REDIS_RETRY) {
            return Err(SourceError::Redis(
                "not connected (retrying every second)".into(),
            ));
        }
        match self.redis_client.connect().await {
            Ok(c) => {
                slot.con = Some(c.clone());
                slot.last_failure = None;
                Ok(c)
            }
            Err(e) => {
                slot.last_failure = Some(Instant::now());
                Err(SourceError::Redis(e.to_string()))
            }
        }
    }

    /// The start-up check: a wrong credential or an untrusted certificate stops the server
    /// (an operator must fix the config); an unreachable Redis does not (the batch part is
    /// still served, and `/readyz` says what is missing).
    pub async fn check_redis(&self) -> Result<(), RedisConnectError> {
        match self.redis_client.connect().await {
            Ok(_) => Ok(()),
            Err(
                e @ RedisConnectError::Connect {
                    permanent: true, ..
                },
            ) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "redis is not reachable yet; serving the batch part until it is");
                Ok(())
            }
        }
    }

    /// A view's state in Redis: whether speed answers can be trusted (see
    /// `tributary_speed_layer::read::ViewState`), and its watermark. Re-read at most every
    /// [`STATE_REFRESH`]: it only decides which speed buckets are sealed or rebuilding, and
    /// every speed read checks the epoch again itself.
    pub async fn view_state(&self, view: &str) -> Result<ViewState, SourceError> {
        {
            let slots = self.states.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slots.get(view)
                && slot.read_at.elapsed() < STATE_REFRESH
            {
                return Ok(slot.state.clone());
            }
        }
        let keys = self.keys.clone();
        let topic = self.config.source.topic.clone();
        let name = view.to_string();
        // An unreadable Redis is not remembered: the next request asks again (or fails fast
        // in `redis()` while the reconnect waits).
        let state = self
            .with_redis(|mut con| async move {
                tributary_speed_layer::read::read_view_state(&mut con, &keys, &topic, &name)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        let mut slots = self.states.lock().unwrap_or_else(|e| e.into_inner());
        slots.insert(
            view.to_string(),
            StateSlot {
                read_at: Instant::now(),
                state: state.clone(),
            },
        );
        Ok(state)
    }

    /// A speed-layer series read (see `tributary_speed_layer::read::read`). Identical reads
    /// (same `key`: query shape and buckets) that overlap in time share one Redis read (see
    /// [`SingleFlight`]).
    pub async fn speed_series(
        &self,
        key: String,
        view: &ViewPlan,
        q: SpeedQuery,
    ) -> Result<Arc<Series>, SourceError> {
        let con = self.redis().await?;
        let (keys, view) = (self.keys.clone(), view.clone());
        self.reads
            .run(key, move || async move {
                let mut con = con;
                match tokio::time::timeout(REDIS_TIMEOUT * 4, read(&mut con, &keys, &view, &q))
                    .await
                {
                    Ok(Ok(series)) => Ok(Arc::new(series)),
                    Ok(Err(e)) => Err(SourceError::from(e)),
                    Err(_) => Err(SourceError::Redis("read timed out".into())),
                }
            })
            .await
    }

    /// The version of a view's speed state now (see
    /// `tributary_speed_layer::read::read_version`): one round trip (epoch, rebuild flag,
    /// flush counter, offsets), shared by the requests that ask at the same time.
    pub async fn speed_version(&self, view: &str) -> Result<Option<StateVersion>, SourceError> {
        let con = self.redis().await?;
        let (keys, name) = (self.keys.clone(), view.to_string());
        let topic = self.config.source.topic.clone();
        self.versions
            .run(view.to_string(), move || async move {
                let mut con = con;
                match tokio::time::timeout(
                    REDIS_TIMEOUT,
                    read_version(&mut con, &keys, &topic, &name),
                )
                .await
                {
                    Ok(r) => r.map_err(SourceError::from),
                    Err(_) => Err(SourceError::Redis("read timed out".into())),
                }
            })
            .await
    }

    /// Reads in flight (for tests: cancelled requests must not leave any behind).
    pub fn inflight_reads(&self) -> usize {
        self.reads.len() + self.versions.len()
    }

    /// Mergeable speed-layer totals per group (see `tributary_speed_layer::read::read_totals`).
    pub async fn speed_totals(
        &self,
        view: &ViewPlan,
        q: SpeedQuery,
    ) -> Result<BTreeMap<Vec<Option<String>>, Partial>, SourceError> {
        let con = self.redis().await?;
        let (keys, view) = (self.keys.clone(), view.clone());
        let mut con = con;
        match tokio::time::timeout(REDIS_TIMEOUT * 4, read_totals(&mut con, &keys, &view, &q)).await
        {
            Ok(r) => r.map_err(SourceError::from),
            Err(_) => Err(SourceError::Redis("read timed out".into())),
        }
    }

    /// Runs a Redis read with the timeout; any failure reads as "unavailable".
    pub async fn with_redis<T, F, Fut>(&self, f: F) -> Result<T, SourceError>
    where
        F: FnOnce(RedisConnection) -> Fut,
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
