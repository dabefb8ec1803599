//! The batch layer at any size, on real stores and real Ballista processes: a date larger than
//! `batch.memory_limit` computed exactly (spilling), the same views from a Ballista scheduler
//! and two executors (`batch-layer scheduler`/`executor`) on moto's S3 as from the local engine
//! (file contents compared), an executor killed mid-run, and schema evolution (a field added
//! later reads as null on old dates; a type change is refused naming the field).

mod ballista;
mod evolution;
mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_batch_layer::manifest::Manifest;

/// Every view file of the view's current manifest, read back: (date, granularity) → rows.
pub async fn view_contents(
    store: &Arc<dyn ObjectStore>,
    view: &str,
) -> anyhow::Result<(Manifest, BTreeMap<(String, String), Vec<RecordBatch>>)> {
    let (manifest, _) = Manifest::load(store, view)
        .await?
        .with_context(|| format!("manifest of {view}"))?;
    let mut out = BTreeMap::new();
    for (date, entry) in &manifest.dates {
        for (g, file) in &entry.files {
            let bytes: Bytes = store
                .get(&object_store::path::Path::from(file.path.as_str()))
                .await?
                .bytes()
                .await?;
            let batches = ParquetRecordBatchReaderBuilder::try_new(bytes)?
                .build()?
                .collect::<Result<Vec<_>, _>>()?;
            out.insert((date.clone(), g.to_string()), batches);
        }
    }
    Ok((manifest, out))
}

/// Asserts two views' files hold the same rows with the same values and sketch bytes.
pub fn assert_same_contents(
    a: &BTreeMap<(String, String), Vec<RecordBatch>>,
    b: &BTreeMap<(String, String), Vec<RecordBatch>>,
    what: &str,
) -> anyhow::Result<usize> {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: the same files"
    );
    let mut rows = 0;
    for (key, left) in a {
        let Some(schema) = left.first().map(|b| b.schema()) else {
            let other: usize = b[key].iter().map(|b| b.num_rows()).sum();
            assert_eq!(other, 0, "{what}: {key:?} is empty on one side only");
            continue;
        };
        let left = arrow::compute::concat_batches(&schema, left)?;
        let right = arrow::compute::concat_batches(&schema, &b[key])?;
        assert_eq!(left.num_rows(), right.num_rows(), "{what}: rows of {key:?}");
        for (i, field) in schema.fields().iter().enumerate() {
            assert_eq!(
                left.column(i).to_data(),
                right.column(i).to_data(),
                "{what}: column {} of {key:?}",
                field.name()
            );
        }
        rows += left.num_rows();
    }
    Ok(rows)
}

/// A free loopback port (and, with `pair`, the next one free too).
pub fn free_port(pair: bool) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !pair {
            return Ok(port);
        }
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port pair on 127.0.0.1")
}
