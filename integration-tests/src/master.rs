//! The master dataset as a test sees it: every row of its files, and the check that each
//! valid Kafka record is there exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, Int32Array, Int64Array, StringArray};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_shared::layout::paths;

/// (partition, offset) → event_id of every row of every master file.
pub async fn read_master(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
) -> anyhow::Result<Vec<((i32, i64), String)>> {
    let files: Vec<_> = store
        .list(Some(&paths::master_root(topic)))
        .try_collect()
        .await?;
    let mut rows = Vec::new();
    for f in files {
        if paths::parse_master_file(topic, &f.location).is_none() {
            continue;
        }
        let bytes: Bytes = store.get(&f.location).await?.bytes().await?;
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
            let batch = batch?;
            let col = |n: &str| {
                batch
                    .column_by_name(n)
                    .with_context(|| format!("column {n}"))
            };
            let ids = col("event_id")?
                .as_any()
                .downcast_ref::<StringArray>()
                .context("event_id")?;
            let parts = col("partition")?
                .as_any()
                .downcast_ref::<Int32Array>()
                .context("partition")?;
            let offs = col("offset")?
                .as_any()
                .downcast_ref::<Int64Array>()
                .context("offset")?;
            for i in 0..batch.num_rows() {
                rows.push(((parts.value(i), offs.value(i)), ids.value(i).to_string()));
            }
        }
    }
    Ok(rows)
}

pub fn check_once(rows: &[((i32, i64), String)], valid: &HashMap<i32, Vec<(i64, String)>>) {
    let mut seen: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for (k, _) in rows {
        *seen.entry(*k).or_insert(0) += 1;
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        dupes.is_empty(),
        "records archived more than once: {:?}",
        &dupes[..dupes.len().min(5)]
    );
    let want: BTreeMap<(i32, i64), String> = valid
        .iter()
        .flat_map(|(p, v)| v.iter().map(move |(o, id)| ((*p, *o), id.clone())))
        .collect();
    let got: BTreeMap<(i32, i64), String> = rows.iter().cloned().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "every valid record archived, no invalid one"
    );
    assert_eq!(got, want);
}

/// One generated UTC day written straight into a master dataset.
#[derive(Debug, Clone)]
pub struct DaySpec {
    /// Start of the day (epoch ms).
    pub day_ms: i64,
    pub events: u64,
    pub partitions: i32,
    pub seed: u64,
}

impl DaySpec {
    /// The generator of the day's events, in order (1% producer duplicates, none late).
    pub fn generator(&self) -> crate::generator::Generator {
        crate::generator::Generator::new(crate::generator::GeneratorOptions {
            seed: self.seed,
            late: 0.0,
            malformed: 0.0,
            duplicates: 0.01,
            start_ms: self.day_ms,
            span_ms: tributary_shared::bucket::DAY_MS,
            count: self.events,
        })
    }
}

/// Writes a day of generated events (1% producer duplicates) into `store`, laid out exactly as
/// `batch-layer archive` writes it (hour files per partition, committed `_state` files with
/// the watermark at the day's end), so a batch run can be tested or timed on millions of
/// events without pushing them through Kafka. Returns the rows written.
pub async fn write_day(
    store: &Arc<dyn ObjectStore>,
    config: &tributary_shared::Config,
    topic: &str,
    spec: &DaySpec,
) -> anyhow::Result<u64> {
    use tributary_batch_layer::master::{RowBuffer, master_schema};
    use tributary_batch_layer::state::{PartitionState, StateStore};
    use tributary_shared::bucket::HOUR_MS;

    let schema = tributary_shared::EventSchema::from_config(config);
    let arrow = master_schema(&schema);
    let mut g = spec.generator();
    let parts = spec.partitions.max(1);
    // A day added to a dataset continues its partitions' offsets (the state commits them).
    let states = StateStore::new(store.clone(), topic);
    let mut offsets = vec![0i64; parts as usize];
    let mut max_time = vec![i64::MIN; parts as usize];
    let mut versions = Vec::new();
    for p in 0..parts {
        let found = states.load(p).await.context("read state")?;
        if let Some((state, _)) = &found {
            offsets[p as usize] = state.committed_offset;
            max_time[p as usize] = state.max_event_time_ms.unwrap_or(i64::MIN);
        }
        versions.push(found.map(|(_, v)| v));
    }
    let mut bufs: BTreeMap<(i32, i64), RowBuffer> = BTreeMap::new();
    let mut written = 0u64;
    for i in 0..spec.events {
        let line = g.event(i);
        let Ok(ev) = schema.parse(line.as_bytes()) else {
            continue;
        };
        let p = (i % parts as u64) as i32;
        let hour = ev.event_time_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let o = offsets[p as usize];
        offsets[p as usize] += 1;
        max_time[p as usize] = max_time[p as usize].max(ev.event_time_ms);
        let buf = bufs
            .entry((p, hour))
            .or_insert_with(|| RowBuffer::new(&schema));
        buf.push(&ev, p, o, &line);
        if buf.len() >= 250_000 {
            let full = std::mem::replace(buf, RowBuffer::new(&schema));
            written += write_file(store, topic, p, hour, full, &arrow).await?;
        }
    }
    for ((p, hour), buf) in bufs {
        if !buf.is_empty() {
            written += write_file(store, topic, p, hour, buf, &arrow).await?;
        }
    }
    let lateness = config.speed.allowed_lateness.as_millis() as i64;
    for p in 0..parts {
        let state = PartitionState {
            committed_offset: offsets[p as usize],
            watermark_ms: Some(max_time[p as usize] - lateness),
            max_event_time_ms: Some(max_time[p as usize]),
            high_watermark: Some(offsets[p as usize]),
            last_record_ms: Some(0),
            updated_ms: chrono::Utc::now().timestamp_millis(),
            rows: offsets[p as usize] as u64,
            ..Default::default()
        };
        let expected = versions[p as usize].take();
        states
            .save(p, &state, expected)
            .await
            .context("write state")?;
    }
    Ok(written)
}

async fn write_file(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    p: i32,
    hour: i64,
    buf: tributary_batch_layer::master::RowBuffer,
    arrow: &arrow::datatypes::SchemaRef,
) -> anyhow::Result<u64> {
    let rows = buf.len() as u64;
    let (first, last) = (buf.first_offset, buf.last_offset);
    let bytes = buf.into_parquet(arrow.clone())?;
    store
        .put(
            &paths::master_file(topic, hour, p, first, last),
            object_store::PutPayload::from(bytes),
        )
        .await?;
    Ok(rows)
}
