//! One view within a run: recompute the dates that need it (reading the speed side of the
//! accuracy ledger meanwhile), write their view files, land the view's new manifest (only while
//! the run holds the lock, only over the version it read), then delete the files no manifest
//! names any more (`gc`).

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use object_store::{ObjectStoreExt, PutPayload, UpdateVersion};
use tributary_shared::bucket::{DAY_MS, date_string, format_rfc3339, parse_date};
use tributary_shared::layout::paths;
use tributary_shared::{Config, ViewPlan};

use super::gc::{collect_orphans, delete_retired, retire};
use super::{Run, RunRequest, now_ms};
use crate::compute::{ComputeError, DateOutput, Engine};
use crate::ledger::SpeedTask;
use crate::lock::LockError;
use crate::manifest::{DateEntry, Manifest, ManifestError, Retired, ViewFile};
use crate::report::ViewReport;
use crate::snapshot::{DateInput, Snapshot};
use crate::view_file::{encode_view_file, view_schema};

/// Why a view's recompute did not land.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("computing {date}: {source}")]
    Compute { date: String, source: ComputeError },
    #[error("writing the view files of {date}: {source}")]
    Write { date: String, source: WriteError },
}

/// Why a date's view files could not be written (the underlying error's text, which the run
/// report shows).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error("encoding a view file: {0}")]
    Encode(String),
}

/// What every view of one run shares: the run, its engine and its snapshot.
pub(super) struct ViewRun<'a> {
    pub(super) run: &'a Run<'a>,
    pub(super) engine: &'a Engine,
    pub(super) snapshot: &'a Snapshot,
}

