//! The archive against the real stack: Tansu → Parquet master dataset on a local directory and
//! on S3 (moto), each record once, readable by DataFusion with the Hive partition columns, and
//! exact across a crash between the files and the state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arrow::array::{Array, Int64Array};
use object_store::ObjectStore;
use tokio::sync::watch;
use tributary_batch_layer::state::{StateError, StateStore};
use tributary_it::generator::{Generator, GeneratorOptions};
use tributary_it::master::{check_once, read_master};
use tributary_it::scenario::FIELDS;
use tributary_it::*;
use tributary_shared::Config;
use tributary_shared::config::StoreConfig;

const SETTINGS: &str = r#"
[speed]
allowed_lateness = "5m"

[batch]
archive_max_rows = 5000
archive_flush_interval = "500ms"
metrics_listen = "127.0.0.1:0"
idle_timeout = "2s"
"#;

/// The settings above and the events' fields (no view: the archive keeps every valid event).
fn settings() -> String {
    format!("{SETTINGS}{FIELDS}")
}

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
        &settings(),
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
    let mut config = test_config(&topic, "unused", &settings())?;
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
        "[source]\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup_prefix = \"{topic}\"\n[store]\nurl = \"{store_url}\"\n{}",
        brokers(),
        settings()
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

/// Another writer changes a partition's state under the archiver (what a second owner of the
/// partition does when a group hands it to two members): the archiver's next flush of it is
/// fenced; it reloads the state and resumes from its commit point instead of dropping the
/// partition until the next rebalance. Both stores: S3's conditional writes and the local
/// directory's compare-and-swap.
async fn fenced_partition_resumes(store_config: StoreConfig) -> anyhow::Result<()> {
    let topic = unique("archive-fence");
    create_topic(&topic, 2).await?;
    let mut config = test_config(&topic, "unused", &settings())?;
    config.store = store_config;
    let store = open(&config.store)?;
    let (valid1, ends1) = produce(&topic, 2_000, 2, 21).await?;
    let (tx, handle) = start(config.clone());
    wait_committed(store.clone(), &topic, &ends1).await?;
    // Rewrite partition 0's state with its own content: a new version the archiver did not
    // write, so its next conditional write of it is refused.
    let states = StateStore::new(store.clone(), topic.clone());
    for _ in 0..3 {
        // The archiver may commit between this load and save: then this write is the one
        // fenced, and it is tried again on the newer version.
        let mut tries = 0;
        loop {
            let (state, version) = states.load(0).await?.context("state of partition 0")?;
            match states.save(0, &state, Some(version)).await {
                Ok(_) => break,
                Err(StateError::Fenced(_)) if tries < 20 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // More records for both partitions: partition 0 must be archived too.
    let (valid2, more) = produce(&topic, 2_000, 2, 22).await?;
    let mut ends = ends1.clone();
    for (p, n) in &more {
        *ends.entry(*p).or_insert(0) += n;
    }
    wait_committed(store.clone(), &topic, &ends).await?;
    tx.send(true).ok();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .context("archiver stop")???;
    let mut valid = valid1;
    for (p, v) in valid2 {
        let base = ends1.get(&p).copied().unwrap_or(0);
        valid
            .entry(p)
            .or_default()
            .extend(v.into_iter().map(|(o, id)| (o + base, id)));
    }
    check_once(&read_master(&store, &topic).await?, &valid);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_partition_resumes_on_s3() -> anyhow::Result<()> {
    fenced_partition_resumes(s3_store_config("fence").await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_partition_resumes_on_a_local_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fenced_partition_resumes(StoreConfig {
        url: format!("file://{}", dir.path().display()),
        ..StoreConfig::default()
    })
    .await
}

/// On `file://`, a data file is synced (file, then its directory entry) before the state that
/// commits it is written: traced with strace on the real archiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_synced_before_the_state_that_commits_them() -> anyhow::Result<()> {
    let topic = unique("archive-fsync");
    create_topic(&topic, 2).await?;
    let dir = tempfile::tempdir()?;
    let store_url = format!("file://{}/store", dir.path().display());
    let text = format!(
        "[source]\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup_prefix = \"{topic}\"\n[store]\nurl = \"{store_url}\"\n{}",
        brokers(),
        settings()
    );
    let config_path = dir.path().join("tributary.toml");
    std::fs::write(&config_path, &text)?;
    let config = Config::from_toml_str_with_env(&text, "t", Vec::new())?;
    let store = open(&config.store)?;
    let (_, ends) = produce(&topic, 3_000, 2, 31).await?;
    let trace = dir.path().join("trace.txt");
    let mut child = tokio::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat",
            "-o",
        ])
        .arg(&trace)
        .arg(binary("batch-layer")?)
        .arg("--config")
        .arg(&config_path)
        .arg("archive")
        .env("RUST_LOG", "warn")
        .spawn()
        .context("run strace (`make up` installs it)")?;
    wait_committed(store.clone(), &topic, &ends).await?;
    std::process::Command::new("pkill")
        .args([
            "-TERM",
            "-f",
            &format!("batch-layer --config {}", config_path.display()),
        ])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "archiver under strace: {status:?}");
    let text = std::fs::read_to_string(&trace)?;
    let order = fsync_order(&text);
    assert!(
        order.data_files > 0,
        "the trace saw the data files:\n{}",
        &text[..text.len().min(3000)]
    );
    assert!(order.states > 0, "the trace saw the state files");
    assert!(
        order.unsynced.is_empty(),
        "files moved into place without being synced first: {:?}",
        &order.unsynced[..order.unsynced.len().min(5)]
    );
    assert!(
        order.states_before_dir_sync.is_empty(),
        "a state file was written while a data file's directory entry was not synced: {:?}",
        &order.states_before_dir_sync[..order.states_before_dir_sync.len().min(5)]
    );
    Ok(())
}

#[derive(Default, Debug)]
struct FsyncOrder {
    data_files: usize,
    states: usize,
    /// Files renamed or linked into place whose staging file was never fsynced.
    unsynced: Vec<String>,
    /// State files written while some data file's directory was not synced after its rename.
    states_before_dir_sync: Vec<String>,
}

/// Reads an strace log (`-f -y -e trace=fsync,rename,link,...`: fds shown with their paths)
/// and checks the order of syncs.
fn fsync_order(trace: &str) -> FsyncOrder {
    use std::collections::HashSet;
    let mut out = FsyncOrder::default();
    let mut synced: HashSet<String> = HashSet::new();
    // Directories holding a data file moved into place and not synced since.
    let mut dirty_dirs: HashSet<String> = HashSet::new();
    let quoted = |s: &str| -> Vec<String> {
        s.split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, x)| x.to_string())
            .collect()
    };
    for line in trace.lines() {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        if call.starts_with("fsync(") || call.starts_with("fdatasync(") {
            // fsync(9</path/of/the/file>) = 0
            let Some(path) = line
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(p, _)| p.to_string())
            else {
                continue;
            };
            dirty_dirs.remove(path.trim_end_matches('/'));
            synced.insert(path);
        } else if call.starts_with("rename") || call.starts_with("link") {
            let paths = quoted(line);
            let (Some(from), Some(to)) = (paths.first(), paths.get(1)) else {
                continue;
            };
            let dir = to
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_default();
            if to.ends_with(".parquet") {
                out.data_files += 1;
                if !synced.contains(from) {
                    out.unsynced.push(to.clone());
                }
                dirty_dirs.insert(dir);
            } else if to.contains("/_state/p") {
                out.states += 1;
                if !synced.contains(from) {
                    out.unsynced.push(to.clone());
                }
                if !dirty_dirs.is_empty() {
                    out.states_before_dir_sync.push(to.clone());
                }
            }
        }
    }
    out
}
