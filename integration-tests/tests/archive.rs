//! The archive against the real stack: Tansu → Parquet master dataset on a local directory and
//! on S3 (moto), each record once, readable by DataFusion with the Hive partition columns, and
//! exact across a crash between the files and the state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arrow::array::{Array, Int32Array, Int64Array, StringArray};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::watch;
use tributary_batch_layer::state::StateStore;
use tributary_it::generator::{Generator, GeneratorOptions};
use tributary_it::*;
use tributary_shared::Config;
use tributary_shared::config::StoreConfig;
use tributary_shared::layout::paths;

const FIELDS: &str = r#"
[speed]
allowed_lateness = "5m"

[batch]
archive_max_rows = 5000
archive_flush_interval = "500ms"
metrics_listen = "127.0.0.1:0"
idle_timeout = "2s"

[fields]
country = "string"
device = "string"
user_id = "string"
amount = "float"
latency_ms = "float"
"#;

/// Produces `n` generated events (5% malformed) round-robin over `partitions`; returns, per
/// partition, the offsets of the valid ones and the partition's end.
async fn produce(
    topic: &str,
    n: u64,
    partitions: i32,
    seed: u64,
) -> anyhow::Result<(HashMap<i32, Vec<(i64, String)>>, HashMap<i32, i64>)> {
    let now = now_ms();
    let mut g = Generator::new(GeneratorOptions {
        seed,
        late: 0.02,
        malformed: 0.05,
        duplicates: 0.0,
        start_ms: now - 3 * 3_600_000,
        span_ms: 3 * 3_600_000,
        count: n,
    });
    let schema = tributary_shared::EventSchema::from_config(&Config::from_toml_str_with_env(
        FIELDS,
        "t",
        Vec::new(),
    )?);
    let mut per_partition: HashMap<i32, Vec<Vec<u8>>> = HashMap::new();
    for i in 0..n {
        per_partition
            .entry((i % partitions as u64) as i32)
            .or_default()
            .push(g.event(i).into_bytes());
    }
    let producer = producer()?;
    let mut valid = HashMap::new();
    let mut ends = HashMap::new();
    for (p, payloads) in per_partition {
        let ok: Vec<(i64, String)> = payloads
            .iter()
            .enumerate()
            .filter_map(|(o, bytes)| {
                schema
                    .parse(bytes)
                    .ok()
                    .map(|e| (o as i64, e.event_id.to_string()))
            })
            .collect();
        ends.insert(p, payloads.len() as i64);
        valid.insert(p, ok);
        produce_all(&producer, topic, Some(p), payloads).await?;
    }
    Ok((valid, ends))
}

async fn wait_committed(
    store: Arc<dyn ObjectStore>,
    topic: &str,
    ends: &HashMap<i32, i64>,
) -> anyhow::Result<()> {
    wait_archived(store, topic, ends).await
}

