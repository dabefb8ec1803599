//! Helpers for tests that run against the real local stack (`make up`): where the services
//! are, unique names per test, topic creation, polling waits.
//!
//! A test that cannot reach a service fails and names it; nothing here skips.

pub mod chaos;
pub mod checks;
pub mod generator;
pub mod master;
pub mod scenario;
pub mod secure;
pub mod server;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use object_store::ObjectStore;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tributary_shared::config::{SourceConfig, StoreConfig};
use tributary_shared::secret::Secret;

/// Kafka bootstrap servers of the stack (`TRIBUTARY_TEST_BROKERS`, default the stack's port).
pub fn brokers() -> String {
    std::env::var("TRIBUTARY_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// Redis URL of the stack.
pub fn redis_url() -> String {
    std::env::var("TRIBUTARY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:16379/0".into())
}

/// moto's S3 endpoint.
pub fn s3_endpoint() -> String {
    std::env::var("TRIBUTARY_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:19000".into())
}

/// A name no other test run uses: `<base>-<random hex>`.
pub fn unique(base: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{base}-{n:016x}")
}

/// Creates a topic (and fails the test, naming the broker, if it cannot).
pub async fn create_topic(name: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_on(&brokers(), name, partitions, false).await
}

/// Creates a topic on `brokers`; with `exist_ok`, one that already exists is fine.
pub async fn create_topic_on(
    brokers: &str,
    name: &str,
    partitions: i32,
    exist_ok: bool,
) -> anyhow::Result<()> {
    create_topic_via(&source_for(brokers), name, partitions, exist_ok).await
}

/// A plaintext `[source]` for `brokers`.
pub fn source_for(brokers: &str) -> SourceConfig {
    SourceConfig {
        brokers: brokers.to_string(),
        ..SourceConfig::default()
    }
}

/// [`create_topic_on`] through a `[source]` (SASL, TLS: the settings every client uses).
pub async fn create_topic_via(
    source: &SourceConfig,
    name: &str,
    partitions: i32,
    exist_ok: bool,
) -> anyhow::Result<()> {
    let brokers = source.endpoint();
    let admin: AdminClient<DefaultClientContext> = tributary_shared::kafka::client_config(source)
        .create()
        .context("admin client")?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .with_context(|| {
            format!("create topic {name} on Kafka at {brokers} (is `make up` running?)")
        })?;
    for r in results {
        if let Err((t, code)) = r {
            if exist_ok && code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                continue;
            }
            bail!("create topic {t}: {code}");
        }
    }
    Ok(())
}

/// A producer tuned for tests: acks=all, no idempotence (Tansu has none).
pub fn producer() -> anyhow::Result<FutureProducer> {
    producer_on(&brokers())
}

/// [`producer`] for another broker than the stack's.
pub fn producer_on(brokers: &str) -> anyhow::Result<FutureProducer> {
    producer_via(&source_for(brokers))
}

/// [`producer`] through a `[source]` (SASL, TLS).
pub fn producer_via(source: &SourceConfig) -> anyhow::Result<FutureProducer> {
    tributary_shared::kafka::client_config(source)
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "5")
        .create()
        .context("create producer")
}

/// Produces `payloads` to one partition of `topic`, waiting for every delivery.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> anyhow::Result<()> {
    let futures: Vec<_> = payloads
        .into_iter()
        .map(|p| {
            let producer = producer.clone();
            let topic = topic.to_string();
            async move {
                let mut record = FutureRecord::<(), Vec<u8>>::to(&topic).payload(&p);
                if let Some(part) = partition {
                    record = record.partition(part);
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))
            }
        })
        .collect();
    for r in futures::future::join_all(futures).await {
        r?;
    }
    Ok(())
}

/// Polls `check` until it returns `Some`, or fails after `timeout` saying what it waited for.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a bucket on moto (S3's CreateBucket is one unauthenticated PUT there).
pub async fn create_s3_bucket(bucket: &str) -> anyhow::Result<()> {
    let url = format!("{}/{bucket}", s3_endpoint());
    let resp = reqwest::Client::new()
        .put(&url)
        .send()
        .await
        .with_context(|| format!("create bucket at {url} (is moto running? `make up`)"))?;
    if !resp.status().is_success() {
        bail!("create bucket {bucket}: HTTP {}", resp.status());
    }
    Ok(())
}

/// Store config for a fresh bucket on moto.
pub async fn s3_store_config(prefix: &str) -> anyhow::Result<StoreConfig> {
    let bucket = unique("it").to_ascii_lowercase();
    create_s3_bucket(&bucket).await?;
    Ok(StoreConfig {
        url: format!("s3://{bucket}/{prefix}"),
        endpoint: Some(s3_endpoint()),
        region: Some("us-east-1".into()),
        access_key_id: Some(Secret::new("test")),
        secret_access_key: Some(Secret::new("test")),
        allow_http: true,
    })
}

