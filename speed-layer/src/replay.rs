//! `speed-layer replay --file F.jsonl`: the same parse → aggregate → flush pipeline fed from a
//! file instead of Kafka. For operators re-feeding a dump, and the engine-alone benchmark.
//!
//! A reader thread parses and aggregates while a writer task applies the previous flush to
//! Redis, so the two cores overlap. Replay writes no offsets: it is not a consumer.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;
use tributary_shared::Config;
use tributary_shared::layout::RedisKeys;

use crate::aggregate::{Flush, Outcome, Pipeline};
use crate::redis_sink::RedisSink;

/// What a replay did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplaySummary {
    pub lines: u64,
    pub valid: u64,
    pub invalid: u64,
    pub applied: u64,
    pub late_dropped: u64,
    pub flushes: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub invalid_by_reason: std::collections::BTreeMap<String, u64>,
}

/// Replays `file` (`-` for stdin) into Redis; invalid lines go to `dlq_file` when given.
pub async fn replay(
    config: &Config,
    file: &Path,
    dlq_file: Option<PathBuf>,
) -> anyhow::Result<ReplaySummary> {
    let mut pipeline = crate::build_pipeline(config)?;
    let redis = tributary_shared::redis_client::RedisClient::new(&config.redis)?;
    let mut sink = RedisSink::connect(
        &redis,
        RedisKeys::new(config.redis.key_prefix.clone()),
        config.source.topic.clone(),
        config.speed.retention,
    )
    .await?;
    let views = pipeline.views().to_vec();
    let inputs = pipeline.inputs().to_vec();
    let mut epochs = Vec::new();
    for v in &views {
        epochs.push(
            crate::redis_sink::epoch_or_create(&mut sink.connection(), sink.keys(), &v.name)
                .await
                .with_context(|| format!("view {}: its epoch in redis", v.name))?,
        );
    }

    let (tx, mut rx) = mpsc::channel::<Flush>(2);
    let writer = tokio::spawn(async move {
        let mut flushes = 0u64;
        while let Some(flush) = rx.recv().await {
            sink.write(&flush, &views, &inputs, &epochs)
                .await
                .context("write flush to redis")?;
            flushes += 1;
        }
        anyhow::Ok(flushes)
    });

    let max_events = config.speed.flush_max_events;
    let file = file.to_path_buf();
    let started = Instant::now();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<ReplaySummary> {
        let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
            Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
        } else {
            let f =
                std::fs::File::open(&file).with_context(|| format!("open {}", file.display()))?;
            Box::new(std::io::BufReader::with_capacity(1 << 20, f))
        };
        let mut dlq = match dlq_file {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(&p).with_context(|| format!("create {}", p.display()))?,
            )),
            None => None,
        };
        let mut summary = ReplaySummary::default();
        let mut line = Vec::with_capacity(1024);
        let mut input = input;
        let now = chrono::Utc::now().timestamp_millis();
        loop {
            line.clear();
            let n = input.read_until(b'\n', &mut line).context("read input")?;
            if n == 0 {
                break;
            }
            let body = trim_newline(&line);
            if body.is_empty() {
                continue;
            }
            summary.lines += 1;
            match pipeline.process(0, summary.lines as i64, body, now) {
                Outcome::Invalid(e) => {
                    summary.invalid += 1;
                    *summary
                        .invalid_by_reason
                        .entry(e.code().to_string())
                        .or_insert(0) += 1;
                    if let Some(w) = dlq.as_mut() {
                        let rec = serde_json::json!({
                            "line": summary.lines,
                            "error": e.to_string(),
                            "error_code": e.code(),
                            "payload": String::from_utf8_lossy(body),
                        });
                        writeln!(w, "{rec}").context("write dlq file")?;
                    }
                }
                Outcome::Processed => summary.valid += 1,
                Outcome::AlreadyApplied => {}
            }
            if pipeline.pending() >= max_events {
                send(&mut pipeline, &tx, &mut summary)?;
            }
        }
        send(&mut pipeline, &tx, &mut summary)?;
        if let Some(mut w) = dlq {
            w.flush().context("flush dlq file")?;
        }
        Ok(summary)
    });
    let mut summary = reader.await.context("replay reader panicked")??;
    summary.flushes = writer.await.context("replay writer panicked")??;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.events_per_second = summary.lines as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

fn send(
    pipeline: &mut Pipeline,
    tx: &mpsc::Sender<Flush>,
    summary: &mut ReplaySummary,
) -> anyhow::Result<()> {
    if let Some(mut flush) = pipeline.take_flush() {
        for vf in &mut flush.views {
            summary.applied += vf.data.applied;
            summary.late_dropped += vf.data.late_dropped;
            // Not a consumer: no offsets to compare or store, no partition state to keep.
            vf.offsets.clear();
            vf.dedup.clear();
        }
        tx.blocking_send(flush)
            .map_err(|_| anyhow::anyhow!("redis writer stopped"))?;
    }
    Ok(())
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
