//! One batch run at a time per store: `_batch/lock.json`.
//!
//! Every change of the lock is a conditional put: created only if absent (S3's If-None-Match,
//! an exclusive link on a local directory), then taken over, renewed and released only from
//! the version last read (If-Match; a compare-and-swap on a local directory, see
//! `tributary_shared::store::local`). So of two runs racing for an expired lock exactly one
//! wins, a run that was paused past its expiry cannot renew or release the lock of the run
//! that took over, and a killed run's lock is taken over once it expires (`batch.lock_ttl`).
//! The lock file is never deleted: a released lock says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::layout::paths;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub owner: String,
    pub run_id: String,
    pub acquired_ms: i64,
    pub expires_ms: i64,
    /// Set by a clean release: the next run takes the lock at once.
    #[serde(default)]
    pub released: bool,
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
    #[error(
        "the batch lock was taken over by another run (this run was paused past batch.lock_ttl)"
    )]
    Lost,
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// A held lock, renewed by [`RunLock::keep_alive`] and given up by [`RunLock::release`].
pub struct RunLock {
    store: Arc<dyn ObjectStore>,
    info: Mutex<(LockInfo, UpdateVersion)>,
    lost: AtomicBool,
}

fn version_of(r: PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: r.e_tag,
        version: r.version,
    }
}

fn body(info: &LockInfo) -> PutPayload {
    PutPayload::from(serde_json::to_vec_pretty(info).unwrap_or_default())
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
            released: false,
        };
        // A few rounds: each loses only to another run that changed the lock in between.
        for _ in 0..5 {
            let mode = match store.get(&path).await {
                Err(object_store::Error::NotFound { .. }) => PutMode::Create,
                Err(e) => return Err(e.into()),
                Ok(r) => {
                    let version = UpdateVersion {
                        e_tag: r.meta.e_tag.clone(),
                        version: r.meta.version.clone(),
                    };
                    let held: Option<LockInfo> = serde_json::from_slice(&r.bytes().await?).ok();
                    match held {
                        Some(h) if !h.released && h.expires_ms > now_ms => {
                            return Err(LockError::Held {
                                path: path.to_string(),
                                owner: h.owner,
                                run_id: h.run_id,
                                since: format_rfc3339(h.acquired_ms),
                                expires: format_rfc3339(h.expires_ms),
                            });
                        }
                        Some(h) if !h.released => {
                            tracing::warn!(lock = %path, run_id = %h.run_id, owner = %h.owner,
                                "taking over an expired batch lock (its run crashed or stalled)");
                            PutMode::Update(version)
                        }
                        _ => PutMode::Update(version),
                    }
                }
            };
            match store
                .put_opts(&path, body(&info), PutOptions::from(mode))
                .await
            {
                Ok(r) => {
                    return Ok(RunLock {
                        store: store.clone(),
                        info: Mutex::new((info, version_of(r))),
                        lost: AtomicBool::new(false),
                    });
                }
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => continue,
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

    /// Extends the lock to `now + ttl`, from the version this run wrote last.
    pub async fn renew(&self, now_ms: i64, ttl_ms: i64) -> Result<(), LockError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(LockError::Lost);
        }
        let mut guard = self.info.lock().await;
        let (info, version) = &mut *guard;
        let mut next = info.clone();
        next.expires_ms = now_ms + ttl_ms;
        let put = self
            .store
            .put_opts(
                &paths::batch_lock(),
                body(&next),
                PutOptions::from(PutMode::Update(version.clone())),
            )
            .await;
        match put {
            Ok(r) => {
                *info = next;
                *version = version_of(r);
                Ok(())
            }
            Err(object_store::Error::Precondition { .. }) => {
                self.lost.store(true, Ordering::Release);
                Err(LockError::Lost)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Renews the lock every `ttl / 3` until the returned handle is dropped or aborted.
    pub fn keep_alive(self: &Arc<Self>, ttl: Duration) -> tokio::task::JoinHandle<()> {
        let lock = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = chrono::Utc::now().timestamp_millis();
                match lock.renew(now, ttl.as_millis() as i64).await {
                    Ok(()) => tracing::debug!("batch lock renewed"),
                    Err(LockError::Lost) => {
                        tracing::error!("{}", LockError::Lost);
                        return;
                    }
                    // A store hiccup: the next tick tries again, well before the expiry.
                    Err(e) => tracing::warn!(error = %e, "could not renew the batch lock"),
                }
            }
        })
    }

    /// Marks the lock released (only if it is still this run's).
    pub async fn release(&self) -> Result<(), LockError> {
        let mut guard = self.info.lock().await;
        let (info, version) = &mut *guard;
        let mut next = info.clone();
        next.released = true;
        next.expires_ms = chrono::Utc::now().timestamp_millis();
        match self
            .store
            .put_opts(
                &paths::batch_lock(),
                body(&next),
                PutOptions::from(PutMode::Update(version.clone())),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::Precondition { .. }) => Err(LockError::Lost),
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
        let taken = RunLock::acquire(&store, "r4", 2_000, 500).await?;
        // The paused run can neither renew nor release the lock it lost.
        assert!(matches!(lock.renew(2_100, 500).await, Err(LockError::Lost)));
        assert!(matches!(lock.release().await, Err(LockError::Lost)));
        taken.renew(2_200, 500).await?;
        let err = RunLock::acquire(&store, "r5", 2_300, 500)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("run r4"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn racing_takeovers_of_an_expired_lock_let_one_win() -> anyhow::Result<()> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let _dead = RunLock::acquire(&store, "dead", 0, 100).await?;
        let attempts = (0..6).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                RunLock::acquire(&store, &format!("r{i}"), 1_000, 10_000)
                    .await
                    .is_ok()
            })
        });
        let wins = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count();
        assert_eq!(wins, 1);
        Ok(())
    }
}
