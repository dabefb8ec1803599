//! The `tributary.toml` config tree: its types and defaults.
//!
//! Layers, later wins: built-in defaults → the TOML file → `TRIBUTARY__SECTION__KEY`
//! environment variables ([`load`]); then [`Config::validate`] ([`validate`]). Every error
//! names the key it is about, so an operator can fix the file without reading code.

mod connections;
mod load;
pub mod units;
mod validate;

pub use connections::{
    OWNED_LIBRDKAFKA_KEYS, RedisConfig, SaslMechanism, SecurityProtocol, SourceConfig,
};
pub use units::{byte_size, byte_size_opt, duration_str};
pub use validate::{ballista_address, host_port};

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bucket::Granularity;
use crate::secret::Secret;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "TRIBUTARY__";
/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_PATH_ENV: &str = "TRIBUTARY_CONFIG";
/// A view has at most this many dimensions: the batch cube has 2^n grouping sets.
pub const MAX_DIMENSIONS: usize = 4;

/// A config problem, always naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub source: SourceConfig,
    pub redis: RedisConfig,
    pub store: StoreConfig,
    pub speed: SpeedConfig,
    pub batch: BatchConfig,
    pub ballista: BallistaConfig,
    pub serving: ServingConfig,
    pub fields: BTreeMap<String, FieldType>,
    pub views: Vec<ViewConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    pub allow_http: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "file:///var/lib/tributary".into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedConfig {
    #[serde(with = "duration_str")]
    pub allowed_lateness: Duration,
    #[serde(with = "duration_str")]
    pub max_future_skew: Duration,
    #[serde(with = "duration_str")]
    pub retention: Duration,
    #[serde(with = "duration_str")]
    pub flush_interval: Duration,
    /// Size bound of one flush, in events; whichever of this and `flush_interval` comes first.
    pub flush_max_events: usize,
    /// A flush also starts once no record has arrived for this long while events are buffered
    /// (the consumer has caught up): what keeps an event's wait short at low rates, where the
    /// tick would dominate. Under load records keep coming and the size and tick bounds rule.
    /// Default "2ms"; "0s" turns it off.
    #[serde(with = "duration_str")]
    pub idle_flush: Duration,
    /// Longest the broker may hold the speed consumer's fetch when it has nothing new
    /// (librdkafka's `fetch.wait.max.ms`, set on top of `[source.librdkafka]`): the longest a
    /// record can wait at the broker before the speed layer sees it. Smaller costs more fetch
    /// requests on an idle topic, one per partition leader per this interval. Default "10ms"
    /// (librdkafka's own is 500 ms).
    #[serde(with = "duration_str")]
    pub fetch_wait: Duration,
    #[serde(with = "duration_str")]
    pub dedup_window: Duration,
    pub metrics_listen: String,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::from_secs(5 * 60),
            max_future_skew: Duration::from_secs(5 * 60),
            retention: Duration::from_secs(48 * 3600),
            flush_interval: Duration::from_millis(200),
            flush_max_events: 50_000,
            idle_flush: Duration::from_millis(2),
            fetch_wait: Duration::from_millis(10),
            dedup_window: Duration::ZERO,
            metrics_listen: "127.0.0.1:9101".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Cron expression with seconds (`sec min hour day month weekday`).
    pub schedule: String,
    pub metrics_listen: String,
    /// Superseded view files are removed only after this long, so readers of the previous
    /// manifest can finish.
    #[serde(with = "duration_str")]
    pub gc_grace: Duration,
    /// How long superseded manifest versions and the view files they name are kept, so
    /// `as_of` queries can answer as the views stood then ("7d"; "0s": no history).
    #[serde(with = "duration_str")]
    pub history_retention: Duration,
    /// A run lock older than this is considered abandoned by a crashed run.
    #[serde(with = "duration_str")]
    pub lock_ttl: Duration,
    /// A partition read to its end and quiet this long no longer holds the horizon back.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Archive flush bounds: rows per file and age of the oldest buffered row.
    pub archive_max_rows: usize,
    #[serde(with = "duration_str")]
    pub archive_flush_interval: Duration,
    /// Memory a run's queries may hold ("2GiB"); past it they spill to `spill_dir`. Unset:
    /// half of the machine's memory.
    #[serde(with = "byte_size_opt", skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Where spilled query state goes (local disk); unset: the OS temporary directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<String>,
    /// `local` (this process) or `ballista://host:port` (a Ballista scheduler).
    pub engine: String,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            schedule: "0 */15 * * * *".into(),
            metrics_listen: "127.0.0.1:9102".into(),
            gc_grace: Duration::from_secs(3600),
            history_retention: Duration::from_secs(7 * 24 * 3600),
            lock_ttl: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(60),
            archive_max_rows: 500_000,
            archive_flush_interval: Duration::from_secs(10),
            memory_limit: None,
            spill_dir: None,
            engine: "local".into(),
        }
    }
}

