//! Recomputing a view for one event date: one DataFusion query ([`crate::sql::view_sql`]) over
//! the date's committed master files, read as a Parquet listing table straight from the
//! object store (only the columns the view needs; row groups and rows an equality filter rules
//! out are skipped). The query's memory is bounded by `batch.memory_limit`: past it the
//! aggregations spill to `batch.spill_dir`, and a date that does not fit even so fails with an
//! error naming the key. The same plan runs in this process or on a Ballista cluster
//! ([`crate::ballista`]); each granularity's rows become one Parquet file ([`view_schema`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{Int32Type, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use tributary_shared::Granularity;
use tributary_shared::view::ViewPlan;

use crate::budget::{Budget, tune_session};
use crate::snapshot::DateInput;
use crate::sql::{GRANULARITY, cube_sql, rollup_fits, view_sql};
use crate::udaf;
use crate::view_file::{columns, view_schema};

/// The URL the store is registered under in every session (local, Ballista scheduler and
/// executors): master files are `tributary://store/<path in the store>`, whatever the store.
pub const STORE_URL: &str = "tributary://store/";

/// Names of the per-date tables.
static NEXT_TABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A computed date: rows per granularity, in [`view_schema`].
#[derive(Debug)]
pub struct DateOutput {
    /// Events of the view on that date after deduplication.
    pub events: u64,
    /// Master rows read (before the filter and deduplication).
    pub input_rows: u64,
    pub tables: Vec<(Granularity, RecordBatch)>,
    /// The Ballista job that computed it (none on the local engine).
    pub job: Option<String>,
    /// Bytes the query spilled to disk (the local engine's; 0 when it fit in the budget).
    pub spilled_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("reading the master dataset: {0}")]
    Store(#[from] object_store::Error),
    #[error("decoding a master file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(
        "the date does not fit in batch.memory_limit ({limit}) even spilling to {spill}: {detail}; \
         raise batch.memory_limit"
    )]
    MemoryLimit {
        limit: String,
        spill: String,
        detail: String,
    },
    #[error(
        "Ballista job {job} did not finish within ballista.job_timeout ({limit:?}) and was \
         cancelled (a lost executor can leave a job waiting forever: see \
         docs/runbooks/ballista-executor-lost.md)"
    )]
    JobTimeout {
        job: String,
        limit: std::time::Duration,
    },
    #[error("DataFusion: {0}")]
    DataFusion(DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Setup(String),
}

/// What DataFusion scans: the configured store without its key prefix (registered as
/// [`STORE_URL`]) and the prefix its files are under
/// ([`tributary_shared::store::open_store_root`] says why).
#[derive(Clone)]
pub struct ScanStore {
    pub root: Arc<dyn ObjectStore>,
    pub prefix: String,
}

impl ScanStore {
    pub fn open(config: &tributary_shared::config::StoreConfig) -> Result<ScanStore, ComputeError> {
        let (root, prefix) = tributary_shared::store::open_store_root(config)
            .map_err(|e| ComputeError::Setup(e.to_string()))?;
        Ok(ScanStore { root, prefix })
    }

    /// The key of a store path in `root`.
    pub fn key(&self, path: &object_store::path::Path) -> String {
        if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.prefix)
        }
    }
}

/// Registers the store as [`STORE_URL`] in a runtime.
pub fn register_store(runtime: &RuntimeEnv, store: Arc<dyn ObjectStore>) {
    if let Ok(url) = url::Url::parse(STORE_URL) {
        runtime.register_object_store(&url, store);
    }
}

/// The SQL engine: a session with the view functions and the store registered, local or on a
/// Ballista cluster.
pub struct Engine {
    ctx: SessionContext,
    master_schema: SchemaRef,
    budget: Budget,
    /// Where the master files are (also read here, for their footers).
    scan: ScanStore,
    /// `local` or the Ballista scheduler's URL (shown in `/v1/status` and the run's log).
    pub name: String,
    /// How long one query may take (Ballista's `ballista.job_timeout`; none locally).
    job_timeout: Option<std::time::Duration>,
}

impl Engine {
    /// An engine in this process, within `budget`.
    pub fn local(
        scan: ScanStore,
        master_schema: SchemaRef,
        budget: Budget,
    ) -> Result<Engine, ComputeError> {
        let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = budget.runtime().map_err(ComputeError::DataFusion)?;
        register_store(&runtime, scan.root.clone());
        let ctx = SessionContext::new_with_config_rt(
            tune_session(SessionConfig::new(), partitions, budget.memory_limit),
            runtime,
        );
        udaf::register(&ctx);
        Ok(Engine {
            ctx,
            master_schema,
            budget,
            scan,
            name: "local".into(),
            job_timeout: None,
        })
    }