/// Opens a store from config, failing with the URL in the message.
pub fn open(config: &StoreConfig) -> anyhow::Result<Arc<dyn ObjectStore>> {
    tributary_shared::store::open_store(config)
        .with_context(|| format!("open store {}", config.url))
}

/// A Redis connection to the stack, failing loudly when Redis is not there.
pub async fn redis() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(redis_url()).context("redis url")?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| {
            format!(
                "connect to Redis at {} (is `make up` running?)",
                redis_url()
            )
        })
}

/// A config for one test: its own topic and Redis key prefix, the stack's services, metrics
/// on an ephemeral port, and `extra` TOML (fields, views, overrides) appended.
pub fn test_config(
    topic: &str,
    key_prefix: &str,
    extra: &str,
) -> anyhow::Result<tributary_shared::Config> {
    let text = format!(
        r#"
[source]
brokers = "{brokers}"
topic = "{topic}"
group_prefix = "{topic}"

[redis]
url = "{redis}"
key_prefix = "{key_prefix}"

{extra}
"#,
        brokers = brokers(),
        redis = redis_url(),
    );
    tributary_shared::Config::from_toml_str_with_env(&text, "test config", Vec::new())
        .context("test config")
}

/// The shipped example config (`infra/tributary.toml`) with `TRIBUTARY__<KEY>` overrides, e.g.
/// `("SOURCE__TOPIC", "t")`, applied by the real layered loader.
pub fn example_config(overrides: &[(&str, String)]) -> anyhow::Result<tributary_shared::Config> {
    let env = overrides.iter().map(|(k, v)| {
        (
            format!("{}{k}", tributary_shared::config::ENV_PREFIX),
            v.clone(),
        )
    });
    tributary_shared::Config::from_toml_str_with_env(
        include_str!("../../infra/tributary.toml"),
        "infra/tributary.toml",
        env,
    )
    .context("example config")
}