/// The Ballista processes `batch-layer scheduler` and `batch-layer executor` start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BallistaConfig {
    /// Where `batch-layer scheduler` listens (gRPC).
    pub scheduler_bind: String,
    /// Where executors register (`host:port` of the scheduler).
    pub scheduler_url: String,
    /// An executor's Flight port; its gRPC port is the next one.
    pub executor_bind: String,
    /// Concurrent tasks per executor.
    pub executor_slots: usize,
    /// Shuffle files of an executor.
    pub work_dir: String,
    /// How long the driver waits for one date's Ballista job before it cancels the job and
    /// fails the view (its previous version stays): Ballista 55 can leave a job waiting
    /// forever when an executor is lost at the wrong moment.
    #[serde(with = "duration_str")]
    pub job_timeout: Duration,
}

impl Default for BallistaConfig {
    fn default() -> Self {
        Self {
            scheduler_bind: "127.0.0.1:50050".into(),
            scheduler_url: "127.0.0.1:50050".into(),
            executor_bind: "127.0.0.1:50051".into(),
            executor_slots: 2,
            work_dir: std::env::temp_dir()
                .join("tributary-ballista")
                .display()
                .to_string(),
            job_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServingConfig {
    pub listen: String,
    /// Upper bound of the buckets a single query may ask for.
    pub max_buckets: usize,
    /// Upper bound of the groups one answer may hold (`group_by` over a high-cardinality
    /// dimension, `top` over one): a query past it gets a 400 naming the parameter.
    pub max_groups: usize,
    /// Upper bound of the values all `filter` parameters of one query may list together.
    pub max_filter_values: usize,
    /// Memory of the serving caches, in bytes (e.g. "256MiB"): a third each for rendered
    /// points per bucket, batch parts assembled per query, and whole answers per query.
    #[serde(with = "byte_size")]
    pub cache_size: u64,
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
    /// Bearer keys (secrets). When any is set, every `/v1` route and `/metrics` need
    /// `Authorization: Bearer <key>`; `/`, `/healthz`, `/readyz` and `/openapi.json` stay open.
    pub api_keys: Vec<Secret>,
    /// Browser origins allowed by CORS (`https://dash.example.com`); none by default.
    pub cors_origins: Vec<String>,
    /// With `tls_key`: serve HTTPS with this certificate chain (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_buckets: 10_000,
            max_groups: 10_000,
            max_filter_values: 1_000,
            cache_size: 256 << 20,
            request_timeout: Duration::from_secs(10),
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Type of a declared event field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Float,
    Int,
    Bool,
}

impl FieldType {
    pub fn is_numeric(self) -> bool {
        matches!(self, FieldType::Float | FieldType::Int)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Float => "float",
            FieldType::Int => "int",
            FieldType::Bool => "bool",
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[views]]` entry as written by the user; [`crate::view::ViewPlan`] is its compiled form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    pub name: String,
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub dimensions: Vec<String>,
    pub granularities: Vec<Granularity>,
    pub measures: Vec<MeasureConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureConfig {
    pub name: String,
    pub agg: AggKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<f64>,
}

/// Aggregation functions of a measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
    Quantile,
}

impl AggKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Avg => "avg",
            AggKind::CountDistinct => "count_distinct",
            AggKind::Quantile => "quantile",
        }
    }

    /// The kind named by [`AggKind::as_str`].
    pub fn parse(name: &str) -> Option<AggKind> {
        [
            AggKind::Count,
            AggKind::Sum,
            AggKind::Min,
            AggKind::Max,
            AggKind::Avg,
            AggKind::CountDistinct,
            AggKind::Quantile,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    /// Whether parts of it merge through a sketch (never exactly): distinct counts and
    /// quantiles.
    pub fn merges_by_sketch(self) -> bool {
        matches!(self, AggKind::CountDistinct | AggKind::Quantile)
    }
}

impl Config {
    /// Type of a field usable in `where`, dimensions and measures: `type` or a declared field.
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        if name == "type" {
            Some(FieldType::String)
        } else {
            self.fields.get(name).copied()
        }
    }

    /// The view named `name`.
    pub fn view(&self, name: &str) -> Option<&ViewConfig> {
        self.views.iter().find(|v| v.name == name)
    }
}

#[cfg(test)]
mod connections_tests;
#[cfg(test)]
mod tests;
