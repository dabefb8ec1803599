//! How Tributary reaches its infrastructure: the Kafka source (`[source]`, with SASL, TLS and a
//! librdkafka pass-through) and Redis (`[redis]`, with TLS, ACL users and Cluster), and the
//! checks that name the key at fault before any connection is tried.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// librdkafka properties Tributary sets itself: exactly-once and the group protocol depend on
/// them, or a dedicated `[source]` key carries them. `[source.librdkafka]` may not set these.
pub const OWNED_LIBRDKAFKA_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "enable.partition.eof",
    "statistics.interval.ms",
    "session.timeout.ms",
    "partition.assignment.strategy",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "transactional.id",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
];

/// `source.security_protocol`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_librdkafka())
    }
}

/// `source.sasl_mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub brokers: String,
    pub topic: String,
    /// Consumer groups are `<group_prefix>-speed` and `<group_prefix>-archive`.
    pub group_prefix: String,
    pub security_protocol: SecurityProtocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<Secret>,
    /// CA bundle (PEM) the brokers' certificates must chain to; system roots when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_ca_location: Option<String>,
    /// Mutual TLS: this client's certificate and key (PEM), both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_certificate_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key_location: Option<String>,
    /// The passphrase of an encrypted `ssl_key_location` (a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_key_password: Option<Secret>,
    /// Any other librdkafka property, passed to every client as is (tuning: fetch sizes,
    /// timeouts, socket options). The keys of [`OWNED_LIBRDKAFKA_KEYS`] are refused.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:19092".into(),
            topic: "events".into(),
            group_prefix: "tributary".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            librdkafka: BTreeMap::new(),
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

    /// `brokers` with how they are spoken to, for messages: `sasl_ssl://host:9093`.
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.security_protocol, self.brokers)
    }

    pub(super) fn validate(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, msg: String| errors.push(ConfigError::invalid(key, msg));
        let proto = self.security_protocol;
        if proto.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                err(
                    "source.sasl_mechanism",
                    format!(
                        "needed with security_protocol = \"{proto}\": PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    ),
                );
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                err(
                    "source.sasl_username",
                    format!("needed with security_protocol = \"{proto}\""),
                );
            }
            if self.sasl_password.is_none() {
                err(
                    "source.sasl_password",
                    format!(
                        "needed with security_protocol = \"{proto}\" (a secret: set TRIBUTARY__SOURCE__SASL_PASSWORD)"
                    ),
                );
            }
        } else {
            for (key, set) in [
                ("source.sasl_mechanism", self.sasl_mechanism.is_some()),
                ("source.sasl_username", self.sasl_username.is_some()),
                ("source.sasl_password", self.sasl_password.is_some()),
            ] {
                if set {
                    err(
                        key,
                        format!(
                            "is set but security_protocol = \"{proto}\" does not use SASL (sasl_plaintext or sasl_ssl does)"
                        ),
                    );
                }
            }
        }
        let tls_files = [
            ("source.ssl_ca_location", &self.ssl_ca_location),
            (
                "source.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("source.ssl_key_location", &self.ssl_key_location),
        ];
        for (key, path) in tls_files {
            let Some(path) = path else { continue };
            if !proto.uses_tls() {
                err(
                    key,
                    format!(
                        "is set but security_protocol = \"{proto}\" does not use TLS (ssl or sasl_ssl does)"
                    ),
                );
            }
            check_readable(key, path, &mut err);
        }
        if self.ssl_key_password.is_some() && self.ssl_key_location.is_none() {
            err(
                "source.ssl_key_password",
                "is set without source.ssl_key_location".into(),
            );
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            err(
                "source.ssl_key_location",
                "mutual TLS needs both ssl_certificate_location and ssl_key_location".into(),
            );
        }
        for (key, value) in &self.librdkafka {
            let at = format!("source.librdkafka.\"{key}\"");
            if OWNED_LIBRDKAFKA_KEYS.contains(&key.as_str()) {
                err(
                    &at,
                    "is set by Tributary itself and cannot be overridden (use the [source] keys for brokers, security and credentials)".into(),
                );
                continue;
            }
            // librdkafka checks names and values itself: ask it now, so a typo fails at start
            // naming the key rather than at the first client.
            if let Err(e) = rdkafka::ClientConfig::new()
                .set(key, value)
                .create_native_config()
            {
                err(&at, e.to_string());
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS). With `cluster = true`, any node of the cluster.
    pub url: String,
    /// ACL user; with `password`. Absent: the `default` user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Kept out of the URL so logs and `Debug` never show it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// CA bundle (PEM) the server's certificate must chain to (`rediss://`); system roots
    /// when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Redis Cluster: every view's keys share one hash slot (`{<view>}`), so each flush stays
    /// one atomic script.
    pub cluster: bool,
    /// Prefix of every key; `tributary` in production, a random one per test.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:16379/0".into(),
            username: None,
            password: None,
            ca_file: None,
            cluster: false,
            key_prefix: "tributary".into(),
        }
    }
}

impl RedisConfig {
    /// The URL to connect with: `url` with `username` and `password` filled in. It holds the
    /// secret: open a client with it, never print it.
    pub fn connection_url(&self) -> Result<String, ConfigError> {
        let mut url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("redis.url", format!("not a URL: {e}")))?;
        if let Some(user) = &self.username {
            url.set_username(user)
                .map_err(|_| ConfigError::invalid("redis.url", "cannot carry a username"))?;
        }
        if let Some(pw) = &self.password {
            url.set_password(Some(pw.expose()))
                .map_err(|_| ConfigError::invalid("redis.url", "cannot carry a password"))?;
        }
        Ok(url.to_string())
    }

    /// `url` without any credential it may carry, for messages: `rediss://host:6380/0`.
    pub fn endpoint(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut url) => {
                let _ = url.set_password(None);
                let _ = url.set_username("");
                url.to_string()
            }
            Err(_) => "<redis.url is not a URL>".into(),
        }
    }

    /// Whether `url` asks for TLS.
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    pub(super) fn validate(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, msg: String| errors.push(ConfigError::invalid(key, msg));
        match url::Url::parse(&self.url) {
            Err(e) => err("redis.url", format!("not a URL: {e}")),
            Ok(url) => {
                if !matches!(url.scheme(), "redis" | "rediss") {
                    err(
                        "redis.url",
                        format!("scheme {:?}: redis:// or rediss:// (TLS)", url.scheme()),
                    );
                }
                if url.password().is_some() {
                    err(
                        "redis.url",
                        "carries a password: put it in redis.password (TRIBUTARY__REDIS__PASSWORD) so it is never logged".into(),
                    );
                }
                if self.cluster && !matches!(url.path(), "" | "/" | "/0") {
                    err("redis.url", "a Redis Cluster has only database 0".into());
                }
            }
        }
        if self.username.is_some() && self.password.is_none() {
            err(
                "redis.password",
                "needed with redis.username (an ACL user)".into(),
            );
        }
        if let Some(path) = &self.ca_file {
            if !self.uses_tls() {
                err(
                    "redis.ca_file",
                    "is set but redis.url is not rediss:// (TLS)".into(),
                );
            }
            check_readable("redis.ca_file", path, &mut err);
        }
    }
}

/// A file key must name a readable file: said at start, not at the first connection.
pub(super) fn check_readable(key: &str, path: &str, err: &mut impl FnMut(&str, String)) {
    if let Err(e) = std::fs::File::open(path) {
        err(key, format!("cannot read {path}: {e}"));
    }
}
