//! The speed side of a settlement: the speed layer's values of the buckets a run settles, read
//! from Redis while the engine computes the view's dates (on a thread of its own at the lowest
//! CPU priority, so it takes the CPU the engine leaves idle: [`SpeedTask`]), then brought up
//! to date just before landing ([`SpeedSide::top_up`]): the speed layer's state is read again,
//! a rebuild started meanwhile discards the read, and buckets it sealed meanwhile are read
//! then.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;

use tributary_shared::layout::RedisKeys;
use tributary_shared::redis_client::{RedisClient, RedisConnection};
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
    /// The horizon it was read for.
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
    /// Kept for the top-up.
    reader: Reader,
}

/// Reads the speed layer's values of the buckets a run landing `horizon` compares (ending
/// after `compared_to`). Nothing to compare (speed state absent or rebuilding, no watermark
/// yet): `None`.
pub async fn read_speed(
    config: &Config,
    plan: &ViewPlan,
    compared_to: Option<i64>,
    horizon: i64,
    now_ms: i64,
) -> Result<Option<SpeedSide>, LedgerError> {
    let started = Instant::now();
    let client = RedisClient::new(&config.redis).map_err(|e| redis(&e))?;
    let mut reader = Reader {
        keys: RedisKeys::new(config.redis.key_prefix.clone()),
        cons: vec![connect(&client).await?],
        topic: config.source.topic.clone(),
        lateness_ms: config.speed.allowed_lateness.as_millis() as i64,
        retention_ms: config.speed.retention.as_millis() as i64,
    };
    let Some((state, watermark)) = reader.state(plan).await? else {
        return Ok(None);
    };
    // Chunks are read READERS at a time, each reader on a connection of its own: Redis
    // answers one while this process decodes another (replies are decoded by each
    // connection's own task), on different cores.
    for _ in 1..READERS {
        reader.cons.push(connect(&client).await?);
    }
    // Never below what earlier runs compared (a watermark that went back: a rebuild), so
    // neither this read nor the top-up compares a bucket twice, and the mark never moves back.
    let sealed_to = horizon.min(watermark).max(compared_to.unwrap_or(i64::MIN));
    let (chunks, read_time) = reader
        .read(plan, &state, compared_to, (horizon, sealed_to), now_ms)
        .await?;
    Ok(Some(SpeedSide {
        horizon,
        epoch: state.epoch.clone(),
        sealed_to,
        chunks,
        read_time,
        wall_time: started.elapsed(),
        reader,
    }))
}

impl SpeedSide {
    /// Buckets ending at or before this were read: the ledger's mark once they are compared.
    pub fn sealed_to(&self) -> i64 {
        self.sealed_to
    }

    /// Whether any bucket was read (none: nothing new to compare). Chunks are never empty.
    pub fn has_buckets(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// Brings the read up to the speed layer's state now: `None` if the view's state was
    /// rebuilt or lost since (nothing is compared, as when it is rebuilding at landing);
    /// buckets sealed since the read are read now.
    pub async fn top_up(
        mut self,
        plan: &ViewPlan,
        now_ms: i64,
    ) -> Result<Option<SpeedSide>, LedgerError> {
        let started = Instant::now();
        let Some((state, watermark)) = self.reader.state(plan).await? else {
            return Ok(None);
        };
        if state.epoch != self.epoch {
            tracing::info!(view = %plan.name, "accuracy ledger: the speed layer's state was rebuilt during the run; nothing compared");
            return Ok(None);
        }
        let sealed_to = self.horizon.min(watermark);
        if sealed_to > self.sealed_to {
            let after = Some(self.sealed_to);
            let (chunks, t) = self
                .reader
                .read(plan, &state, after, (self.horizon, sealed_to), now_ms)
                .await?;
            self.sealed_to = sealed_to;
            self.chunks.extend(chunks);
            self.read_time += t;
        }
        self.wall_time += started.elapsed();
        Ok(Some(self))
    }
}

/// The speed side read while the engine computes the view's dates, on a thread of its own
/// at the lowest CPU priority (nice 19, Linux), with its own runtime: the read (and the Redis
/// work it asks for, on a machine shared with Redis) then takes the CPU the engine leaves
/// idle, such as its single-threaded tail, rather than slowing the dates down. The run waits
/// for it only at [`SpeedTask::finish`], after its dates. Dropped unfinished (a view that
/// fails, or lands nothing): the read stops.
pub struct SpeedTask {
    /// The finish request: the time of the top-up. Dropped: stop.
    finish: oneshot::Sender<i64>,
    result: oneshot::Receiver<Result<Option<SpeedSide>, LedgerError>>,
}

impl SpeedTask {
    /// Starts [`read_speed`].
    pub fn spawn(
        config: &Config,
        plan: &ViewPlan,
        compared_to: Option<i64>,
        horizon: i64,
        now_ms: i64,
    ) -> SpeedTask {
        let (config, plan) = (config.clone(), plan.clone());
        let (finish_tx, mut finish_rx) = oneshot::channel::<i64>();
        let (result_tx, result_rx) = oneshot::channel();
        let reader = move || {
            lower_priority();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| LedgerError::Task(format!("speed read runtime: {e}")));
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = result_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let read = read_speed(&config, &plan, compared_to, horizon, now_ms);
                tokio::pin!(read);
                let (read, finish) = tokio::select! {
                    read = &mut read => (read, (&mut finish_rx).await),
                    finish = &mut finish_rx => match finish {
                        // The run finished its dates first: the read goes on, then tops up.
                        Ok(f) => ((&mut read).await, Ok(f)),
                        Err(_) => return,
                    },
                };
                // The top-up runs here too: the read's connections live on this runtime.
                let Ok(at) = finish else {
                    return;
                };
                let result = match read {
                    Ok(Some(side)) => side.top_up(&plan, at).await,
                    other => other,
                };
                let _ = result_tx.send(result);
            });
        };
        let spawned = std::thread::Builder::new()
            .name("ledger-speed-read".into())
            .spawn(reader);
        if let Err(e) = spawned {
            // Nothing is read: `finish` reports it (the result's sender was dropped).
            tracing::warn!(error = %e, "accuracy ledger: the speed read's thread did not start");
        }
        SpeedTask {
            finish: finish_tx,
            result: result_rx,
        }
    }

    /// The read, brought up to the speed layer's state now ([`SpeedSide::top_up`]).
    pub async fn finish(self, now_ms: i64) -> Result<Option<SpeedSide>, LedgerError> {
        let SpeedTask { finish, result } = self;
        let _ = finish.send(now_ms);
        result
            .await
            .unwrap_or_else(|_| Err(LedgerError::Task("the speed read's thread stopped".into())))
    }
}

