//! The dead-letter topic for operators: `speed-layer dlq drain` saves what is there to a file
//! (payload, reason, origin) and commits, so each record is drained once; after fixing the
//! file, `speed-layer dlq replay` produces the payloads back onto the events topic, where both
//! layers take them like any event (and whatever is still invalid lands in the DLQ again).

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tributary_shared::Config;

/// One drained record (one JSON line of the drain file).
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original bytes as text (lossy for non-UTF-8; those are not valid events anyway).
    pub payload: String,
    /// The `tributary.error` header: why it was rejected.
    pub error: Option<String>,
    pub partition: i32,
    pub offset: i64,
}

/// Drains `<topic>.dlq` into `out` (JSON lines) until no record came for `idle`; returns the
/// count. The consumer group `<group_prefix>-dlq-drain` remembers what was drained.
pub async fn drain(config: &Config, out: &Path, idle: Duration) -> anyhow::Result<u64> {
    let topic = config.source.dlq_topic();
    tributary_shared::kafka::topic_partitions(&config.source, &topic).await?;
    let consumer: StreamConsumer = tributary_shared::kafka::client_config(&config.source)
        .set(
            "group.id",
            format!("{}-dlq-drain", config.source.group_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("create DLQ consumer")?;
    consumer.subscribe(&[&topic])?;
    let file = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut n = 0u64;
    let mut last = Instant::now();
    // The first assignment takes a rebalance; wait at least a few seconds for it.
    let first_wait = idle.max(Duration::from_secs(10));
    loop {
        let wait = if n == 0 { first_wait } else { idle };
        let left = wait.saturating_sub(last.elapsed());
        if left.is_zero() {
            break;
        }
        let msg = match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m.context("read the DLQ")?,
        };
        let error = msg.headers().and_then(|h| {
            h.iter()
                .find(|x| x.key == "tributary.error")
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        let rec = DeadLetter {
            payload: String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned(),
            error,
            partition: msg.partition(),
            offset: msg.offset(),
        };
        serde_json::to_writer(&mut w, &rec)?;
        w.write_all(b"\n")?;
        n += 1;
        last = Instant::now();
    }
    w.flush()?;
    // Only once the file is written: a crash before this drains the same records again.
    if n > 0 {
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .context("commit the drained DLQ offsets")?;
    }
    Ok(n)
}

/// Produces every line of `file` back to the events topic: a drain record's `payload`, or the
/// line itself when it is not one (a plain JSON-lines file of events). Returns the count.
pub async fn replay(config: &Config, file: &Path) -> anyhow::Result<u64> {
    tributary_shared::kafka::topic_partitions(&config.source, &config.source.topic).await?;
    let producer: FutureProducer = tributary_shared::kafka::client_config(&config.source)
        .set("message.timeout.ms", "30000")
        .create()
        .context("create producer")?;
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?,
    );
    let mut pending = Vec::new();
    let mut n = 0u64;
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let payload = match serde_json::from_str::<DeadLetter>(&line) {
            Ok(d) => d.payload,
            Err(_) => line,
        };
        let topic = config.source.topic.clone();
        let producer = producer.clone();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::<(), String>::to(&topic).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))
        });
        n += 1;
        if pending.len() >= 1000 {
            for r in futures::future::join_all(pending.drain(..)).await {
                r?;
            }
        }
    }
    for r in futures::future::join_all(pending).await {
        r?;
    }
    Ok(n)
}
