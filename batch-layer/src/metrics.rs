//! Prometheus metrics of the batch layer.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Histograms per label set, with buckets of their own.
pub type HistogramFamily = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

pub struct BatchMetrics {
    pub archive_records: Counter,
    pub archive_rows: Counter,
    pub archive_invalid: Counter,
    pub archive_flush_seconds: Histogram,
    /// Partition flushes refused because another archiver changed the state (then reloaded).
    pub archive_fenced: Counter,
    /// Partition flushes that failed (store errors; the partition is read again).
    pub archive_flush_errors: Counter,
    pub archive_group_rejoins: Counter,
    /// Batch runs by outcome (`ok`, `failed`, `locked`).
    pub runs: Family<Vec<(String, String)>, Counter>,
    pub run_seconds: Histogram,
    /// Dates recomputed and their deduplicated events, per view.
    pub dates_computed: Family<Vec<(String, String)>, Counter>,
    pub events_computed: Family<Vec<(String, String)>, Counter>,
    /// Bytes the local engine's queries spilled to `batch.spill_dir`, per view.
    pub spilled_bytes: Family<Vec<(String, String)>, Counter>,
    pub last_success_seconds: Gauge,
    /// Queries sent to each engine (`local`, or the Ballista scheduler's URL).
    pub engine_jobs: Family<Vec<(String, String)>, Counter>,
    /// The last Ballista job of each view (`{view, job}` = 1; the previous one is removed).
    pub last_job: Family<Vec<(String, String)>, Gauge>,
    /// The speed layer's relative error per settled bucket (the accuracy ledger), per view
    /// and measure.
    pub speed_relative_error: HistogramFamily,
    last_job_of: std::sync::Mutex<std::collections::HashMap<String, String>>,
    registry: Registry,
}

impl BatchMetrics {
    pub fn new() -> Arc<Self> {
        // Prefix `tributary`, names `batch_…`: the speed accuracy ledger's histogram is
        // `tributary_speed_relative_error`, the name the design gives it.
        let mut registry = Registry::with_prefix("tributary");
        let archive_records = Counter::default();
        let archive_rows = Counter::default();
        let archive_invalid = Counter::default();
        let archive_flush_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let archive_fenced = Counter::default();
        let archive_flush_errors = Counter::default();
        let archive_group_rejoins = Counter::default();
        registry.register(
            "batch_archive_fenced",
            "Partition flushes refused because another archiver changed the state (reloaded, read again)",
            archive_fenced.clone(),
        );
        registry.register(
            "batch_archive_flush_errors",
            "Partition flushes that failed on the store (the partition is read again from its commit point)",
            archive_flush_errors.clone(),
        );
        registry.register(
            "batch_archive_group_rejoins",
            "Times the archiver left and rejoined its group because a partition stalled",
            archive_group_rejoins.clone(),
        );
        registry.register(
            "batch_archive_records",
            "Records read from the topic",
            archive_records.clone(),
        );
        registry.register(
            "batch_archive_rows",
            "Rows committed to the master dataset",
            archive_rows.clone(),
        );
        registry.register(
            "batch_archive_invalid",
            "Invalid records not archived (the speed layer's DLQ has them)",
            archive_invalid.clone(),
        );
        registry.register(
            "batch_archive_flush_seconds",
            "Time to write one archive flush",
            archive_flush_seconds.clone(),
        );
        let runs = Family::<Vec<(String, String)>, Counter>::default();
        let run_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        let dates_computed = Family::<Vec<(String, String)>, Counter>::default();
        let events_computed = Family::<Vec<(String, String)>, Counter>::default();
        let spilled_bytes = Family::<Vec<(String, String)>, Counter>::default();
        let last_success_seconds = Gauge::default();
        registry.register(
            "batch_spilled_bytes",
            "Bytes the view queries spilled to batch.spill_dir (a date larger than batch.memory_limit)",
            spilled_bytes.clone(),
        );
        registry.register("batch_runs", "Batch runs by outcome", runs.clone());
        registry.register(
            "batch_run_seconds",
            "Wall time of a batch run",
            run_seconds.clone(),
        );
        registry.register(
            "batch_dates_computed",
            "View dates recomputed",
            dates_computed.clone(),
        );
        registry.register(
            "batch_events_computed",
            "Deduplicated events aggregated into views",
            events_computed.clone(),
        );
        registry.register(
            "batch_last_success_timestamp_seconds",
            "End of the last successful batch run (Unix time)",
            last_success_seconds.clone(),
        );
        let engine_jobs = Family::<Vec<(String, String)>, Counter>::default();
        let last_job = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "batch_engine_jobs",
            "Date queries sent to each engine",
            engine_jobs.clone(),
        );
        registry.register(
            "batch_last_job_info",
            "The last Ballista job id of each view",
            last_job.clone(),
        );
        let speed_relative_error = HistogramFamily::new_with_constructor(relative_error_histogram);
        registry.register(
            "speed_relative_error",
            "Relative error of the speed layer's value of a bucket total against the batch's, per settled bucket (the accuracy ledger)",
            speed_relative_error.clone(),
        );
        Arc::new(BatchMetrics {
            speed_relative_error,
            engine_jobs,
            last_job,
            last_job_of: Default::default(),
            archive_records,
            archive_rows,
            archive_invalid,
            archive_flush_seconds,
            archive_fenced,
            archive_flush_errors,
            archive_group_rejoins,
            runs,
            run_seconds,
            dates_computed,
            events_computed,
            spilled_bytes,
            last_success_seconds,
            registry,
        })
    }

    /// Counts a date's query on `engine`, and records its Ballista job id if it had one.
    pub fn job(&self, view: &str, engine: &str, job: Option<&str>) {
        self.engine_jobs
            .get_or_create(&vec![("engine".to_string(), engine.to_string())])
            .inc();
        let Some(job) = job else { return };
        let labels = |j: &str| {
            vec![
                ("view".to_string(), view.to_string()),
                ("job".to_string(), j.to_string()),
            ]
        };
        if let Ok(mut last) = self.last_job_of.lock() {
            if let Some(old) = last.insert(view.to_string(), job.to_string()) {
                self.last_job.remove(&labels(&old));
            }
            self.last_job.get_or_create(&labels(job)).set(1);
        }
    }

    /// Records a settled bucket's relative error.
    /// A measure's relative errors from one run (its histogram looked up once).
    pub fn relative_errors(&self, view: &str, measure: &str, rels: impl IntoIterator<Item = f64>) {
        let histogram = self.speed_relative_error.get_or_create(&vec![
            ("view".to_string(), view.to_string()),
            ("measure".to_string(), measure.to_string()),
        ]);
        for rel in rels {
            histogram.observe(rel);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// 0 (exact) up to 100 %: the first bucket holds the exact answers.
fn relative_error_histogram() -> Histogram {
    Histogram::new([
        0.0, 1e-6, 1e-4, 1e-3, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
    ])
}