    /// An engine over a session built elsewhere (Ballista's remote session).
    pub fn with_session(
        ctx: SessionContext,
        scan: ScanStore,
        master_schema: SchemaRef,
        budget: Budget,
        name: String,
        job_timeout: std::time::Duration,
    ) -> Engine {
        Engine {
            ctx,
            master_schema,
            budget,
            scan,
            name,
            job_timeout: Some(job_timeout),
        }
    }

    /// Computes every granularity of `view` over one date's committed files.
    pub async fn compute_date(
        &self,
        view: &ViewPlan,
        input: &DateInput,
    ) -> Result<DateOutput, ComputeError> {
        let input_rows = self.count_rows(input).await?;
        let sql = if rollup_fits(view, input_rows, self.budget.memory_limit) {
            view_sql
        } else {
            tracing::info!(view = %view.name, rows = input_rows, "the rollup of this date would not fit batch.memory_limit: the plain cube computes it");
            cube_sql
        };
        self.compute_date_counted(view, input, sql, input_rows)
            .await
    }

    /// [`Engine::compute_date`] with the query `sql` writes (tests compare forms of it).
    #[cfg(test)]
    pub(crate) async fn compute_date_with(
        &self,
        view: &ViewPlan,
        input: &DateInput,
        sql: fn(&ViewPlan, &str) -> String,
    ) -> Result<DateOutput, ComputeError> {
        let input_rows = self.count_rows(input).await?;
        self.compute_date_counted(view, input, sql, input_rows)
            .await
    }

    /// Runs `sql` over a date of `input_rows` master rows (counted from its footers once).
    async fn compute_date_counted(
        &self,
        view: &ViewPlan,
        input: &DateInput,
        sql: fn(&ViewPlan, &str) -> String,
        input_rows: u64,
    ) -> Result<DateOutput, ComputeError> {
        let schema = view_schema(view);
        let empty = || {
            view.granularities
                .iter()
                .map(|g| (*g, RecordBatch::new_empty(schema.clone())))
                .collect()
        };
        if input.files.is_empty() {
            return Ok(DateOutput {
                events: 0,
                input_rows: 0,
                tables: empty(),
                job: None,
                spilled_bytes: 0,
            });
        }
        let t0 = std::time::Instant::now();
        let id = NEXT_TABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("master_{id}");
        self.ctx
            .register_table(&table, self.listing_table(input)?)
            .map_err(|e| self.error(e))?;
        let result = self.run_sql(&sql(view, &table)).await;
        let _ = self.ctx.deregister_table(&table);
        let Query {
            batches,
            job,
            spilled_bytes,
        } = result?;
        tracing::debug!(
            rows = input_rows,
            ms = t0.elapsed().as_millis() as u64,
            spilled_bytes,
            "view query done"
        );
        let mut tables = Vec::with_capacity(view.granularities.len());
        let mut events = 0;
        for (i, g) in view.granularities.iter().enumerate() {
            let mut parts = Vec::new();
            for b in &batches {
                let rows = of_granularity(b, i as i32)?;
                if rows.num_rows() > 0 {
                    parts.push(conform(&rows, &schema)?);
                }
            }
            let table = concat_batches(&schema, &parts)?;
            if i == 0 {
                events = total_rows(&table);
            }
            tables.push((*g, table));
        }
        Ok(DateOutput {
            events,
            input_rows,
            tables,
            job,
            spilled_bytes,
        })
    }

