//! Prometheus metrics of the speed layer and the small HTTP server that exposes them.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the speed layer exports.
pub struct SpeedMetrics {
    pub events_in: Counter,
    pub applied: Family<Labels, Counter>,
    pub late_dropped: Family<Labels, Counter>,
    pub dlq: Family<Labels, Counter>,
    pub flushes: Counter,
    pub fenced: Counter,
    pub redis_retries: Counter,
    pub rebuilds: Family<Labels, Counter>,
    pub group_rejoins: Counter,
    pub rebuild_remaining: Family<Labels, Gauge>,
    pub flush_seconds: Histogram,
    /// Record's Kafka timestamp to the consumer receiving it (producer linger, broker, fetch).
    pub fetch_delay_seconds: Histogram,
    /// First buffered record received to its flush starting.
    pub buffer_wait_seconds: Histogram,
    pub lag_offsets: Family<Labels, Gauge>,
    pub lag_event_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    registry: Registry,
}

impl SpeedMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("tributary_speed");
        let events_in = Counter::default();
        let applied = Family::<Labels, Counter>::default();
        let late_dropped = Family::<Labels, Counter>::default();
        let dlq = Family::<Labels, Counter>::default();
        let flushes = Counter::default();
        let fenced = Counter::default();
        let redis_retries = Counter::default();
        let rebuilds = Family::<Labels, Counter>::default();
        let group_rejoins = Counter::default();
        let rebuild_remaining = Family::<Labels, Gauge>::default();
        let flush_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let fetch_delay_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let buffer_wait_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let lag_offsets = Family::<Labels, Gauge>::default();
        let lag_event_seconds = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register("events_in", "Records consumed", events_in.clone());
        registry.register("applied", "Events applied to a view", applied.clone());
        registry.register(
            "late_dropped",
            "Events behind the watermark, not applied (the batch layer corrects them)",
            late_dropped.clone(),
        );
        registry.register(
            "dlq",
            "Invalid events sent to the dead-letter topic, by reason",
            dlq.clone(),
        );
        registry.register("flushes", "Flushes written to Redis", flushes.clone());
        registry.register(
            "fenced",
            "Flushes refused because another consumer owns the partition now",
            fenced.clone(),
        );
        registry.register(
            "redis_retries",
            "Flush writes retried because Redis was unreachable, loading or failing over",
            redis_retries.clone(),
        );
        registry.register(
            "rebuilds",
            "Views rebuilt from Kafka because their Redis state was lost or untrustworthy",
            rebuilds.clone(),
        );
        registry.register(
            "group_rejoins",
            "Times the consumer left and rejoined its group because a partition stalled",
            group_rejoins.clone(),
        );
        registry.register(
            "rebuild_remaining_offsets",
            "Records a view's rebuild from Kafka still has to apply (0: none running)",
            rebuild_remaining.clone(),
        );
        registry.register(
            "flush_seconds",
            "Time to write one flush to Redis",
            flush_seconds.clone(),
        );
        registry.register(
            "fetch_delay_seconds",
            "A record's Kafka timestamp to the speed layer receiving it (producer, broker, fetch wait)",
            fetch_delay_seconds.clone(),
        );
        registry.register(
            "buffer_wait_seconds",
            "A flush's first buffered record received to the flush starting",
            buffer_wait_seconds.clone(),
        );
        registry.register(
            "lag_offsets",
            "Records behind the partition's end",
            lag_offsets.clone(),
        );
        registry.register(
            "lag_event_seconds",
            "Now minus the newest event time applied, per partition",
            lag_event_seconds.clone(),
        );
        Arc::new(SpeedMetrics {
            events_in,
            applied,
            late_dropped,
            dlq,
            flushes,
            fenced,
            redis_retries,
            rebuilds,
            group_rejoins,
            rebuild_remaining,
            fetch_delay_seconds,
            buffer_wait_seconds,
            flush_seconds,
            lag_offsets,
            lag_event_seconds,
            registry,
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `[("view", name)]`
pub fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}
