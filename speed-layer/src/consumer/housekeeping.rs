//! Once a second, between events: a view whose epoch changed while nothing flushed, rebuild
//! progress, the topic's partition count (sealing needs it; the DLQ grows with it) and the
//! consumer-group watchdog.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rdkafka::consumer::Consumer;
use tributary_shared::kafka::MembershipEvent;

use super::{SpeedConsumer, TOPIC_CHECK};
use crate::metrics::label;
use crate::rebuild::Reason;

impl SpeedConsumer {
    /// Once a second: a view whose epoch changed or vanished while nothing flushed (Redis
    /// restarted empty on an idle topic); every few seconds the topic's partitions and the
    /// group watchdog.
    pub(super) async fn housekeeping(&mut self) -> anyhow::Result<()> {
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
        self.watch_group();
        Ok(())
    }

    /// Leaves the group (to join it again, or to read every partition alone) when partitions
    /// nobody reads stalled; see `Membership`.
    pub(super) fn watch_group(&mut self) {
        let owned: HashSet<i32> = self
            .assignment
            .lock()
            .map(|s| s.partitions.keys().copied().collect())
            .unwrap_or_default();
        match self.membership.tick(&self.consumer, &owned) {
            MembershipEvent::Nothing => {}
            MembershipEvent::Left => {
                self.metrics.group_rejoins.inc();
            }
            MembershipEvent::GaveBack => self.set_assignment(HashMap::new(), false),
            MembershipEvent::AssignAll(partitions) => {
                // What a rebalance would do: positions from Redis, then the assignment.
                let consumer = &self.consumer;
                let (progress, reload, tpl) = tokio::task::block_in_place(|| {
                    let (progress, reload) = consumer.context().load(&partitions);
                    let tpl = consumer.context().positions(&partitions, &progress);
                    (progress, reload, tpl)
                });
                match self.consumer.assign(&tpl) {
                    Ok(()) => self.set_assignment(progress, reload),
                    Err(e) => {
                        tracing::error!(error = %e, "assign every partition failed; retrying");
                        self.membership.retry_assign_all();
                    }
                }
            }
        }
    }

    /// Records an assignment made without the group (no rebalance callback runs for it).
    pub(super) fn set_assignment(
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
    pub(super) async fn report_rebuilds(&mut self) {
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
    pub(super) async fn check_topic(&mut self) {
        let topic = self.config.source.topic.clone();
        let Ok(n) = tributary_shared::kafka::topic_partitions(&self.config.source, &topic).await
        else {
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
}