    /// Runs a query; also says its Ballista job id when it ran there, and what it spilled.
    async fn run_sql(&self, sql: &str) -> Result<Query, ComputeError> {
        let df = self.ctx.sql(sql).await.map_err(|e| self.error(e))?;
        let task = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.map_err(|e| self.error(e))?;
        let collected = datafusion::physical_plan::collect(plan.clone(), task);
        let out = match self.job_timeout {
            Some(limit) => match tokio::time::timeout(limit, collected).await {
                Ok(out) => out,
                Err(_) => {
                    let job = crate::ballista::job_id(&plan).unwrap_or_else(|| "-".into());
                    tracing::error!(%job, ?limit, "Ballista job timed out; cancelling it");
                    crate::ballista::cancel_job(&self.name, &job).await;
                    return Err(ComputeError::JobTimeout { job, limit });
                }
            },
            None => collected.await,
        };
        let job = crate::ballista::job_id(&plan);
        // For profiling a view's query: each operator's rows, time and memory, as DataFusion
        // measured them (`RUST_LOG=tributary_batch_layer::compute=trace`).
        if tracing::enabled!(tracing::Level::TRACE) {
            let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
                plan.as_ref(),
            )
            .indent(true);
            tracing::trace!(plan = %shown, "view query plan with metrics");
        }
        match out {
            Ok(batches) => Ok(Query {
                batches,
                job,
                spilled_bytes: spilled_bytes(plan.as_ref()),
            }),
            Err(e) => {
                if let Some(job) = job {
                    tracing::warn!(job, "Ballista job failed");
                }
                Err(self.error(e))
            }
        }
    }

    /// A date's files as one Parquet table with the configured master schema: a file archived
    /// before a field was declared has no such column, and reads it as null.
    fn listing_table(&self, input: &DateInput) -> Result<Arc<ListingTable>, ComputeError> {
        let urls = input
            .files
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{STORE_URL}{}", self.scan.key(&f.path))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(e))?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(self.master_schema.clone());
        Ok(Arc::new(
            ListingTable::try_new(config).map_err(|e| self.error(e))?,
        ))
    }

    /// Master rows of the date's files, from their footers (read concurrently with the query).
    fn count_rows(
        &self,
        input: &DateInput,
    ) -> impl std::future::Future<Output = Result<u64, ComputeError>> + use<> {
        use futures::StreamExt;
        let store = self.scan.root.clone();
        let files: Vec<(object_store::path::Path, u64)> = input
            .files
            .iter()
            .map(|f| (self.scan.key(&f.path).into(), f.size))
            .collect();
        async move {
            let counts: Vec<Result<u64, ComputeError>> = futures::stream::iter(files)
                .map(|(path, size)| {
                    let store = store.clone();
                    async move { footer_rows(store.as_ref(), &path, size).await }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            counts.into_iter().sum()
        }
    }

    /// A DataFusion error as ours: running out of the memory budget names its key.
    fn error(&self, e: DataFusionError) -> ComputeError {
        let root = e.find_root();
        let exhausted = matches!(root, DataFusionError::ResourcesExhausted(_))
            || root.to_string().contains("Resources exhausted");
        if !exhausted {
            return ComputeError::DataFusion(e);
        }
        let (limit, spill) = self.budget.describe();
        ComputeError::MemoryLimit {
            limit,
            spill,
            // The whole chain, not just the root: the context says which step ran out.
            detail: e.to_string(),
        }
    }
}

/// What a query returned.
struct Query {
    batches: Vec<RecordBatch>,
    job: Option<String>,
    spilled_bytes: u64,
}

/// Bytes the operators of an executed plan spilled (from their metrics; a Ballista plan's
/// operators ran on the executors, and report nothing here).
fn spilled_bytes(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan
        .children()
        .into_iter()
        .map(|c| spilled_bytes(c.as_ref()))
        .sum::<u64>()
}

/// Rows of one Parquet file, from its footer (two small range reads).
async fn footer_rows(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    size: u64,
) -> Result<u64, ComputeError> {
    use object_store::ObjectStoreExt;
    use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
    let bad = || ComputeError::Setup(format!("{path}: not a Parquet file"));
    let tail_at = size.checked_sub(8).ok_or_else(bad)?;
    let tail = store.get_range(path, tail_at..size).await?;
    let tail: &[u8; 8] = tail.as_ref().try_into().map_err(|_| bad())?;
    let length = FooterTail::try_new(tail)?.metadata_length() as u64;
    let start = tail_at.checked_sub(length).ok_or_else(bad)?;
    let metadata = store.get_range(path, start..tail_at).await?;
    let metadata = ParquetMetaDataReader::decode_metadata(&metadata)?;
    Ok(metadata.file_metadata().num_rows().max(0) as u64)
}

/// The rows of granularity `index` of a query result.
fn of_granularity(batch: &RecordBatch, index: i32) -> Result<RecordBatch, ComputeError> {
    let Some(column) = batch.column_by_name(GRANULARITY) else {
        return Err(ComputeError::Setup(format!(
            "the view query lost {GRANULARITY}"
        )));
    };
    let keep = arrow::compute::kernels::cmp::eq(
        column,
        &arrow::array::Scalar::new(arrow::array::Int32Array::from(vec![index])),
    )?;
    let mut rows = filter_record_batch(batch, &keep)?;
    // The granularity column is the query's, not the file's.
    if let Ok(i) = rows.schema().index_of(GRANULARITY) {
        rows.remove_column(i);
    }
    Ok(rows)
}

/// Events of a granularity's table: the rows of its no-dimension grouping set.
fn total_rows(table: &RecordBatch) -> u64 {
    let (Some(gset), Some(rows)) = (
        table.column_by_name(columns::GSET),
        table.column_by_name(columns::ROWS),
    ) else {
        return 0;
    };
    let gset = gset.as_primitive::<Int32Type>();
    let rows = rows.as_primitive::<arrow::datatypes::Int64Type>();
    (0..table.num_rows())
        .filter(|&i| gset.value(i) == 0)
        .map(|i| rows.value(i).max(0) as u64)
        .sum()
}

/// Casts a query result's columns to the file schema (the SQL layer may pick view types).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ComputeError> {
    if batch.num_columns() != schema.fields().len() {
        return Err(ComputeError::Setup(format!(
            "the view query returned {} columns for a file of {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| cast(c, f.data_type()))
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests;
