//! `batch-layer archive`: the topic → the Parquet master dataset, each record once.
//!
//! A flush, per partition: record the files about to be written in the state's `pending`,
//! write them (one per event hour), then move `committed_offset` past them. The state file is
//! the commit point; on assignment the archiver deletes pending files a crash left behind and
//! resumes from `committed_offset`. Kafka offsets are committed after the state, for lag tools.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::datatypes::SchemaRef;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, UpdateVersion};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio::sync::watch;
use tributary_shared::event::{EventSchema, check_future_skew};
use tributary_shared::kafka::{GroupAction, GroupWatch, HighWatermarks};
use tributary_shared::layout::paths;
use tributary_shared::{Config, Granularity};

use crate::master::{RowBuffer, master_schema};
use crate::state::{PartitionState, StateError, StateStore};

/// A partition's state as loaded at assignment.
#[derive(Clone)]
struct Loaded {
    state: PartitionState,
    version: Option<UpdateVersion>,
}

#[derive(Default)]
struct Assignment {
    generation: u64,
    partitions: HashMap<i32, Loaded>,
    error: Option<String>,
}

struct ArchiveContext {
    states: StateStore,
    store: Arc<dyn ObjectStore>,
    topic: String,
    runtime: tokio::runtime::Handle,
    assignment: Arc<Mutex<Assignment>>,
    high_watermarks: HighWatermarks,
}

