//! Prometheus metrics of the batch layer.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct BatchMetrics {
    pub archive_records: Counter,
    pub archive_rows: Counter,
    pub archive_invalid: Counter,
    pub archive_flush_seconds: Histogram,
    registry: Registry,
}

impl BatchMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("tributary_batch");
        let archive_records = Counter::default();
        let archive_rows = Counter::default();
        let archive_invalid = Counter::default();
        let archive_flush_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "archive_records",
            "Records read from the topic",
            archive_records.clone(),
        );
        registry.register(
            "archive_rows",
            "Rows committed to the master dataset",
            archive_rows.clone(),
        );
        registry.register(
            "archive_invalid",
            "Invalid records not archived (the speed layer's DLQ has them)",
            archive_invalid.clone(),
        );
        registry.register(
            "archive_flush_seconds",
            "Time to write one archive flush",
            archive_flush_seconds.clone(),
        );
        Arc::new(BatchMetrics {
            archive_records,
            archive_rows,
            archive_invalid,
            archive_flush_seconds,
            registry,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
