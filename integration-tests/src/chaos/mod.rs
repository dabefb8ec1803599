//! The fault suite's machinery: the platform as separate processes (`procs`), services a
//! scenario owns so it can break them (`services`), the scale and seed of a run, and the
//! ground truth read back from the topic itself.
//!
//! `make test` runs every scenario short; `make chaos` (`TRIBUTARY_CHAOS=full`) runs them at
//! full size. Each run prints its seed; `TRIBUTARY_CHAOS_SEED=<seed>` replays it.

pub mod procs;
pub mod services;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary_shared::{Config, EventSchema};

use crate::scenario::Ev;
use procs::Daemon;

/// Short (`make test`) or full (`make chaos`).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub full: bool,
}

impl Scale {
    pub fn from_env() -> Scale {
        Scale {
            full: std::env::var("TRIBUTARY_CHAOS").is_ok_and(|v| v == "full"),
        }
    }

    pub fn pick<T>(&self, short: T, full: T) -> T {
        if self.full { full } else { short }
    }
}

/// The run's random source: `TRIBUTARY_CHAOS_SEED` replays a run; the seed is printed.
pub fn rng(test: &str) -> (u64, StdRng) {
    let seed = std::env::var("TRIBUTARY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("[chaos] {test}: seed {seed} (TRIBUTARY_CHAOS_SEED={seed} replays it)");
    (seed, StdRng::seed_from_u64(seed))
}

/// A scenario's platform: its config written to a file (the daemons read it), the speed
/// layer and the archiver as processes, logs in one directory.
pub struct Platform {
    pub config: Config,
    pub config_path: PathBuf,
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub speed: Daemon,
    pub archive: Daemon,
}

impl Platform {
    /// `config.store` is replaced by a directory of the scenario's when it is `file://`.
    pub fn new(mut config: Config) -> anyhow::Result<Platform> {
        let dir = tempfile::tempdir()?;
        if config.store.url.starts_with("file://") {
            config.store.url = format!("file://{}", dir.path().join("store").display());
        }
        let (config_path, env) = crate::write_config(&config, dir.path())?;
        let speed = Daemon::new(
            "speed",
            "speed-layer",
            &["run"],
            &config_path,
            &env,
            dir.path(),
        )?;
        let archive = Daemon::new(
            "archive",
            "batch-layer",
            &["archive"],
            &config_path,
            &env,
            dir.path(),
        )?;
        Ok(Platform {
            config,
            config_path,
            env,
            dir,
            speed,
            archive,
        })
    }

    /// A `batch-layer run` process (not started).
    pub fn batch_run(&self, name: &str) -> anyhow::Result<Daemon> {
        Daemon::new(
            name,
            "batch-layer",
            &["run"],
            &self.config_path,
            &self.env,
            self.dir.path(),
        )
    }

    /// `batch-layer run` to completion, retried while another run holds the lock (a killed
    /// run's lock expires after `batch.lock_ttl`).
    pub async fn batch_until_ok(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut n = 0;
        loop {
            n += 1;
            let mut run = self.batch_run(&format!("batch-final-{n}"))?;
            run.start()?;
            let code = run.wait(Duration::from_secs(300)).await?;
            if code == Some(0) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "batch-layer run kept failing (exit {code:?}):\n{}",
                run.tail(30)
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The last lines of every log of the scenario (for a failure message).
    pub fn logs(&self) -> String {
        Self::tails(&self.whole_logs())
    }

    /// The last lines of logs already read with [`Platform::whole_logs`].
    pub fn tails(logs: &[(std::path::PathBuf, String)]) -> String {
        let mut out = String::new();
        for (path, text) in logs {
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "\n===== {} (last 40 lines) =====\n{}\n",
                path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        out
    }

    /// Every log of the scenario, whole, with its path (one per process).
    pub fn whole_logs(&self) -> Vec<(std::path::PathBuf, String)> {
        std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                (p, text)
            })
            .collect()
    }
}

/// Every record the topic holds, read back from the broker: (partition, offset) → bytes.
/// The ground truth of a scenario is what Kafka holds, so producer retries that wrote a record
/// twice (a broker restart) are in it too.
pub async fn topic_records(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<BTreeMap<(i32, i64), Vec<u8>>> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "tributary-chaos-truth")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "16777216")
            .create()?;
        let timeout = Duration::from_secs(10);
        let meta = consumer.fetch_metadata(Some(&topic), timeout)?;
        let partitions: Vec<i32> = meta
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut ends = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, *p, timeout)?;
            ends.insert(*p, high);
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut out = BTreeMap::new();
        // Generous: the full-size suite reads back well over 100k records from a busy broker.
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        let done = |out: &BTreeMap<(i32, i64), Vec<u8>>| {
            ends.iter()
                .all(|(p, end)| *end == 0 || out.contains_key(&(*p, end - 1)))
        };
        while !done(&out) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "reading {topic} back took over 10 minutes ({} records read)",
                out.len()
            );
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                let m = m?;
                out.insert(
                    (m.partition(), m.offset()),
                    m.payload().unwrap_or_default().to_vec(),
                );
            }
        }
        Ok(out)
    })
    .await
    .context("read the topic back")?
}

/// Per partition, the (offset, event id) of each valid record.
pub type ValidRecords = HashMap<i32, Vec<(i64, String)>>;

