//! A consistent snapshot of the master dataset: the partition states first, then the files
//! they commit. Committed files are immutable, so the snapshot cannot change under a run.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use tributary_shared::layout::paths;

use crate::horizon;
use crate::state::{PartitionState, StateError, StateStore};

/// One committed master file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: Path,
    pub size: u64,
}

/// The committed files of one event date.
#[derive(Debug, Clone, Default)]
pub struct DateInput {
    pub files: Vec<InputFile>,
}

impl DateInput {
    /// Identifies this exact set of files: names carry partition and offset range, and
    /// committed files never change, so names and sizes identify the content.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for f in &self.files {
            text.push_str(f.path.as_ref());
            text.push(':');
            text.push_str(&f.size.to_string());
            text.push('\n');
        }
        let hash = tributary_shared::hll::murmur64a(text.as_bytes(), 0x7472_6962);
        format!("{hash:016x}-{}", self.files.len())
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What a batch run reads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub states: Vec<(i32, PartitionState)>,
    /// Buckets ending at or before it are complete in this snapshot.
    pub horizon_ms: Option<i64>,
    pub dates: BTreeMap<String, DateInput>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the archive state: {0}")]
    State(#[from] StateError),
    #[error("listing the master dataset: {0}")]
    List(#[from] object_store::Error),
}

impl Snapshot {
    /// Reads the states, then lists the files they commit (offsets below each partition's
    /// `committed_offset`); files of a flush in progress are left out.
    pub async fn load(
        store: &Arc<dyn ObjectStore>,
        topic: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<Snapshot, SnapshotError> {
        let state_store = StateStore::new(store.clone(), topic);
        let topic_partitions = state_store.load_topic().await?;
        let states = state_store.load_all().await?;
        let committed: BTreeMap<i32, i64> = states
            .iter()
            .map(|(p, s)| (*p, s.committed_offset))
            .collect();
        let metas: Vec<_> = store
            .list(Some(&paths::master_root(topic)))
            .try_collect()
            .await?;
        let mut dates: BTreeMap<String, DateInput> = BTreeMap::new();
        for meta in metas {
            let Some(file) = paths::parse_master_file(topic, &meta.location) else {
                continue;
            };
            let Some(end) = committed.get(&file.partition) else {
                continue;
            };
            if file.last_offset >= *end {
                continue;
            }
            dates.entry(file.date).or_default().files.push(InputFile {
                path: meta.location,
                size: meta.size,
            });
        }
        for d in dates.values_mut() {
            d.files.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let horizon_ms = horizon::horizon(&states, topic_partitions, now_ms, idle_ms);
        Ok(Snapshot {
            states,
            horizon_ms,
            dates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn only_committed_files_count_and_fingerprints_follow_them() -> anyhow::Result<()> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let day = tributary_shared::bucket::parse_date("2026-11-20").unwrap_or_default();
        let hour = tributary_shared::bucket::HOUR_MS;
        for (p, first, last, h) in [(0, 0, 9, 1), (0, 10, 19, 2), (1, 0, 4, 25)] {
            let path = paths::master_file("ev", day + h * hour, p, first, last);
            store.put(&path, PutPayload::from_static(b"x")).await?;
        }
        let states = StateStore::new(store.clone(), "ev");
        let state = |c| PartitionState {
            committed_offset: c,
            watermark_ms: Some(day + 30 * hour),
            ..Default::default()
        };
        states.save(0, &state(10), None).await?;
        states.save(1, &state(5), None).await?;
        let snap = Snapshot::load(&store, "ev", 0, 1).await?;
        assert_eq!(snap.dates.len(), 2);
        assert_eq!(
            snap.dates["2026-11-20"].files.len(),
            1,
            "offsets 10-19 are beyond the commit"
        );
        assert_eq!(snap.dates["2026-11-21"].files.len(), 1);
        let before = snap.dates["2026-11-20"].fingerprint();
        let (_, v) = states
            .load(0)
            .await?
            .ok_or_else(|| anyhow::anyhow!("state"))?;
        states.save(0, &state(20), Some(v)).await?;
        let snap = Snapshot::load(&store, "ev", 0, 1).await?;
        assert_eq!(snap.dates["2026-11-20"].files.len(), 2);
        assert_ne!(snap.dates["2026-11-20"].fingerprint(), before);
        assert_eq!(snap.horizon_ms, Some(day + 30 * hour));
        Ok(())
    }
}
