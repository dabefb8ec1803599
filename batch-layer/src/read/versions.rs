//! The batch reader's past and its ledger: the manifest history (`as_of` finds the version
//! current at an instant from a listing, reads one file) and the accuracy ledger's rows, both
//! cached (neither ever changes once written).

use std::sync::Arc;
use std::time::Instant;

use object_store::ObjectStoreExt;
use tributary_shared::bucket::date_string;

use super::{BatchReader, ReadError};
use crate::history::HistoryEntry;
use crate::ledger::LedgerRow;
use crate::manifest::Manifest;

/// A view's history listing, and the wall-clock instant it was taken.
pub(super) struct CachedHistory {
    listed_ms: i64,
    checked: Instant,
    entries: Arc<Vec<HistoryEntry>>,
}

/// Recorded versions kept in memory (they never change; a dashboard polling one `as_of`
/// reads one).
const MAX_CACHED_VERSIONS: usize = 32;

/// Ledger files kept in memory (a few per date; the dashboard and `/v1/status` read the
/// newest dates over and over).
const MAX_CACHED_LEDGER_FILES: usize = 512;

/// A version may be written this long after the instant it counts from (the object store's
/// put): a listing taken less than this after an `as_of` instant is taken again.
const LANDING_SLACK_MS: i64 = 5_000;

impl BatchReader {
    /// The accuracy ledger's rows of the buckets starting in `[from_ms, to_ms)` (ledger files
    /// never change: cached by path, at most [`MAX_CACHED_LEDGER_FILES`] of them).
    pub async fn ledger(
        &self,
        manifest: &Manifest,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<LedgerRow>, ReadError> {
        let mut out = Vec::new();
        let first = date_string(from_ms);
        let last = date_string(to_ms.saturating_sub(1).max(from_ms));
        for files in manifest
            .accuracy
            .range(first..=last)
            .map(|(_, files)| files)
        {
            for f in files {
                let cached = self
                    .ledgers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&f.path)
                    .cloned();
                let rows = match cached {
                    Some(r) => r,
                    None => {
                        let bytes = self
                            .store
                            .get(&object_store::path::Path::from(f.path.as_str()))
                            .await?
                            .bytes()
                            .await?;
                        let rows = Arc::new(
                            crate::ledger::decode(&f.path, bytes)
                                .map_err(|e| ReadError::Ledger(e.to_string()))?,
                        );
                        let mut cache = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
                        // Files stay named as long as the view: the cache must not grow with
                        // every date ever asked for.
                        if cache.len() >= MAX_CACHED_LEDGER_FILES {
                            cache.clear();
                        }
                        cache.insert(f.path.clone(), rows.clone());
                        rows
                    }
                };
                out.extend(
                    rows.iter()
                        .filter(|r| r.t_ms >= from_ms && r.t_ms < to_ms)
                        .cloned(),
                );
            }
        }
        Ok(out)
    }

    /// The view's recorded versions, oldest first (listed again at most every `refresh`, and
    /// whenever the listing is not safely later than `t_ms`).
    pub async fn history(
        &self,
        view: &str,
        t_ms: Option<i64>,
    ) -> Result<Arc<Vec<HistoryEntry>>, ReadError> {
        {
            let guard = self.histories.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = guard.get(view)
                && c.checked.elapsed() < self.refresh
                && t_ms.is_none_or(|t| t.saturating_add(LANDING_SLACK_MS) < c.listed_ms)
            {
                return Ok(c.entries.clone());
            }
        }
        let listed_ms = chrono::Utc::now().timestamp_millis();
        let entries = Arc::new(crate::history::list(&self.store, view).await?);
        self.histories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                view.to_string(),
                CachedHistory {
                    listed_ms,
                    checked: Instant::now(),
                    entries: entries.clone(),
                },
            );
        Ok(entries)
    }

    /// The view's manifest as it stood at `t_ms`: the version that had landed last by then
    /// (`None`: none had). The same `t_ms` names the same version on every call while the
    /// history keeps it.
    pub async fn manifest_as_of(
        &self,
        view: &str,
        t_ms: i64,
    ) -> Result<Option<Arc<Manifest>>, ReadError> {
        let entries = self.history(view, Some(t_ms)).await?;
        let recorded = crate::history::current_at(&entries, t_ms);
        // The current manifest answers when it is the one (its history entry may be missing:
        // a write that failed after the manifest landed).
        // An unreadable current manifest only loses this shortcut: the history still answers.
        if let Ok(Some(current)) = self.manifest(view).await
            && current.landed_ms.is_some_and(|l| l <= t_ms)
            && recorded.is_none_or(|e| e.version <= current.version)
        {
            return Ok(Some(current));
        }
        let Some(entry) = recorded else {
            return Ok(None);
        };
        let key = entry.path.to_string();
        if let Some(m) = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(m.clone()));
        }
        let manifest = Arc::new(crate::history::load(&self.store, view, entry).await?);
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if versions.len() >= MAX_CACHED_VERSIONS {
            versions.clear();
        }
        versions.insert(key, manifest.clone());
        Ok(Some(manifest))
    }
}