/// Lowers the calling thread's CPU priority to nice 19: on Linux the nice value is a thread's
/// own (setpriority(2), "BUGS"), so the engine's threads keep theirs. Elsewhere: unchanged.
fn lower_priority() {
    // `None`: the calling thread (on Linux; the whole process elsewhere, so only there).
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!(error = %e, "accuracy ledger: the speed read keeps its priority");
    }
}

fn redis(e: &dyn std::fmt::Display) -> LedgerError {
    LedgerError::Redis(e.to_string())
}

/// A connection to the view's Redis, or an error within 5 s (the run must not hang on it).
async fn connect(client: &RedisClient) -> Result<RedisConnection, LedgerError> {
    tokio::time::timeout(Duration::from_secs(5), client.connect())
        .await
        .map_err(|_| LedgerError::Redis("connect timed out".into()))?
        .map_err(|e| redis(&e))
}

/// Connections to the view's Redis, one per reader, and what the reads need of the config.
struct Reader {
    keys: RedisKeys,
    cons: Vec<RedisConnection>,
    topic: String,
    /// `speed.allowed_lateness`: the view's watermark trails its newest event by it.
    lateness_ms: i64,
    /// How long the speed layer keeps a bucket (`speed.retention`).
    retention_ms: i64,
}

impl Reader {
    /// The view's state and watermark; `None` when it has nothing to compare.
    async fn state(&self, plan: &ViewPlan) -> Result<Option<(ViewState, i64)>, LedgerError> {
        let mut con = self.cons[0].clone();
        let state = read_view_state(&mut con, &self.keys, &self.topic, &plan.name)
            .await
            .map_err(|e| redis(&e))?;
        if !state.serving() {
            tracing::info!(view = %plan.name, "accuracy ledger: the speed layer holds no state for the view (absent or rebuilding); nothing compared");
            return Ok(None);
        }
        Ok(state.watermark(self.lateness_ms).map(|w| (state, w)))
    }

    /// Reads the buckets ending after `after` and at or before `sealed_to` (`bounds`: the
    /// horizon and `sealed_to`); returns them and the time the readers spent.
    async fn read(
        &self,
        plan: &ViewPlan,
        state: &ViewState,
        after: Option<i64>,
        (horizon, sealed_to): (i64, i64),
        now_ms: i64,
    ) -> Result<(Vec<SpeedChunk>, Duration), LedgerError> {
        let todo = buckets_to_settle(plan, after, horizon, sealed_to, self.retention_ms, now_ms);
        let finest = super::finest(plan);
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
        let (mut chunks, mut read_time) = (Vec::new(), Duration::ZERO);
        while let Some(read) = reads.next().await {
            let (chunk, t) = read?;
            read_time += t;
            chunks.push(chunk);
        }
        Ok((chunks, read_time))
    }
}