impl ClientContext for ArchiveContext {
    fn stats(&self, statistics: Statistics) {
        self.high_watermarks.record(&statistics, &self.topic);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // `enable.partition.eof` (how the archive learns a partition is caught up) also
        // reports each end of partition through this callback: normal, not an error.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(reason, "end of partition");
        } else {
            tracing::error!(%error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for ArchiveContext {
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
        state.partitions.clear();
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            tracing::info!("archive partitions revoked");
            if let Err(e) = base.unassign() {
                tracing::error!(error = %e, "unassign failed");
            }
            return;
        }
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        // The state lives in the object store (async); this callback runs on a runtime worker,
        // so it blocks in place while loading.
        let loaded = tokio::task::block_in_place(|| {
            self.runtime
                .block_on(recover(&self.states, &self.store, &self.topic, &partitions))
        });
        match loaded {
            Ok(loaded) => {
                for (p, l) in &loaded {
                    let _ = tpl.set_partition_offset(
                        &self.topic,
                        *p,
                        Offset::Offset(l.state.committed_offset),
                    );
                }
                state.partitions = loaded;
                state.error = None;
            }
            Err(e) => state.error = Some(format!("{e:#}")),
        }
        tracing::info!(?partitions, "archive partitions assigned");
        if let Err(e) = base.assign(tpl) {
            tracing::error!(error = %e, "assign failed");
        }
    }
}

/// Loads each partition's state and deletes the files a crashed flush left pending.
async fn recover(
    states: &StateStore,
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, Loaded>> {
    let mut out = HashMap::new();
    for p in partitions {
        out.insert(*p, recover_one(states, store, topic, *p).await?);
    }
    Ok(out)
}

/// One partition's state, with the files beyond its commit point removed. The state is
/// written first (pending cleared, from the version read), the files deleted after: if
/// another archiver still writes this partition (a group that handed it to two members), its
/// commit is fenced by that write, so no committed file is ever deleted.
async fn recover_one(
    states: &StateStore,
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    p: i32,
) -> anyhow::Result<Loaded> {
    for _ in 0..10 {
        let (mut state, mut version) = match states.load(p).await? {
            Some((s, v)) => (s, Some(v)),
            None => (PartitionState::default(), None),
        };
        if !state.pending.is_empty() {
            let pending = std::mem::take(&mut state.pending);
            match states.save(p, &state, version).await {
                Ok(v) => version = Some(v),
                // Changed under us: read it again.
                Err(StateError::Fenced(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            for file in &pending {
                match store.delete(&Path::from(file.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(partition = p, file = %file, error = %e,
                            "cannot delete a file beyond the commit point; readers ignore it");
                        continue;
                    }
                }
                tracing::warn!(partition = p, file = %file, "removed a file beyond the commit point");
            }
        }
        tracing::debug!(
            topic,
            partition = p,
            committed = state.committed_offset,
            "archive state loaded"
        );
        return Ok(Loaded { state, version });
    }
    anyhow::bail!("partition {p}: its state keeps changing under this archiver")
}

/// Buffered rows and progress of one assigned partition.
struct PartitionBuf {
    state: PartitionState,
    version: Option<UpdateVersion>,
    /// Rows per event hour (start ms).
    hours: BTreeMap<i64, RowBuffer>,
    next_offset: i64,
    rows: usize,
    invalid: u64,
    dirty: bool,
}

/// Fault injection for tests: `TRIBUTARY_CRASH_AT=archive_before_state` exits after the data
/// files are written and before the state moves.
fn crash_before_state() -> bool {
    std::env::var("TRIBUTARY_CRASH_AT").is_ok_and(|v| v == "archive_before_state")
}

/// The archiver.
pub struct Archiver {
    config: Config,
    consumer: StreamConsumer<ArchiveContext>,
    store: Arc<dyn ObjectStore>,
    states: StateStore,
    schema: EventSchema,
    arrow_schema: SchemaRef,
    assignment: Arc<Mutex<Assignment>>,
    high_watermarks: HighWatermarks,
    generation: u64,
    partitions: HashMap<i32, PartitionBuf>,
    metrics: Arc<crate::metrics::BatchMetrics>,
    group: GroupWatch,
    /// A change of group membership in progress: its next step, and when (each step waits for
    /// the previous one's callbacks to run in `recv`).
    pending: Option<(Instant, Step)>,
    last_group_check: Instant,
    last_topic_check: Option<Instant>,
    /// The topic's partition count as last recorded in `_state/topic.json`.
    topic_partitions: Option<i32>,
    shutdown: watch::Receiver<bool>,
}

/// Kafka session timeout of the archive consumers: long enough that a broker stalling for
/// a few seconds under load does not expire live members, short enough that a dead
/// archiver's partitions move on soon (heartbeats run on librdkafka's own thread, so a long
/// flush needs no longer one).
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the topic's partition count is read and recorded.
const TOPIC_CHECK: Duration = Duration::from_secs(10);
/// How often the group watchdog looks for stalled partitions.
const GROUP_CHECK: Duration = Duration::from_secs(5);

impl Archiver {
    pub async fn new(
        config: Config,
        store: Arc<dyn ObjectStore>,
        metrics: Arc<crate::metrics::BatchMetrics>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let topic = config.source.topic.clone();
        let states = StateStore::new(store.clone(), topic.clone());
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let high_watermarks = HighWatermarks::default();
        let context = ArchiveContext {
            states: states.clone(),
            store: store.clone(),
            topic: topic.clone(),
            runtime: tokio::runtime::Handle::current(),
            assignment: assignment.clone(),
            high_watermarks: high_watermarks.clone(),
        };
        let consumer: StreamConsumer<ArchiveContext> =
            tributary_shared::kafka::client_config(&config.source)
                .set("group.id", config.source.archive_group())
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set(
                    "session.timeout.ms",
                    SESSION_TIMEOUT.as_millis().to_string(),
                )
                .set("statistics.interval.ms", "2000")
                // Reaching a partition's end tells its end offset at once (statistics lag), so a
                // caught-up partition can be seen idle by the batch horizon.
                .set("enable.partition.eof", "true")
                .set("queued.max.messages.kbytes", "65536")
                .set("fetch.max.bytes", "16777216")
                .create_with_context(context)
                .context("create kafka consumer")?;
        tributary_shared::kafka::topic_partitions(&config.source.brokers, &topic).await?;
        consumer
            .subscribe(&[&topic])
            .with_context(|| format!("subscribe to {topic}"))?;
        let schema = EventSchema::from_config(&config);
        let arrow_schema = master_schema(&schema);
        // An owner commits at least every flush interval; a partition with unread records
        // whose committed offset stands still much longer than that has no live owner.
        let stall_after = SESSION_TIMEOUT * 2 + config.batch.archive_flush_interval * 2;
        Ok(Archiver {
            group: GroupWatch::new(topic.clone(), stall_after),
            pending: None,
            last_group_check: Instant::now(),
            last_topic_check: None,
            topic_partitions: None,
            shutdown,
            config,
            consumer,
            store,
            states,
            schema,
            arrow_schema,
            assignment,
            high_watermarks,
            generation: 0,
            partitions: HashMap::new(),
            metrics,
        })
    }

    /// Archives until shutdown, then flushes and returns.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut shutdown = self.shutdown.clone();
        let interval = self.config.batch.archive_flush_interval;
        let mut tick = tokio::time::interval(interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    self.sync_assignment()?;
                    if last_flush.elapsed() >= interval {
                        self.flush().await?;
                        last_flush = Instant::now();
                    }
                    self.housekeeping().await;
                }
                msg = self.consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                            self.sync_assignment()?;
                            if let Some(buf) = self.partitions.get(&p) {
                                self.high_watermarks.observe(p, buf.next_offset);
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka consume error");
                            continue;
                        }
                    };
                    let (p, o) = (msg.partition(), msg.offset());
                    let payload = msg.payload().unwrap_or_default().to_vec();
                    drop(msg);
                    self.sync_assignment()?;
                    self.handle(p, o, &payload);
                    let buffered: usize = self.partitions.values().map(|b| b.rows).sum();
                    if buffered >= self.config.batch.archive_max_rows {
                        self.flush().await?;
                        last_flush = Instant::now();
                    }
                }
            }
        }
        tracing::info!("shutting down: flushing the archive");
        self.flush_with(true).await
    }

