//! After each flush: every assigned partition's progress (the typed report in `progress`,
//! read by `/v1/status`), lag metrics, and the dead-letter counts.

use super::SpeedConsumer;
use crate::metrics::label;
use crate::progress::PartitionReport;

impl SpeedConsumer {
    pub(super) async fn publish_progress(&mut self) {
        let now = chrono::Utc::now().timestamp_millis();
        let lateness = self.config.speed.allowed_lateness.as_millis() as i64;
        let hw = self.high_watermarks.snapshot();
        for (p, high) in &hw {
            self.pipeline.set_high_watermark(*p, *high);
        }
        let mut reports = Vec::new();
        for (p, pp) in self.pipeline.partitions() {
            let next = pp.next_offset.or(pp.resume_offset());
            let lag = pp.high_watermark.map(|h| (h - next.unwrap_or(0)).max(0));
            if let Some(lag) = lag {
                self.metrics
                    .lag_offsets
                    .get_or_create(&label("partition", p.to_string()))
                    .set(lag);
            }
            let max_time = pp.max_event_time_ms();
            if let Some(t) = max_time {
                self.metrics
                    .lag_event_seconds
                    .get_or_create(&label("partition", p.to_string()))
                    .set((now - t) as f64 / 1000.0);
            }
            reports.push((
                *p,
                PartitionReport {
                    updated_ms: now,
                    next_offset: next,
                    high_watermark: pp.high_watermark,
                    lag_offsets: lag,
                    max_event_time_ms: max_time,
                    watermark_ms: max_time.map(|t| t - lateness),
                },
            ));
        }
        let keys = self.sink.keys().clone();
        let topic = self.config.source.topic.clone();
        let mut con = self.sink.connection();
        if let Err(e) = crate::progress::publish(&mut con, &keys, &topic, &reports).await {
            tracing::debug!(error = %e, "cannot publish progress");
        }
        let counts: Vec<(&'static str, u64)> = self.dlq_counts.drain().collect();
        if let Err(e) = self.sink.count_dlq(&counts).await {
            tracing::debug!(error = %e, "cannot count dlq");
        }
    }
}
