//! The speed side of a settlement: the speed layer's values of the buckets a run settles, read
//! from Redis while the engine computes the view's dates (a task of its own, so Redis's
//! answers are decoded on whichever core the engine leaves free), then brought up to date just
//! before landing ([`SpeedSide::top_up`]): the speed layer's state is read again, a rebuild
//! started meanwhile discards the read, and buckets it sealed meanwhile are read then.

use std::time::{Duration, Instant};

use futures::StreamExt;

use tributary_shared::layout::RedisKeys;
use tributary_shared::redis_client::{RedisClient, RedisConnection};
use tributary_shared::selection::Selection;
use tributary_shared::series::Series;
use tributary_shared::{Config, Granularity, ViewPlan};
use tributary_speed_layer::read::{SpeedQuery, read_view_state, read_with_totals};
use tributary_speed_layer::view_state::ViewState;

use super::{LedgerError, buckets_to_settle};

/// Buckets read at once (four hours of minutes).
const CHUNK: usize = 240;

/// Chunks read at once, each on its own Redis connection.
const READERS: usize = 2;

/// One chunk of buckets as the speed layer holds them: (totals, finest grouping set).
pub(super) struct SpeedChunk {
    pub(super) granularity: Granularity,
    pub(super) buckets: Vec<i64>,
    pub(super) speed: (Series, Series),
}

/// The speed side of one view's settlement.
pub struct SpeedSide {
    /// The horizon it was read for: [`super::Settle::run`] compares only for the same one.
    pub(super) horizon: i64,
    /// The view's epoch when it was read: another one at the top-up (a rebuild) voids it.
    epoch: Option<String>,
    /// Buckets ending at or before this were read (the horizon, or the speed layer's
    /// watermark when that was behind it).
    sealed_to: i64,
    pub(super) chunks: Vec<SpeedChunk>,
    /// Summed over the readers.
    pub(super) read_time: Duration,
    /// From the first request to the last reply, top-up included.
    pub(super) wall_time: Duration,
}

/// Reads the speed layer's values of the buckets a run landing `horizon` settles (after
/// `previous_horizon`). Nothing to compare (speed state absent or rebuilding, no watermark
/// yet): `None`.
pub async fn read_speed(
    config: &Config,
    plan: &ViewPlan,
    previous_horizon: Option<i64>,
    horizon: i64,
    now_ms: i64,
) -> Result<Option<SpeedSide>, LedgerError> {
    let started = Instant::now();
    let Some((reader, state, watermark)) = Reader::open(config, plan).await? else {
        return Ok(None);
    };
    let sealed_to = horizon.min(watermark);
    let mut side = SpeedSide {
        horizon,
        epoch: state.epoch.clone(),
        sealed_to,
        chunks: Vec::new(),
        read_time: Duration::ZERO,
        wall_time: Duration::ZERO,
    };
    reader
        .read(plan, &state, previous_horizon, &mut side, now_ms)
        .await?;
    side.wall_time = started.elapsed();
    Ok(Some(side))
}

impl SpeedSide {
    /// Brings the read up to the speed layer's state now: `None` if the view's state was
    /// rebuilt or lost since (nothing is compared, as when it is rebuilding at landing);
    /// buckets sealed since the read are read now.
    pub async fn top_up(
        mut self,
        config: &Config,
        plan: &ViewPlan,
        now_ms: i64,
    ) -> Result<Option<SpeedSide>, LedgerError> {
        let started = Instant::now();
        let Some((reader, state, watermark)) = Reader::open(config, plan).await? else {
            return Ok(None);
        };
        if state.epoch != self.epoch {
            tracing::info!(view = %plan.name, "accuracy ledger: the speed layer's state was rebuilt during the run; nothing compared");
            return Ok(None);
        }
        let sealed_to = self.horizon.min(watermark);
        if sealed_to > self.sealed_to {
            let after = self.sealed_to;
            self.sealed_to = sealed_to;
            reader
                .read(plan, &state, Some(after), &mut self, now_ms)
                .await?;
        }
        self.wall_time += started.elapsed();
        Ok(Some(self))
    }
}

