//! One batch run at a time per store: `_batch/lock.json`, created only if absent (S3's
//! If-None-Match, an exclusive create on a local directory), with an expiry so the lock of a
//! crashed run does not block the schedule forever.

use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::layout::paths;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub owner: String,
    pub run_id: String,
    pub acquired_ms: i64,
    pub expires_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another batch run holds the lock ({path}): run {run_id} by {owner} since {since}, expiring at {expires}; \
         wait for it, or if it crashed, for the expiry (batch.lock_ttl)"
    )]
    Held {
        path: String,
        owner: String,
        run_id: String,
        since: String,
        expires: String,
    },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// A held lock; [`RunLock::release`] deletes it.
pub struct RunLock {
    store: Arc<dyn ObjectStore>,
}

impl RunLock {
    pub async fn acquire(
        store: &Arc<dyn ObjectStore>,
        run_id: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<RunLock, LockError> {
        let path = paths::batch_lock();
        let info = LockInfo {
            owner: format!(
                "{}:{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
                std::process::id()
            ),
            run_id: run_id.to_string(),
            acquired_ms: now_ms,
            expires_ms: now_ms + ttl_ms,
        };
        let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
        // Two attempts: the second after removing an expired lock.
        for _ in 0..2 {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match store
                .put_opts(&path, PutPayload::from(body.clone()), opts)
                .await
            {
                Ok(_) => {
                    return Ok(RunLock {
                        store: store.clone(),
                    });
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    let held: Option<LockInfo> = match store.get(&path).await {
                        Ok(r) => serde_json::from_slice(&r.bytes().await?).ok(),
                        // Released between our create and our read: try again.
                        Err(object_store::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    match held {
                        Some(h) if h.expires_ms > now_ms => {
                            return Err(LockError::Held {
                                path: path.to_string(),
                                owner: h.owner,
                                run_id: h.run_id,
                                since: format_rfc3339(h.acquired_ms),
                                expires: format_rfc3339(h.expires_ms),
                            });
                        }
                        _ => {
                            tracing::warn!(lock = %path, "removing an expired or unreadable batch lock");
                            match store.delete(&path).await {
                                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(LockError::Held {
            path: path.to_string(),
            owner: "unknown".into(),
            run_id: "unknown".into(),
            since: "now".into(),
            expires: "unknown".into(),
        })
    }

    pub async fn release(self) -> Result<(), LockError> {
        match self.store.delete(&paths::batch_lock()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn second_run_refused_until_release_or_expiry() -> anyhow::Result<()> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let lock = RunLock::acquire(&store, "r1", 1_000, 500).await?;
        let err = RunLock::acquire(&store, "r2", 1_200, 500)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("run r1"), "{err}");
        lock.release().await?;
        let lock = RunLock::acquire(&store, "r3", 1_300, 500).await?;
        // Expired at 1_800: taken over.
        let _taken = RunLock::acquire(&store, "r4", 2_000, 500).await?;
        drop(lock);
        Ok(())
    }
}