/// (partition, offset) → event_id of every row of every master file.
async fn read_master(
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

fn check_once(rows: &[((i32, i64), String)], valid: &HashMap<i32, Vec<(i64, String)>>) {
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

fn start(
    config: Config,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (tx, rx) = watch::channel(false);
    (tx, tokio::spawn(tributary_batch_layer::archive(config, rx)))
}

async fn archive_end_to_end(store_config: StoreConfig) -> anyhow::Result<()> {
    let topic = unique("archive");
    create_topic(&topic, 4).await?;
    let mut config = test_config(&topic, "unused", FIELDS)?;
    config.store = store_config;
    let store = open(&config.store)?;
    let (valid, ends) = produce(&topic, 12_000, 4, 9).await?;
    let (tx, handle) = start(config);
    wait_committed(store.clone(), &topic, &ends).await?;
    tx.send(true).ok();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .context("archiver stop")???;
    let rows = read_master(&store, &topic).await?;
    check_once(&rows, &valid);
    // Every state says caught up, and nothing is pending.
    for (p, s) in StateStore::new(store.clone(), topic.clone())
        .load_all()
        .await?
    {
        assert!(s.pending.is_empty(), "partition {p} has pending files");
        assert_eq!(s.rows as usize, valid[&p].len());
        assert!(s.invalid > 0, "malformed records are counted");
        assert!(s.watermark_ms.is_some());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_to_a_local_directory_holds_each_record_once_and_datafusion_reads_it()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store_config = StoreConfig {
        url: format!("file://{}", dir.path().display()),
        ..StoreConfig::default()
    };
    archive_end_to_end(store_config).await?;
    // DataFusion reads the dataset with its Hive partition columns.
    let master = std::fs::read_dir(dir.path().join("master"))?
        .next()
        .context("a topic directory")??
        .path();
    let ctx = datafusion::prelude::SessionContext::new();
    let options = datafusion::datasource::listing::ListingOptions::new(Arc::new(
        datafusion::datasource::file_format::parquet::ParquetFormat::default(),
    ))
    .with_file_extension(".parquet")
    .with_table_partition_cols(vec![
        ("date".to_string(), arrow::datatypes::DataType::Utf8),
        ("hour".to_string(), arrow::datatypes::DataType::Utf8),
    ]);
    ctx.register_listing_table(
        "master",
        format!("file://{}/", master.display()),
        options,
        None,
        None,
    )
    .await?;
    let df = ctx
        .sql(
            "SELECT count(*) AS n, count(DISTINCT date) AS dates, min(hour) AS h, \
              sum(CASE WHEN date = to_char(event_time, '%Y-%m-%d') THEN 1 ELSE 0 END) AS date_ok \
              FROM master",
        )
        .await?;
    let batches = df.collect().await?;
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .context("n")?
        .value(0);
    let ok = batches[0]
        .column(3)
        .as_any()
        .downcast_ref::<Int64Array>()
        .context("date_ok")?
        .value(0);
    assert!(n > 10_000, "{n} rows");
    assert_eq!(
        ok, n,
        "every row sits in the date partition of its event time"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_to_s3_through_moto_holds_each_record_once() -> anyhow::Result<()> {
    archive_end_to_end(s3_store_config("tributary").await?).await
}

/// Kill the archiver after its files are written but before its state moves: after a restart
/// no record is duplicated and the stray files are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_files_and_state_leaves_no_duplicates() -> anyhow::Result<()> {
    let topic = unique("archive-crash");
    create_topic(&topic, 2).await?;
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}/store", dir.path().display());
    let text = format!(
        "[source]\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup_prefix = \"{topic}\"\n[store]\nurl = \"{store_url}\"\n{FIELDS}",
        brokers()
    );
    let config_path = dir.path().join("tributary.toml");
    std::fs::write(&config_path, &text)?;
    let config = Config::from_toml_str_with_env(&text, "t", Vec::new())?;
    let store = open(&config.store)?;
    let (valid, ends) = produce(&topic, 6_000, 2, 4).await?;
    let bin = binary("batch-layer")?;

    let status = tokio::process::Command::new(&bin)
        .args(["--config"])
        .arg(&config_path)
        .arg("archive")
        .env("TRIBUTARY_CRASH_AT", "archive_before_state")
        .env("RUST_LOG", "warn")
        .status();
    let status = tokio::time::timeout(Duration::from_secs(90), status)
        .await
        .context("crashing archiver")??;
    assert_eq!(status.code(), Some(101), "the fault injection fired");
    let stray = read_master(&store, &topic).await?;
    assert!(!stray.is_empty(), "files were written before the crash");

    let mut child = tokio::process::Command::new(&bin)
        .args(["--config"])
        .arg(&config_path)
        .arg("archive")
        .env("RUST_LOG", "warn")
        .spawn()?;
    wait_committed(store.clone(), &topic, &ends).await?;
    let pid = child.id().context("pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert_eq!(status.code(), Some(0));
    check_once(&read_master(&store, &topic).await?, &valid);
    Ok(())
}
