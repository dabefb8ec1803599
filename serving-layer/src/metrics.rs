//! Prometheus metrics of the serving layer.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct ServingMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    /// Answers that listed buckets they could not read (Redis or the store down).
    pub partial_answers: Counter,
    /// `series` answers served as kept (nothing they came from had changed) or computed.
    series_answers: Family<Labels, Counter>,
    /// Requests refused for want of a valid API key, by reason (missing, malformed, invalid).
    auth_rejected: Family<Labels, Counter>,
    registry: Registry,
}

impl Default for ServingMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServingMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary_serving");
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let partial_answers = Counter::default();
        let series_answers = Family::<Labels, Counter>::default();
        let auth_rejected = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "request_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "partial_answers",
            "Answers with unreadable buckets",
            partial_answers.clone(),
        );
        registry.register(
            "series_answers",
            "series answers by how they were made: kept (unchanged since computed) or computed",
            series_answers.clone(),
        );
        registry.register(
            "auth_rejected",
            "Requests refused with 401 by reason (missing, malformed or invalid API key)",
            auth_rejected.clone(),
        );
        ServingMetrics {
            requests,
            latency,
            partial_answers,
            series_answers,
            auth_rejected,
            registry,
        }
    }

    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("route".into(), route.to_string()),
                ("status".into(), status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("route".into(), route.to_string())])
            .observe(seconds);
    }

    /// Counts a `series` answer, kept or computed.
    pub fn series_answer(&self, kept: bool) {
        let how = if kept { "kept" } else { "computed" };
        self.series_answers
            .get_or_create(&vec![("how".into(), how.into())])
            .inc();
    }

    pub fn auth_rejected(&self, reason: &str) {
        self.auth_rejected
            .get_or_create(&vec![("reason".into(), reason.to_string())])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
