//! One batch run (`run`, and `backfill` for a forced range): lock, snapshot, recompute the
//! dates that need it for every view, write each view's files and then its manifest, retire
//! and collect superseded files, record the outcome in `_batch/last_run.json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, UpdateVersion};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tributary_shared::bucket::{DAY_MS, format_rfc3339, parse_date};
use tributary_shared::layout::paths;
use tributary_shared::{Config, EventSchema, ViewPlan};

use crate::compute::{DateOutput, Engine, view_schema};
use crate::lock::{LockError, RunLock};
use crate::manifest::{DateEntry, Manifest, ManifestError, Retired, ViewFile};
use crate::master::master_schema;
use crate::metrics::BatchMetrics;
use crate::snapshot::{DateInput, Snapshot};

/// What a run recomputes.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// `backfill`: every date overlapping `[from, to)` (epoch ms), changed or not.
    pub range: Option<(i64, i64)>,
    /// Only this view.
    pub view: Option<String>,
}

/// Outcome of one view in a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewReport {
    pub dates_computed: Vec<String>,
    pub events: u64,
    pub manifest_version: Option<u64>,
    pub error: Option<String>,
}

/// `_batch/last_run.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub kind: String,
    pub started_at: String,
    pub finished_at: String,
    pub seconds: f64,
    pub ok: bool,
    pub horizon: Option<String>,
    pub horizon_ms: Option<i64>,
    pub views: BTreeMap<String, ViewReport>,
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
    let result = run_locked(config, store, metrics, req, &run_id, start_ms, &lock).await;
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

async fn save_report(store: &Arc<dyn ObjectStore>, report: &RunReport) -> object_store::Result<()> {
    let body = serde_json::to_vec_pretty(report).unwrap_or_default();
    store
        .put(&paths::batch_last_run(), PutPayload::from(body))
        .await
        .map(|_| ())
}

/// Reads `_batch/last_run.json`, if a run has finished yet.
pub async fn load_report(store: &Arc<dyn ObjectStore>) -> Option<RunReport> {
    let res = store.get(&paths::batch_last_run()).await.ok()?;
    serde_json::from_slice(&res.bytes().await.ok()?).ok()
}