    fn sync_assignment(&mut self) -> anyhow::Result<()> {
        let state = self
            .assignment
            .lock()
            .map_err(|_| anyhow::anyhow!("assignment lock poisoned"))?;
        if let Some(e) = &state.error {
            anyhow::bail!("cannot recover the archive state: {e}");
        }
        if state.generation == self.generation {
            return Ok(());
        }
        self.generation = state.generation;
        // Buffered rows of revoked partitions are dropped: the next owner re-reads them.
        self.partitions = state
            .partitions
            .iter()
            .map(|(p, l)| {
                (
                    *p,
                    PartitionBuf {
                        state: l.state.clone(),
                        version: l.version.clone(),
                        hours: BTreeMap::new(),
                        next_offset: l.state.committed_offset,
                        rows: 0,
                        invalid: 0,
                        dirty: false,
                    },
                )
            })
            .collect();
        Ok(())
    }

    fn handle(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        self.metrics.archive_records.inc();
        let Some(buf) = self.partitions.get_mut(&partition) else {
            return;
        };
        if offset < buf.next_offset {
            return; // archived already
        }
        buf.next_offset = offset + 1;
        buf.dirty = true;
        buf.state.last_record_ms = Some(chrono::Utc::now().timestamp_millis());
        let now = chrono::Utc::now().timestamp_millis();
        let skew = self.config.speed.max_future_skew.as_millis() as i64;
        let event = match self.schema.parse(payload) {
            Ok(e) if check_future_skew(&e, now, skew).is_ok() => e,
            // Invalid events are the speed layer's DLQ's; here they are only counted.
            _ => {
                buf.invalid += 1;
                self.metrics.archive_invalid.inc();
                return;
            }
        };
        // Parsed as JSON, so the bytes are UTF-8.
        let text = std::str::from_utf8(payload).unwrap_or_default();
        let hour = Granularity::Hour.floor(event.event_time_ms);
        buf.hours
            .entry(hour)
            .or_insert_with(|| RowBuffer::new(&self.schema))
            .push(&event, partition, offset, text);
        buf.rows += 1;
        let t = event.event_time_ms;
        buf.state.max_event_time_ms = Some(buf.state.max_event_time_ms.map_or(t, |m| m.max(t)));
    }

