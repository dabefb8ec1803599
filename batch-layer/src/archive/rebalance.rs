//! Assignment: on a rebalance (or when reading alone) each partition's state is loaded and the
//! files a crashed flush left pending are removed, before the consumer reads on from
//! `committed_offset`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, UpdateVersion};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tributary_shared::kafka::HighWatermarks;

use crate::state::{PartitionState, StateError, StateStore};

/// A partition's state as loaded at assignment.
#[derive(Clone)]
pub(super) struct Loaded {
    pub(super) state: PartitionState,
    pub(super) version: Option<UpdateVersion>,
}

#[derive(Default)]
pub(super) struct Assignment {
    pub(super) generation: u64,
    pub(super) partitions: HashMap<i32, Loaded>,
    pub(super) error: Option<String>,
}

pub(super) struct ArchiveContext {
    pub(super) states: StateStore,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) topic: String,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) assignment: Arc<Mutex<Assignment>>,
    pub(super) high_watermarks: HighWatermarks,
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
pub(super) async fn recover(
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
pub(super) async fn recover_one(
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
