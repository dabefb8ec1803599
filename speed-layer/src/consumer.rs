//! `speed-layer run`: the Kafka consumer loop.
//!
//! Offsets live in Redis with the aggregates (see `redis_sink`). On assignment the consumer
//! seeks to them (`rebalance`); on a fenced flush it drops its buffer and re-reads them; when
//! a view's state is gone from Redis it is rebuilt from Kafka (`rebuild`). Nothing the
//! consumer meets stops it: an event that cannot be applied goes to the dead-letter topic, and
//! an unreachable Redis or broker is waited for, with the flush held back. Kafka commits are
//! advisory, for lag tools and the group watchdog.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tributary_shared::Config;
use tributary_shared::kafka::{GroupAction, GroupWatch, HighWatermarks};
use tributary_shared::layout::RedisKeys;

use crate::aggregate::{Flush, Outcome, Pipeline};
use crate::dlq::DeadLetters;
use crate::metrics::{SpeedMetrics, label};
use crate::progress::PartitionReport;
use crate::rebalance::{Assignment, SpeedContext, progress_from};
use crate::rebuild::{Reason, Rebuilder};
use crate::redis_sink::{RedisSink, SinkError};

/// How often the loop checks the views' epochs, the topic's partitions and the group.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often the topic's partition count is read from the broker.
const TOPIC_CHECK: Duration = Duration::from_secs(10);
/// How often the group watchdog looks for stalled partitions.
const GROUP_CHECK: Duration = Duration::from_secs(5);
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
    group: GroupWatch,
    /// A change of group membership in progress: its next step, and when (each step waits for
    /// the previous one's callbacks to run in `recv`).
    pending: Option<(Instant, Step)>,
    last_group_check: Instant,
    last_topic_check: Option<Instant>,
    /// The events topic's partition count as last seen.
    topic_partitions: i32,
    shutdown: watch::Receiver<bool>,
}

