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
