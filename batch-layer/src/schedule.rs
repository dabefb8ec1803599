//! `batch-layer schedule`: `run` on the config's cron expression until SIGTERM.

use std::str::FromStr;
use std::sync::Arc;

use chrono::Utc;
use object_store::ObjectStore;
use tokio::sync::watch;
use tributary_shared::Config;
use tributary_shared::bucket::format_rfc3339;

use crate::metrics::BatchMetrics;
use crate::run::{RunError, RunRequest, run_once};

/// Runs until `shutdown`; a failed or refused run is logged and the schedule goes on. A run in
/// progress when the signal comes is finished first (its lock and manifest stay consistent).
pub async fn schedule(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    metrics: &BatchMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cron = cron::Schedule::from_str(&config.batch.schedule)
        .map_err(|e| anyhow::anyhow!("batch.schedule: {e}"))?;
    loop {
        let Some(next) = cron.upcoming(Utc).next() else {
            tracing::warn!(schedule = %config.batch.schedule, "the schedule has no future run; stopping");
            return Ok(());
        };
        tracing::info!(
            next_run = %format_rfc3339(next.timestamp_millis()),
            schedule = %config.batch.schedule,
            "next batch run"
        );
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {
                tracing::info!("schedule stopped");
                return Ok(());
            }
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        match run_once(config, store, metrics, &RunRequest::default()).await {
            Ok(r) => tracing::info!(
                run_id = %r.run_id,
                seconds = format!("{:.2}", r.seconds),
                dates = r.views.values().map(|v| v.dates_computed.len()).sum::<usize>(),
                "scheduled run done"
            ),
            Err(RunError::Locked(e)) => tracing::warn!(error = %e, "scheduled run skipped"),
            Err(e) => tracing::error!(error = %e, "scheduled run failed; the schedule goes on"),
        }
    }
}
