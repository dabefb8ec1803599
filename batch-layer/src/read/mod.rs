//! The batch views' read API (the serving layer's batch side).
//!
//! A query's dimensions (its `group_by` plus the filtered ones) pick one grouping set of the
//! cube, so every equality-filtered group is one precomputed exact row. A set filter
//! (`dim:a|b`) merges several rows: additive measures stay exact, distinct counts and
//! quantiles merge their sketches and say `exact: false`.
//!
//! Manifests are re-checked (a HEAD) at most every `refresh`; view files are cached by path,
//! and a path names one run's output, so a new manifest only loads the dates it changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_shared::Granularity;
use tributary_shared::bucket::{DAY_MS, date_string};
use tributary_shared::config::AggKind;
use tributary_shared::hll::Hll;
use tributary_shared::selection::Selection;
use tributary_shared::series::{Partial, PartialValue, Series};
use tributary_shared::sketch::QuantileSketch;
use tributary_shared::view::ViewPlan;

use crate::ledger::LedgerRow;
use crate::manifest::ManifestError;
use crate::view_file::columns;
use versions::CachedHistory;

mod versions;

// The rest of what the serving layer reads from the batch side, so it has one surface to
// import: manifests, the archive's partition states and the horizon they give, the last run.
pub use crate::horizon::horizon;
pub use crate::manifest::Manifest;
pub use crate::report::{ReportError, RunReport, load_report};
pub use crate::state::{PartitionState, StateStore};

/// What to read.
#[derive(Debug, Clone)]
pub struct BatchQuery {
    pub granularity: Granularity,
    /// Bucket starts from `from_ms` (floored) to before `to_ms`.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Filters, output groups and measures.
    pub selection: Selection,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("view file {path}: {source}")]
    File {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("view file {path}: {what}")]
    Layout { path: String, what: String },
    #[error("{0}")]
    Ledger(String),
}

/// One view file in memory, with its rows indexed by grouping set.
struct ViewTable {
    batch: RecordBatch,
    by_gset: HashMap<i32, Vec<usize>>,
}

struct CachedManifest {
    tag: String,
    manifest: Arc<Manifest>,
    checked: Instant,
}

/// Reads batch views, caching manifests and files.
pub struct BatchReader {
    store: Arc<dyn ObjectStore>,
    refresh: Duration,
    manifests: Mutex<HashMap<String, CachedManifest>>,
    files: Mutex<HashMap<String, Arc<ViewTable>>>,
    histories: Mutex<HashMap<String, CachedHistory>>,
    versions: Mutex<HashMap<String, Arc<Manifest>>>,
    ledgers: Mutex<HashMap<String, Arc<Vec<LedgerRow>>>>,
}

impl BatchReader {
    pub fn new(store: Arc<dyn ObjectStore>, refresh: Duration) -> Self {
        BatchReader {
            store,
            refresh,
            manifests: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            histories: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            ledgers: Mutex::new(HashMap::new()),
        }
    }

    /// The view's current manifest (`None` before its first run).
    pub async fn manifest(&self, view: &str) -> Result<Option<Arc<Manifest>>, ReadError> {
        let cached = {
            let guard = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
            guard.get(view).map(|c| {
                (
                    c.tag.clone(),
                    c.manifest.clone(),
                    c.checked.elapsed() < self.refresh,
                )
            })
        };
        if let Some((_, m, true)) = &cached {
            return Ok(Some(m.clone()));
        }
        let tag = Manifest::head(&self.store, view).await?;
        let Some(tag) = tag else {
            return Ok(None);
        };
        if let Some((old_tag, m, _)) = cached
            && old_tag == tag
        {
            self.remember(view, tag, m.clone());
            return Ok(Some(m));
        }
        let Some((manifest, tag)) = Manifest::load(&self.store, view).await? else {
            return Ok(None);
        };
        let manifest = Arc::new(manifest);
        self.remember(view, tag, manifest.clone());
        self.evict_unnamed();
        Ok(Some(manifest))
    }

    fn remember(&self, view: &str, tag: String, manifest: Arc<Manifest>) {
        let mut guard = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        guard.insert(
            view.to_string(),
            CachedManifest {
                tag,
                manifest,
                checked: Instant::now(),
            },
        );
    }