/// Connections to the view's Redis, one per reader.
struct Reader {
    keys: RedisKeys,
    cons: Vec<RedisConnection>,
    /// How long the speed layer keeps a bucket (`speed.retention`).
    retention_ms: i64,
}

impl Reader {
    /// Connects and reads the view's state; `None` when it has nothing to compare.
    async fn open(
        config: &Config,
        plan: &ViewPlan,
    ) -> Result<Option<(Reader, ViewState, i64)>, LedgerError> {
        let redis = |e: &dyn std::fmt::Display| LedgerError::Redis(e.to_string());
        let keys = RedisKeys::new(config.redis.key_prefix.clone());
        let client = RedisClient::new(&config.redis).map_err(|e| redis(&e))?;
        let mut con = tokio::time::timeout(Duration::from_secs(5), client.connect())
            .await
            .map_err(|_| LedgerError::Redis("connect timed out".into()))?
            .map_err(|e| redis(&e))?;
        let state = read_view_state(&mut con, &keys, &config.source.topic, &plan.name)
            .await
            .map_err(|e| redis(&e))?;
        if !state.serving() {
            tracing::info!(view = %plan.name, "accuracy ledger: the speed layer holds no state for the view (absent or rebuilding); nothing compared");
            return Ok(None);
        }
        let lateness = config.speed.allowed_lateness.as_millis() as i64;
        let Some(watermark) = state.watermark(lateness) else {
            return Ok(None);
        };
        // Chunks are read READERS at a time, each reader on a connection of its own: Redis
        // answers one while this process decodes another (replies are decoded by each
        // connection's own task), on different cores.
        let mut cons = vec![con];
        for _ in 1..READERS {
            cons.push(client.connect().await.map_err(|e| redis(&e))?);
        }
        let reader = Reader {
            keys,
            cons,
            retention_ms: config.speed.retention.as_millis() as i64,
        };
        Ok(Some((reader, state, watermark)))
    }

    /// Reads the buckets ending after `after` and at or before `side.sealed_to` into `side`.
    async fn read(
        &self,
        plan: &ViewPlan,
        state: &ViewState,
        after: Option<i64>,
        side: &mut SpeedSide,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let todo = buckets_to_settle(
            plan,
            after,
            side.horizon,
            side.sealed_to,
            self.retention_ms,
            now_ms,
        );
        let finest = Selection {
            filters: Vec::new(),
            group_by: (0..plan.dimensions.len()).collect(),
            measures: (0..plan.measures.len()).collect(),
        };
        let jobs: Vec<(Granularity, Vec<i64>)> = todo
            .iter()
            .flat_map(|(g, buckets)| buckets.chunks(CHUNK).map(|c| (*g, c.to_vec())))
            .collect();
        let (keys, finest) = (&self.keys, &finest);
        let mut reads = futures::stream::iter(jobs.into_iter().enumerate())
            .map(|(i, (g, chunk))| {
                let mut con = self.cons[i % self.cons.len()].clone();
                async move {
                    // One read of the finest cells, the totals merged from them.
                    let q = SpeedQuery {
                        granularity: g,
                        buckets: chunk.clone(),
                        selection: finest.clone(),
                        epoch: state.epoch.clone(),
                        max_groups: usize::MAX,
                    };
                    let t = Instant::now();
                    let (groups, totals) = read_with_totals(&mut con, keys, plan, &q)
                        .await
                        .map_err(|e| LedgerError::Redis(e.to_string()))?;
                    let chunk = SpeedChunk {
                        granularity: g,
                        buckets: chunk,
                        speed: (totals, groups),
                    };
                    Ok::<_, LedgerError>((chunk, t.elapsed()))
                }
            })
            .buffered(READERS);
        while let Some(read) = reads.next().await {
            let (chunk, t) = read?;
            side.read_time += t;
            side.chunks.push(chunk);
        }
        Ok(())
    }
}
