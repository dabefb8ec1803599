//! Recomputing a view for one event date with DataFusion SQL over the master dataset.
//!
//! Two steps. First the date's committed files are read (only the columns the view needs,
//! decoded in parallel), then SQL filters them by the view's `where` and deduplicates them by
//! `event_id` (producer duplicates); the result stays in memory. Then one aggregate query per
//! granularity and grouping set of the view's dimensions (the cube) computes the exact values
//! and the mergeable sketches. Each granularity's rows for the date become one Parquet file
//! ([`view_schema`]). The queries' text is in [`crate::sql`], the aggregate functions they call
//! in [`crate::udaf`].

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::{ObjectStore, ObjectStoreExt};
use tributary_shared::Granularity;
use tributary_shared::config::AggKind;
use tributary_shared::view::{FilterValue, ViewPlan};

use crate::snapshot::DateInput;
use crate::sql::{aggregate_sql, dedup_sql, fields_of, filter_column, input_columns};
use crate::view_file::view_schema;
use crate::{encode, udaf};

/// Names of the per-date temporary tables.
static NEXT_TABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A computed date: rows per granularity, in [`view_schema`].
#[derive(Debug)]
pub struct DateOutput {
    /// Events of the view on that date after deduplication.
    pub events: u64,
    /// Master rows read (before the filter and deduplication).
    pub input_rows: u64,
    pub tables: Vec<(Granularity, RecordBatch)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("reading the master dataset: {0}")]
    Store(#[from] object_store::Error),
    #[error("decoding a master file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("decoding a master file: {0}")]
    Decode(String),
    #[error("DataFusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("aggregate task: {0}")]
    Task(String),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The SQL engine (the sketch and exact-quantile functions registered) and the store the
/// master dataset is read from.
pub struct Engine {
    /// Filter and deduplication: one query over every core.
    ctx: SessionContext,
    /// The cube's aggregate queries: each on one partition (single-phase aggregation, no
    /// partial states to encode and merge), several queries at once.
    serial: SessionContext,
    store: Arc<dyn ObjectStore>,
    master_schema: SchemaRef,
    partitions: usize,
}

impl Engine {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        master_schema: SchemaRef,
    ) -> Result<Engine, ComputeError> {
        let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
        let config = SessionConfig::new()
            .with_target_partitions(partitions)
            .with_batch_size(16 * 1024);
        let ctx = SessionContext::new_with_config(config.clone());
        udaf::register(&ctx);
        let serial = SessionContext::new_with_config(config.with_target_partitions(1));
        udaf::register(&serial);
        Ok(Engine {
            ctx,
            serial,
            store,
            master_schema,
            partitions,
        })
    }

    /// Computes every granularity of `view` over one date's committed files.
    pub async fn compute_date(
        &self,
        view: &ViewPlan,
        input: &DateInput,
    ) -> Result<DateOutput, ComputeError> {
        let schema = view_schema(view);
        if input.files.is_empty() {
            return Ok(DateOutput {
                events: 0,
                input_rows: 0,
                tables: view
                    .granularities
                    .iter()
                    .map(|g| (*g, RecordBatch::new_empty(schema.clone())))
                    .collect(),
            });
        }
        let t0 = std::time::Instant::now();
        let (batches, input_rows) = self.load(view, input).await?;
        tracing::debug!(
            rows = input_rows,
            kept = batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            ms = t0.elapsed().as_millis() as u64,
            "master files read"
        );
        let ctx = &self.ctx;
        let id = NEXT_TABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("master_{id}");
        let master_schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| self.master_schema.clone());
        ctx.register_table(
            &table,
            Arc::new(MemTable::try_new(master_schema, self.spread(batches))?),
        )?;
        let deduped = ctx.sql(&dedup_sql(view, &table)).await?;
        let df_schema = deduped.schema().inner().clone();
        let batches = deduped.collect().await;
        ctx.deregister_table(&table)?;
        let batches = batches?;
        let events: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        tracing::debug!(
            events,
            ms = t0.elapsed().as_millis() as u64,
            "filtered and deduplicated"
        );

        // No row passed the view's filter (a date of other event types only): one empty
        // batch still carries the encoded columns' schema the cube's SQL names.
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(df_schema.clone())]
        } else {
            batches
        };
        let batches = encode::add_encoded_columns(
            batches,
            &fields_of(view, AggKind::CountDistinct),
            &fields_of(view, AggKind::Quantile),
        )?;
        let events_schema = batches.first().map(|b| b.schema()).unwrap_or(df_schema);
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "encoded");

        let events_table = format!("events_{id}");
        self.serial.register_table(
            &events_table,
            Arc::new(MemTable::try_new(events_schema, vec![batches])?),
        )?;
        let result = self.cube(view, &events_table, &schema).await;
        self.serial.deregister_table(&events_table)?;
        let tables = result?;
        Ok(DateOutput {
            events,
            input_rows,
            tables,
        })
    }
}

