//! A view's manifest history (`views/<view>/history/`): every version a run landed, named by
//! its version number and the instant it counts from, so an `as_of` query finds the version
//! current at an instant from a listing alone and reads one file.
//!
//! Versions are kept for `batch.history_retention`, and so are the view files they name (a
//! run retires superseded files and deletes them only after both the grace period and the
//! retention, see `run/view.rs`). The newest version from before the retention window is
//! kept too: it is the one current at the window's first instant.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tributary_shared::layout::paths;

use crate::manifest::{Manifest, ManifestError};

/// One landed version, as its name tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub version: u64,
    /// The instant the version counts from ([`Manifest::landed_ms`]).
    pub landed_ms: i64,
    pub path: Path,
}

impl HistoryEntry {
    /// Parses `<version>-<landed_ms>.json`; other names are not history entries.
    fn parse(path: Path) -> Option<HistoryEntry> {
        let name = path.filename()?.strip_suffix(".json")?;
        let (version, landed) = name.split_once('-')?;
        Some(HistoryEntry {
            version: version.parse().ok()?,
            landed_ms: landed.parse().ok()?,
            path,
        })
    }
}

/// Records a landed manifest in the history (idempotent: the same version writes the same
/// bytes to the same name).
pub async fn record(
    store: &Arc<dyn ObjectStore>,
    manifest: &Manifest,
) -> Result<(), ManifestError> {
    let Some(landed_ms) = manifest.landed_ms else {
        return Ok(());
    };
    let body = serde_json::to_vec_pretty(manifest).map_err(|source| ManifestError::Corrupt {
        view: manifest.view.clone(),
        source,
    })?;
    store
        .put(
            &paths::view_history_entry(&manifest.view, manifest.version, landed_ms),
            PutPayload::from(body),
        )
        .await?;
    Ok(())
}

/// The view's recorded versions, oldest first.
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    view: &str,
) -> Result<Vec<HistoryEntry>, ManifestError> {
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&paths::view_history(view)))
        .try_collect()
        .await?;
    let mut entries: Vec<HistoryEntry> = listed
        .into_iter()
        .filter_map(|m| HistoryEntry::parse(m.location))
        .collect();
    entries.sort_by_key(|e| (e.version, e.landed_ms));
    Ok(entries)
}

/// Reads one recorded version.
pub async fn load(
    store: &Arc<dyn ObjectStore>,
    view: &str,
    entry: &HistoryEntry,
) -> Result<Manifest, ManifestError> {
    let bytes = store.get(&entry.path).await?.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|source| ManifestError::Corrupt {
        view: view.to_string(),
        source,
    })
}

/// The version current at `t_ms`: the newest that landed at or before it.
pub fn current_at(entries: &[HistoryEntry], t_ms: i64) -> Option<&HistoryEntry> {
    entries
        .iter()
        .filter(|e| e.landed_ms <= t_ms)
        .max_by_key(|e| (e.version, e.landed_ms))
}

/// The entries past the retention: older than `cutoff_ms`, except the newest of those (the
/// version current at `cutoff_ms`, which an `as_of` inside the window may still need).
pub fn expired(entries: &[HistoryEntry], cutoff_ms: i64) -> Vec<&HistoryEntry> {
    let keep = current_at(entries, cutoff_ms);
    entries
        .iter()
        .filter(|e| e.landed_ms < cutoff_ms && Some(*e) != keep)
        .collect()
}

/// Deletes the view's history entries past the retention; returns how many.
pub async fn collect(store: &Arc<dyn ObjectStore>, view: &str, cutoff_ms: i64) -> usize {
    let entries = match list(store, view).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(view, error = %e, "could not list the manifest history for GC");
            return 0;
        }
    };
    let mut deleted = 0;
    for e in expired(&entries, cutoff_ms) {
        match store.delete(&e.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(err) => {
                tracing::warn!(path = %e.path, error = %err, "could not delete an expired manifest version")
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, landed_ms: i64) -> HistoryEntry {
        HistoryEntry {
            version,
            landed_ms,
            path: paths::view_history_entry("v", version, landed_ms),
        }
    }

    #[test]
    fn names_round_trip_and_other_files_are_ignored() {
        let e = entry(42, 1_763_719_200_123);
        assert_eq!(
            e.path.as_ref(),
            "views/v/history/000000000042-1763719200123.json"
        );
        assert_eq!(HistoryEntry::parse(e.path.clone()), Some(e));
        assert_eq!(
            HistoryEntry::parse(Path::from("views/v/history/x.json")),
            None
        );
        assert_eq!(
            HistoryEntry::parse(Path::from("views/v/history/1-2.tmp")),
            None
        );
    }

    #[test]
    fn the_version_current_at_an_instant_and_what_retention_keeps() {
        let entries = vec![entry(1, 100), entry(2, 200), entry(3, 300)];
        assert_eq!(current_at(&entries, 99), None);
        assert_eq!(current_at(&entries, 100).map(|e| e.version), Some(1));
        assert_eq!(current_at(&entries, 299).map(|e| e.version), Some(2));
        assert_eq!(current_at(&entries, 10_000).map(|e| e.version), Some(3));
        // Cutoff 250: version 2 was current then and stays; version 1 goes.
        let gone: Vec<u64> = expired(&entries, 250).iter().map(|e| e.version).collect();
        assert_eq!(gone, vec![1]);
        // Cutoff before everything: nothing goes.
        assert!(expired(&entries, 50).is_empty());
        // Cutoff after everything: only the newest stays.
        let gone: Vec<u64> = expired(&entries, 1_000).iter().map(|e| e.version).collect();
        assert_eq!(gone, vec![1, 2]);
    }
}