/// Of the topic's records: the valid ones, and the events they carry (first occurrence of each
/// id, in topic order per partition) from `generated`.
pub fn valid_records(
    records: &BTreeMap<(i32, i64), Vec<u8>>,
    schema: &EventSchema,
    generated: &[Ev],
) -> (ValidRecords, Vec<Ev>) {
    let by_id: HashMap<&str, &Ev> = generated.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut valid: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut events = Vec::new();
    for ((p, o), bytes) in records {
        let Ok(e) = schema.parse(bytes) else { continue };
        valid
            .entry(*p)
            .or_default()
            .push((*o, e.event_id.to_string()));
        if seen.insert(e.event_id.to_string())
            && let Some(ev) = by_id.get(e.event_id.as_ref())
        {
            events.push((*ev).clone());
        }
    }
    (valid, events)
}

/// The settings of every fault scenario (short timeouts, so faults are noticed quickly), with
/// the `checkouts` and `all_types` views of [`crate::scenario::VIEWS`].
pub fn chaos_config(
    brokers: &str,
    redis: &str,
    topic: &str,
    key_prefix: &str,
    extra: &str,
) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[source]
brokers = "{brokers}"
topic = "{topic}"
group_prefix = "{topic}"

[redis]
url = "{redis}"
key_prefix = "{key_prefix}"

[store]
url = "file:///tmp/replaced-by-the-platform"

[speed]
allowed_lateness = "10m"
flush_interval = "100ms"
dedup_window = "10m"
metrics_listen = "127.0.0.1:0"

[batch]
archive_max_rows = 2000
archive_flush_interval = "500ms"
idle_timeout = "2s"
lock_ttl = "5s"
gc_grace = "2s"
metrics_listen = "127.0.0.1:0"

[serving]
listen = "127.0.0.1:0"
max_buckets = 5000
{extra}
{views}"#,
        views = crate::scenario::VIEWS
    );
    Config::from_toml_str_with_env(&text, "chaos config", Vec::new()).context("chaos config")
}

/// A producer that rides out a broker restart or a busy broker (librdkafka retries for five
/// minutes).
pub fn patient_producer(brokers: &str) -> anyhow::Result<rdkafka::producer::FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "300000")
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        .create()
        .context("create producer")
}

/// Produces each partition's payloads in order, in `chunks` rounds with `pause` between them
/// (a stream, not a burst), waiting for every delivery.
pub async fn produce_paced(
    brokers: &str,
    topic: &str,
    per_partition: &BTreeMap<i32, Vec<Vec<u8>>>,
    chunks: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    let producer = patient_producer(brokers)?;
    let chunks = chunks.max(1);
    for c in 0..chunks {
        for (p, payloads) in per_partition {
            let size = payloads.len().div_ceil(chunks);
            let slice: Vec<Vec<u8>> = payloads.iter().skip(c * size).take(size).cloned().collect();
            crate::produce_all(&producer, topic, Some(*p), slice).await?;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Events spread round-robin over partitions (each partition in time order), with `bad`
/// malformed payloads mixed in at random places.
pub fn spread(
    evs: &[Ev],
    partitions: i32,
    bad: &[Vec<u8>],
    rng: &mut StdRng,
) -> BTreeMap<i32, Vec<Vec<u8>>> {
    use rand::Rng;
    let mut out: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for (i, e) in evs.iter().enumerate() {
        out.entry((i % partitions as usize) as i32)
            .or_default()
            .push(e.json());
    }
    for b in bad {
        let p = rng.random_range(0..partitions);
        let list = out.entry(p).or_default();
        let at = rng.random_range(0..=list.len());
        list.insert(at, b.clone());
    }
    out
}

/// The source records (partition, offset) of every dead letter in `<topic>.dlq`, with how
/// often each is there, and the reason codes seen.
pub async fn dead_letters(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<(BTreeMap<(i32, i64), usize>, BTreeMap<String, usize>)> {
    let dlq = format!("{topic}.dlq");
    let records = topic_headers(brokers, &dlq).await?;
    let mut sources = BTreeMap::new();
    let mut codes = BTreeMap::new();
    for headers in records {
        if let Some(src) = headers.get("tributary.source") {
            let mut parts = src.rsplitn(3, '/');
            let o = parts.next().and_then(|x| x.parse::<i64>().ok());
            let p = parts.next().and_then(|x| x.parse::<i32>().ok());
            if let (Some(p), Some(o)) = (p, o) {
                *sources.entry((p, o)).or_insert(0) += 1;
            }
        }
        if let Some(code) = headers.get("tributary.error_code") {
            *codes.entry(code.clone()).or_insert(0) += 1;
        }
    }
    Ok((sources, codes))
}

/// The headers of every record of a topic.
pub async fn topic_headers(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<Vec<HashMap<String, String>>> {
    use rdkafka::message::Headers;
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "tributary-chaos-dlq")
            .set("enable.auto.commit", "false")
            .create()?;
        let timeout = Duration::from_secs(10);
        let meta = consumer.fetch_metadata(Some(&topic), timeout)?;
        let partitions: Vec<i32> = meta
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        let mut ends = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, *p, timeout)?;
            ends.insert(*p, high);
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut next: HashMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while ends
            .iter()
            .any(|(p, e)| next.get(p).copied().unwrap_or(0) < *e)
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "reading {topic} back took over 10 minutes ({} records read)",
                out.len()
            );
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                let m = m?;
                next.insert(m.partition(), m.offset() + 1);
                let mut h = HashMap::new();
                if let Some(hs) = m.headers() {
                    for x in hs.iter() {
                        h.insert(
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                h.insert(
                    "__len".into(),
                    m.payload().map_or(0, <[u8]>::len).to_string(),
                );
                out.push(h);
            }
        }
        Ok(out)
    })
    .await
    .context("read the topic's headers")?
}