    /// Writes every partition's buffered hours, then its state; refreshes idle partitions'
    /// states so the batch horizon can leave them out.
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.flush_with(false).await
    }

    /// `closing`: the last flush before exit records every partition's newest end offset.
    async fn flush_with(&mut self, closing: bool) -> anyhow::Result<()> {
        let started = Instant::now();
        if closing {
            // The end offsets may not be known yet (statistics every 2 s, the end-of-partition
            // event still queued): ask the broker, so the last state says whether the
            // partition was read to its end.
            let topic = self.config.source.topic.clone();
            let partitions: Vec<i32> = self.partitions.keys().copied().collect();
            let consumer = &self.consumer;
            let hw = &self.high_watermarks;
            tokio::task::block_in_place(|| {
                for p in partitions {
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(&topic, p, Duration::from_secs(5))
                    {
                        hw.observe(p, high);
                    }
                }
            });
        }
        let hw = self.high_watermarks.snapshot();
        let lateness = self.config.speed.allowed_lateness.as_millis() as i64;
        let idle_ms = self.config.batch.idle_timeout.as_millis() as i64;
        let topic = self.config.source.topic.clone();
        let mut commits = TopicPartitionList::new();
        let mut written_rows = 0usize;
        let mut fenced = Vec::new();
        for (p, buf) in self.partitions.iter_mut() {
            let now = chrono::Utc::now().timestamp_millis();
            let high = hw.get(p).copied();
            let refresh = high != buf.state.high_watermark
                && (closing || now - buf.state.updated_ms >= idle_ms / 4);
            if !buf.dirty && !refresh {
                continue;
            }
            let hours = std::mem::take(&mut buf.hours);
            let mut files = Vec::with_capacity(hours.len());
            for (hour, rows) in hours {
                let path =
                    paths::master_file(&topic, hour, *p, rows.first_offset, rows.last_offset);
                files.push((path, rows));
            }
            let result = write_partition(
                &self.states,
                &self.store,
                &self.arrow_schema,
                *p,
                buf,
                files,
                high,
                lateness,
            )
            .await;
            match result {
                Ok(n) => {
                    written_rows += n;
                    let _ = commits.add_partition_offset(
                        &topic,
                        *p,
                        Offset::Offset(buf.state.committed_offset),
                    );
                }
                Err(WriteError::State(StateError::Fenced(_))) => {
                    tracing::warn!(
                        partition = *p,
                        "archive state changed by another archiver: reloading it and resuming from its commit point"
                    );
                    self.metrics.archive_fenced.inc();
                    fenced.push(*p);
                }
                Err(e) => {
                    if closing {
                        return Err(anyhow::anyhow!(e)).context(
                            "archive flush failed while stopping; nothing is lost: the records are read again on the next start",
                        );
                    }
                    tracing::error!(partition = p, error = %e,
                        "archive flush failed; dropping the partition's buffer and reading it again from its commit point");
                    self.metrics.archive_flush_errors.inc();
                    fenced.push(*p);
                }
            }
        }
        // Never dropped: reloaded from the store and read again from the commit point.
        for p in fenced {
            self.reload_partition(p).await?;
        }
        if commits.count() > 0 {
            if let Err(e) = self.consumer.commit(&commits, CommitMode::Async) {
                tracing::debug!(error = %e, "advisory kafka commit failed");
            }
            self.metrics.archive_rows.inc_by(written_rows as u64);
            self.metrics
                .archive_flush_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                rows = written_rows,
                secs = started.elapsed().as_secs_f64(),
                "archive flushed"
            );
        }
        Ok(())
    }
}