    /// Drops cached files no current manifest names.
    fn evict_unnamed(&self) {
        let named: std::collections::HashSet<String> = {
            let guard = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .values()
                .flat_map(|c| {
                    c.manifest
                        .dates
                        .values()
                        .flat_map(|d| d.files.values().map(|f| f.path.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.retain(|p, _| named.contains(p));
    }

    async fn table(&self, path: &str) -> Result<Arc<ViewTable>, ReadError> {
        if let Some(t) = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return Ok(t.clone());
        }
        let bytes = self
            .store
            .get(&object_store::path::Path::from(path))
            .await?
            .bytes()
            .await?;
        let file_err = |source| ReadError::File {
            path: path.to_string(),
            source,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(file_err)?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(file_err)?;
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(e.into()))?;
        let batch =
            arrow::compute::concat_batches(&schema, &batches).map_err(|e| file_err(e.into()))?;
        self.keep(path, batch)
    }

    /// Keeps a view file's rows, already in memory, as if read from the store: the run that
    /// wrote them reads them back for its ledger without decoding the file it just encoded.
    pub fn hold(&self, path: &str, batch: RecordBatch) -> Result<(), ReadError> {
        self.keep(path, batch).map(drop)
    }

    /// Indexes a view file's rows by grouping set and caches them under its path.
    fn keep(&self, path: &str, batch: RecordBatch) -> Result<Arc<ViewTable>, ReadError> {
        let gset = batch
            .column_by_name(columns::GSET)
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| ReadError::Layout {
                path: path.to_string(),
                what: "no gset column".into(),
            })?;
        let mut by_gset: HashMap<i32, Vec<usize>> = HashMap::new();
        for i in 0..batch.num_rows() {
            by_gset.entry(gset.value(i)).or_default().push(i);
        }
        let table = Arc::new(ViewTable { batch, by_gset });
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), table.clone());
        Ok(table)
    }

    /// Mergeable values per output group and bucket (with their sketches, so they can be
    /// merged further, e.g. with the speed layer's).
    pub async fn read_partials(
        &self,
        view: &ViewPlan,
        manifest: &Manifest,
        q: &BatchQuery,
    ) -> Result<BTreeMap<Vec<Option<String>>, BTreeMap<i64, Partial>>, ReadError> {
        let (tables, cells) = self.matching_rows(view, manifest, q).await?;
        let mut out: BTreeMap<Vec<Option<String>>, BTreeMap<i64, Partial>> = BTreeMap::new();
        for ((group, t), rows) in cells {
            let partial = merged(&tables, &rows, view, &q.selection.measures, true)?;
            out.entry(group).or_default().insert(t, partial);
        }
        Ok(out)
    }

    /// Points per output group and bucket (groups and buckets without data absent). A point
    /// from one precomputed row is that row's exact values; sketches are decoded only for
    /// points merged from several rows (a set filter).
    pub async fn read(
        &self,
        view: &ViewPlan,
        manifest: &Manifest,
        q: &BatchQuery,
    ) -> Result<Series, ReadError> {
        let (tables, cells) = self.matching_rows(view, manifest, q).await?;
        let mut out = Series::new();
        for ((group, t), rows) in cells {
            let partial = merged(&tables, &rows, view, &q.selection.measures, rows.len() > 1)?;
            out.entry(group).or_default().insert(t, partial.finish());
        }
        Ok(out)
    }

    /// The rows of the query's grouping set that pass its range and filters, by output group
    /// and bucket (`(table index, row)`), and the tables they are in.
    async fn matching_rows(
        &self,
        view: &ViewPlan,
        manifest: &Manifest,
        q: &BatchQuery,
    ) -> Result<(Vec<ResolvedTable>, Cells), ReadError> {
        let g = q.granularity;
        let from = g.floor(q.from_ms);
        let mask = q.selection.grouping_set();
        let mut tables = Vec::new();
        let mut cells = Cells::new();
        let mut day = DAY_MS * from.div_euclid(DAY_MS);
        while day < q.to_ms {
            let date = date_string(day);
            day += DAY_MS;
            let Some(file) = manifest.file(g, &date) else {
                continue;
            };
            let table = self.table(&file.path).await?;
            if !table.by_gset.contains_key(&mask) {
                continue;
            }
            let resolved = ResolvedTable::new(table, view, &q.selection.measures, &file.path)?;
            let index = tables.len();
            {
                let cols = &resolved;
                let rows = cols.table.by_gset.get(&mask).map_or(&[][..], Vec::as_slice);
                for &row in rows {
                    let t = cols.t.value(row);
                    if t < from || t >= q.to_ms {
                        continue;
                    }
                    if !q.selection.passes(|d| cols.dim(d, row)) {
                        continue;
                    }
                    let group = q.selection.project(|d| cols.dim(d, row));
                    cells.entry((group, t)).or_default().push((index, row));
                }
            }
            tables.push(resolved);
        }
        Ok((tables, cells))
    }
}

/// Matching rows by (output group, bucket start): `(table index, row)`.
type Cells = BTreeMap<(Vec<Option<String>>, i64), Vec<(usize, usize)>>;

/// Merges the rows of one output point into its mergeable values.
fn merged(
    tables: &[ResolvedTable],
    rows: &[(usize, usize)],
    view: &ViewPlan,
    measures: &[usize],
    sketches: bool,
) -> Result<Partial, ReadError> {
    let mut out: Option<Partial> = None;
    for (table, row) in rows {
        let Some(table) = tables.get(*table) else {
            continue;
        };
        let p = table.partial(view, measures, *row, sketches);
        match &mut out {
            Some(acc) => acc.merge(&p),
            None => out = Some(p),
        }
    }
    Ok(out.unwrap_or_default())
}

/// A measure's columns in one view file, by kind.
enum MeasureColumns<'a> {
    Count(&'a arrow::array::Int64Array),
    Sum(&'a arrow::array::Float64Array),
    Min(&'a arrow::array::Float64Array),
    Max(&'a arrow::array::Float64Array),
    Avg(&'a arrow::array::Float64Array, &'a arrow::array::Int64Array),
    Distinct(&'a arrow::array::Int64Array, &'a arrow::array::BinaryArray),
    Quantile(
        f64,
        &'a arrow::array::Float64Array,
        &'a arrow::array::StringArray,
    ),
}

/// A view file with the query's columns looked up once (typed), not per row.
struct ResolvedTable {
    table: Arc<ViewTable>,
    t: arrow::array::Int64Array,
    dims: Vec<Option<arrow::array::StringArray>>,
    /// Requested measure index → its columns' positions in the batch.
    measures: Vec<(usize, Vec<usize>)>,
}

impl ResolvedTable {
    fn new(
        table: Arc<ViewTable>,
        view: &ViewPlan,
        measures: &[usize],
        path: &str,
    ) -> Result<Self, ReadError> {
        let batch = &table.batch;
        let missing = |col: &str| ReadError::Layout {
            path: path.to_string(),
            what: format!("no column {col:?} (written by an older view definition?)"),
        };
        let t = batch
            .column_by_name(columns::T)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| missing(columns::T))?
            .clone();
        let dims = view
            .dimensions
            .iter()
            .map(|d| {
                batch
                    .column_by_name(&columns::dim(&d.name))
                    .and_then(|c| c.as_string_opt::<i32>())
                    .cloned()
            })
            .collect();
        let schema = batch.schema();
        let mut resolved = Vec::new();
        for mi in measures {
            let Some(m) = view.measures.get(*mi) else {
                continue;
            };
            let names = match m.agg {
                AggKind::Count | AggKind::Sum | AggKind::Min | AggKind::Max => {
                    vec![columns::value(&m.name)]
                }
                AggKind::Avg => vec![columns::avg_sum(&m.name), columns::avg_n(&m.name)],
                AggKind::CountDistinct | AggKind::Quantile => {
                    vec![columns::value(&m.name), columns::sketch(&m.name)]
                }
            };
            let positions = names
                .iter()
                .map(|n| schema.index_of(n).map_err(|_| missing(n)))
                .collect::<Result<Vec<_>, _>>()?;
            resolved.push((*mi, positions));
        }
        let out = ResolvedTable {
            table,
            t,
            dims,
            measures: resolved,
        };
        // Check the column types once, so reading a row cannot fail.
        for (mi, _) in &out.measures {
            if out.columns(view, *mi).is_none() {
                let name = view.measures.get(*mi).map_or("?", |m| m.name.as_str());
                return Err(ReadError::Layout {
                    path: path.to_string(),
                    what: format!("columns of measure {name:?} have unexpected types"),
                });
            }
        }
        Ok(out)
    }

    fn dim(&self, d: usize, row: usize) -> Option<&str> {
        self.dims
            .get(d)?
            .as_ref()
            .and_then(|c| (!c.is_null(row)).then(|| c.value(row)))
    }

    fn columns(&self, view: &ViewPlan, mi: usize) -> Option<MeasureColumns<'_>> {
        let batch = &self.table.batch;
        let (_, pos) = self.measures.iter().find(|(i, _)| *i == mi)?;
        let col = |i: usize| pos.get(i).map(|p| batch.column(*p));
        let f64s = |i: usize| col(i)?.as_primitive_opt::<Float64Type>();
        let i64s = |i: usize| col(i)?.as_primitive_opt::<Int64Type>();
        let m = view.measures.get(mi)?;
        Some(match m.agg {
            AggKind::Count => MeasureColumns::Count(i64s(0)?),
            AggKind::Sum => MeasureColumns::Sum(f64s(0)?),
            AggKind::Min => MeasureColumns::Min(f64s(0)?),
            AggKind::Max => MeasureColumns::Max(f64s(0)?),
            AggKind::Avg => MeasureColumns::Avg(f64s(0)?, i64s(1)?),
            AggKind::CountDistinct => {
                MeasureColumns::Distinct(i64s(0)?, col(1)?.as_binary_opt::<i32>()?)
            }
            AggKind::Quantile => MeasureColumns::Quantile(
                m.q.unwrap_or(0.5),
                f64s(0)?,
                col(1)?.as_string_opt::<i32>()?,
            ),
        })
    }

    /// One row's mergeable values; sketches decoded only when `sketches`.
    fn partial(&self, view: &ViewPlan, measures: &[usize], row: usize, sketches: bool) -> Partial {
        fn get_f(c: &arrow::array::Float64Array, row: usize) -> Option<f64> {
            (!c.is_null(row)).then(|| c.value(row))
        }
        fn get_i(c: &arrow::array::Int64Array, row: usize) -> Option<u64> {
            (!c.is_null(row)).then(|| c.value(row).max(0) as u64)
        }
        let mut p = Partial::default();
        for mi in measures {
            let (Some(m), Some(cols)) = (view.measures.get(*mi), self.columns(view, *mi)) else {
                continue;
            };
            let value = match cols {
                MeasureColumns::Count(c) => PartialValue::Count(get_i(c, row).unwrap_or(0)),
                MeasureColumns::Sum(c) => PartialValue::Sum(get_f(c, row)),
                MeasureColumns::Min(c) => PartialValue::Min(get_f(c, row)),
                MeasureColumns::Max(c) => PartialValue::Max(get_f(c, row)),
                MeasureColumns::Avg(s, n) => PartialValue::Avg {
                    sum: get_f(s, row).unwrap_or(0.0),
                    n: get_i(n, row).unwrap_or(0),
                },
                MeasureColumns::Distinct(exact, sketch) => PartialValue::Distinct {
                    exact: get_i(exact, row),
                    sketch: (sketches && !sketch.is_null(row))
                        .then(|| Hll::from_redis(sketch.value(row)))
                        .flatten(),
                },
                MeasureColumns::Quantile(q, exact, sketch) => PartialValue::Quantile {
                    q,
                    exact: get_f(exact, row),
                    sketch: (sketches && !sketch.is_null(row))
                        .then(|| QuantileSketch::decode(sketch.value(row)))
                        .flatten(),
                },
            };
            p.values.insert(m.name.clone(), value);
        }
        p
    }
}
