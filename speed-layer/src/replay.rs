//! `speed-layer replay --file F.jsonl`: the same parse → aggregate → flush pipeline fed from a
//! file instead of Kafka. For operators re-feeding a dump, and the engine-alone benchmark.
//!
//! The lines are read a chunk at a time, parsed and aggregated on every core (see
//! [`ChunkRun`]), while a writer task applies the previous flush to Redis. Replay writes no
//! offsets: it is not a consumer.

use std::io::{BufRead, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;
use tributary_shared::event::EventError;
use tributary_shared::layout::RedisKeys;
use tributary_shared::view::ViewPlan;
use tributary_shared::{Config, Event};

use crate::aggregate::{Flush, Pipeline, Scratch, ViewBuffer, ViewInputs, accumulate};
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
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    let file = file.to_path_buf();
    let started = Instant::now();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<ReplaySummary> {
        let mut input: Box<dyn BufRead> = if file.as_os_str() == "-" {
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
        let mut workers: Vec<Vec<ViewBuffer>> = (0..threads)
            .map(|_| {
                pipeline
                    .views()
                    .iter()
                    .map(|_| ViewBuffer::default())
                    .collect()
            })
            .collect();
        let mut chunk = Chunk::default();
        let chunk_lines = max_events.clamp(1, CHUNK_LINES);
        let now = chrono::Utc::now().timestamp_millis();
        loop {
            let more = chunk.fill(&mut input, chunk_lines)?;
            let mut run = ChunkRun {
                pipeline: &mut pipeline,
                summary: &mut summary,
                dlq: dlq.as_mut().map(|w| w as &mut dyn Write),
                now,
            };
            run.process(&chunk, &mut workers)?;
            if !more || pipeline.pending() >= max_events {
                for buffers in &mut workers {
                    pipeline.absorb(buffers);
                }
                send(&mut pipeline, &tx, &mut summary)?;
            }
            if !more {
                break;
            }
        }
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

/// Threads that parse and aggregate a chunk (no more than the machine has).
const MAX_THREADS: usize = 8;
/// Lines read at a time: enough work per thread that starting threads per chunk costs
/// nothing measurable (~16 ms of parsing), little enough to keep a flush near its size.
const CHUNK_LINES: usize = 32_768;

/// Non-empty input lines, back to back.
#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    lines: Vec<Range<usize>>,
}

impl Chunk {
    /// Reads up to `max` non-empty lines; false when the input ended.
    fn fill(&mut self, input: &mut dyn BufRead, max: usize) -> anyhow::Result<bool> {
        self.bytes.clear();
        self.lines.clear();
        while self.lines.len() < max {
            let start = self.bytes.len();
            let n = input
                .read_until(b'\n', &mut self.bytes)
                .context("read input")?;
            if n == 0 {
                return Ok(false);
            }
            let end = start + trim_newline(&self.bytes[start..]).len();
            if end > start {
                self.lines.push(start..end);
            } else {
                self.bytes.truncate(start);
            }
        }
        Ok(true)
    }

    fn line(&self, i: usize) -> &[u8] {
        &self.bytes[self.lines[i].clone()]
    }
}

/// One chunk through the pipeline, in three steps: parse (in parallel: it is pure), admit
/// (in order, on this thread: watermarks, lateness and duplicates depend on the order of the
/// input), accumulate (in parallel, each thread into buffers of its own, absorbed by the
/// pipeline before a flush). The result equals feeding the lines to `Pipeline::process` one
/// by one, up to the rounding of float sums added in per-thread parts (as flushes already
/// add them in parts in Redis). A flush is checked for at chunk ends, so it may hold up to
/// a chunk more than `speed.flush_max_events`.
struct ChunkRun<'a> {
    pipeline: &'a mut Pipeline,
    summary: &'a mut ReplaySummary,
    dlq: Option<&'a mut dyn Write>,
    now: i64,
}

impl ChunkRun<'_> {
    fn process(&mut self, chunk: &Chunk, workers: &mut [Vec<ViewBuffer>]) -> anyhow::Result<()> {
        let parts = split(chunk.lines.len(), workers.len());
        let schema = self.pipeline.schema();
        let parse = |range: &Range<usize>| -> Vec<Result<Event<'_>, EventError>> {
            range.clone().map(|i| schema.parse(chunk.line(i))).collect()
        };
        let parsed: Vec<Vec<Result<Event<'_>, EventError>>> = std::thread::scope(|s| {
            let others: Vec<_> = parts[1..].iter().map(|r| s.spawn(|| parse(r))).collect();
            let mut all = vec![parse(&parts[0])];
            for h in others {
                all.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
            all
        });

        let mut admitted: Vec<Vec<(usize, usize)>> = vec![Vec::new(); parts.len()];
        let mut accepted = Vec::new();
        for ((range, events), admitted) in parts.iter().zip(&parsed).zip(&mut admitted) {
            for (i, event) in events.iter().enumerate() {
                self.summary.lines += 1;
                let offset = self.summary.lines as i64;
                if !self.pipeline.take_offset(0, offset) {
                    continue;
                }
                let admission = match event {
                    Ok(e) => self.pipeline.admit(0, offset, e, self.now, &mut accepted),
                    Err(e) => {
                        self.invalid(e, chunk.line(range.start + i))?;
                        continue;
                    }
                };
                match admission {
                    Ok(()) => {
                        self.summary.valid += 1;
                        admitted.extend(accepted.iter().map(|&view| (i, view)));
                    }
                    Err(e) => self.invalid(&e, chunk.line(range.start + i))?,
                }
            }
        }

        let views = self.pipeline.views();
        let inputs = self.pipeline.inputs();
        std::thread::scope(|s| {
            let mut jobs = parsed.iter().zip(&admitted).zip(workers.iter_mut());
            let first = jobs.next();
            for ((events, admitted), buffers) in jobs {
                s.spawn(move || accumulate_part(views, inputs, events, admitted, buffers));
            }
            if let Some(((events, admitted), buffers)) = first {
                accumulate_part(views, inputs, events, admitted, buffers);
            }
        });
        Ok(())
    }

    fn invalid(&mut self, e: &EventError, body: &[u8]) -> anyhow::Result<()> {
        self.summary.invalid += 1;
        *self
            .summary
            .invalid_by_reason
            .entry(e.code().to_string())
            .or_insert(0) += 1;
        if let Some(w) = self.dlq.as_mut() {
            let rec = serde_json::json!({
                "line": self.summary.lines,
                "error": e.to_string(),
                "error_code": e.code(),
                "payload": String::from_utf8_lossy(body),
            });
            writeln!(w, "{rec}").context("write dlq file")?;
        }
        Ok(())
    }
}

fn accumulate_part(
    views: &[ViewPlan],
    inputs: &[ViewInputs],
    events: &[Result<Event<'_>, EventError>],
    admitted: &[(usize, usize)],
    buffers: &mut [ViewBuffer],
) {
    let mut scratch = Scratch::default();
    for &(i, view) in admitted {
        if let Some(Ok(event)) = events.get(i) {
            accumulate(
                &views[view],
                &inputs[view],
                &mut buffers[view],
                event,
                &mut scratch,
            );
        }
    }
}

/// `n` items in `parts` contiguous ranges (at least one, possibly empty).
fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    (0..parts)
        .map(|p| n * p / parts..n * (p + 1) / parts)
        .collect()
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

#[cfg(test)]
mod tests;
