//! The run report, `_batch/last_run.json`: what the last finished run did per view, for
//! operators and the serving layer's status page. A run writes it after its views land; the
//! status page tells "no run has finished yet" from "the store could not be read".

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tributary_shared::layout::paths;

/// Outcome of one view in a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewReport {
    pub dates_computed: Vec<String>,
    pub events: u64,
    pub manifest_version: Option<u64>,
    pub error: Option<String>,
    /// Ballista job ids of the dates computed (none on the local engine).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// Bytes the local engine spilled to `batch.spill_dir` for this view (0: it fit in
    /// `batch.memory_limit`; a Ballista run's spills are the executors' and not counted).
    #[serde(default)]
    pub spilled_bytes: u64,
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
    /// `local` or the Ballista scheduler that computed the views.
    #[serde(default)]
    pub engine: String,
    pub views: BTreeMap<String, ViewReport>,
}

/// Why the run report could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("_batch/last_run.json: {0}")]
    Store(#[from] object_store::Error),
    #[error("_batch/last_run.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes `_batch/last_run.json`.
pub async fn save_report(
    store: &Arc<dyn ObjectStore>,
    report: &RunReport,
) -> Result<(), ReportError> {
    let body = serde_json::to_vec_pretty(report)?;
    store
        .put(&paths::batch_last_run(), PutPayload::from(body))
        .await?;
    Ok(())
}

/// Reads `_batch/last_run.json`: `None` until a run has finished; an error when the store
/// cannot be read or the report is not one.
pub async fn load_report(store: &Arc<dyn ObjectStore>) -> Result<Option<RunReport>, ReportError> {
    let res = match store.get(&paths::batch_last_run()).await {
        Ok(res) => res,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(serde_json::from_slice(&res.bytes().await?)?))
}
