//! A view's manifest (`views/<view>/manifest.json`): the complete, current version of the
//! view. A run writes it last, after every file it names, so a reader never sees a partial
//! version; files it no longer names are `retired` and deleted after `batch.gc_grace` and
//! `batch.history_retention` (every landed version is also kept in [`crate::history`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tributary_shared::Granularity;
use tributary_shared::config::FieldType;
use tributary_shared::layout::paths;

/// One view file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// What a date of the view was computed from, and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DateEntry {
    /// [`crate::snapshot::DateInput::fingerprint`] of the master files it was computed from.
    pub input_fingerprint: String,
    pub input_files: usize,
    pub input_rows: u64,
    /// The view's events that date, deduplicated.
    pub events: u64,
    pub run_id: String,
    pub computed_at: String,
    pub files: BTreeMap<Granularity, ViewFile>,
}

/// A file no longer named, waiting out the grace period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retired {
    pub path: String,
    pub retired_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub view: String,
    /// Increases by one with every manifest written.
    pub version: u64,
    pub run_id: String,
    pub computed_at: String,
    /// The instant this version counts from (taken just before it is written): `as_of`
    /// queries at or after it and before the next version's read this one
    /// ([`crate::history`]). Absent in manifests written before the history existed.
    #[serde(default)]
    pub landed_ms: Option<i64>,
    /// Buckets ending at or before it are authoritative in this version.
    pub horizon_ms: Option<i64>,
    pub horizon: Option<String>,
    /// Fingerprint of the view's definition; a change recomputes every date.
    pub definition: String,
    /// The declared types of the fields the view reads, as computed ([`crate::evolution`]).
    #[serde(default)]
    pub fields: BTreeMap<String, FieldType>,
    pub dates: BTreeMap<String, DateEntry>,
    #[serde(default)]
    pub retired: Vec<Retired>,
    /// The speed accuracy ledger's files per date of the buckets they settle
    /// ([`crate::ledger`]), kept as long as the view.
    #[serde(default)]
    pub accuracy: BTreeMap<String, Vec<ViewFile>>,
    /// The ledger has compared every bucket ending at or before it that the speed layer
    /// held: it trails the horizon while the speed layer has not sealed the horizon's last
    /// buckets, and a later run compares them (landing a version for the ledger alone if
    /// nothing else changed). Absent in manifests written before it existed: their horizon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_to_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("view {view:?}: manifest is not valid: {source}")]
    Corrupt {
        view: String,
        source: serde_json::Error,
    },
    #[error(
        "view {view:?}: the manifest changed since this run read it (another run landed first); this run's version is dropped"
    )]
    Conflict { view: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

impl Manifest {
    /// Buckets ending after this are still to be compared by the ledger.
    pub fn ledger_from(&self) -> Option<i64> {
        self.ledger_to_ms.or(self.horizon_ms)
    }

    /// The manifest and its store version tag (e-tag, or modification time where the store
    /// has none); `None` before the first run.
    pub async fn load(
        store: &Arc<dyn ObjectStore>,
        view: &str,
    ) -> Result<Option<(Manifest, String)>, ManifestError> {
        let res = match store.get(&paths::view_manifest(view)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let tag = version_tag(&res.meta);
        let bytes = res.bytes().await?;
        let manifest = serde_json::from_slice(&bytes).map_err(|source| ManifestError::Corrupt {
            view: view.to_string(),
            source,
        })?;
        Ok(Some((manifest, tag)))
    }

    /// The store version tag of the current manifest without reading it.
    pub async fn head(
        store: &Arc<dyn ObjectStore>,
        view: &str,
    ) -> Result<Option<String>, ManifestError> {
        match store.head(&paths::view_manifest(view)).await {
            Ok(meta) => Ok(Some(version_tag(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The manifest and the version to replace it from (a run's compare-and-swap).
    pub async fn load_versioned(
        store: &Arc<dyn ObjectStore>,
        view: &str,
    ) -> Result<Option<(Manifest, UpdateVersion)>, ManifestError> {
        let res = match store.get(&paths::view_manifest(view)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = UpdateVersion {
            e_tag: res.meta.e_tag.clone(),
            version: res.meta.version.clone(),
        };
        let bytes = res.bytes().await?;
        let manifest = serde_json::from_slice(&bytes).map_err(|source| ManifestError::Corrupt {
            view: view.to_string(),
            source,
        })?;
        Ok(Some((manifest, version)))
    }

    /// Writes the manifest only if it is still the version `expected` (none: only if there
    /// is no manifest yet), so two runs can never both land on one version.
    pub async fn save(
        &self,
        store: &Arc<dyn ObjectStore>,
        expected: Option<UpdateVersion>,
    ) -> Result<(), ManifestError> {
        let body = serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Corrupt {
            view: self.view.clone(),
            source,
        })?;
        let mode = match expected {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        match store
            .put_opts(
                &paths::view_manifest(&self.view),
                PutPayload::from(body),
                PutOptions::from(mode),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(ManifestError::Conflict {
                view: self.view.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The file of one granularity and date, if computed.
    pub fn file(&self, g: Granularity, date: &str) -> Option<&ViewFile> {
        self.dates.get(date)?.files.get(&g)
    }
}

fn version_tag(meta: &object_store::ObjectMeta) -> String {
    match &meta.e_tag {
        Some(t) => t.clone(),
        None => format!("{}-{}", meta.last_modified.timestamp_micros(), meta.size),
    }
}