impl Engine {
    /// Runs the cube's queries (every granularity × grouping set), as many at once as there
    /// are cores, each on its own task; the rows come out in a fixed order (granularity, then
    /// grouping set), whatever order the queries finish in.
    async fn cube(
        &self,
        view: &ViewPlan,
        table: &str,
        schema: &SchemaRef,
    ) -> Result<Vec<(Granularity, RecordBatch)>, ComputeError> {
        use futures::StreamExt;
        let queries: Vec<(Granularity, u32)> = view
            .granularities
            .iter()
            .flat_map(|g| (0..(1u32 << view.dimensions.len())).map(move |mask| (*g, mask)))
            .collect();
        let results: Vec<Result<Vec<RecordBatch>, ComputeError>> =
            futures::stream::iter(queries.iter().copied())
                .map(|(g, mask)| {
                    let ctx = self.serial.clone();
                    let sql = aggregate_sql(view, table, g, mask);
                    let schema = schema.clone();
                    let task = tokio::spawn(async move {
                        let t = std::time::Instant::now();
                        let out = ctx.sql(&sql).await?.collect().await?;
                        tracing::debug!(granularity = %g, gset = mask, ms = t.elapsed().as_millis() as u64, "aggregated");
                        out.iter()
                            .map(|b| conform(b, &schema))
                            .collect::<Result<Vec<_>, _>>()
                    });
                    async move {
                        task.await
                            .map_err(|e| ComputeError::Task(e.to_string()))?
                    }
                })
                .buffered(self.partitions)
                .collect()
                .await;
        let mut tables: Vec<(Granularity, Vec<RecordBatch>)> = Vec::new();
        for ((g, _), r) in queries.iter().zip(results) {
            let batches = r?;
            match tables.last_mut() {
                Some((last, out)) if last == g => out.extend(batches),
                _ => tables.push((*g, batches)),
            }
        }
        tables
            .into_iter()
            .map(|(g, out)| Ok((g, concat_batches(schema, &out)?)))
            .collect()
    }

    /// Reads the columns a view needs from a date's master files (never `payload`), several
    /// files at a time, decoding off the async threads.
    async fn load(
        &self,
        view: &ViewPlan,
        input: &DateInput,
    ) -> Result<(Vec<RecordBatch>, u64), ComputeError> {
        use futures::StreamExt;
        let mut wanted: Vec<String> = vec!["event_id".into(), "event_time".into()];
        for (name, field, _) in &view.filters {
            wanted.push(filter_column(*field, name));
        }
        for c in input_columns(view) {
            wanted.push(c);
        }
        wanted.sort();
        wanted.dedup();
        let wanted = Arc::new(wanted);
        let pushed = Arc::new(pushable_filters(view, &self.master_schema));
        let results: Vec<Result<(Vec<RecordBatch>, u64), ComputeError>> =
            futures::stream::iter(input.files.iter().cloned())
                .map(|f| {
                    let store = self.store.clone();
                    let (wanted, pushed) = (wanted.clone(), pushed.clone());
                    async move {
                        let bytes = store.get(&f.path).await?.bytes().await?;
                        tokio::task::spawn_blocking(move || decode(bytes, &wanted, &pushed))
                            .await
                            .map_err(|e| ComputeError::Decode(format!("{}: {e}", f.path)))?
                    }
                })
                .buffer_unordered(self.partitions * 2)
                .collect()
                .await;
        let mut out = Vec::new();
        let mut rows = 0;
        for r in results {
            let (batches, file_rows) = r?;
            out.extend(batches);
            rows += file_rows;
        }
        Ok((out, rows))
    }

    /// Spreads batches over partitions so the SQL uses every core.
    fn spread(&self, batches: Vec<RecordBatch>) -> Vec<Vec<RecordBatch>> {
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); self.partitions];
        for (i, b) in batches.into_iter().enumerate() {
            parts[i % self.partitions].push(b);
        }
        parts
    }
}

