//! `speed-layer run`: the Kafka consumer loop.
//!
//! Offsets live in Redis with the aggregates (see `redis_sink`). On assignment the consumer
//! seeks to them; on revocation or a fenced flush it drops its buffer and re-reads them, so
//! whatever happens each record is applied once. Kafka commits are advisory, for lag tools.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::sync::watch;
use tributary_shared::Config;
use tributary_shared::event::EventError;
use tributary_shared::kafka::HighWatermarks;
use tributary_shared::layout::RedisKeys;

use crate::aggregate::{Flush, Outcome, Pipeline};
use crate::metrics::{SpeedMetrics, label};
use crate::redis_sink::{RedisSink, SinkError};
use crate::watermark::{PartitionProgress, Stored};

/// Partitions assigned by the last rebalance, with the progress Redis held for them.
#[derive(Default)]
struct Assignment {
    generation: u64,
    partitions: HashMap<i32, PartitionProgress>,
    /// Redis could not be read during the rebalance: the loop must load and seek itself.
    reload: bool,
}

/// Consumer context: seeks newly assigned partitions to the offsets stored in Redis.
struct SpeedContext {
    redis: redis::Client,
    keys: RedisKeys,
    topic: String,
    views: Vec<String>,
    assignment: Arc<Mutex<Assignment>>,
    high_watermarks: HighWatermarks,
    dedup: bool,
}

impl SpeedContext {
    /// Runs inside the rebalance callback, so it uses a short blocking Redis connection.
    fn load_sync(&self, partitions: &[i32]) -> redis::RedisResult<HashMap<i32, PartitionProgress>> {
        let mut con = self
            .redis
            .get_connection_with_timeout(Duration::from_secs(5))?;
        let mut per_view = Vec::with_capacity(self.views.len());
        let fields: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
        for v in &self.views {
            let values: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.offsets(v, &self.topic))
                .arg(&fields)
                .query(&mut con)?;
            per_view.push(values);
        }
        Ok(progress_from(partitions, &per_view))
    }
}

fn progress_from(
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
                match self.load_sync(&partitions) {
                    Ok(progress) => {
                        for (p, pp) in &progress {
                            if let Some(o) = pp.resume_offset() {
                                let _ =
                                    tpl.set_partition_offset(&self.topic, *p, Offset::Offset(o));
                            }
                        }
                        state.partitions = progress;
                        // The duplicate filter's ids are loaded by the loop (async).
                        state.reload = self.dedup;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read offsets from redis during rebalance; will retry");
                        state.partitions = progress_from(&partitions, &[]);
                        state.reload = true;
                    }
                }
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

/// Hooks for fault-injection tests: crash points of a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Exit the process after the DLQ is flushed but before Redis is written.
    BeforeRedis,
    /// Exit the process after Redis is written but before Kafka offsets are committed.
    AfterRedis,
}

impl CrashPoint {
    /// Read from `TRIBUTARY_CRASH_AT=before_redis|after_redis` (tests only).
    fn from_env() -> Option<(CrashPoint, u64)> {
        let v = std::env::var("TRIBUTARY_CRASH_AT").ok()?;
        let (point, after) = v.split_once('@').unwrap_or((v.as_str(), "1"));
        let point = match point {
            "before_redis" => CrashPoint::BeforeRedis,
            "after_redis" => CrashPoint::AfterRedis,
            _ => return None,
        };
        Some((point, after.parse().unwrap_or(1)))
    }
}

/// The running consumer.
pub struct SpeedConsumer {
    config: Config,
    consumer: StreamConsumer<SpeedContext>,
    producer: FutureProducer,
    pipeline: Pipeline,
    sink: RedisSink,
    metrics: Arc<SpeedMetrics>,
    assignment: Arc<Mutex<Assignment>>,
    high_watermarks: HighWatermarks,
    generation: u64,
    pending_dlq: Vec<rdkafka::producer::DeliveryFuture>,
    dlq_counts: HashMap<&'static str, u64>,
    crash: Option<(CrashPoint, u64)>,
    flush_count: u64,
}