/// Path of a workspace binary next to the test executable (`make test` builds them first);
/// `TRIBUTARY_TEST_BIN_DIR` points the tests at other builds (e.g. an older release, to show
/// a fault test failing before its fix).
pub fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("TRIBUTARY_TEST_BIN_DIR") {
        let path = std::path::PathBuf::from(dir).join(name);
        anyhow::ensure!(path.exists(), "{} is missing", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe().context("current exe")?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("target dir")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --bins`, as `make test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// A program of the stack's Python virtualenv (`TRIBUTARY_VENV`, from `infra/stack.sh env`;
/// `make up` installs it): fails, saying how to get it, when it is not there.
pub fn venv_program(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let venv = std::env::var("TRIBUTARY_VENV").map_err(|_| {
        anyhow::anyhow!(
            "TRIBUTARY_VENV is not set: run `make up`, then `eval \"$(infra/stack.sh env)\"`"
        )
    })?;
    let path = std::path::Path::new(&venv).join("bin").join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run `make up` (infra/stack.sh installs the virtualenv's tools)",
        path.display()
    );
    Ok(path)
}

/// All fields of a Redis hash.
pub async fn hgetall(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    Ok(redis::cmd("HGETALL").arg(key).query_async(con).await?)
}

/// The Chromium the browser tests drive (`TRIBUTARY_TEST_CHROMIUM` overrides; `make up`
/// installs Debian's).
pub fn chromium() -> String {
    std::env::var("TRIBUTARY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Flags every headless Chromium of the tests runs with (no GPU, no sandbox in a container,
/// no `/dev/shm`, no scrollbars in screenshots).
pub const CHROMIUM_FLAGS: [&str; 5] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A config written to `dir/tributary.toml` for a subprocess, and the environment that
/// carries its secrets (the file masks them, as every serialized config does).
pub fn write_config(
    config: &tributary_shared::Config,
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, Vec<(String, String)>)> {
    let path = dir.join("tributary.toml");
    let mut table = toml::Table::try_from(config).context("serialize config")?;
    // `TRIBUTARY_TEST_DROP_KEYS=serving.cache_size,...`: keys an older build (see
    // `TRIBUTARY_TEST_BIN_DIR`) does not know are left out of the file.
    if let Ok(keys) = std::env::var("TRIBUTARY_TEST_DROP_KEYS") {
        for key in keys.split(',').filter(|k| !k.is_empty()) {
            if let Some((section, name)) = key.split_once('.')
                && let Some(toml::Value::Table(t)) = table.get_mut(section)
            {
                t.remove(name);
            }
        }
    }
    std::fs::write(&path, toml::to_string(&table).context("serialize config")?)?;
    let prefix = tributary_shared::config::ENV_PREFIX;
    let mut env = Vec::new();
    if let Some(s) = &config.store.access_key_id {
        env.push((
            format!("{prefix}STORE__ACCESS_KEY_ID"),
            s.expose().to_string(),
        ));
    }
    if let Some(s) = &config.store.secret_access_key {
        env.push((
            format!("{prefix}STORE__SECRET_ACCESS_KEY"),
            s.expose().to_string(),
        ));
    }
    if let Some(s) = &config.redis.password {
        env.push((format!("{prefix}REDIS__PASSWORD"), s.expose().to_string()));
    }
    if let Some(s) = &config.source.sasl_password {
        env.push((
            format!("{prefix}SOURCE__SASL_PASSWORD"),
            s.expose().to_string(),
        ));
    }
    if !config.serving.api_keys.is_empty() {
        let keys: Vec<&str> = config.serving.api_keys.iter().map(|k| k.expose()).collect();
        env.push((
            format!("{prefix}SERVING__API_KEYS"),
            serde_json::to_string(&keys).context("api keys")?,
        ));
    }
    Ok((path, env))
}

/// `batch-layer <args>` with the config in a file; (exit code, stdout + stderr).
pub async fn batch_cli(
    config: &tributary_shared::Config,
    args: &[&str],
) -> anyhow::Result<(i32, String)> {
    let dir = tempfile::tempdir()?;
    let (path, env) = write_config(config, dir.path())?;
    let out = tokio::process::Command::new(binary("batch-layer")?)
        .arg("--config")
        .arg(&path)
        .args(args)
        .envs(env)
        .env("RUST_LOG", "info")
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

/// Waits until the archive has committed every partition up to `ends` (its `_state` files).
pub async fn wait_archived(
    store: Arc<dyn ObjectStore>,
    topic: &str,
    ends: &std::collections::HashMap<i32, i64>,
) -> anyhow::Result<()> {
    wait_archived_within(store, topic, ends, Duration::from_secs(90)).await
}

/// [`wait_archived`] with its own timeout.
pub async fn wait_archived_within(
    store: Arc<dyn ObjectStore>,
    topic: &str,
    ends: &std::collections::HashMap<i32, i64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let states = tributary_batch_layer::state::StateStore::new(store, topic);
    wait_for("the archive to commit every record", timeout, || {
        let states = states.clone();
        async move {
            let all: std::collections::HashMap<i32, i64> = states
                .load_all()
                .await?
                .into_iter()
                .map(|(p, s)| (p, s.committed_offset))
                .collect();
            Ok(ends
                .iter()
                .all(|(p, e)| all.get(p) == Some(e))
                .then_some(()))
        }
    })
    .await
}

/// Waits until the speed layer's stored offsets of `view` reach `ends` on every partition.
pub async fn wait_speed_applied(
    key_prefix: &str,
    view: &str,
    topic: &str,
    ends: &std::collections::HashMap<i32, i64>,
) -> anyhow::Result<()> {
    wait_speed_applied_on(
        &redis_url(),
        key_prefix,
        view,
        topic,
        ends,
        Duration::from_secs(90),
    )
    .await
}

/// [`wait_speed_applied`] on another Redis, with its own timeout.
pub async fn wait_speed_applied_on(
    redis: &str,
    key_prefix: &str,
    view: &str,
    topic: &str,
    ends: &std::collections::HashMap<i32, i64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let config = tributary_shared::config::RedisConfig {
        url: redis.to_string(),
        ..Default::default()
    };
    wait_speed_applied_via(&config, key_prefix, view, topic, ends, timeout).await
}

/// [`wait_speed_applied`] on any Redis `[redis]` describes (TLS, ACL user, Cluster).
pub async fn wait_speed_applied_via(
    redis: &tributary_shared::config::RedisConfig,
    key_prefix: &str,
    view: &str,
    topic: &str,
    ends: &std::collections::HashMap<i32, i64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let key = tributary_shared::layout::RedisKeys::new(key_prefix).offsets(view, topic);
    let client = tributary_shared::redis_client::RedisClient::new(redis)?;
    wait_for("the speed layer to apply every record", timeout, || {
        let (key, client) = (key.clone(), client.clone());
        async move {
            let mut con = client.connect().await?;
            let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut con)
                .await?;
            Ok(ends
                .iter()
                .all(|(p, end)| {
                    stored
                        .get(&p.to_string())
                        .and_then(|v| v.split(':').next()?.parse::<i64>().ok())
                        == Some(*end)
                })
                .then_some(()))
        }
    })
    .await
}
