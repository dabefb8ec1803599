//! `batch-layer archive`: the topic → the Parquet master dataset, each record once.
//!
//! A flush, per partition: record the files about to be written in the state's `pending`,
//! write them (one per event hour), then move `committed_offset` past them. The state file is
//! the commit point; on assignment the archiver deletes pending files a crash left behind and
//! resumes from `committed_offset`. Kafka offsets are committed after the state, for lag tools.
//!
//! Here: the loop and one record. Beside it: [`rebalance`] (assignment, recovery of a
//! partition's state) and [`flush`] (pending → files → state, fenced reloads).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::datatypes::SchemaRef;
use object_store::ObjectStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tributary_shared::event::{EventSchema, check_future_skew};
use tributary_shared::kafka::{HighWatermarks, Membership, MembershipEvent};
use tributary_shared::{Config, Granularity};

use crate::master::{RowBuffer, master_schema};
use crate::state::StateStore;

mod flush;
mod rebalance;

use flush::PartitionBuf;
use rebalance::{ArchiveContext, Assignment, Loaded, recover};

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
    membership: Membership,
    last_topic_check: Option<Instant>,
    /// The topic's partition count as last recorded in `_state/topic.json`.
    topic_partitions: Option<i32>,
    /// A backlog was seen since the last time the archive caught up (see [`BACKLOG_SHARE`]).
    catching_up: bool,
    shutdown: watch::Receiver<bool>,
}

/// Kafka session timeout of the archive consumers: long enough that a broker stalling for
/// a few seconds under load does not expire live members, short enough that a dead
/// archiver's partitions move on soon (heartbeats run on librdkafka's own thread, so a long
/// flush needs no longer one).
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the topic's partition count is read and recorded.
const TOPIC_CHECK: Duration = Duration::from_secs(10);
/// A backlog is at least `archive_max_rows / BACKLOG_SHARE` records behind the broker's end.
/// Having read one to the end, the archive flushes at once instead of at the next interval
/// (a restart's or a burst's rows are in the master a flush interval sooner; measured, that
/// wait was 4 % of reading a million records at the old 1 s interval, and most of it at the
/// default 10 s). A consumer keeping up is never that far behind, so its files keep their
/// size: one per interval. The backlog is known from the statistics (every 2 s): one read
/// within the first seconds waits for the interval as before.
const BACKLOG_SHARE: usize = 5;

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
        let consumer: StreamConsumer<ArchiveContext> = tributary_shared::kafka::consumer_config(
            &config.source,
            &config.source.archive_group(),
            SESSION_TIMEOUT,
        )
        // Reaching a partition's end tells its end offset at once (statistics lag), so a
        // caught-up partition can be seen idle by the batch horizon.
        .set("enable.partition.eof", "true")
        .set("queued.max.messages.kbytes", "65536")
        .set("fetch.max.bytes", "16777216")
        .create_with_context(context)
        .context("create kafka consumer")?;
        tributary_shared::kafka::topic_partitions(&config.source, &topic).await?;
        consumer
            .subscribe(&[&topic])
            .with_context(|| format!("subscribe to {topic}"))?;
        let schema = EventSchema::from_config(&config);
        let arrow_schema = master_schema(&schema);
        // An owner commits at least every flush interval; a partition with unread records
        // whose committed offset stands still much longer than that has no live owner.
        let stall_after = SESSION_TIMEOUT * 2 + config.batch.archive_flush_interval * 2;
        Ok(Archiver {
            membership: Membership::new(topic.clone(), stall_after, "archive"),
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
            catching_up: false,
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
                    self.catching_up |= self.backlog()
                        >= self.config.batch.archive_max_rows / BACKLOG_SHARE;
                    // Measured from the last flush's start: from its end, a flush taking
                    // longer than a tick's slack waited a whole extra tick (a 1 s interval
                    // flushed every 2 s).
                    if last_flush.elapsed() >= interval {
                        last_flush = Instant::now();
                        self.flush().await?;
                    }
                    self.housekeeping().await;
                }
                msg = self.consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                            self.sync_assignment()?;
                            if let Some(buf) = self.partitions.get_mut(&p) {
                                buf.at_end = true;
                                self.high_watermarks.observe(p, buf.next_offset);
                            }
                            // At most once per backlog read: one flush per a fifth of
                            // `archive_max_rows` records at the most, even for a stream
                            // that falls that far behind again and again.
                            if self.catching_up && self.partitions.values().all(|b| b.at_end) {
                                self.catching_up = false;
                                last_flush = Instant::now();
                                self.flush().await?;
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
                        last_flush = Instant::now();
                        self.flush().await?;
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
        // A backlog seen before belongs to the old assignment.
        self.catching_up = false;
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
                        at_end: false,
                    },
                )
            })
            .collect();
        Ok(())
    }

    /// Records between the assigned partitions' positions and their ends (as of the last
    /// statistics).
    fn backlog(&self) -> usize {
        let ends = self.high_watermarks.snapshot();
        self.partitions
            .iter()
            .filter_map(|(p, b)| ends.get(p).map(|end| (end - b.next_offset).max(0) as usize))
            .sum()
    }

    fn handle(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        self.metrics.archive_records.inc();
        let Some(buf) = self.partitions.get_mut(&partition) else {
            return;
        };
        buf.at_end = false;
        if offset < buf.next_offset {
            return; // archived already
        }
        buf.next_offset = offset + 1;
        buf.dirty = true;
        let now = chrono::Utc::now().timestamp_millis();
        buf.state.last_record_ms = Some(now);
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

    /// Every second: the group watchdog and, every few seconds, the topic's partition count.
    async fn housekeeping(&mut self) {
        if self
            .last_topic_check
            .is_none_or(|t| t.elapsed() >= TOPIC_CHECK)
        {
            self.last_topic_check = Some(Instant::now());
            let topic = self.config.source.topic.clone();
            if let Ok(n) =
                tributary_shared::kafka::topic_partitions(&self.config.source, &topic).await
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
        self.watch_group().await;
    }

    /// Leaves the group (to join it again, or to read every partition alone) when partitions
    /// nobody reads stalled; see `Membership`.
    async fn watch_group(&mut self) {
        let owned: HashSet<i32> = self.partitions.keys().copied().collect();
        match self.membership.tick(&self.consumer, &owned) {
            MembershipEvent::Nothing => {}
            MembershipEvent::Left => {
                self.metrics.archive_group_rejoins.inc();
            }
            MembershipEvent::GaveBack => self.set_assignment(HashMap::new()),
            MembershipEvent::AssignAll(partitions) => {
                // What a rebalance would do: the states (pending files cleared), then assign.
                let topic = self.config.source.topic.clone();
                let loaded = match recover(&self.states, &self.store, &topic, &partitions).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot load the archive states; retrying");
                        self.membership.retry_assign_all();
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
                match self.consumer.assign(&tpl) {
                    Ok(()) => self.set_assignment(loaded),
                    Err(e) => {
                        tracing::error!(error = %e, "assign every partition failed; retrying");
                        self.membership.retry_assign_all();
                    }
                }
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
