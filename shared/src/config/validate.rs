//! Validation: everything serde cannot check (cross-references, ranges, parsable strings),
//! each error naming its key.

use std::str::FromStr;
use std::time::Duration;

use super::{AggKind, Config, ConfigError, FieldType, MAX_DIMENSIONS, ViewConfig};

impl Config {
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
        check(
            !self.redis.key_prefix.is_empty() && !self.redis.key_prefix.contains(['{', '}']),
            "redis.key_prefix".into(),
            "must be non-empty and free of braces (they are Redis Cluster hash tags)".into(),
        );
        self.serving_access(&mut check);
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
            self.speed.fetch_wait <= Duration::from_secs(300),
            "speed.fetch_wait".into(),
            "must be at most 300s (librdkafka's fetch.wait.max.ms range)".into(),
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
        if let Some(limit) = self.batch.memory_limit {
            check(
                limit >= 16 << 20,
                "batch.memory_limit".into(),
                format!("{limit} bytes is too small to run a query; give at least \"16MiB\""),
            );
        }
        check(
            self.batch.engine == "local" || ballista_address(&self.batch.engine).is_some(),
            "batch.engine".into(),
            format!(
                "{:?} is neither \"local\" nor \"ballista://host:port\"",
                self.batch.engine
            ),
        );
        for (key, addr) in [
            ("ballista.scheduler_bind", &self.ballista.scheduler_bind),
            ("ballista.scheduler_url", &self.ballista.scheduler_url),
            ("ballista.executor_bind", &self.ballista.executor_bind),
        ] {
            check(
                host_port(addr).is_some(),
                key.into(),
                format!("{addr:?} is not host:port"),
            );
        }
        check(
            self.ballista.executor_slots > 0,
            "ballista.executor_slots".into(),
            "must be greater than 0".into(),
        );
        check(
            !self.ballista.job_timeout.is_zero(),
            "ballista.job_timeout".into(),
            "must be greater than 0".into(),
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
        self.source.validate(&mut errors);
        self.redis.validate(&mut errors);
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

    /// `serving.api_keys`, `cors_origins`, `tls_cert`/`tls_key`.
    fn serving_access(&self, check: &mut impl FnMut(bool, String, String)) {
        let s = &self.serving;
        for (i, key) in s.api_keys.iter().enumerate() {
            // Short keys are guessable; the value itself is never shown.
            check(
                key.expose().len() >= 16 && !key.expose().chars().any(char::is_whitespace),
                format!("serving.api_keys[{i}]"),
                "must be at least 16 characters without spaces (the key is a secret and is not shown)".into(),
            );
        }
        for (i, origin) in s.cors_origins.iter().enumerate() {
            let ok = origin == "*"
                || url::Url::parse(origin).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.path() == "/"
                        && !origin.ends_with('/')
                });
            check(
                ok,
                format!("serving.cors_origins[{i}]"),
                format!(
                    "{origin:?} is not an origin (scheme://host[:port], e.g. \"https://dash.example.com\") or \"*\""
                ),
            );
        }
        check(
            s.tls_cert.is_some() == s.tls_key.is_some(),
            "serving.tls_key".into(),
            "HTTPS needs both serving.tls_cert and serving.tls_key".into(),
        );
        for (key, path) in [
            ("serving.tls_cert", &s.tls_cert),
            ("serving.tls_key", &s.tls_key),
        ] {
            if let Some(path) = path {
                super::connections::check_readable(key, path, &mut |k, msg| {
                    check(false, k.into(), msg)
                });
            }
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

/// `host` and `port` of a `host:port` address (a name or an IP; not resolved here).
pub fn host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The scheduler address of `engine = "ballista://host:port"`.
pub fn ballista_address(engine: &str) -> Option<(String, u16)> {
    host_port(engine.strip_prefix("ballista://")?.trim_end_matches('/'))
}
