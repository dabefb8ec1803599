//! One batch run (`run`, and `backfill` for a forced range): lock, snapshot, recompute the
//! dates that need it for every view (`view`: write each view's files and then its manifest,
//! retire and collect superseded files), record the outcome in the [`crate::report`].

mod gc;
mod view;

use std::sync::Arc;
use std::time::Instant;

use object_store::ObjectStore;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::{Config, EventSchema, ViewPlan};

use crate::budget::Budget;
use crate::compute::{Engine, ScanStore};
use crate::lock::{LockError, RunLock};
use crate::master::master_schema;
use crate::metrics::BatchMetrics;
use crate::report::{RunReport, ViewReport, save_report};
use crate::snapshot::Snapshot;
use view::ViewRun;

pub use view::{ViewError, WriteError, definition};

/// What a run recomputes.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// `backfill`: every date overlapping `[from, to)` (epoch ms), changed or not.
    pub range: Option<(i64, i64)>,
    /// Only this view.
    pub view: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("{0}")]
    Setup(String),
    #[error("batch run {run_id}: {failed} of {total} views failed: {detail}")]
    ViewsFailed {
        run_id: String,
        failed: usize,
        total: usize,
        detail: String,
    },
}

/// A new run id: sortable by start time, unique across processes.
pub fn new_run_id(now_ms: i64) -> String {
    let t = tributary_shared::bucket::to_datetime(now_ms).format("%Y%m%dT%H%M%S%3fZ");
    format!("r{t}-{:04x}", rand::random::<u16>())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs once. A view that fails is reported and leaves its previous manifest in place; the
/// others still complete. Errs when the lock is held or any view failed.
pub async fn run_once(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    metrics: &BatchMetrics,
    req: &RunRequest,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let start_ms = now_ms();
    let run_id = new_run_id(start_ms);
    let ttl = config.batch.lock_ttl;
    let lock = match RunLock::acquire(store, &run_id, start_ms, ttl.as_millis() as i64).await {
        Ok(l) => Arc::new(l),
        Err(e) => {
            metrics.runs.get_or_create(&outcome("locked")).inc();
            return Err(e.into());
        }
    };
    // Renewed while the run is long; a run paused past the TTL finds it lost and lands nothing.
    let keep_alive = lock.keep_alive(ttl);
    let run = Run {
        config,
        store,
        metrics,
        req,
        run_id: &run_id,
        start_ms,
        lock: &lock,
    };
    let result = run.run_locked().await;
    keep_alive.abort();
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release the batch lock; it expires after batch.lock_ttl");
    }
    let seconds = started.elapsed().as_secs_f64();
    metrics.run_seconds.observe(seconds);
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            metrics.runs.get_or_create(&outcome("failed")).inc();
            return Err(e);
        }
    };
    report.seconds = seconds;
    report.finished_at = format_rfc3339(now_ms());
    if let Err(e) = save_report(store, &report).await {
        tracing::warn!(error = %e, "could not write _batch/last_run.json");
    }
    let failed: Vec<String> = report
        .views
        .iter()
        .filter_map(|(v, r)| r.error.as_ref().map(|e| format!("{v}: {e}")))
        .collect();
    if failed.is_empty() {
        metrics.runs.get_or_create(&outcome("ok")).inc();
        metrics.last_success_seconds.set(now_ms() / 1000);
        Ok(report)
    } else {
        metrics.runs.get_or_create(&outcome("failed")).inc();
        Err(RunError::ViewsFailed {
            run_id: report.run_id,
            failed: failed.len(),
            total: report.views.len(),
            detail: failed.join("; "),
        })
    }
}

fn outcome(o: &str) -> Vec<(String, String)> {
    vec![("outcome".to_string(), o.to_string())]
}

/// A run that holds the lock: what it was asked, and what every view of it shares.
struct Run<'a> {
    config: &'a Config,
    store: &'a Arc<dyn ObjectStore>,
    metrics: &'a BatchMetrics,
    req: &'a RunRequest,
    run_id: &'a str,
    start_ms: i64,
    lock: &'a RunLock,
}

impl Run<'_> {
    async fn run_locked(&self) -> Result<RunReport, RunError> {
        let (config, run_id) = (self.config, self.run_id);
        let schema = EventSchema::from_config(config);
        let plans =
            ViewPlan::compile_all(config, &schema).map_err(|e| RunError::Setup(e.to_string()))?;
        let engine = if config.batch.engine == "local" {
            ScanStore::open(&config.store).and_then(|scan| {
                Engine::local(
                    scan,
                    master_schema(&schema),
                    Budget::from_config(&config.batch),
                )
            })
        } else {
            crate::ballista::engine(config, master_schema(&schema)).await
        }
        .map_err(|e| RunError::Setup(e.to_string()))?;
        let snapshot = Snapshot::load(
            self.store,
            &config.source.topic,
            self.start_ms,
            config.batch.idle_timeout.as_millis() as i64,
        )
        .await?;
        tracing::info!(
            run_id,
            horizon = snapshot
                .horizon_ms
                .map(format_rfc3339)
                .unwrap_or_else(|| "none yet".into()),
            partitions = snapshot.states.len(),
            engine = %engine.name,
            dates = snapshot.dates.len(),
            "batch run started"
        );
        let mut report = RunReport {
            run_id: run_id.to_string(),
            kind: if self.req.range.is_some() {
                "backfill"
            } else {
                "run"
            }
            .to_string(),
            started_at: format_rfc3339(self.start_ms),
            ok: true,
            horizon: snapshot.horizon_ms.map(format_rfc3339),
            horizon_ms: snapshot.horizon_ms,
            engine: engine.name.clone(),
            ..Default::default()
        };
        let views = ViewRun {
            run: self,
            engine: &engine,
            snapshot: &snapshot,
        };
        for plan in &plans {
            if self.req.view.as_ref().is_some_and(|v| v != &plan.name) {
                continue;
            }
            let view_report = match views.run_view(plan).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(view = %plan.name, error = %e, "view failed; its previous version stays current");
                    report.ok = false;
                    ViewReport {
                        error: Some(e.to_string()),
                        ..Default::default()
                    }
                }
            };
            report.views.insert(plan.name.clone(), view_report);
        }
        Ok(report)
    }
}
