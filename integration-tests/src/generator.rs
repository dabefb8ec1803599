//! Realistic events (the event contract's shape, ~200 bytes) for the demo, tests and benchmarks.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

const COUNTRIES: [&str; 10] = ["DE", "FR", "US", "GB", "BR", "IN", "JP", "ES", "IT", "NL"];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
const TYPES: [(&str, f64); 4] = [
    ("page_view", 0.6),
    ("add_to_cart", 0.15),
    ("checkout", 0.2),
    ("refund", 0.05),
];

/// Knobs of [`Generator`].
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    pub seed: u64,
    /// Share of events 10-30 minutes behind.
    pub late: f64,
    /// Share of malformed events.
    pub malformed: f64,
    /// Share of producer duplicates.
    pub duplicates: f64,
    /// Event times spread over `[start_ms, start_ms + span_ms)`; span 0: wall clock.
    pub start_ms: i64,
    pub span_ms: i64,
    pub count: u64,
}

/// Deterministic generator of realistic ~200-byte events.
pub struct Generator {
    rng: StdRng,
    args_late: f64,
    malformed: f64,
    duplicates: f64,
    start_ms: i64,
    span_ms: i64,
    count: u64,
    last: Option<String>,
}

impl Generator {
    pub fn new(o: GeneratorOptions) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(o.seed),
            args_late: o.late,
            malformed: o.malformed,
            duplicates: o.duplicates,
            start_ms: o.start_ms,
            span_ms: o.span_ms,
            count: o.count,
            last: None,
        }
    }

    /// The `i`-th event (JSON).
    pub fn event(&mut self, i: u64) -> String {
        if let Some(prev) = &self.last
            && self.rng.random_bool(self.duplicates)
        {
            return prev.clone();
        }
        let mut t = if self.span_ms == 0 {
            chrono::Utc::now().timestamp_millis()
        } else {
            self.start_ms + (i as i64 * self.span_ms) / self.count.max(1) as i64
        };
        if self.rng.random_bool(self.args_late) {
            t -= self.rng.random_range(600_000..1_800_000);
        }
        if self.rng.random_bool(self.malformed) {
            return match self.rng.random_range(0..3) {
                0 => format!("{{\"event_id\":\"bad-{i}\",\"event_time\":{t},\"type\":\"checkout\""),
                1 => format!("{{\"event_time\":{t},\"type\":\"checkout\",\"amount\":3.5}}"),
                _ => format!(
                    "{{\"event_id\":\"bad-{i}\",\"event_time\":{t},\"type\":\"checkout\",\"amount\":\"12,5\"}}"
                ),
            };
        }
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        let mut ty = TYPES[0].0;
        for (name, p) in TYPES {
            acc += p;
            if r < acc {
                ty = name;
                break;
            }
        }
        let country = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let device = DEVICES[self.rng.random_range(0..DEVICES.len())];
        let user = self.rng.random_range(0..200_000);
        let amount = (self.rng.random_range(100..50_000) as f64) / 100.0;
        // Long-tailed latencies.
        let latency = (self.rng.random::<f64>().powi(3) * 2_000.0 + 20.0).round();
        let time = chrono::DateTime::from_timestamp_millis(t)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let e = format!(
            "{{\"event_id\":\"{:016x}-{i}\",\"event_time\":\"{time}\",\"type\":\"{ty}\",\"country\":\"{country}\",\"device\":\"{device}\",\"user_id\":\"u-{user}\",\"amount\":{amount},\"latency_ms\":{latency},\"session\":\"s-{:08x}\"}}",
            self.rng.random::<u64>(),
            self.rng.random::<u32>()
        );
        self.last = Some(e.clone());
        e
    }
}

/// Produces `count` events from `g` to `topic` (keyed, so partitions spread), at `rate`
/// events/s (0: as fast as the broker takes them), waiting for every delivery.
pub async fn produce_generated(
    source: &tributary_shared::config::SourceConfig,
    topic: &str,
    g: &mut Generator,
    count: u64,
    rate: u64,
) -> anyhow::Result<()> {
    let producer: FutureProducer = tributary_shared::kafka::client_config(source)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "120000")
        .create()
        .context("create producer")?;
    let started = Instant::now();
    let mut inflight = Vec::with_capacity(10_000);
    for i in 0..count {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        let payload = g.event(i);
        let key = format!("k{}", i % 1024);
        let f = producer
            .send_result(FutureRecord::to(topic).payload(&payload).key(&key))
            .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
        inflight.push(f);
        if inflight.len() >= 10_000 {
            for f in inflight.drain(..) {
                f.await?
                    .map_err(|(e, _)| anyhow::anyhow!("delivery to {topic}: {e}"))?;
            }
        }
    }
    for f in inflight.drain(..) {
        f.await?
            .map_err(|(e, _)| anyhow::anyhow!("delivery to {topic}: {e}"))?;
    }
    Ok(())
}
