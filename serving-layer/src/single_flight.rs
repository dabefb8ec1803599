//! Identical Redis reads that overlap in time share one: many dashboards polling the same
//! chart cost Redis one read per round, not one per viewer.
//!
//! A request joins a read already in flight (started no earlier than the previous identical
//! read finished), never an answer kept from before. The read runs as its own task and
//! removes itself from the map when done, so a request cancelled while waiting (a client
//! gone, a timeout) leaves nothing behind. Hand-written (about 40 lines over `futures`'
//! `Shared`) rather than a single-flight crate: the ones on crates.io are small, little kept,
//! and none has this removal from a spawned task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::sources::SourceError;

type Read<T> = Shared<BoxFuture<'static, Result<T, SourceError>>>;

/// Reads in flight, by key.
pub struct SingleFlight<T: Clone> {
    inflight: Arc<Mutex<HashMap<String, Read<T>>>>,
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            inflight: Default::default(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// The result of the read in flight under `key`, or of `read()` started now.
    pub async fn run<F, Fut>(&self, key: String, read: F) -> Result<T, SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SourceError>> + Send + 'static,
    {
        let shared = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&key) {
                Some(shared) => shared.clone(),
                None => {
                    let map = self.inflight.clone();
                    let task_key = key.clone();
                    let fut = read();
                    let task = tokio::spawn(async move {
                        let out = fut.await;
                        map.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&task_key);
                        out
                    });
                    let shared = async move {
                        task.await
                            .unwrap_or_else(|e| Err(SourceError::Redis(format!("read task: {e}"))))
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    /// Reads in flight (for tests: cancelled requests must not leave any behind).
    pub fn len(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn overlapping_reads_share_one_and_a_later_read_runs_again() {
        let flights = SingleFlight::<usize>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let read = || {
            let runs = runs.clone();
            move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
            }
        };
        let (a, b) = tokio::join!(
            flights.run("k".into(), read()),
            flights.run("k".into(), read())
        );
        assert_eq!((a.ok(), b.ok()), (Some(1), Some(1)));
        assert!(flights.is_empty());
        assert_eq!(flights.run("k".into(), read()).await.ok(), Some(2));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
