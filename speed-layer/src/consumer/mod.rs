//! `speed-layer run`: the Kafka consumer loop. It reads top to bottom here (start, the loop,
//! one event); what the loop calls lives beside it: [`flush`] (dead letters → Redis → commit,
//! with retries), [`recovery`] (fenced, lost or refused flushes: rebuild, reload and seek),
//! [`housekeeping`] (epochs, the topic's partitions, the group watchdog) and [`publish`]
//! (progress for `/v1/status` and lag metrics). Rebalance callbacks are in `rebalance`.
//!
//! Offsets live in Redis with the aggregates (see `redis_sink`). On assignment the consumer
//! seeks to them (`rebalance`); on a fenced flush it drops its buffer and re-reads them; when
//! a view's state is gone from Redis it is rebuilt from Kafka (`rebuild`). Nothing the
//! consumer meets stops it: an event that cannot be applied goes to the dead-letter topic, and
//! an unreachable Redis or broker is waited for, with the flush held back. Kafka commits are
//! advisory, for lag tools and the group watchdog.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;
use tributary_shared::Config;
use tributary_shared::kafka::{HighWatermarks, Membership};
use tributary_shared::layout::RedisKeys;
use tributary_shared::redis_client::RedisClient;

mod flush;
mod housekeeping;
mod publish;
mod recovery;

pub use flush::CrashPoint;

use crate::aggregate::{Outcome, Pipeline};
use crate::dlq::DeadLetters;
use crate::metrics::{SpeedMetrics, label};
use crate::rebalance::{Assignment, SpeedContext};
use crate::rebuild::{Reason, Rebuilder};
use crate::redis_sink::RedisSink;

/// How often the loop checks the views' epochs, the topic's partitions and the group.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often the topic's partition count is read from the broker.
const TOPIC_CHECK: Duration = Duration::from_secs(10);
/// Kafka session timeout of the speed consumers.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The running consumer.
pub struct SpeedConsumer {
    config: Config,
    consumer: StreamConsumer<SpeedContext>,
    dead_letters: DeadLetters,
    pipeline: Pipeline,
    sink: RedisSink,
    rebuilder: Rebuilder,
    /// The epoch of each view this consumer writes under (index: view).
    epochs: Vec<String>,
    metrics: Arc<SpeedMetrics>,
    assignment: Arc<Mutex<Assignment>>,
    high_watermarks: HighWatermarks,
    generation: u64,
    dlq_counts: HashMap<&'static str, u64>,
    crash: Option<(CrashPoint, u64)>,
    flush_count: u64,
    /// Next offset per partition flushed to Redis but not yet committed to Kafka (advisory).
    unpublished: HashMap<i32, i64>,
    /// When the first record buffered since the last flush arrived.
    buffered_since: Option<Instant>,
    /// When progress was last published (see `flush`).
    last_published: Option<Instant>,
    membership: Membership,
    last_topic_check: Option<Instant>,
    /// The events topic's partition count as last seen.
    topic_partitions: i32,
    shutdown: watch::Receiver<bool>,
}

/// Checks the events topic exists and creates `<topic>.dlq` when missing; returns the events
/// topic's partition count and the DLQ's.
pub async fn ensure_topics(config: &Config) -> anyhow::Result<(i32, i32)> {
    let partitions =
        tributary_shared::kafka::topic_partitions(&config.source, &config.source.topic).await?;
    let dlq = config.source.dlq_topic();
    let dlq_partitions = tributary_shared::kafka::ensure_dlq(config, partitions).await?;
    tracing::info!(topic = %config.source.topic, partitions, %dlq, dlq_partitions, "topics ready");
    Ok((partitions, dlq_partitions))
}