impl ViewRun<'_> {
    /// Recomputes the dates of one view that need it, then lands its new manifest (only if
    /// this run still holds the lock and nobody else changed the manifest since it was read).
    /// On failure the files this run wrote are removed: nothing names them.
    pub(super) async fn run_view(&self, plan: &ViewPlan) -> Result<ViewReport, ViewError> {
        let previous = Manifest::load_versioned(self.run.store, &plan.name).await?;
        let mut written: Vec<String> = Vec::new();
        let result = self.compute_and_land(plan, previous, &mut written).await;
        if result.is_err() && !self.landed(plan).await {
            for p in &written {
                let _ = self
                    .run
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
            Manifest::load(self.run.store, &plan.name).await,
            Ok(Some((m, _))) if m.run_id == self.run.run_id
        )
    }

    async fn compute_and_land(
        &self,
        plan: &ViewPlan,
        previous: Option<(Manifest, UpdateVersion)>,
        written: &mut Vec<String>,
    ) -> Result<ViewReport, ViewError> {
        let Run {
            config,
            store,
            req,
            run_id,
            ..
        } = *self.run;
        let snapshot = self.snapshot;
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
        // The horizon never moves back: a snapshot that cannot place it (a partition with no
        // watermark yet, a new partition) keeps the one already landed.
        let previous_horizon = previous.as_ref().and_then(|m| m.horizon_ms);
        let horizon_ms = match (previous_horizon, snapshot.horizon_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // The speed side of the accuracy ledger of the buckets this run compares (a backfill
        // compares none; a ledger already at the horizon, none) is read by a task of its own
        // while the dates are computed.
        let compared_to = previous.as_ref().and_then(Manifest::ledger_from);
        let speed_read = horizon_ms
            .filter(|h| req.range.is_none() && compared_to.is_none_or(|c| c < *h))
            .map(|h| SpeedTask::spawn(config, plan, compared_to, h, now_ms()));
        // The tables of dates within the speed layer's retention stay in memory for the
        // ledger, which compares only buckets the speed layer still holds.
        let ledger_from = speed_read.as_ref().map(|_| {
            date_string(now_ms().saturating_sub(config.speed.retention.as_millis() as i64))
        });
        let mut held = Vec::new();
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
            let entry = self
                .write_date(plan, date, input, &out, written)
                .await
                .map_err(|source| ViewError::Write {
                    date: (*date).clone(),
                    source,
                })?;
            if ledger_from
                .as_ref()
                .is_some_and(|from| date.as_str() >= from.as_str())
            {
                for (g, batch) in &out.tables {
                    if let Some(file) = entry.files.get(g) {
                        held.push((file.path.clone(), batch.clone()));
                    }
                }
            }
            rows_read += out.input_rows;
            self.run
                .metrics
                .job(&plan.name, &self.engine.name, out.job.as_deref());
            if let Some(job) = &out.job {
                report.jobs.push(job.clone());
            }
            report.spilled_bytes += out.spilled_bytes;
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                view = %plan.name,
                date = %date,
                progress = format!("{}/{total}", i + 1),
                input_rows = out.input_rows,
                events = out.events,
                seconds = format!("{secs:.2}"),
                rows_per_s = (out.input_rows as f64 / secs).round() as u64,
                engine = %self.engine.name,
                job = out.job.as_deref().unwrap_or("-"),
                spilled_bytes = out.spilled_bytes,
                "date recomputed"
            );
            let labels = vec![("view".to_string(), plan.name.clone())];
            self.run
                .metrics
                .spilled_bytes
                .get_or_create(&labels)
                .inc_by(out.spilled_bytes);
            self.run.metrics.dates_computed.get_or_create(&labels).inc();
            self.run
                .metrics
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
            landed_ms: None,
            horizon_ms: None,
            horizon: None,
            definition: definition.clone(),
            fields: BTreeMap::new(),
            dates: BTreeMap::new(),
            retired: Vec::new(),
            accuracy: BTreeMap::new(),
            ledger_to_ms: None,
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
        // A superseded file stays while a reader of the previous version may still read it
        // (the grace) and while an `as_of` query may name a version that names it (the
        // history's retention).
        let retention = config.batch.history_retention.as_millis() as i64;
        let grace = config.batch.gc_grace.as_millis() as i64;
        let keep_retired = grace.max(retention);
        let (expired, kept): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut manifest.retired)
            .into_iter()
            .partition(|r| now - r.retired_ms >= keep_retired);
        manifest.retired = kept;
        let changed = !report.dates_computed.is_empty()
            || !expired.is_empty()
            || previous.is_none()
            || previous_horizon != horizon_ms
            || redefined;
        // The speed side, brought up to the speed layer's state now (a rebuild since voids
        // it; buckets it sealed since are read now). Buckets the speed layer sealed after an
        // earlier run settled them are news of their own: a version lands for their rows.
        let speed = match speed_read {
            Some(task) => Some(task.finish(now_ms()).await),
            None => None,
        };
        let ledger_only = !changed && matches!(&speed, Some(Ok(Some(s))) if s.has_buckets());
        if (changed || ledger_only)
            && (previous.is_some() || !manifest.dates.is_empty() || snapshot.horizon_ms.is_some())
        {
            manifest.version += 1;
            manifest.run_id = run_id.to_string();
            // A backfill of part of the dates under a changed definition leaves the old one
            // recorded, so the next run still recomputes the rest.
            if !(redefined && previous.is_some() && req.range.is_some()) {
                manifest.definition = definition;
            }
            manifest.fields = crate::evolution::view_fields(config, plan);
            // A backfill may run ahead of the horizon but never moves it.
            if req.range.is_none() || manifest.horizon_ms.is_none() {
                manifest.horizon_ms = horizon_ms;
                manifest.horizon = horizon_ms.map(format_rfc3339);
            }
            // The speed accuracy ledger of the buckets this version settles, named by it.
            let compared = match speed {
                Some(speed) => self.settle(plan, &mut manifest, speed, written, held).await,
                None => false,
            };
            if !compared {
                // The mark stays where the ledger got (pinned: a manifest without one falls
                // back to its horizon, which moves), so a later run compares these buckets.
                let speed_retention = config.speed.retention.as_millis() as i64;
                manifest.ledger_to_ms = (manifest.ledger_to_ms.or(compared_to))
                    .or(Some(now.saturating_sub(speed_retention)));
            }
            if ledger_only && !compared {
                // Its comparison failed (logged): nothing to land; a later run retries it.
                report.manifest_version = previous.as_ref().map(|m| m.version);
            } else {
                self.land(
                    plan,
                    &mut manifest,
                    previous.as_ref(),
                    previous_version,
                    now,
                )
                .await?;
                report.manifest_version = Some(manifest.version);
            }
        } else {
            report.manifest_version = previous.as_ref().map(|m| m.version);
        }
        // Only after the new manifest no longer names them.
        delete_retired(store, &expired).await;
        let history_deleted =
            crate::history::collect(store, &plan.name, now_ms() - retention).await;
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
            history_deleted,
            "view done"
        );
        Ok(report)
    }

    /// Lands `manifest` over `previous` (its store version `previous_version`): only while
    /// this run still holds the lock, the previous version recorded in the history first.
    async fn land(
        &self,
        plan: &ViewPlan,
        manifest: &mut Manifest,
        previous: Option<&Manifest>,
        previous_version: Option<UpdateVersion>,
        now: i64,
    ) -> Result<(), ViewError> {
        let Run { config, store, .. } = *self.run;
        let retention = config.batch.history_retention.as_millis() as i64;
        self.run
            .lock
            .renew(now_ms(), config.batch.lock_ttl.as_millis() as i64)
            .await?;
        // The version being superseded must be in the history before it stops being
        // current (its own record, after it landed, may have failed or been cut short by a
        // crash): otherwise an `as_of` in its time would silently find the one before.
        // Idempotent; a failure fails the view and the previous version stays current.
        if retention > 0
            && let Some(prev) = previous
        {
            crate::history::record(store, prev).await?;
        }
        // The instant the version counts from for `as_of`: as close to the write as can be.
        let landed = now_ms();
        manifest.computed_at = format_rfc3339(landed);
        manifest.landed_ms = Some(landed);
        // Files this run retired stop being named at the landing, not at the run's start:
        // the retention counts from there.
        for r in manifest.retired.iter_mut().filter(|r| r.retired_ms == now) {
            r.retired_ms = landed;
        }
        if let Err(e) = manifest.save(store, previous_version).await
            && !self.landed(plan).await
        {
            return Err(e.into());
        }
        // Landed: the history records it. Should this fail, the current manifest still
        // answers `as_of` after it landed, and the next landing records it first.
        if retention > 0
            && let Err(e) = crate::history::record(store, manifest).await
        {
            tracing::warn!(view = %plan.name, version = manifest.version, error = %e, "could not record the manifest version in the history; the next landing records it");
        }
        Ok(())
    }

    /// Compares the buckets `manifest` settles with the speed layer's values, names the
    /// ledger files in it and moves its ledger mark; whether it did. Best effort: the views
    /// land without the ledger if Redis or the comparison fails (logged; the mark stays, so a
    /// later run compares those buckets).
    async fn settle(
        &self,
        plan: &ViewPlan,
        manifest: &mut Manifest,
        speed: Result<Option<crate::ledger::SpeedSide>, crate::ledger::LedgerError>,
        written: &mut Vec<String>,
        held: Vec<(String, RecordBatch)>,
    ) -> bool {
        let mut sealed_to = None;
        let settled = match speed {
            Ok(Some(speed)) => {
                sealed_to = Some(speed.sealed_to());
                let settle = crate::ledger::Settle {
                    store: self.run.store,
                    plan,
                    manifest,
                    run_id: self.run.run_id,
                    now_ms: now_ms(),
                    metrics: self.run.metrics,
                    held,
                };
                settle.run(speed).await
            }
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        match settled {
            Ok(files) => {
                for (date, file) in files {
                    written.push(file.path.clone());
                    manifest.accuracy.entry(date).or_default().push(file);
                }
                manifest.ledger_to_ms = sealed_to.or(manifest.ledger_to_ms);
                sealed_to.is_some()
            }
            Err(e) => {
                tracing::warn!(view = %plan.name, error = %e, "accuracy ledger not written for this run's settled buckets; a later run compares them");
                false
            }
        }
    }

    /// Writes one date's view files (one per granularity), noting each path in `written`.
    async fn write_date(
        &self,
        plan: &ViewPlan,
        date: &str,
        input: &DateInput,
        out: &DateOutput,
        written: &mut Vec<String>,
    ) -> Result<DateEntry, WriteError> {
        let Run { store, run_id, .. } = *self.run;
        let mut files = BTreeMap::new();
        // The granularities' files are encoded side by side, off the runtime's workers (the
        // minute file of a 10M-event day is ~19 MB of zstd Parquet: ~0.3 s one after another).
        let encodes = out.tables.iter().map(|(g, batch)| {
            let (g, batch) = (*g, batch.clone());
            tokio::task::spawn_blocking(move || encode_view_file(&batch).map(|buf| (g, batch, buf)))
        });
        for encoded in futures::future::join_all(encodes).await {
            let (g, batch, buf) = encoded.map_err(|e| WriteError::Encode(e.to_string()))??;
            let path = paths::view_file(&plan.name, g, date, run_id);
            let bytes = buf.len() as u64;
            store.put(&path, PutPayload::from(buf)).await?;
            written.push(path.to_string());
            files.insert(
                g,
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
}

/// Fingerprint of a view's definition and of the file layout it is written in (a manifest's
/// `definition`: the serving layer checks an `as_of` version against it).
pub fn definition(config: &Config, view: &ViewPlan) -> String {
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
