//! `/v1/status`: one page for operators: speed lag per partition, late and DLQ counts,
//! archive progress, batch horizon per view, last and next batch run, and warnings.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::Utc;
use serde::Serialize;
use tributary_batch_layer::read::{StateStore, horizon, load_report};
use tributary_shared::bucket::format_rfc3339;
use utoipa::ToSchema;

use tributary_speed_layer::read::{SpeedStats, ViewState};

use crate::sources::Sources;

#[derive(Debug, Serialize, ToSchema)]
pub struct SpeedPartition {
    pub partition: i32,
    pub next_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    pub lag_offsets: Option<i64>,
    /// Newest event time applied, and how far behind now it is.
    pub max_event_time: Option<String>,
    pub event_time_lag_seconds: Option<f64>,
    pub watermark: Option<String>,
    pub updated: Option<String>,
}

/// A rebuild of a view's speed state from Kafka, while it runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildStatus {
    /// `lost` (Redis lost the view's state), `reset` (an operator) or `corrupt`.
    pub reason: String,
    /// Event time the view is rebuilt from.
    pub from: String,
    pub started: String,
    /// Records still to apply before the view's speed buckets are served again.
    pub remaining_offsets: i64,
    /// Per partition: [offset applied so far, offset to reach].
    #[schema(value_type = Object)]
    pub partitions: BTreeMap<i32, (i64, i64)>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpeedViewStatus {
    pub view: String,
    /// `serving`, `rebuilding` or `missing` (no state in Redis: lost, and the speed layer has
    /// not started rebuilding it yet, or never ran).
    pub state: String,
    /// The view's watermark over every partition (speed buckets ending before it are final).
    pub watermark: Option<String>,
    pub rebuild: Option<RebuildStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SpeedStatus {
    pub readable: bool,
    pub views: Vec<SpeedViewStatus>,
    pub partitions: Vec<SpeedPartition>,
    /// Minimum watermark over partitions.
    pub watermark: Option<String>,
    /// Events behind the watermark, not applied in Redis (the batch layer has them), per view.
    pub late_dropped: BTreeMap<String, u64>,
    /// Events sent to the dead-letter topic, by reason.
    pub dlq: BTreeMap<String, u64>,
    pub dlq_topic: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArchivePartition {
    pub partition: i32,
    pub committed_offset: i64,
    pub high_watermark: Option<i64>,
    pub lag_offsets: Option<i64>,
    pub watermark: Option<String>,
    pub rows: u64,
    pub invalid: u64,
    pub idle: bool,
    pub updated: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ArchiveStatus {
    pub readable: bool,
    pub partitions: Vec<ArchivePartition>,
    /// The horizon the next batch run would use.
    pub horizon: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ViewBatchStatus {
    pub view: String,
    pub horizon: Option<String>,
    pub manifest_version: Option<u64>,
    pub computed_at: Option<String>,
    pub dates: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchStatus {
    pub views: Vec<ViewBatchStatus>,
    pub last_run: Option<serde_json::Value>,
    pub next_run: Option<String>,
    pub schedule: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    pub now: String,
    pub topic: String,
    pub speed: SpeedStatus,
    pub archive: ArchiveStatus,
    pub batch: BatchStatus,
    /// Conditions an operator should act on (each names its runbook).
    pub warnings: Vec<String>,
}

pub async fn status(src: &Sources) -> StatusResponse {
    let now = Utc::now().timestamp_millis();
    let topic = src.config.source.topic.clone();
    let mut warnings = Vec::new();

    // Speed layer, from Redis.
    let keys = src.keys.clone();
    let view_names = src.view_names();
    let t = topic.clone();
    let speed = src
        .with_redis(|mut con| async move {
            let progress = tributary_speed_layer::read::read_progress(&mut con, &keys, &t)
                .await
                .map_err(|e| e.to_string())?;
            let mut states = Vec::new();
            for v in &view_names {
                states.push(
                    tributary_speed_layer::read::read_view_state(&mut con, &keys, &t, v)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let stats = tributary_speed_layer::read::read_stats(&mut con, &keys, &t, &view_names)
                .await
                .map_err(|e| e.to_string())?;
            Ok((progress, states, stats))
        })
        .await;
    let lateness = src.config.speed.allowed_lateness.as_millis() as i64;
    let speed = match speed {
        Ok((progress, states, stats)) => {
            let partitions: Vec<SpeedPartition> = progress
                .iter()
                .map(|(p, r)| SpeedPartition {
                    partition: *p,
                    next_offset: r.next_offset,
                    high_watermark: r.high_watermark,
                    lag_offsets: r.lag_offsets,
                    max_event_time: r.max_event_time_ms.map(format_rfc3339),
                    event_time_lag_seconds: r.max_event_time_ms.map(|t| (now - t) as f64 / 1000.0),
                    watermark: r.watermark_ms.map(format_rfc3339),
                    updated: Some(format_rfc3339(r.updated_ms)),
                })
                .collect();
            let SpeedStats { dlq, late_dropped } = stats;
            let views: Vec<SpeedViewStatus> = src
                .view_names()
                .into_iter()
                .zip(&states)
                .map(|(v, st)| view_status(v, st, lateness))
                .collect();
            for v in &views {
                match (&v.rebuild, v.state.as_str()) {
                    (Some(r), _) => warnings.push(format!(
                        "view {}: the speed layer is rebuilding its state from Kafka ({}, from {}, {} records to go): its speed buckets answer `rebuilding` (docs/runbooks/rebuild-redis.md)",
                        v.view, r.reason, r.from, r.remaining_offsets
                    )),
                    (None, "missing") => warnings.push(format!(
                        "view {}: no speed state in Redis (lost, or no speed layer has run): its speed buckets answer `rebuilding` until `speed-layer run` rebuilds it (docs/runbooks/rebuild-redis.md)",
                        v.view
                    )),
                    _ => {}
                }
            }
            let watermark = progress.values().filter_map(|r| r.watermark_ms).min();
            if partitions
                .iter()
                .any(|p| p.lag_offsets.unwrap_or(0) > 100_000)
            {
                warnings.push("speed layer lag above 100k events on some partition (docs/runbooks/broker-outage.md, start-stop-upgrade.md: add consumers)".into());
            }
            SpeedStatus {
                readable: true,
                views,
                partitions,
                watermark: watermark.map(format_rfc3339),
                late_dropped,
                dlq,
                dlq_topic: src.config.source.dlq_topic(),
            }
        }
        Err(e) => {
            warnings.push(format!(
                "{e}: speed buckets cannot be served (docs/runbooks/rebuild-redis.md)"
            ));
            SpeedStatus {
                readable: false,
                views: Vec::new(),
                partitions: Vec::new(),
                watermark: None,
                late_dropped: BTreeMap::new(),
                dlq: BTreeMap::new(),
                dlq_topic: src.config.source.dlq_topic(),
            }
        }
    };

    // Archive, from the partition states.
    let idle_ms = src.config.batch.idle_timeout.as_millis() as i64;
    let state_store = StateStore::new(src.store.clone(), &topic);
    let loaded = match state_store.load_topic().await {
        Ok(n) => state_store.load_all().await.map(|s| (n, s)),
        Err(e) => Err(e),
    };
    let archive = match loaded {
        Ok((topic_partitions, states)) => ArchiveStatus {
            readable: true,
            horizon: horizon(&states, topic_partitions, now, idle_ms).map(format_rfc3339),
            partitions: states
                .iter()
                .map(|(p, s)| ArchivePartition {
                    partition: *p,
                    committed_offset: s.committed_offset,
                    high_watermark: s.high_watermark,
                    lag_offsets: s.high_watermark.map(|h| (h - s.committed_offset).max(0)),
                    watermark: s.watermark_ms.map(format_rfc3339),
                    rows: s.rows,
                    invalid: s.invalid,
                    idle: s.is_idle(now, idle_ms),
                    updated: format_rfc3339(s.updated_ms),
                })
                .collect(),
        },
        Err(e) => {
            warnings.push(format!("archive state unreadable: {e}"));
            ArchiveStatus {
                readable: false,
                partitions: Vec::new(),
                horizon: None,
            }
        }
    };

    // Batch views.
    let retention = src.config.speed.retention.as_millis() as i64;
    let mut views = Vec::new();
    for v in &src.views {
        match src.batch.manifest(&v.name).await {
            Ok(m) => {
                let horizon_ms = m.as_ref().and_then(|m| m.horizon_ms);
                let behind = match horizon_ms {
                    Some(h) => h < now - retention,
                    None => true,
                };
                if let Some(m) = &m {
                    warnings.extend(crate::accuracy::warnings(src, v, m).await);
                }
                if behind {
                    warnings.push(format!(
                        "view {}: batch horizon {} is behind speed retention ({}): buckets between them are missing; run the batch (docs/runbooks/horizon-lagging.md)",
                        v.name,
                        horizon_ms.map(format_rfc3339).unwrap_or_else(|| "(none yet)".into()),
                        humantime::format_duration(src.config.speed.retention)
                    ));
                }
                views.push(ViewBatchStatus {
                    view: v.name.clone(),
                    horizon: horizon_ms.map(format_rfc3339),
                    manifest_version: m.as_ref().map(|m| m.version),
                    computed_at: m.as_ref().map(|m| m.computed_at.clone()),
                    dates: m.as_ref().map_or(0, |m| m.dates.len()),
                });
            }
            Err(e) => {
                warnings.push(format!(
                    "view {}: manifest unreadable: {e} (docs/runbooks/batch-run-failed.md)",
                    v.name
                ));
                views.push(ViewBatchStatus {
                    view: v.name.clone(),
                    horizon: None,
                    manifest_version: None,
                    computed_at: None,
                    dates: 0,
                });
            }
        }
    }
    let last_run = match load_report(&src.store).await {
        Ok(r) => r,
        Err(e) => {
            warnings.push(format!(
                "last batch run unreadable: {e} (docs/runbooks/batch-run-failed.md)"
            ));
            None
        }
    };
    if let Some(r) = &last_run
        && !r.ok
    {
        warnings.push(format!(
            "last batch run {} failed: {} (docs/runbooks/batch-run-failed.md)",
            r.run_id,
            r.views
                .iter()
                .filter_map(|(v, x)| x.error.as_ref().map(|e| format!("{v}: {e}")))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let next_run = cron::Schedule::from_str(&src.config.batch.schedule)
        .ok()
        .and_then(|s| s.upcoming(Utc).next())
        .map(|t| format_rfc3339(t.timestamp_millis()));
    StatusResponse {
        now: format_rfc3339(now),
        topic,
        speed,
        archive,
        batch: BatchStatus {
            views,
            last_run: last_run.and_then(|r| serde_json::to_value(r).ok()),
            next_run,
            schedule: src.config.batch.schedule.clone(),
        },
        warnings,
    }
}

fn view_status(view: String, st: &ViewState, lateness_ms: i64) -> SpeedViewStatus {
    let state = match (&st.epoch, &st.rebuild) {
        (None, _) => "missing",
        (Some(_), Some(_)) => "rebuilding",
        (Some(_), None) => "serving",
    };
    SpeedViewStatus {
        view,
        state: state.into(),
        watermark: st.watermark(lateness_ms).map(format_rfc3339),
        rebuild: st.rebuild.as_ref().map(|r| RebuildStatus {
            reason: r.reason.clone(),
            from: format_rfc3339(r.from_ms),
            started: format_rfc3339(r.started_ms),
            remaining_offsets: st.rebuild_remaining(),
            partitions: r
                .targets
                .iter()
                .map(|(p, t)| (*p, (st.partitions.get(p).map_or(0, |s| s.next_offset), *t)))
                .collect(),
        }),
    }
}
