//! The `tributary.toml` config tree, its layered loader and its validation.
//!
//! Layers, later wins: built-in defaults → the TOML file → `TRIBUTARY__SECTION__KEY`
//! environment variables. Every error names the key it is about, so an operator can fix
//! the file without reading code.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
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
    pub serving: ServingConfig,
    pub fields: BTreeMap<String, FieldType>,
    pub views: Vec<ViewConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub brokers: String,
    pub topic: String,
    /// Consumer groups are `<group_prefix>-speed` and `<group_prefix>-archive`.
    pub group_prefix: String,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:19092".into(),
            topic: "events".into(),
            group_prefix: "tributary".into(),
        }
    }
}

impl SourceConfig {
    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }
    pub fn speed_group(&self) -> String {
        format!("{}-speed", self.group_prefix)
    }
    pub fn archive_group(&self) -> String {
        format!("{}-archive", self.group_prefix)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    /// Kept out of the URL so logs and `Debug` never show it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Prefix of every key; `tributary` in production, a random one per test.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:16379/0".into(),
            password: None,
            key_prefix: "tributary".into(),
        }
    }
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
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            schedule: "0 */15 * * * *".into(),
            metrics_listen: "127.0.0.1:9102".into(),
            gc_grace: Duration::from_secs(3600),
            lock_ttl: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(60),
            archive_max_rows: 500_000,
            archive_flush_interval: Duration::from_secs(10),
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
    /// Memory of the rendered-point cache, in bytes (e.g. "256MiB").
    #[serde(with = "byte_size")]
    pub cache_size: u64,
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
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
}

