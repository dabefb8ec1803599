//! When Redis refuses a flush: fenced (another consumer moved on) → reload the offsets and
//! seek; lost (the view's epoch is gone) → rebuild from Kafka; refused (the state does not
//! fit) → rebuild from scratch. The buffer is dropped each time: its records are read again.

use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;

use super::SpeedConsumer;
use crate::metrics::label;
use crate::rebalance::progress_from;
use crate::rebuild::Reason;

impl SpeedConsumer {
    /// Rebuilds every view whose epoch is gone (waiting for whoever rebuilds it), then reloads.
    pub(super) async fn rebuild_lost(&mut self, reason: Reason) -> anyhow::Result<()> {
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
        self.reload_and_seek().await.map(drop)
    }

    /// Rebuilds every view from scratch (a refused flush: the state cannot be trusted).
    pub(super) async fn rebuild_all(&mut self, reason: Reason) -> anyhow::Result<()> {
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
        self.reload_and_seek().await.map(drop)
    }

    /// Runs a Redis operation until it succeeds; errs only when shutting down.
    pub(super) async fn retry_redis<'a, T, F, Fut>(&'a self, what: &str, f: F) -> anyhow::Result<T>
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
    /// and seeks there; the buffer is dropped (its records are read again). Returns the
    /// partitions sought: a record of theirs received before the seek comes again after it.
    pub(super) async fn reload_and_seek(&mut self) -> anyhow::Result<Vec<i32>> {
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
        let mut sought = Vec::new();
        for (p, pp) in &progress {
            let Some(o) = pp.resume_offset() else {
                continue;
            };
            match self.consumer.seek(
                &self.config.source.topic,
                *p,
                Offset::Offset(o),
                Duration::from_secs(10),
            ) {
                Ok(()) => sought.push(*p),
                Err(e) => {
                    tracing::warn!(partition = p, offset = o, error = %e, "seek failed")
                }
            }
        }
        self.pipeline.reset(progress.clone());
        if let Ok(mut state) = self.assignment.lock() {
            state.partitions = progress;
            state.reload = false;
        }
        Ok(sought)
    }
}
