//! A flush: dead letters confirmed by the broker, then Redis (atomic per view, with its
//! offsets), then the advisory Kafka commit and the progress report. What Redis refuses goes
//! to `recovery`; what it cannot answer is retried with backoff, the flush held back.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::SpeedConsumer;
use crate::aggregate::Flush;
use crate::metrics::label;
use crate::rebuild::Reason;
use crate::redis_sink::SinkError;

impl SpeedConsumer {
    /// Writes what is buffered. Order: dead letters confirmed by the broker → Redis (atomic
    /// per view, with offsets) → advisory Kafka commit → progress for `/v1/status`.
    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        let buffered_since = self.buffered_since.take();
        let Some(flush) = self.pipeline.take_flush() else {
            return Ok(());
        };
        if let Some(t) = buffered_since {
            self.metrics
                .buffer_wait_seconds
                .observe(t.elapsed().as_secs_f64());
        }
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
        // Progress and the advisory commit at most once per `flush_interval`: idle flushes can
        // come every few milliseconds, and neither needs to be fresher (the tick publishes
        // what a quiet spell left behind).
        for (p, next) in flush.positions {
            self.unpublished.insert(p, next);
        }
        if self
            .last_published
            .is_none_or(|t| t.elapsed() >= self.config.speed.flush_interval)
        {
            self.publish().await;
        }
        Ok(())
    }

    /// The advisory Kafka commit of the positions flushed since the last one, and the
    /// progress report.
    pub(super) async fn publish(&mut self) {
        self.last_published = Some(Instant::now());
        self.commit_advisory();
        self.publish_progress().await;
    }

    /// Retries what can be retried (Redis unreachable, loading, failing over) for as long as
    /// it takes, unless shutting down: a slow Redis slows the speed layer, it does not stop it.
    pub(super) async fn write_with_retry(&mut self, flush: &Flush) -> Result<(), SinkError> {
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

    fn commit_advisory(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in self.unpublished.drain() {
            let _ = tpl.add_partition_offset(&self.config.source.topic, p, Offset::Offset(next));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
            && !matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))
        {
            tracing::debug!(error = %e, "advisory kafka commit failed");
        }
    }

    pub(super) fn crash_if(&mut self, point: CrashPoint) {
        if let Some((at, after)) = self.crash
            && at == point
            && self.flush_count >= after
        {
            tracing::error!(?point, "fault injection: exiting mid-flush");
            std::process::exit(101);
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
    /// Read from `TRIBUTARY_CRASH_AT=before_redis|after_redis[@N]` (tests only).
    pub(super) fn from_env() -> Option<(CrashPoint, u64)> {
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
