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
use tributary_shared::bucket::{DAY_MS, date_string, parse_date};
use tributary_shared::config::AggKind;
use tributary_shared::hll::Hll;
use tributary_shared::series::{Partial, PartialValue, Series};
use tributary_shared::sketch::QuantileSketch;
use tributary_shared::view::ViewPlan;

use crate::compute::columns;
use crate::manifest::{Manifest, ManifestError};

/// What to read.
#[derive(Debug, Clone)]
pub struct BatchQuery {
    pub granularity: Granularity,
    /// Bucket starts from `from_ms` (floored) to before `to_ms`.
    pub from_ms: i64,
    pub to_ms: i64,
    /// (dimension index, accepted values).
    pub filters: Vec<(usize, Vec<String>)>,
    /// Dimension indices of the output groups.
    pub group_by: Vec<usize>,
    /// Measure indices of the view.
    pub measures: Vec<usize>,
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
}

impl BatchReader {
    pub fn new(store: Arc<dyn ObjectStore>, refresh: Duration) -> Self {
        BatchReader {
            store,
            refresh,
            manifests: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
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

    /// Mergeable values per output group and bucket.
    pub async fn read_partials(
        &self,
        view: &ViewPlan,
        manifest: &Manifest,
        q: &BatchQuery,
    ) -> Result<BTreeMap<Vec<Option<String>>, BTreeMap<i64, Partial>>, ReadError> {
        let g = q.granularity;
        let from = g.floor(q.from_ms);
        let mut mask = 0i32;
        for d in q.group_by.iter().chain(q.filters.iter().map(|(d, _)| d)) {
            mask |= 1 << d;
        }
        let mut out: BTreeMap<Vec<Option<String>>, BTreeMap<i64, Partial>> = BTreeMap::new();
        let mut day = DAY_MS * from.div_euclid(DAY_MS);
        while day < q.to_ms {
            let date = date_string(day);
            day += DAY_MS;
            let Some(file) = manifest.file(g, &date) else {
                continue;
            };
            let table = self.table(&file.path).await?;
            let Some(rows) = table.by_gset.get(&mask) else {
                continue;
            };
            let cols = Columns::of(&table.batch, view, &file.path)?;
            for &row in rows {
                let t = cols.t.value(row);
                if t < from || t >= q.to_ms {
                    continue;
                }
                let pass = q.filters.iter().all(|(d, accepted)| {
                    cols.dims[*d]
                        .and_then(|c| (!c.is_null(row)).then(|| c.value(row)))
                        .is_some_and(|v| accepted.iter().any(|a| a == v))
                });
                if !pass {
                    continue;
                }
                let group: Vec<Option<String>> = q
                    .group_by
                    .iter()
                    .map(|d| {
                        cols.dims[*d]
                            .and_then(|c| (!c.is_null(row)).then(|| c.value(row).to_string()))
                    })
                    .collect();
                let partial = cols.partial(view, &q.measures, row)?;
                out.entry(group)
                    .or_default()
                    .entry(t)
                    .and_modify(|p| p.merge(&partial))
                    .or_insert(partial);
            }
        }
        Ok(out)
    }

    /// Points per output group and bucket (groups and buckets without data absent).
    pub async fn read(
        &self,
        view: &ViewPlan,
        manifest: &Manifest,
        q: &BatchQuery,
    ) -> Result<Series, ReadError> {
        Ok(self
            .read_partials(view, manifest, q)
            .await?
            .into_iter()
            .map(|(g, points)| {
                (
                    g,
                    points.into_iter().map(|(t, p)| (t, p.finish())).collect(),
                )
            })
            .collect())
    }
}

/// Does the manifest cover the bucket `[start, end)`? It must end at or before the horizon.
pub fn covers(manifest: &Manifest, end_ms: i64) -> bool {
    manifest.horizon_ms.is_some_and(|h| end_ms <= h)
}

/// Dates of a manifest as epoch ms, for status pages.
pub fn computed_dates(manifest: &Manifest) -> Vec<i64> {
    manifest
        .dates
        .keys()
        .filter_map(|d| parse_date(d))
        .collect()
}

/// Typed handles on a view file's columns.
struct Columns<'a> {
    t: &'a arrow::array::PrimitiveArray<Int64Type>,
    dims: Vec<Option<&'a arrow::array::StringArray>>,
    batch: &'a RecordBatch,
    path: &'a str,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch, view: &ViewPlan, path: &'a str) -> Result<Self, ReadError> {
        let t = batch
            .column_by_name(columns::T)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| ReadError::Layout {
                path: path.to_string(),
                what: "no t column".into(),
            })?;
        let dims = view
            .dimensions
            .iter()
            .map(|d| {
                batch
                    .column_by_name(&columns::dim(&d.name))
                    .and_then(|c| c.as_string_opt::<i32>())
            })
            .collect();
        Ok(Columns {
            t,
            dims,
            batch,
            path,
        })
    }

    fn missing(&self, col: &str) -> ReadError {
        ReadError::Layout {
            path: self.path.to_string(),
            what: format!("no column {col:?} (written by an older view definition?)"),
        }
    }

    fn f64(&self, col: &str, row: usize) -> Result<Option<f64>, ReadError> {
        let c = self
            .batch
            .column_by_name(col)
            .and_then(|c| c.as_primitive_opt::<Float64Type>())
            .ok_or_else(|| self.missing(col))?;
        Ok((!c.is_null(row)).then(|| c.value(row)))
    }

    fn i64(&self, col: &str, row: usize) -> Result<Option<i64>, ReadError> {
        let c = self
            .batch
            .column_by_name(col)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| self.missing(col))?;
        Ok((!c.is_null(row)).then(|| c.value(row)))
    }

    fn partial(
        &self,
        view: &ViewPlan,
        measures: &[usize],
        row: usize,
    ) -> Result<Partial, ReadError> {
        let mut p = Partial::default();
        for m in measures.iter().filter_map(|i| view.measures.get(*i)) {
            let value = match m.agg {
                AggKind::Count => PartialValue::Count(
                    self.i64(&columns::value(&m.name), row)?.unwrap_or(0).max(0) as u64,
                ),
                AggKind::Sum => PartialValue::Sum(self.f64(&columns::value(&m.name), row)?),
                AggKind::Min => PartialValue::Min(self.f64(&columns::value(&m.name), row)?),
                AggKind::Max => PartialValue::Max(self.f64(&columns::value(&m.name), row)?),
                AggKind::Avg => PartialValue::Avg {
                    sum: self.f64(&columns::avg_sum(&m.name), row)?.unwrap_or(0.0),
                    n: self.i64(&columns::avg_n(&m.name), row)?.unwrap_or(0).max(0) as u64,
                },
                AggKind::CountDistinct => {
                    let col = columns::sketch(&m.name);
                    let sketch = self
                        .batch
                        .column_by_name(&col)
                        .and_then(|c| c.as_binary_opt::<i32>())
                        .ok_or_else(|| self.missing(&col))?;
                    PartialValue::Distinct {
                        exact: self
                            .i64(&columns::value(&m.name), row)?
                            .map(|v| v.max(0) as u64),
                        sketch: (!sketch.is_null(row))
                            .then(|| Hll::from_redis(sketch.value(row)))
                            .flatten(),
                    }
                }
                AggKind::Quantile => {
                    let col = columns::sketch(&m.name);
                    let sketch = self
                        .batch
                        .column_by_name(&col)
                        .and_then(|c| c.as_string_opt::<i32>())
                        .ok_or_else(|| self.missing(&col))?;
                    PartialValue::Quantile {
                        q: m.q.unwrap_or(0.5),
                        exact: self.f64(&columns::value(&m.name), row)?,
                        sketch: (!sketch.is_null(row))
                            .then(|| QuantileSketch::decode(sketch.value(row)))
                            .flatten(),
                    }
                }
            };
            p.values.insert(m.name.clone(), value);
        }
        Ok(p)
    }
}