impl SpeedConsumer {
    pub async fn new(
        config: Config,
        pipeline: Pipeline,
        metrics: Arc<SpeedMetrics>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (partitions, dlq_partitions) = ensure_topics(&config).await?;
        let redis = RedisClient::new(&config.redis)?;
        let keys = RedisKeys::new(config.redis.key_prefix.clone());
        let mut sink = RedisSink::connect(
            &redis,
            keys.clone(),
            config.source.topic.clone(),
            config.speed.retention,
        )
        .await?;
        crate::redis_sink::check_no_eviction(&redis)
            .await
            .with_context(|| format!("redis at {}", redis.endpoint()))?;
        let rebuilder = Rebuilder::new(&config)?;
        let mut epochs = Vec::new();
        for view in pipeline.views() {
            let epoch = rebuilder
                .ensure(&mut sink.connection(), view, Reason::Lost)
                .await
                .with_context(|| format!("view {}: prepare its state in redis", view.name))?;
            epochs.push(epoch);
        }
        sink.set_topic_partitions(partitions)
            .await
            .context("record the topic's partition count in redis")?;
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let high_watermarks = HighWatermarks::default();
        let context = SpeedContext {
            redis,
            keys,
            topic: config.source.topic.clone(),
            views: pipeline.views().iter().map(|v| v.name.clone()).collect(),
            assignment: assignment.clone(),
            high_watermarks: high_watermarks.clone(),
            dedup: pipeline.dedup_window_ms() > 0,
        };
        let consumer: StreamConsumer<SpeedContext> = tributary_shared::kafka::consumer_config(
            &config.source,
            &config.source.speed_group(),
            SESSION_TIMEOUT,
        )
        // Bounded prefetch: a slow Redis slows consumption instead of growing memory.
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.max.bytes", "16777216")
        .set(
            "fetch.wait.max.ms",
            config.speed.fetch_wait.as_millis().to_string(),
        )
        .create_with_context(context)
        .context("create kafka consumer")?;
        consumer
            .subscribe(&[&config.source.topic])
            .with_context(|| format!("subscribe to {}", config.source.topic))?;
        let producer: FutureProducer = tributary_shared::kafka::client_config(&config.source)
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "20")
            .create()
            .context("create dead-letter producer")?;
        let stall_after = SESSION_TIMEOUT * 3 + config.speed.flush_interval;
        Ok(SpeedConsumer {
            dead_letters: DeadLetters::new(producer, &config.source.topic, dlq_partitions),
            membership: Membership::new(config.source.topic.clone(), stall_after, "speed"),
            config,
            consumer,
            pipeline,
            sink,
            rebuilder,
            epochs,
            metrics,
            assignment,
            high_watermarks,
            generation: 0,
            dlq_counts: HashMap::new(),
            crash: CrashPoint::from_env(),
            flush_count: 0,
            unpublished: HashMap::new(),
            last_published: None,
            buffered_since: None,
            last_topic_check: None,
            topic_partitions: partitions,
            shutdown,
        })
    }

    /// Consumes until shutdown, then flushes what is buffered and returns.
    ///
    /// A flush starts on the tick, when `flush_max_events` are buffered, or when the consumer
    /// has caught up: no record for `idle_flush` while events are buffered. The idle timer is
    /// armed once per quiet spell, not per record (a record only notes its arrival time).
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.config.speed.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_events = self.config.speed.flush_max_events;
        let idle_after = self.config.speed.idle_flush;
        let idle = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(idle);
        let mut idle_armed = false;
        let mut last_record = tokio::time::Instant::now();
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    self.sync_assignment().await?;
                    self.flush().await?;
                    if !self.unpublished.is_empty() {
                        self.publish().await;
                    }
                }
                _ = housekeeping.tick() => self.housekeeping().await?,
                msg = self.consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka consume error");
                            continue;
                        }
                    };
                    let (partition, offset) = (msg.partition(), msg.offset());
                    if self.buffered_since.is_none() {
                        // The first record of a flush: where its wait started (freshness).
                        self.buffered_since = Some(Instant::now());
                        if let Some(ts) = msg.timestamp().to_millis() {
                            let waited = chrono::Utc::now().timestamp_millis() - ts;
                            self.metrics
                                .fetch_delay_seconds
                                .observe(waited.max(0) as f64 / 1000.0);
                        }
                    }
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    let key = msg.key().map(<[u8]>::to_vec);
                    drop(msg);
                    if self.sync_assignment().await?.contains(&partition) {
                        // Fetched before the seek, so received again after it: handled then
                        // (handled now too, it would count twice).
                        continue;
                    }
                    self.handle(partition, offset, &payload, key.as_deref()).await;
                    if self.pipeline.pending() >= max_events {
                        self.flush().await?;
                    }
                    if !idle_after.is_zero() {
                        last_record = tokio::time::Instant::now();
                        if !idle_armed {
                            idle.as_mut().reset(last_record + idle_after);
                            idle_armed = true;
                        }
                    }
                }
                // Polled only when no record is ready (`biased`): the consumer is idle.
                _ = &mut idle, if idle_armed => {
                    let quiet_until = last_record + idle_after;
                    if tokio::time::Instant::now() < quiet_until {
                        // A record came since the timer was armed: wait from that one.
                        idle.as_mut().reset(quiet_until);
                    } else {
                        idle_armed = false;
                        self.sync_assignment().await?;
                        self.flush().await?;
                    }
                }
            }
        }
        tracing::info!("shutting down: flushing what is buffered");
        // Bounded drain, shorter than the session timeout; nothing is lost if it cannot
        // finish (the offsets in Redis did not move: the records are read again).
        let drain = async {
            self.flush().await?;
            if !self.unpublished.is_empty() {
                self.publish().await;
            }
            Ok::<_, anyhow::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(8), drain).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!(
                "final flush did not finish within 8 s (Redis or the broker unreachable); nothing is lost: the unflushed records are read again on the next start"
            ),
        }
    }

    /// Applies a rebalance that happened inside `recv`: drop the buffer, take the new progress.
    /// Returns the partitions it had to seek (see `reload_and_seek`).
    async fn sync_assignment(&mut self) -> anyhow::Result<Vec<i32>> {
        let (generation, partitions, reload) = {
            let state = self
                .assignment
                .lock()
                .map_err(|_| anyhow::anyhow!("assignment lock poisoned"))?;
            if state.generation == self.generation {
                return Ok(Vec::new());
            }
            (state.generation, state.partitions.clone(), state.reload)
        };
        self.generation = generation;
        // Positions of partitions this consumer may no longer own: their new owner commits.
        self.unpublished.clear();
        self.pipeline.reset(partitions);
        if reload {
            return self.reload_and_seek().await;
        }
        Ok(Vec::new())
    }

    async fn handle(&mut self, partition: i32, offset: i64, payload: &[u8], key: Option<&[u8]>) {
        self.metrics.events_in.inc();
        let now = chrono::Utc::now().timestamp_millis();
        if let Outcome::Invalid(err) = self.pipeline.process(partition, offset, payload, now) {
            self.dead_letters
                .send(partition, offset, payload, key, &err)
                .await;
            *self.dlq_counts.entry(err.code()).or_insert(0) += 1;
            self.metrics
                .dlq
                .get_or_create(&label("reason", err.code()))
                .inc();
            tracing::debug!(partition, offset, reason = %err, "event sent to dead-letter topic");
        }
    }
}
