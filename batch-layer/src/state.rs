//! The archive's per-partition commit point: `master/<topic>/_state/p<partition>.json`.
//!
//! Files beyond `committed_offset` are not part of the master dataset. Before writing files a
//! flush records them in `pending`, so a restart can delete the ones a crash left behind.
//! Writes are conditional (S3's If-Match / If-None-Match; a compare-and-swap on a local
//! directory, see `tributary_shared::store::local`): a second archiver that lost the
//! partition cannot overwrite the new owner's state.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};
use tributary_shared::layout::paths;

/// What `_state/p<N>.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Next Kafka offset to archive; every record below it is in the master dataset once.
    pub committed_offset: i64,
    /// Max event time archived minus `allowed_lateness`.
    pub watermark_ms: Option<i64>,
    pub max_event_time_ms: Option<i64>,
    /// The partition's end offset when this state was written (the archiver is caught up when
    /// it equals `committed_offset`).
    pub high_watermark: Option<i64>,
    /// Wall-clock time of the last record read from the partition.
    pub last_record_ms: Option<i64>,
    /// Wall-clock time of this write.
    pub updated_ms: i64,
    /// Rows archived and invalid records skipped, in total.
    pub rows: u64,
    pub invalid: u64,
    /// Files a flush is writing beyond `committed_offset` (deleted on restart if present).
    #[serde(default)]
    pub pending: Vec<String>,
}

impl PartitionState {
    /// Caught up (read to the partition's end) and quiet for `idle_ms`: such a partition does
    /// not hold the batch horizon back.
    pub fn is_idle(&self, now_ms: i64, idle_ms: i64) -> bool {
        let caught_up = self
            .high_watermark
            .is_some_and(|h| self.committed_offset >= h);
        let quiet = self.last_record_ms.is_none_or(|t| now_ms - t >= idle_ms);
        caught_up && quiet
    }
}

/// `_state/topic.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicState {
    partitions: i32,
    updated_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("partition {0}: the state was changed by another archiver")]
    Fenced(i32),
    #[error("partition {partition}: state file is not valid JSON: {source}")]
    Corrupt {
        partition: i32,
        source: serde_json::Error,
    },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Reads and writes partition states of one topic.
#[derive(Clone)]
pub struct StateStore {
    store: Arc<dyn ObjectStore>,
    topic: String,
}

impl StateStore {
    pub fn new(store: Arc<dyn ObjectStore>, topic: impl Into<String>) -> Self {
        StateStore {
            store,
            topic: topic.into(),
        }
    }

    /// The state and the version to update it from; `None` for a partition never archived.
    pub async fn load(
        &self,
        partition: i32,
    ) -> Result<Option<(PartitionState, UpdateVersion)>, StateError> {
        let path = paths::archive_state(&self.topic, partition);
        let res = match self.store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = UpdateVersion {
            e_tag: res.meta.e_tag.clone(),
            version: res.meta.version.clone(),
        };
        let bytes = res.bytes().await?;
        let state = serde_json::from_slice(&bytes)
            .map_err(|source| StateError::Corrupt { partition, source })?;
        Ok(Some((state, version)))
    }

    /// Records the topic's partition count (`_state/topic.json`), so the horizon waits for a
    /// partition that has no state yet (a new one) instead of leaving it out.
    pub async fn save_topic(&self, partitions: i32) -> Result<(), StateError> {
        let body = serde_json::to_vec_pretty(&TopicState {
            partitions,
            updated_ms: chrono::Utc::now().timestamp_millis(),
        })
        .map_err(|source| StateError::Corrupt {
            partition: -1,
            source,
        })?;
        self.store
            .put(&paths::archive_topic_state(&self.topic), body.into())
            .await?;
        Ok(())
    }

    /// The topic's partition count as the archive last saw it; `None` before it wrote one.
    pub async fn load_topic(&self) -> Result<Option<i32>, StateError> {
        match self
            .store
            .get(&paths::archive_topic_state(&self.topic))
            .await
        {
            Ok(r) => {
                let t: TopicState =
                    serde_json::from_slice(&r.bytes().await?).map_err(|source| {
                        StateError::Corrupt {
                            partition: -1,
                            source,
                        }
                    })?;
                Ok(Some(t.partitions))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every partition's state (for the batch layer and status).
    pub async fn load_all(&self) -> Result<Vec<(i32, PartitionState)>, StateError> {
        use futures::TryStreamExt;
        let prefix = paths::archive_state_dir(&self.topic);
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut out = Vec::new();
        for m in metas {
            let Some(p) = m.location.filename().and_then(|f| {
                f.strip_prefix('p')?
                    .strip_suffix(".json")?
                    .parse::<i32>()
                    .ok()
            }) else {
                continue;
            };
            if let Some((s, _)) = self.load(p).await? {
                out.push((p, s));
            }
        }
        out.sort_by_key(|(p, _)| *p);
        Ok(out)
    }

    /// Writes the state if nobody else did since `expected` (create-only when `None`).
    pub async fn save(
        &self,
        partition: i32,
        state: &PartitionState,
        expected: Option<UpdateVersion>,
    ) -> Result<UpdateVersion, StateError> {
        let path = paths::archive_state(&self.topic, partition);
        let body = serde_json::to_vec_pretty(state)
            .map_err(|source| StateError::Corrupt { partition, source })?;
        let mode = match expected {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        match self.put(&path, body, mode).await {
            Ok(v) => Ok(v),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(StateError::Fenced(partition)),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(
        &self,
        path: &Path,
        body: Vec<u8>,
        mode: PutMode,
    ) -> Result<UpdateVersion, object_store::Error> {
        let res = self
            .store
            .put_opts(path, body.into(), PutOptions::from(mode))
            .await?;
        Ok(UpdateVersion {
            e_tag: res.e_tag,
            version: res.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn conditional_writes_fence_a_second_writer() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let states = StateStore::new(store, "events");
        assert!(states.load(0).await.expect("load").is_none());
        let s = PartitionState {
            committed_offset: 10,
            ..Default::default()
        };
        let v1 = states.save(0, &s, None).await.expect("create");
        // A second create loses.
        assert!(matches!(
            states.save(0, &s, None).await,
            Err(StateError::Fenced(0))
        ));
        let (loaded, v) = states.load(0).await.expect("load").expect("exists");
        assert_eq!(loaded, s);
        let s2 = PartitionState {
            committed_offset: 20,
            ..Default::default()
        };
        states
            .save(0, &s2, Some(v))
            .await
            .expect("update from the current version");
        // An update from the stale version loses.
        assert!(matches!(
            states.save(0, &s2, Some(v1)).await,
            Err(StateError::Fenced(0))
        ));
        let all = states.load_all().await.expect("all");
        assert_eq!(all, vec![(0, s2)]);
    }

    #[test]
    fn idle_means_caught_up_and_quiet() {
        let s = PartitionState {
            committed_offset: 5,
            high_watermark: Some(5),
            last_record_ms: Some(1_000),
            ..Default::default()
        };
        assert!(s.is_idle(61_000, 60_000));
        assert!(!s.is_idle(30_000, 60_000));
        let behind = PartitionState {
            high_watermark: Some(9),
            ..s.clone()
        };
        assert!(!behind.is_idle(61_000, 60_000));
    }
}