impl Archiver {
    /// Reloads a partition's state (retrying while the store is unreachable), drops its
    /// buffered rows and seeks the consumer back to its commit point.
    async fn reload_partition(&mut self, p: i32) -> anyhow::Result<()> {
        let topic = self.config.source.topic.clone();
        let mut delay = Duration::from_millis(200);
        let loaded = loop {
            match recover_one(&self.states, &self.store, &topic, p).await {
                Ok(l) => break l,
                Err(e) => {
                    if *self.shutdown.borrow() {
                        return Err(e).context("reload the archive state while stopping");
                    }
                    tracing::warn!(partition = p, error = %format!("{e:#}"), retry_in = ?delay,
                        "cannot reload the archive state; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let committed = loaded.state.committed_offset;
        if let Err(e) = self.consumer.seek(
            &topic,
            p,
            Offset::Offset(committed),
            Duration::from_secs(10),
        ) {
            // Not assigned any more (a rebalance): the next owner starts from the state.
            tracing::warn!(partition = p, error = %e, "seek back to the commit point failed");
            self.partitions.remove(&p);
            return Ok(());
        }
        self.partitions.insert(
            p,
            PartitionBuf {
                state: loaded.state,
                version: loaded.version,
                hours: BTreeMap::new(),
                next_offset: committed,
                rows: 0,
                invalid: 0,
                dirty: false,
            },
        );
        Ok(())
    }

    /// Every second: the group watchdog and, every few seconds, the topic's partition count.
    async fn housekeeping(&mut self) {
        if self
            .last_topic_check
            .is_none_or(|t| t.elapsed() >= TOPIC_CHECK)
        {
            self.last_topic_check = Some(Instant::now());
            let (brokers, topic) = (
                self.config.source.brokers.clone(),
                self.config.source.topic.clone(),
            );
            if let Ok(n) = tributary_shared::kafka::topic_partitions(&brokers, &topic).await
                && self.topic_partitions != Some(n)
            {
                match self.states.save_topic(n).await {
                    Ok(()) => self.topic_partitions = Some(n),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot record the topic's partition count")
                    }
                }
            }
        }
        match self.pending.take() {
            Some((at, step)) if Instant::now() >= at => self.membership_step(step).await,
            Some(p) => self.pending = Some(p),
            None if self.last_group_check.elapsed() >= GROUP_CHECK => {
                self.last_group_check = Instant::now();
                self.watch_group();
            }
            None => {}
        }
    }

    /// Leaves the group (to join it again, or to read every partition alone) when partitions
    /// nobody reads stalled; see `GroupWatch`.
    fn watch_group(&mut self) {
        let owned: std::collections::HashSet<i32> = self.partitions.keys().copied().collect();
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
                    "partitions with unread records made no progress for a while and are not ours: leaving the archive group to join it again (a stuck group assignment)"
                );
                self.metrics.archive_group_rejoins.inc();
                self.consumer.unsubscribe();
                self.pending = Some((later, Step::Subscribe));
            }
            GroupAction::AssignAll(stalled) => {
                tracing::warn!(
                    ?stalled,
                    "rejoining the archive group did not help: reading every partition without it for a while (state writes stay conditional)"
                );
                self.metrics.archive_group_rejoins.inc();
                self.consumer.unsubscribe();
                self.pending = Some((later, Step::AssignAll));
            }
            GroupAction::BackToGroup => {
                tracing::info!("giving the partitions back and joining the archive group again");
                if let Err(e) = self.consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
                self.set_assignment(HashMap::new());
                self.pending = Some((later, Step::Subscribe));
            }
        }
    }