/// Checks the events topic exists and creates `<topic>.dlq` when missing; returns the events
/// topic's partition count and the DLQ's.
pub async fn ensure_topics(config: &Config) -> anyhow::Result<(i32, i32)> {
    let brokers = &config.source.brokers;
    let partitions =
        tributary_shared::kafka::topic_partitions(brokers, &config.source.topic).await?;
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
        let redis = redis::Client::open(crate::redis_url(&config)?).context("redis url")?;
        let keys = RedisKeys::new(config.redis.key_prefix.clone());
        let mut sink = RedisSink::connect(
            &redis,
            keys.clone(),
            config.source.topic.clone(),
            config.speed.retention,
        )
        .await
        .with_context(|| format!("connect to redis at {}", config.redis.url))?;
        crate::redis_sink::check_no_eviction(&mut sink.connection())
            .await
            .with_context(|| format!("redis at {}", config.redis.url))?;
        let rebuilder = Rebuilder::new(&config);
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
        let consumer: StreamConsumer<SpeedContext> =
            tributary_shared::kafka::client_config(&config.source)
                .set("group.id", config.source.speed_group())
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set(
                    "session.timeout.ms",
                    SESSION_TIMEOUT.as_millis().to_string(),
                )
                .set("statistics.interval.ms", "2000")
                // Bounded prefetch: a slow Redis slows consumption instead of growing memory.
                .set("queued.max.messages.kbytes", "32768")
                .set("fetch.max.bytes", "16777216")
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
            group: GroupWatch::new(config.source.topic.clone(), stall_after),
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
            pending: None,
            last_group_check: Instant::now(),
            last_topic_check: None,
            topic_partitions: partitions,
            shutdown,
        })
    }

    /// Consumes until shutdown, then flushes what is buffered and returns.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.config.speed.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_events = self.config.speed.flush_max_events;
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    self.sync_assignment().await?;
                    self.flush().await?;
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
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    let key = msg.key().map(<[u8]>::to_vec);
                    drop(msg);
                    self.sync_assignment().await?;
                    self.handle(partition, offset, &payload, key.as_deref()).await;
                    if self.pipeline.pending() >= max_events {
                        self.flush().await?;
                    }
                }
            }
        }
        tracing::info!("shutting down: flushing what is buffered");
        // Bounded drain, shorter than the session timeout; nothing is lost if it cannot
        // finish (the offsets in Redis did not move: the records are read again).
        match tokio::time::timeout(Duration::from_secs(8), self.flush()).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!(
                "final flush did not finish within 8 s (Redis or the broker unreachable); nothing is lost: the unflushed records are read again on the next start"
            ),
        }
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

    /// Writes what is buffered. Order: dead letters confirmed by the broker → Redis (atomic
    /// per view, with offsets) → advisory Kafka commit → progress for `/v1/status`.
    async fn flush(&mut self) -> anyhow::Result<()> {
        let Some(flush) = self.pipeline.take_flush() else {
            return Ok(());
        };
        let started = Instant::now();
        self.flush_count += 1;
        if let Err(e) = self.dead_letters.confirm(&self.shutdown).await {
            // Shutting down before the broker confirmed them: the flush must not land.
            anyhow::bail!("{e}; nothing is lost: their records are read again on the next start");
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
            Err(SinkError::Lost(why)) => {
                tracing::warn!(reason = %why, "a view's state is gone from redis: rebuilding it from kafka");
                self.rebuild_lost(Reason::Lost).await?;
                return Ok(());
            }
            Err(SinkError::Refused(why)) => {
                tracing::error!(reason = %why, "redis refused a flush: its state does not fit; rebuilding the view from kafka");
                self.rebuild_all(Reason::Corrupt).await?;
                return Ok(());
            }
            Err(e @ SinkError::Redis(_)) => {
                if *self.shutdown.borrow() {
                    anyhow::bail!(
                        "{e}; stopping: nothing is lost, the unflushed records are read again"
                    );
                }
                tracing::error!(error = %e, "flush failed; dropping the buffer and reading it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.reload_and_seek().await?;
                return Ok(());
            }
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

    /// Retries what can be retried (Redis unreachable, loading, failing over) for as long as
    /// it takes, unless shutting down: a slow Redis slows the speed layer, it does not stop it.
    async fn write_with_retry(&mut self, flush: &Flush) -> Result<(), SinkError> {
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            match self
                .sink
                .write(
                    flush,
                    self.pipeline.views(),
                    self.pipeline.inputs(),
                    &self.epochs,
                )
                .await
            {
                Err(e) if e.is_retryable() && !*self.shutdown.borrow() => {
                    attempts += 1;
                    self.metrics.redis_retries.inc();
                    if attempts == 1 || attempts.is_multiple_of(10) {
                        tracing::warn!(error = %e, attempts, retry_in = ?delay, "redis write failed; retrying (the flush is held back)");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Rebuilds every view whose epoch is gone (waiting for whoever rebuilds it), then reloads.
    async fn rebuild_lost(&mut self, reason: Reason) -> anyhow::Result<()> {
        let views = self.pipeline.views().to_vec();
        for (i, view) in views.iter().enumerate() {
            let epoch = self
                .retry_redis("rebuild a view", |this| {
                    let view = view.clone();
                    async move {
                        let mut con = this.sink.connection();
                        this.rebuilder
                            .ensure(&mut con, &view, reason)
                            .await
                            .map_err(|e| e.to_string())
                    }
                })
                .await?;
            if self.epochs.get(i) != Some(&epoch) {
                self.metrics
                    .rebuilds
                    .get_or_create(&label("view", view.name.clone()))
                    .inc();
            }
        }
        // The partition count went with the rest of Redis: sealing needs it back.
        if let Err(e) = self.sink.set_topic_partitions(self.topic_partitions).await {
            tracing::debug!(error = %e, "cannot record the topic's partition count");
        }
        self.reload_and_seek().await
    }

    /// Rebuilds every view from scratch (a refused flush: the state cannot be trusted).
    async fn rebuild_all(&mut self, reason: Reason) -> anyhow::Result<()> {
        let views = self.pipeline.views().to_vec();
        for view in &views {
            self.retry_redis("rebuild a view", |this| {
                let view = view.clone();
                async move {
                    let mut con = this.sink.connection();
                    this.rebuilder
                        .rebuild(&mut con, &view, reason, None)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await?;
        }
        self.reload_and_seek().await
    }

    /// Runs a Redis operation until it succeeds; errs only when shutting down.
    async fn retry_redis<'a, T, F, Fut>(&'a self, what: &str, f: F) -> anyhow::Result<T>
    where
        F: Fn(&'a Self) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut delay = Duration::from_millis(200);
        loop {
            match f(self).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if *self.shutdown.borrow() {
                        anyhow::bail!("{what}: {e}");
                    }
                    tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Re-reads every view's epoch and the offsets Redis holds for the assigned partitions,
    /// and seeks there; the buffer is dropped (its records are read again).
    async fn reload_and_seek(&mut self) -> anyhow::Result<()> {
        let partitions: Vec<i32> = {
            let state = self
                .assignment
                .lock()
                .map_err(|_| anyhow::anyhow!("assignment lock poisoned"))?;
            state.partitions.keys().copied().collect()
        };
        let views = self.pipeline.views().to_vec();
        let names: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
        let window = self.pipeline.dedup_window_ms();
        let lateness = self.pipeline.allowed_lateness_ms();
        let (epochs, progress) = self
            .retry_redis("reload offsets from redis", |this| {
                let (views, names, partitions) = (views.clone(), names.clone(), partitions.clone());
                async move {
                    let mut sink = this.sink.clone();
                    let mut con = sink.connection();
                    let mut epochs = Vec::new();
                    for view in &views {
                        epochs.push(
                            this.rebuilder
                                .ensure(&mut con, view, Reason::Lost)
                                .await
                                .map_err(|e| e.to_string())?,
                        );
                    }
                    let mut per_view = Vec::new();
                    for v in &names {
                        let stored = sink
                            .load_offsets(v, &partitions)
                            .await
                            .map_err(|e| e.to_string())?;
                        per_view.push(
                            stored
                                .into_iter()
                                .map(|s| s.map(|s| s.to_string()))
                                .collect::<Vec<_>>(),
                        );
                    }
                    let mut progress = progress_from(&partitions, &per_view);
                    if window > 0 {
                        for (p, pp) in progress.iter_mut() {
                            for (vi, vp) in pp.views.iter_mut().enumerate() {
                                let Some(stored) = vp.committed else { continue };
                                let slots = crate::dedup::slots_to_restore(
                                    window,
                                    stored.max_event_time_ms.saturating_sub(lateness),
                                    stored.max_event_time_ms,
                                );
                                let loaded = sink
                                    .load_dedup(&names[vi], *p, slots)
                                    .await
                                    .map_err(|e| e.to_string())?;
                                for (slot, ids) in loaded {
                                    vp.dedup.restore(slot, ids);
                                }
                            }
                        }
                    }
                    Ok((epochs, progress))
                }
            })
            .await?;
        self.epochs = epochs;
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

    /// Once a second: a view whose epoch changed or vanished while nothing flushed (Redis
    /// restarted empty on an idle topic); every few seconds the topic's partitions and the
    /// group watchdog.
    async fn housekeeping(&mut self) -> anyhow::Result<()> {
        let keys: Vec<String> = self
            .pipeline
            .views()
            .iter()
            .map(|v| self.sink.keys().epoch(&v.name))
            .collect();
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.get(k);
        }
        let current: Result<Vec<Option<String>>, _> =
            pipe.query_async(&mut self.sink.connection()).await;
        if let Ok(current) = current {
            let changed = current
                .iter()
                .zip(&self.epochs)
                .any(|(now, held)| now.as_ref() != Some(held));
            if changed {
                tracing::warn!(
                    "a view's state changed or vanished in redis: rebuilding / reloading"
                );
                self.rebuild_lost(Reason::Lost).await?;
            }
        }
        self.report_rebuilds().await;
        if self
            .last_topic_check
            .is_none_or(|t| t.elapsed() >= TOPIC_CHECK)
        {
            self.last_topic_check = Some(Instant::now());
            self.check_topic().await;
        }
        match self.pending.take() {
            Some((at, step)) if Instant::now() >= at => self.membership_step(step)?,
            Some(p) => self.pending = Some(p),
            None if self.last_group_check.elapsed() >= GROUP_CHECK => {
                self.last_group_check = Instant::now();
                self.watch_group();
            }
            None => {}
        }
        Ok(())
    }

    /// Leaves the group (to join it again, or to read every partition alone) when partitions
    /// nobody reads stalled; see `GroupWatch`.
    fn watch_group(&mut self) {
        let owned: HashSet<i32> = self
            .assignment
            .lock()
            .map(|s| s.partitions.keys().copied().collect())
            .unwrap_or_default();
        let consumer = &self.consumer;
        let group = &mut self.group;
        let action = tokio::task::block_in_place(|| group.check(consumer, &owned));
        let later = Instant::now() + Duration::from_secs(2);
        match action {
            GroupAction::Nothing => {}
            GroupAction::Rejoin(stalled) => {
                tracing::warn!(
                    ?stalled,
                    ?owned,
                    "partitions with unread records made no progress for a while and are not ours: leaving the consumer group to join it again (a stuck group assignment)"
                );
                self.metrics.group_rejoins.inc();
                self.consumer.unsubscribe();
                self.pending = Some((later, Step::Subscribe));
            }
            GroupAction::AssignAll(stalled) => {
                tracing::warn!(
                    ?stalled,
                    "rejoining the consumer group did not help: reading every partition without it for a while (flushes stay fenced by the offsets in Redis)"
                );
                self.metrics.group_rejoins.inc();
                self.consumer.unsubscribe();
                self.pending = Some((later, Step::AssignAll));
            }
            GroupAction::BackToGroup => {
                tracing::info!("giving the partitions back and joining the consumer group again");
                if let Err(e) = self.consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
                self.set_assignment(HashMap::new(), false);
                self.pending = Some((later, Step::Subscribe));
            }
        }
    }

    fn membership_step(&mut self, step: Step) -> anyhow::Result<()> {
        let topic = self.config.source.topic.clone();
        match step {
            Step::Subscribe => match self.consumer.subscribe(&[&topic]) {
                Ok(()) => tracing::info!("joined the consumer group again"),
                Err(e) => {
                    tracing::error!(error = %e, "subscribe again failed; retrying");
                    self.pending = Some((Instant::now() + Duration::from_secs(1), Step::Subscribe));
                }
            },
            Step::AssignAll => {
                // What a rebalance would do: positions from Redis, then the assignment.
                let consumer = &self.consumer;
                let group = &self.group;
                let (partitions, progress, reload, tpl) = tokio::task::block_in_place(|| {
                    let partitions = group.partitions(consumer);
                    let (progress, reload) = consumer.context().load(&partitions);
                    let tpl = consumer.context().positions(&partitions, &progress);
                    (partitions, progress, reload, tpl)
                });
                self.consumer
                    .assign(&tpl)
                    .context("assign every partition")?;
                self.set_assignment(progress, reload);
                tracing::warn!(
                    ?partitions,
                    "reading every partition without the consumer group"
                );
            }
        }
        Ok(())
    }

    /// Records an assignment made without the group (no rebalance callback runs for it).
    fn set_assignment(
        &mut self,
        partitions: HashMap<i32, crate::watermark::PartitionProgress>,
        reload: bool,
    ) {
        if let Ok(mut state) = self.assignment.lock() {
            state.generation += 1;
            state.partitions = partitions;
            state.reload = reload;
        }
    }

    /// The records each view's rebuild still has to apply, as a gauge (0: none running).
    async fn report_rebuilds(&mut self) {
        let keys = self.sink.keys().clone();
        let topic = self.config.source.topic.clone();
        let mut con = self.sink.connection();
        for view in self.pipeline.views() {
            if let Ok(state) = crate::view_state::read(&mut con, &keys, &topic, &view.name).await {
                self.metrics
                    .rebuild_remaining
                    .get_or_create(&label("view", view.name.clone()))
                    .set(state.rebuild_remaining());
            }
        }
    }

    /// Records the topic's partition count in Redis (sealing needs every partition) and grows
    /// the dead-letter topic with it.
    async fn check_topic(&mut self) {
        let topic = self.config.source.topic.clone();
        let brokers = self.config.source.brokers.clone();
        let Ok(n) = tributary_shared::kafka::topic_partitions(&brokers, &topic).await else {
            return;
        };
        if let Err(e) = self.sink.set_topic_partitions(n).await {
            tracing::debug!(error = %e, "cannot record the topic's partition count");
        }
        if n != self.topic_partitions {
            tracing::info!(
                topic = %topic,
                from = self.topic_partitions,
                to = n,
                "the events topic has a new partition count"
            );
            match tributary_shared::kafka::ensure_dlq(&self.config, n).await {
                Ok(d) => {
                    self.dead_letters.set_partitions(d);
                    self.topic_partitions = n;
                }
                Err(e) => tracing::warn!(error = %e, "cannot check the dead-letter topic"),
            }
        }
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
        let mut reports = Vec::new();
        for (p, pp) in self.pipeline.partitions() {
            let next = pp.next_offset.or(pp.resume_offset());
            let lag = pp.high_watermark.map(|h| (h - next.unwrap_or(0)).max(0));
            if let Some(lag) = lag {
                self.metrics
                    .lag_offsets
                    .get_or_create(&label("partition", p.to_string()))
                    .set(lag);
            }
            let max_time = pp.max_event_time_ms();
            if let Some(t) = max_time {
                self.metrics
                    .lag_event_seconds
                    .get_or_create(&label("partition", p.to_string()))
                    .set((now - t) as f64 / 1000.0);
            }
            reports.push((
                *p,
                PartitionReport {
                    updated_ms: now,
                    next_offset: next,
                    high_watermark: pp.high_watermark,
                    lag_offsets: lag,
                    max_event_time_ms: max_time,
                    watermark_ms: max_time.map(|t| t - lateness),
                },
            ));
        }
        let keys = self.sink.keys().clone();
        let topic = self.config.source.topic.clone();
        let mut con = self.sink.connection();
        if let Err(e) = crate::progress::publish(&mut con, &keys, &topic, &reports).await {
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

/// A step of a change of group membership.
#[derive(Debug, Clone, Copy)]
enum Step {
    Subscribe,
    AssignAll,
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
    /// Read from `TRIBUTARY_CRASH_AT=before_redis|after_redis[@N]` (tests only).
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
