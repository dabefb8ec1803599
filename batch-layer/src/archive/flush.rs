//! A flush, per partition: the files about to be written recorded as `pending` in its state,
//! the files, then the state moved past them (the commit point). A fenced or failed write
//! reloads the partition's state and reads it again from there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arrow::datatypes::SchemaRef;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, UpdateVersion};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tributary_shared::layout::paths;

use crate::master::RowBuffer;
use crate::state::{PartitionState, StateError, StateStore};

use super::Archiver;
use super::rebalance::recover_one;

/// Buffered rows and progress of one assigned partition.
pub(super) struct PartitionBuf {
    pub(super) state: PartitionState,
    pub(super) version: Option<UpdateVersion>,
    /// Rows per event hour (start ms).
    pub(super) hours: BTreeMap<i64, RowBuffer>,
    pub(super) next_offset: i64,
    pub(super) rows: usize,
    pub(super) invalid: u64,
    pub(super) dirty: bool,
    /// Read to the broker's end (no record since the last end-of-partition event).
    pub(super) at_end: bool,
}

/// Fault injection for tests: `TRIBUTARY_CRASH_AT=archive_before_state` exits after the data
/// files are written and before the state moves.
pub(super) fn crash_before_state() -> bool {
    std::env::var("TRIBUTARY_CRASH_AT").is_ok_and(|v| v == "archive_before_state")
}

impl Archiver {
    /// Writes every partition's buffered hours, then its state; refreshes idle partitions'
    /// states so the batch horizon can leave them out.
    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        self.flush_with(false).await
    }

    /// `closing`: the last flush before exit records every partition's newest end offset.
    pub(super) async fn flush_with(&mut self, closing: bool) -> anyhow::Result<()> {
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

    /// Reloads a partition's state (retrying while the store is unreachable), drops its
    /// buffered rows and seeks the consumer back to its commit point.
    pub(super) async fn reload_partition(&mut self, p: i32) -> anyhow::Result<()> {
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
                at_end: false,
            },
        );
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// One partition's flush: pending → files → state.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_partition(
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
