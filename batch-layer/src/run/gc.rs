//! What a view's landing retires and deletes: the files a new version supersedes (kept while a
//! reader or an `as_of` query may still name them), and files no manifest names (a run killed
//! before its manifest landed).

use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt};
use tributary_shared::layout::paths;

use crate::manifest::{DateEntry, Manifest, Retired};

/// Deletes retired view files whose grace period is over.
pub(super) async fn delete_retired(store: &Arc<dyn ObjectStore>, expired: &[Retired]) {
    for r in expired {
        match store
            .delete(&object_store::path::Path::from(r.path.as_str()))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(path = %r.path, error = %e, "could not delete a retired view file")
            }
        }
    }
}

/// Deletes view files that no manifest names (a run killed after writing files, before its
/// manifest landed) once they are older than the grace period; returns how many.
pub(super) async fn collect_orphans(
    store: &Arc<dyn ObjectStore>,
    manifest: &Manifest,
    run_id: &str,
    now: i64,
    grace_ms: i64,
) -> usize {
    use futures::TryStreamExt;
    let named: std::collections::HashSet<&str> = manifest
        .dates
        .values()
        .flat_map(|d| d.files.values().map(|f| f.path.as_str()))
        .chain(manifest.retired.iter().map(|r| r.path.as_str()))
        .chain(
            manifest
                .accuracy
                .values()
                .flatten()
                .map(|f| f.path.as_str()),
        )
        .collect();
    let listed: Vec<object_store::ObjectMeta> = match store
        .list(Some(&paths::view_root(&manifest.view)))
        .try_collect()
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(view = %manifest.view, error = %e, "could not list view files for GC");
            return 0;
        }
    };
    let mut deleted = 0;
    for meta in listed {
        let path = meta.location.as_ref();
        let is_view_file = path.ends_with(".parquet")
            && !meta
                .location
                .filename()
                .is_some_and(|f| f.starts_with(run_id));
        let old = now - meta.last_modified.timestamp_millis() >= grace_ms;
        if is_view_file && old && !named.contains(path) {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(path, "removed an orphaned view file (its run never landed)");
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "could not delete an orphaned view file")
                }
            }
        }
    }
    deleted
}

/// Moves a superseded date's files to the retired list (deleted once no reader or `as_of`
/// query can name them).
pub(super) fn retire(manifest: &mut Manifest, entry: &DateEntry, now: i64) {
    for f in entry.files.values() {
        manifest.retired.push(Retired {
            path: f.path.clone(),
            retired_ms: now,
        });
    }
}