/// Decodes the `wanted` columns of one Parquet file, skipping the rows an equality filter
/// rules out (`pushed`) before the other columns are decoded; also returns the file's rows.
fn decode(
    bytes: bytes::Bytes,
    wanted: &[String],
    pushed: &[(String, FilterValue)],
) -> Result<(Vec<RecordBatch>, u64), ComputeError> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::{
        ArrowPredicateFn, ParquetRecordBatchReaderBuilder, RowFilter,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let mask = ProjectionMask::columns(builder.parquet_schema(), wanted.iter().map(String::as_str));
    let mut predicates: Vec<Box<dyn parquet::arrow::arrow_reader::ArrowPredicate>> = Vec::new();
    for (column, value) in pushed {
        let only = ProjectionMask::columns(builder.parquet_schema(), [column.as_str()]);
        let value = value.clone();
        predicates.push(Box::new(ArrowPredicateFn::new(only, move |batch| {
            pushed_filter(batch.column(0), &value)
        })));
    }
    let mut builder = builder.with_projection(mask).with_batch_size(64 * 1024);
    if !predicates.is_empty() {
        builder = builder.with_row_filter(RowFilter::new(predicates));
    }
    Ok((builder.build()?.collect::<Result<Vec<_>, _>>()?, rows))
}

/// The `where` filters that can be applied while decoding: equality of a text or boolean
/// column with a value of its own type, where the Parquet reader's comparison is exactly the
/// SQL one (numeric filters, with their type coercions, are left to the SQL). The SQL still
/// applies every filter; this only saves decoding rows it would drop.
fn pushable_filters(view: &ViewPlan, schema: &Schema) -> Vec<(String, FilterValue)> {
    view.filters
        .iter()
        .filter_map(|(name, field, value)| {
            let column = filter_column(*field, name);
            let ty = schema.field_with_name(&column).ok()?.data_type().clone();
            match (&ty, value) {
                (DataType::Utf8, FilterValue::Str(_))
                | (DataType::Boolean, FilterValue::Bool(_)) => Some((column, value.clone())),
                _ => None,
            }
        })
        .collect()
}

fn pushed_filter(
    column: &ArrayRef,
    value: &FilterValue,
) -> Result<arrow::array::BooleanArray, arrow::error::ArrowError> {
    use arrow::array::{BooleanArray, Scalar, StringArray};
    use arrow::compute::kernels::cmp::eq;
    match value {
        FilterValue::Str(s) => eq(column, &Scalar::new(StringArray::from(vec![s.as_str()]))),
        FilterValue::Bool(b) => eq(column, &Scalar::new(BooleanArray::from(vec![*b]))),
        // Never pushed (see `pushable_filters`); keeping every row is always correct.
        FilterValue::Num(_) => Ok(BooleanArray::from(vec![true; column.len()])),
    }
}

/// Casts a query result's columns to the file schema (the SQL layer may pick view types).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ComputeError> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| cast(c, f.data_type()))
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use tributary_shared::config::FieldType;
    use tributary_shared::{Config, EventSchema};

    use anyhow::Context as _;

    use super::*;
    use crate::master::{RowBuffer, master_schema};
    use crate::snapshot::InputFile;

    /// A date whose rows all fail the view's `where` (found by the fault suite: the cube's
    /// SQL then named encoded columns the empty result did not have).
    #[tokio::test]
    async fn a_date_with_no_row_for_the_view_computes_empty_tables() -> anyhow::Result<()> {
        let config = Config::from_toml_str_with_env(
            include_str!("../../infra/tributary.toml"),
            "t",
            Vec::new(),
        )?;
        let schema = EventSchema::from_config(&config);
        let view = ViewPlan::compile_all(&config, &schema)?
            .into_iter()
            .next()
            .context("a view")?;
        let fields: BTreeMap<String, FieldType> = config.fields.clone();
        let es = EventSchema::new(fields.iter());
        let mut rows = RowBuffer::new(&es);
        let json = r#"{"event_id":"a","event_time":1000,"type":"page_view","user_id":"u1","latency_ms":3}"#;
        rows.push(&es.parse(json.as_bytes())?, 0, 0, json);
        let bytes = rows.into_parquet(master_schema(&es))?;
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path =
            object_store::path::Path::from("master/e/date=1970-01-01/hour=00/p0-0-0.parquet");
        let size = bytes.len() as u64;
        store.put(&path, PutPayload::from(bytes)).await?;
        let engine = Engine::new(store, master_schema(&es))?;
        let out = engine
            .compute_date(
                &view,
                &DateInput {
                    files: vec![InputFile { path, size }],
                },
            )
            .await?;
        assert_eq!(out.events, 0);
        assert!(out.tables.iter().all(|(_, t)| t.num_rows() == 0));
        Ok(())
    }
}