async fn run_locked(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    metrics: &BatchMetrics,
    req: &RunRequest,
    run_id: &str,
    start_ms: i64,
    lock: &RunLock,
) -> Result<RunReport, RunError> {
    let schema = EventSchema::from_config(config);
    let plans =
        ViewPlan::compile_all(config, &schema).map_err(|e| RunError::Setup(e.to_string()))?;
    let engine = Engine::new(store.clone(), master_schema(&schema))
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let snapshot = Snapshot::load(
        store,
        &config.source.topic,
        start_ms,
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
        dates = snapshot.dates.len(),
        "batch run started"
    );
    let mut report = RunReport {
        run_id: run_id.to_string(),
        kind: if req.range.is_some() {
            "backfill"
        } else {
            "run"
        }
        .to_string(),
        started_at: format_rfc3339(start_ms),
        ok: true,
        horizon: snapshot.horizon_ms.map(format_rfc3339),
        horizon_ms: snapshot.horizon_ms,
        ..Default::default()
    };
    let ctx = ViewRun {
        config,
        store,
        metrics,
        engine: &engine,
        snapshot: &snapshot,
        req,
        run_id,
        lock,
    };
    for plan in &plans {
        if req.view.as_ref().is_some_and(|v| v != &plan.name) {
            continue;
        }
        let view_report = match ctx.run_view(plan).await {
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

/// Fingerprint of a view's definition and of the file layout it is written in.
fn definition(config: &Config, view: &ViewPlan) -> String {
    let text = format!(
        "v1|{}|{:?}",
        serde_json::to_string(&config.view(&view.name)).unwrap_or_default(),
        view_schema(view)
    );
    format!(
        "{:016x}",
        tributary_shared::hll::murmur64a(text.as_bytes(), 1)
    )
}

/// Dates of the snapshot a run must compute for a view.
fn dates_to_compute<'a>(
    snapshot: &'a Snapshot,
    previous: Option<&Manifest>,
    definition: &str,
    req: &RunRequest,
) -> Vec<(&'a String, &'a DateInput)> {
    let redefined = previous.is_none_or(|m| m.definition != definition);
    snapshot
        .dates
        .iter()
        .filter(|(date, input)| {
            let Some(start) = parse_date(date) else {
                return false;
            };
            if let Some((from, to)) = req.range {
                return start < to && start + DAY_MS > from;
            }
            let before_horizon = snapshot.horizon_ms.is_some_and(|h| start < h);
            let changed = redefined
                || previous
                    .and_then(|m| m.dates.get(*date))
                    .is_none_or(|e| e.input_fingerprint != input.fingerprint());
            before_horizon && changed
        })
        .collect()
}

/// Why a view's recompute did not land.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("computing {date}: {source}")]
    Compute {
        date: String,
        source: crate::compute::ComputeError,
    },
    #[error("writing the view files of {date}: {source}")]
    Write {
        date: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What every view of one run shares.
struct ViewRun<'a> {
    config: &'a Config,
    store: &'a Arc<dyn ObjectStore>,
    metrics: &'a BatchMetrics,
    engine: &'a Engine,
    snapshot: &'a Snapshot,
    req: &'a RunRequest,
    run_id: &'a str,
    lock: &'a RunLock,
}

impl ViewRun<'_> {
    /// Recomputes the dates of one view that need it, then lands its new manifest (only if
    /// this run still holds the lock and nobody else changed the manifest since it was read).
    /// On failure the files this run wrote are removed: nothing names them.
    async fn run_view(&self, plan: &ViewPlan) -> Result<ViewReport, ViewError> {
        let previous = Manifest::load_versioned(self.store, &plan.name).await?;
        let mut written: Vec<String> = Vec::new();
        let result = self.compute_and_land(plan, previous, &mut written).await;
        if result.is_err() && !self.landed(plan).await {
            for p in &written {
                let _ = self
                    .store
                    .delete(&object_store::path::Path::from(p.as_str()))
                    .await;
            }
        }
        result
    }

    /// Whether the manifest now names this run (a put that failed in transit may have landed).
    async fn landed(&self, plan: &ViewPlan) -> bool {
        matches!(
            Manifest::load(self.store, &plan.name).await,
            Ok(Some((m, _))) if m.run_id == self.run_id
        )
    }

    async fn compute_and_land(
        &self,
        plan: &ViewPlan,
        previous: Option<(Manifest, UpdateVersion)>,
        written: &mut Vec<String>,
    ) -> Result<ViewReport, ViewError> {
        let (config, store, snapshot, req, run_id) = (
            self.config,
            self.store,
            self.snapshot,
            self.req,
            self.run_id,
        );
        let (previous, previous_version) = match previous {
            Some((m, v)) => (Some(m), Some(v)),
            None => (None, None),
        };
        let definition = definition(config, plan);
        let todo = dates_to_compute(snapshot, previous.as_ref(), &definition, req);
        let total = todo.len();
        let mut report = ViewReport::default();
        let mut computed: BTreeMap<String, DateEntry> = BTreeMap::new();
        let view_started = Instant::now();
        let mut rows_read = 0u64;
        for (i, (date, input)) in todo.iter().enumerate() {
            let t = Instant::now();
            let out = self
                .engine
                .compute_date(plan, input)
                .await
                .map_err(|source| ViewError::Compute {
                    date: (*date).clone(),
                    source,
                })?;
            let entry = write_date(store, plan, date, input, &out, run_id, written)
                .await
                .map_err(|source| ViewError::Write {
                    date: (*date).clone(),
                    source,
                })?;
            rows_read += out.input_rows;
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                view = %plan.name,
                date = %date,
                progress = format!("{}/{total}", i + 1),
                input_rows = out.input_rows,
                events = out.events,
                seconds = format!("{secs:.2}"),
                rows_per_s = (out.input_rows as f64 / secs).round() as u64,
                "date recomputed"
            );
            let labels = vec![("view".to_string(), plan.name.clone())];
            self.metrics.dates_computed.get_or_create(&labels).inc();
            self.metrics
                .events_computed
                .get_or_create(&labels)
                .inc_by(out.events);
            report.events += out.events;
            report.dates_computed.push((*date).clone());
            computed.insert((*date).clone(), entry);
        }

        let now = now_ms();
        let redefined = previous.as_ref().is_none_or(|m| m.definition != definition);
        let mut manifest = previous.clone().unwrap_or_else(|| Manifest {
            view: plan.name.clone(),
            version: 0,
            run_id: String::new(),
            computed_at: String::new(),
            horizon_ms: None,
            horizon: None,
            definition: definition.clone(),
            dates: BTreeMap::new(),
            retired: Vec::new(),
        });
        if redefined && req.range.is_none() {
            // Every date was recomputed under the new definition; the old ones go.
            for (_, old) in std::mem::take(&mut manifest.dates) {
                retire(&mut manifest, &old, now);
            }
        }
        for (date, entry) in computed {
            if let Some(old) = manifest.dates.remove(&date) {
                retire(&mut manifest, &old, now);
            }
            manifest.dates.insert(date, entry);
        }
        let grace = config.batch.gc_grace.as_millis() as i64;
        let (expired, kept): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut manifest.retired)
            .into_iter()
            .partition(|r| now - r.retired_ms >= grace);
        manifest.retired = kept;
        // The horizon never moves back: a snapshot that cannot place it (a partition with no
        // watermark yet, a new partition) keeps the one already landed.
        let horizon_ms = match (manifest.horizon_ms, snapshot.horizon_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let changed = !report.dates_computed.is_empty()
            || !expired.is_empty()
            || previous.as_ref().is_none_or(|m| m.horizon_ms != horizon_ms)
            || redefined;
        if changed
            && (previous.is_some() || !manifest.dates.is_empty() || snapshot.horizon_ms.is_some())
        {
            manifest.version += 1;
            manifest.run_id = run_id.to_string();
            manifest.computed_at = format_rfc3339(now);
            // A backfill of part of the dates under a changed definition leaves the old one
            // recorded, so the next run still recomputes the rest.
            if !(redefined && previous.is_some() && req.range.is_some()) {
                manifest.definition = definition;
            }
            // A backfill may run ahead of the horizon but never moves it.
            if req.range.is_none() || manifest.horizon_ms.is_none() {
                manifest.horizon_ms = horizon_ms;
                manifest.horizon = horizon_ms.map(format_rfc3339);
            }
            // Land only while this run still holds the lock, and only over the version it read.
            self.lock
                .renew(now_ms(), config.batch.lock_ttl.as_millis() as i64)
                .await?;
            if let Err(e) = manifest.save(store, previous_version).await
                && !self.landed(plan).await
            {
                return Err(e.into());
            }
            report.manifest_version = Some(manifest.version);
        } else {
            report.manifest_version = previous.as_ref().map(|m| m.version);
        }
        // Only after the new manifest no longer names them.
        for r in &expired {
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
        let orphans = collect_orphans(store, &manifest, run_id, now, grace).await;
        let secs = view_started.elapsed().as_secs_f64();
        tracing::info!(
            view = %plan.name,
            dates = total,
            events = report.events,
            input_rows = rows_read,
            seconds = format!("{secs:.2}"),
            manifest_version = ?report.manifest_version,
            retired_deleted = expired.len(),
            orphans_deleted = orphans,
            "view done"
        );
        Ok(report)
    }
}

/// Deletes view files that no manifest names (a run killed after writing files, before its
/// manifest landed) once they are older than the grace period; returns how many.
async fn collect_orphans(
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

fn retire(manifest: &mut Manifest, entry: &DateEntry, now: i64) {
    for f in entry.files.values() {
        manifest.retired.push(Retired {
            path: f.path.clone(),
            retired_ms: now,
        });
    }
}

async fn write_date(
    store: &Arc<dyn ObjectStore>,
    plan: &ViewPlan,
    date: &str,
    input: &DateInput,
    out: &DateOutput,
    run_id: &str,
    written: &mut Vec<String>,
) -> Result<DateEntry, Box<dyn std::error::Error + Send + Sync>> {
    let mut files = BTreeMap::new();
    for (g, batch) in &out.tables {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .build();
        let mut buf = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
        writer.write(batch)?;
        writer.close()?;
        let path = paths::view_file(&plan.name, *g, date, run_id);
        let bytes = buf.len() as u64;
        store.put(&path, PutPayload::from(buf)).await?;
        written.push(path.to_string());
        files.insert(
            *g,
            ViewFile {
                path: path.to_string(),
                rows: batch.num_rows() as u64,
                bytes,
            },
        );
    }
    Ok(DateEntry {
        input_fingerprint: input.fingerprint(),
        input_files: input.files.len(),
        input_rows: out.input_rows,
        events: out.events,
        run_id: run_id.to_string(),
        computed_at: format_rfc3339(now_ms()),
        files,
    })
}