    async fn membership_step(&mut self, step: Step) {
        let topic = self.config.source.topic.clone();
        match step {
            Step::Subscribe => match self.consumer.subscribe(&[&topic]) {
                Ok(()) => tracing::info!("joined the archive group again"),
                Err(e) => {
                    tracing::error!(error = %e, "subscribe again failed; retrying");
                    self.pending = Some((Instant::now() + Duration::from_secs(1), Step::Subscribe));
                }
            },
            Step::AssignAll => {
                let consumer = &self.consumer;
                let group = &self.group;
                let partitions = tokio::task::block_in_place(|| group.partitions(consumer));
                // What a rebalance would do: the states (pending files cleared), then assign.
                let loaded = match recover(&self.states, &self.store, &topic, &partitions).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot load the archive states; retrying");
                        self.pending =
                            Some((Instant::now() + Duration::from_secs(2), Step::AssignAll));
                        return;
                    }
                };
                let mut tpl = TopicPartitionList::new();
                for (p, l) in &loaded {
                    let _ = tpl.add_partition_offset(
                        &topic,
                        *p,
                        Offset::Offset(l.state.committed_offset),
                    );
                }
                if let Err(e) = self.consumer.assign(&tpl) {
                    tracing::error!(error = %e, "assign every partition failed; retrying");
                    self.pending = Some((Instant::now() + Duration::from_secs(2), Step::AssignAll));
                    return;
                }
                self.set_assignment(loaded);
                tracing::warn!(
                    ?partitions,
                    "archiving every partition without the consumer group"
                );
            }
        }
    }

    /// Records an assignment made without the group (no rebalance callback runs for it).
    fn set_assignment(&mut self, partitions: HashMap<i32, Loaded>) {
        if let Ok(mut state) = self.assignment.lock() {
            state.generation += 1;
            state.partitions = partitions;
            state.error = None;
        }
    }
}

/// A step of a change of group membership.
#[derive(Debug, Clone, Copy)]
enum Step {
    Subscribe,
    AssignAll,
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// One partition's flush: pending → files → state.
#[allow(clippy::too_many_arguments)]
async fn write_partition(
    states: &StateStore,
    store: &Arc<dyn ObjectStore>,
    schema: &SchemaRef,
    partition: i32,
    buf: &mut PartitionBuf,
    files: Vec<(Path, RowBuffer)>,
    high: Option<i64>,
    lateness_ms: i64,
) -> Result<usize, WriteError> {
    if !files.is_empty() {
        buf.state.pending = files.iter().map(|(p, _)| p.to_string()).collect();
        buf.state.updated_ms = chrono::Utc::now().timestamp_millis();
        buf.version = Some(
            states
                .save(partition, &buf.state, buf.version.take())
                .await?,
        );
    }
    let mut rows = 0;
    let encoded: Vec<(Path, Vec<u8>)> = files
        .into_iter()
        .map(|(path, r)| {
            rows += r.len();
            r.into_parquet(schema.clone()).map(|b| (path, b))
        })
        .collect::<Result<_, _>>()?;
    let puts = encoded.into_iter().map(|(path, bytes)| {
        let store = store.clone();
        async move { store.put(&path, bytes.into()).await }
    });
    for r in futures::future::join_all(puts).await {
        r?;
    }
    if rows > 0 && crash_before_state() {
        tracing::error!("fault injection: exiting after the files, before the state");
        std::process::exit(101);
    }
    buf.state.pending.clear();
    buf.state.committed_offset = buf.next_offset;
    buf.state.watermark_ms = buf.state.max_event_time_ms.map(|m| m - lateness_ms);
    buf.state.high_watermark = high.or(buf.state.high_watermark);
    buf.state.rows += rows as u64;
    buf.state.invalid += std::mem::take(&mut buf.invalid);
    buf.state.updated_ms = chrono::Utc::now().timestamp_millis();
    buf.version = Some(
        states
            .save(partition, &buf.state, buf.version.take())
            .await?,
    );
    buf.rows = 0;
    buf.dirty = false;
    Ok(rows)
}