impl Config {
    /// Loads the config: defaults, then `path` (if any), then `TRIBUTARY__*` variables of the
    /// process environment; then validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (tests inject it).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let label = path.map_or("<none>".to_string(), |p| p.display().to_string());
        Self::from_toml_str_with_env(&text, &label, env)
    }

    /// Parses TOML text layered over the defaults and under `env`, then validates.
    pub fn from_toml_str_with_env(
        text: &str,
        label: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: label.to_string(),
            message: e.message().to_string(),
        })?;
        let defaults = toml::Table::try_from(Config::default()).map_err(|e| {
            ConfigError::invalid("<defaults>", format!("cannot serialize defaults: {e}"))
        })?;
        let mut merged = defaults;
        merge_tables(&mut merged, file);
        apply_env(&mut merged, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::invalid(key, e.into_inner().message().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything serde cannot: cross-references, ranges, parsable strings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, key: String, msg: String| {
            if !ok {
                errors.push(ConfigError::invalid(key, msg));
            }
        };
        check(
            !self.source.brokers.trim().is_empty(),
            "source.brokers".into(),
            "must not be empty".into(),
        );
        check(
            valid_topic(&self.source.topic),
            "source.topic".into(),
            format!(
                "{:?} is not a valid Kafka topic name (1-200 of [a-zA-Z0-9._-])",
                self.source.topic
            ),
        );
        check(
            !self.source.group_prefix.is_empty(),
            "source.group_prefix".into(),
            "must not be empty".into(),
        );
        if let Err(e) = url::Url::parse(&self.redis.url) {
            check(false, "redis.url".into(), format!("not a URL: {e}"));
        }
        check(
            !self.redis.key_prefix.is_empty() && !self.redis.key_prefix.contains(['{', '}']),
            "redis.key_prefix".into(),
            "must be non-empty and free of braces (they are Redis Cluster hash tags)".into(),
        );
        if let Err(e) = crate::store::StoreLocation::parse(&self.store.url) {
            check(false, "store.url".into(), e.to_string());
        }
        if let Some(endpoint) = &self.store.endpoint
            && let Err(e) = url::Url::parse(endpoint)
        {
            check(false, "store.endpoint".into(), format!("not a URL: {e}"));
        }
        check(
            !self.speed.flush_interval.is_zero(),
            "speed.flush_interval".into(),
            "must be greater than 0".into(),
        );
        check(
            self.speed.flush_max_events > 0,
            "speed.flush_max_events".into(),
            "must be greater than 0".into(),
        );
        check(
            !self.speed.retention.is_zero(),
            "speed.retention".into(),
            "must be greater than 0".into(),
        );
        for (key, addr) in [
            ("speed.metrics_listen", &self.speed.metrics_listen),
            ("batch.metrics_listen", &self.batch.metrics_listen),
            ("serving.listen", &self.serving.listen),
        ] {
            if let Err(e) = std::net::SocketAddr::from_str(addr) {
                check(false, key.into(), format!("{addr:?} is not host:port: {e}"));
            }
        }
        if let Err(e) = cron::Schedule::from_str(&self.batch.schedule) {
            check(
                false,
                "batch.schedule".into(),
                format!(
                    "{:?} is not a cron expression with seconds (e.g. \"0 */15 * * * *\"): {e}",
                    self.batch.schedule
                ),
            );
        }
        check(
            self.batch.archive_max_rows > 0,
            "batch.archive_max_rows".into(),
            "must be greater than 0".into(),
        );
        for (key, n) in [
            ("serving.max_buckets", self.serving.max_buckets),
            ("serving.max_groups", self.serving.max_groups),
            ("serving.max_filter_values", self.serving.max_filter_values),
        ] {
            check(n > 0, key.into(), "must be greater than 0".into());
        }
        // A run renews its lock every third of the TTL; below a few seconds a slow object
        // store round trip would let a live run's lock expire.
        check(
            self.batch.lock_ttl >= Duration::from_secs(3),
            "batch.lock_ttl".into(),
            format!(
                "{} is too short: at least 3s (a run renews its lock every lock_ttl / 3)",
                humantime::format_duration(self.batch.lock_ttl)
            ),
        );
        // 0 would delete superseded view files while a reader of the previous manifest may
        // still be reading them.
        check(
            !self.batch.gc_grace.is_zero(),
            "batch.gc_grace".into(),
            "must be greater than 0 (readers of the previous manifest need its files)".into(),
        );
        check(
            !self.batch.idle_timeout.is_zero(),
            "batch.idle_timeout".into(),
            "must be greater than 0".into(),
        );
        check(
            !self.batch.archive_flush_interval.is_zero(),
            "batch.archive_flush_interval".into(),
            "must be greater than 0".into(),
        );
        for name in self.fields.keys() {
            check(
                !crate::event::RESERVED_FIELDS.contains(&name.as_str()) && valid_ident(name),
                format!("fields.{name}"),
                "must be an identifier ([a-zA-Z_][a-zA-Z0-9_]*) other than event_id, event_time, type, partition, offset, payload".into(),
            );
        }
        let mut view_names = std::collections::HashSet::new();
        for (i, view) in self.views.iter().enumerate() {
            self.validate_view(i, view, &mut view_names, &mut errors);
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Many(errors)),
        }
    }

    fn validate_view<'a>(
        &self,
        i: usize,
        view: &'a ViewConfig,
        names: &mut std::collections::HashSet<&'a str>,
        errors: &mut Vec<ConfigError>,
    ) {
        let at = |k: &str| format!("views[{i}].{k}");
        let mut err = |key: String, msg: String| errors.push(ConfigError::invalid(key, msg));
        if !valid_ident(&view.name) {
            err(
                at("name"),
                format!("{:?} must match [a-zA-Z_][a-zA-Z0-9_]*", view.name),
            );
        }
        if !names.insert(&view.name) {
            err(at("name"), format!("duplicate view name {:?}", view.name));
        }
        for (field, value) in &view.filter {
            match self.field_type(field) {
                None => err(
                    at(&format!("where.{field}")),
                    format!("{field:?} is neither `type` nor a declared field in [fields]"),
                ),
                Some(ty) => {
                    let ok = matches!(
                        (ty, value),
                        (FieldType::String, toml::Value::String(_))
                            | (FieldType::Int, toml::Value::Integer(_))
                            | (
                                FieldType::Float,
                                toml::Value::Float(_) | toml::Value::Integer(_)
                            )
                            | (FieldType::Bool, toml::Value::Boolean(_))
                    );
                    if !ok {
                        err(
                            at(&format!("where.{field}")),
                            format!("field {field:?} is {ty}, filter value {value} is not"),
                        );
                    }
                }
            }
        }
        if view.dimensions.len() > MAX_DIMENSIONS {
            err(
                at("dimensions"),
                format!(
                    "{} dimensions; at most {MAX_DIMENSIONS} (the batch cube has 2^n grouping sets)",
                    view.dimensions.len()
                ),
            );
        }
        let mut dims = std::collections::HashSet::new();
        for (j, dim) in view.dimensions.iter().enumerate() {
            if !dims.insert(dim) {
                err(
                    at(&format!("dimensions[{j}]")),
                    format!("duplicate dimension {dim:?}"),
                );
            }
            if self.field_type(dim).is_none() {
                err(
                    at(&format!("dimensions[{j}]")),
                    format!("{dim:?} is neither `type` nor a declared field in [fields]"),
                );
            }
        }
        if view.granularities.is_empty() {
            err(
                at("granularities"),
                "at least one granularity is needed".into(),
            );
        }
        let mut grans = std::collections::HashSet::new();
        for (j, g) in view.granularities.iter().enumerate() {
            if !grans.insert(g) {
                err(at(&format!("granularities[{j}]")), format!("duplicate {g}"));
            }
        }
        if view.measures.is_empty() {
            err(at("measures"), "at least one measure is needed".into());
        }
        let mut measure_names = std::collections::HashSet::new();
        for (j, m) in view.measures.iter().enumerate() {
            let mk = |k: &str| format!("views[{i}].measures[{j}].{k}");
            if !valid_ident(&m.name) {
                err(
                    mk("name"),
                    format!("{:?} must match [a-zA-Z_][a-zA-Z0-9_]*", m.name),
                );
            }
            if !measure_names.insert(&m.name) {
                err(mk("name"), format!("duplicate measure name {:?}", m.name));
            }
            match (m.agg, &m.field) {
                (AggKind::Count, Some(_)) => err(
                    mk("field"),
                    "count takes no field (it counts events)".into(),
                ),
                (AggKind::Count, None) => {}
                (agg, None) => err(mk("field"), format!("{} needs a field", agg.as_str())),
                (AggKind::CountDistinct, Some(f)) => {
                    if self.field_type(f).is_none() {
                        err(
                            mk("field"),
                            format!("{f:?} is not a declared field in [fields]"),
                        );
                    }
                }
                (agg, Some(f)) => match self.fields.get(f) {
                    None => err(
                        mk("field"),
                        format!("{f:?} is not a declared field in [fields]"),
                    ),
                    Some(ty) if !ty.is_numeric() => err(
                        mk("field"),
                        format!("{} needs a numeric field; {f:?} is {ty}", agg.as_str()),
                    ),
                    Some(_) => {}
                },
            }
            match (m.agg, m.q) {
                (AggKind::Quantile, None) => err(mk("q"), "quantile needs q in (0, 1)".into()),
                (AggKind::Quantile, Some(q)) if !(q > 0.0 && q < 1.0) => {
                    err(mk("q"), format!("{q} is outside (0, 1)"))
                }
                (AggKind::Quantile, Some(_)) => {}
                (agg, Some(_)) => err(
                    mk("q"),
                    format!("q only applies to quantile, not {}", agg.as_str()),
                ),
                (_, None) => {}
            }
        }
    }

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

fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies `TRIBUTARY__SECTION__KEY=value` overrides. The value takes the type of the key it
/// replaces (so `TRIBUTARY__SOURCE__TOPIC=123` stays a string); new keys are parsed as TOML
/// scalars when they parse, else kept as strings.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) || path.len() < 2 {
            return Err(ConfigError::Env {
                var,
                message: "expected TRIBUTARY__SECTION__KEY".into(),
            });
        }
        let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Env {
            var: var.clone(),
            message: "empty key".into(),
        })?;
        let mut cur = &mut *table;
        for p in parents {
            let entry = cur
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{p}` is not a section"),
                    });
                }
            };
        }
        let value = typed_env_value(cur.get(last), &raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        cur.insert(last.clone(), value);
    }
    Ok(())
}

fn typed_env_value(existing: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    use toml::Value;
    match existing {
        Some(Value::String(_)) => Ok(Value::String(raw.to_string())),
        Some(Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Some(Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Some(Value::Boolean(_)) => raw
            .trim()
            .parse::<bool>()
            .map(Value::Boolean)
            .map_err(|_| format!("expected true or false, got {raw:?}")),
        Some(Value::Array(_) | Value::Table(_)) => {
            let doc = format!("v = {raw}");
            toml::from_str::<toml::Table>(&doc)
                .ok()
                .and_then(|mut t| t.remove("v"))
                .ok_or_else(|| "expected a TOML array or inline table".to_string())
        }
        // A key without a default (an optional one: passwords, endpoints, a field's type) is a
        // string, whatever it looks like: `TRIBUTARY__REDIS__PASSWORD=123456` is the password
        // "123456", not the number. Only arrays and tables are parsed.
        _ => {
            let trimmed = raw.trim_start();
            if trimmed.starts_with('[') || trimmed.starts_with('{') {
                let doc = format!("v = {raw}");
                if let Some(v) = toml::from_str::<toml::Table>(&doc)
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                {
                    return Ok(v);
                }
            }
            Ok(Value::String(raw.to_string()))
        }
    }
}

/// Serde adapter for durations written as strings: "200ms", "5m", "48h", "0s".
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(D::Error::custom)
    }

    /// Parses "200ms", "5m", "48h", "1h 30m"; a bare "0" is zero.
    pub fn parse(s: &str) -> Result<Duration, String> {
        if s.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration like \"200ms\", \"5m\" or \"48h\": {e}"))
    }
}

/// Serde adapter for sizes written as strings: "256MiB", "2GiB", "1048576".
pub mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Written back exactly (a serialized config is loaded again by subprocesses).
    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        let text = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
            .iter()
            .find(|(unit, _)| *n > 0 && n.is_multiple_of(*unit))
            .map_or_else(
                || format!("{n}B"),
                |(unit, name)| format!("{}{name}", n / unit),
            );
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Text(s) => parse(&s).map_err(D::Error::custom),
        }
    }

    /// Parses "256MiB", "2 GiB", "512kB", "1048576".
    pub fn parse(s: &str) -> Result<u64, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("{s:?} is not a size like \"256MiB\" or \"2GiB\": {e}"))
    }
}

#[cfg(test)]
mod tests;