/// Checks the events topic exists and creates `<topic>.dlq` when missing.
pub async fn ensure_topics(config: &Config) -> anyhow::Result<i32> {
    let brokers = &config.source.brokers;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("kafka admin client")?;
    let partitions =
        tributary_shared::kafka::topic_partitions(brokers, &config.source.topic).await?;
    let dlq = config.source.dlq_topic();
    let new = NewTopic::new(&dlq, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("create dead-letter topic {dlq}"))?;
    for r in res {
        match r {
            Ok(_) => tracing::info!(topic = %dlq, partitions, "created dead-letter topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("create dead-letter topic {t}: {code}"),
        }
    }
    Ok(partitions)
}

impl SpeedConsumer {
    pub async fn new(
        config: Config,
        pipeline: Pipeline,
        metrics: Arc<SpeedMetrics>,
    ) -> anyhow::Result<Self> {
        ensure_topics(&config).await?;
        let redis = redis::Client::open(crate::redis_url(&config)?).context("redis url")?;
        let keys = RedisKeys::new(config.redis.key_prefix.clone());
        let sink = RedisSink::connect(
            &redis,
            keys.clone(),
            config.source.topic.clone(),
            config.speed.retention,
        )
        .await
        .with_context(|| format!("connect to redis at {}", config.redis.url))?;
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
        let consumer: StreamConsumer<SpeedContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.source.brokers)
            .set("group.id", config.source.speed_group())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "2000")
            // Bounded prefetch: a slow Redis slows consumption instead of growing memory.
            .set("queued.max.messages.kbytes", "32768")
            .set("fetch.max.bytes", "16777216")
            .create_with_context(context)
            .context("create kafka consumer")?;
        consumer
            .subscribe(&[&config.source.topic])
            .with_context(|| format!("subscribe to {}", config.source.topic))?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.source.brokers)
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "20")
            .create()
            .context("create dead-letter producer")?;
        Ok(SpeedConsumer {
            config,
            consumer,
            producer,
            pipeline,
            sink,
            metrics,
            assignment,
            high_watermarks,
            generation: 0,
            pending_dlq: Vec::new(),
            dlq_counts: HashMap::new(),
            crash: CrashPoint::from_env(),
            flush_count: 0,
        })
    }

    /// Consumes until `shutdown` fires, then flushes what is buffered and returns.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.config.speed.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_events = self.config.speed.flush_max_events;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    self.sync_assignment().await?;
                    self.flush().await?;
                }
                msg = self.consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka consume error");
                            continue;
                        }
                    };
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    let key = msg.key().map(<[u8]>::to_vec);
                    drop(msg);
                    self.sync_assignment().await?;
                    self.handle(partition, offset, &payload, key.as_deref());
                    if self.pipeline.pending() >= max_events {
                        self.flush().await?;
                    }
                }
            }
        }
        tracing::info!("shutting down: flushing what is buffered");
        // Bounded drain, shorter than the session timeout.
        tokio::time::timeout(Duration::from_secs(8), self.flush())
            .await
            .context("final flush timed out")??;
        Ok(())
    }

    /// Applies a rebalance that happened inside `recv`: drop the buffer, take the new progress.
    async fn sync_assignment(&mut self) -> anyhow::Result<()> {
        let (generation, partitions, reload) = {
            let state = self
                .assignment
                .lock()
                .map_err(|_| anyhow::anyhow!("assignment lock poisoned"))?;
            if state.generation == self.generation {
                return Ok(());
            }
            (state.generation, state.partitions.clone(), state.reload)
        };
        self.generation = generation;
        self.pipeline.reset(partitions);
        if reload {
            self.reload_and_seek().await?;
        }
        Ok(())
    }

    fn handle(&mut self, partition: i32, offset: i64, payload: &[u8], key: Option<&[u8]>) {
        self.metrics.events_in.inc();
        let now = chrono::Utc::now().timestamp_millis();
        if let Outcome::Invalid(err) = self.pipeline.process(partition, offset, payload, now) {
            self.send_to_dlq(partition, offset, payload, key, &err);
        }
    }

    fn send_to_dlq(
        &mut self,
        partition: i32,
        offset: i64,
        payload: &[u8],
        key: Option<&[u8]>,
        err: &EventError,
    ) {
        let reason = err.to_string();
        let source = format!("{}/{partition}/{offset}", self.config.source.topic);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tributary.error",
                value: Some(reason.as_str()),
            })
            .insert(Header {
                key: "tributary.error_code",
                value: Some(err.code()),
            })
            .insert(Header {
                key: "tributary.source",
                value: Some(source.as_str()),
            });
        let dlq = self.config.source.dlq_topic();
        let mut record = FutureRecord::to(&dlq)
            .payload(payload)
            .headers(headers)
            .partition(partition);
        if let Some(k) = key {
            record = record.key(k);
        }
        match self.producer.send_result(record) {
            Ok(delivery) => self.pending_dlq.push(delivery),
            Err((e, _)) => {
                // The queue is full: wait for it by failing the flush rather than dropping.
                tracing::error!(error = %e, "dead-letter produce rejected");
                self.pending_dlq.clear();
            }
        }
        *self.dlq_counts.entry(err.code()).or_insert(0) += 1;
        self.metrics
            .dlq
            .get_or_create(&label("reason", err.code()))
            .inc();
        tracing::debug!(partition, offset, reason = %reason, "event sent to dead-letter topic");
    }

    /// Writes what is buffered. Order: DLQ deliveries confirmed → Redis (atomic per view, with
    /// offsets) → advisory Kafka commit → progress for `/v1/status`.
    async fn flush(&mut self) -> anyhow::Result<()> {
        let Some(flush) = self.pipeline.take_flush() else {
            return Ok(());
        };
        let started = Instant::now();
        self.flush_count += 1;
        for delivery in std::mem::take(&mut self.pending_dlq) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => bail!("dead-letter delivery failed: {e}"),
                Err(_) => bail!("dead-letter delivery was cancelled"),
            }
        }
        self.crash_if(CrashPoint::BeforeRedis);
        match self.write_with_retry(&flush).await {
            Ok(()) => {}
            Err(SinkError::Fenced(why)) => {
                self.metrics.fenced.inc();
                tracing::warn!(reason = %why, "flush fenced: another consumer moved these partitions on; reloading offsets");
                self.reload_and_seek().await?;
                return Ok(());
            }
            Err(e) => return Err(e).context("write flush to redis"),
        }
        self.crash_if(CrashPoint::AfterRedis);
        self.metrics.flushes.inc();
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        for vf in &flush.views {
            if let Some(v) = self.pipeline.views().get(vf.view) {
                self.metrics
                    .applied
                    .get_or_create(&label("view", v.name.clone()))
                    .inc_by(vf.data.applied);
                self.metrics
                    .late_dropped
                    .get_or_create(&label("view", v.name.clone()))
                    .inc_by(vf.data.late_dropped);
            }
        }
        self.commit_advisory(&flush);
        self.publish_progress().await;
        Ok(())
    }

    async fn write_with_retry(&mut self, flush: &Flush) -> Result<(), SinkError> {
        let mut delay = Duration::from_millis(100);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .sink
                .write(flush, self.pipeline.views(), self.pipeline.inputs())
                .await
            {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, retry_in = ?delay, "redis write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Reads the offsets every view holds in Redis for the assigned partitions and seeks there.
    async fn reload_and_seek(&mut self) -> anyhow::Result<()> {
        let partitions: Vec<i32> = {
            let state = self
                .assignment
                .lock()
                .map_err(|_| anyhow::anyhow!("assignment lock poisoned"))?;
            state.partitions.keys().copied().collect()
        };
        let mut per_view = Vec::new();
        let names: Vec<String> = self
            .pipeline
            .views()
            .iter()
            .map(|v| v.name.clone())
            .collect();
        for v in &names {
            let stored = self.sink.load_offsets(v, &partitions).await?;
            per_view.push(
                stored
                    .into_iter()
                    .map(|s| s.map(|s| s.to_string()))
                    .collect::<Vec<_>>(),
            );
        }
        let mut progress = progress_from(&partitions, &per_view);
        let window = self.pipeline.dedup_window_ms();
        if window > 0 {
            let lateness = self.pipeline.allowed_lateness_ms();
            for (p, pp) in progress.iter_mut() {
                for (vi, vp) in pp.views.iter_mut().enumerate() {
                    let Some(stored) = vp.committed else { continue };
                    let slots = crate::dedup::slots_to_restore(
                        window,
                        stored.max_event_time_ms.saturating_sub(lateness),
                        stored.max_event_time_ms,
                    );
                    for (slot, ids) in self.sink.load_dedup(&names[vi], *p, slots).await? {
                        vp.dedup.restore(slot, ids);
                    }
                }
            }
        }
        for (p, pp) in &progress {
            if let Some(o) = pp.resume_offset()
                && let Err(e) = self.consumer.seek(
                    &self.config.source.topic,
                    *p,
                    Offset::Offset(o),
                    Duration::from_secs(10),
                )
            {
                tracing::warn!(partition = p, offset = o, error = %e, "seek failed");
            }
        }
        self.pipeline.reset(progress.clone());
        if let Ok(mut state) = self.assignment.lock() {
            state.partitions = progress;
            state.reload = false;
        }
        Ok(())
    }

    fn commit_advisory(&self, flush: &Flush) {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &flush.positions {
            let _ = tpl.add_partition_offset(&self.config.source.topic, *p, Offset::Offset(*next));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
            && !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))
        {
            tracing::debug!(error = %e, "advisory kafka commit failed");
        }
    }

    async fn publish_progress(&mut self) {
        let now = chrono::Utc::now().timestamp_millis();
        let lateness = self.config.speed.allowed_lateness.as_millis() as i64;
        let hw = self.high_watermarks.snapshot();
        for (p, high) in &hw {
            self.pipeline.set_high_watermark(*p, *high);
        }
        let mut fields = Vec::new();
        for (p, pp) in self.pipeline.partitions() {
            let next = pp.next_offset.or(pp.resume_offset());
            let mut entry = serde_json::json!({ "updated_ms": now });
            if let Some(n) = next {
                entry["next_offset"] = n.into();
            }
            if let Some(h) = pp.high_watermark {
                entry["high_watermark"] = h.into();
                let lag = (h - next.unwrap_or(0)).max(0);
                entry["lag_offsets"] = lag.into();
                self.metrics
                    .lag_offsets
                    .get_or_create(&label("partition", p.to_string()))
                    .set(lag);
            }
            if let Some(t) = pp.max_event_time_ms() {
                entry["max_event_time_ms"] = t.into();
                entry["watermark_ms"] = (t - lateness).into();
                self.metrics
                    .lag_event_seconds
                    .get_or_create(&label("partition", p.to_string()))
                    .set((now - t) as f64 / 1000.0);
            }
            fields.push((p.to_string(), entry.to_string()));
        }
        if let Err(e) = self.sink.write_progress(fields).await {
            tracing::debug!(error = %e, "cannot publish progress");
        }
        let counts: Vec<(&'static str, u64)> = self.dlq_counts.drain().collect();
        if let Err(e) = self.sink.count_dlq(&counts).await {
            tracing::debug!(error = %e, "cannot count dlq");
        }
    }

    fn crash_if(&mut self, point: CrashPoint) {
        if let Some((at, after)) = self.crash
            && at == point
            && self.flush_count >= after
        {
            tracing::error!(?point, "fault injection: exiting mid-flush");
            std::process::exit(101);
        }
    }
}
