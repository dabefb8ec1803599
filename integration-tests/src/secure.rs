//! The secured local stack (`make up-secure`): Kafka with SASL SCRAM behind TLS, Redis with
//! TLS and an ACL user, a 3-master Redis Cluster, and the CA that signed their certificates.
//! Tests find it through the `TRIBUTARY_SECURE_*` / `TRIBUTARY_CLUSTER_*` variables
//! `infra/stack.sh env` prints, and fail (never skip) when it is not up.

use anyhow::Context;
use tributary_shared::config::{RedisConfig, SaslMechanism, SecurityProtocol, SourceConfig};
use tributary_shared::secret::Secret;

/// Where the secured services are, and their credentials.
#[derive(Debug, Clone)]
pub struct SecureStack {
    /// SASL_SSL through the TLS proxy.
    pub brokers: String,
    /// The proxy that demands a client certificate (mutual TLS).
    pub mtls_brokers: String,
    pub sasl_username: String,
    pub sasl_password: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub client_cert: String,
    pub client_key: String,
    /// A CA that signed nothing the stack serves: trusting only it must fail.
    pub untrusted_ca: String,
    pub redis_url: String,
    pub redis_username: String,
    pub redis_password: String,
    pub cluster_url: String,
    pub cluster_ports: Vec<u16>,
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!(
            "{name} is not set: the secured stack is not up. Run `make up-secure` and \
             `eval \"$(infra/stack.sh env)\"` (make test does both)"
        )
    })
}

impl SecureStack {
    pub fn from_env() -> anyhow::Result<SecureStack> {
        let ports = var("TRIBUTARY_CLUSTER_REDIS_PORTS")?;
        let cluster_ports = ports
            .split_whitespace()
            .map(|p| p.parse::<u16>().context("TRIBUTARY_CLUSTER_REDIS_PORTS"))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let stack = SecureStack {
            brokers: var("TRIBUTARY_SECURE_BROKERS")?,
            mtls_brokers: var("TRIBUTARY_SECURE_MTLS_BROKERS")?,
            sasl_username: var("TRIBUTARY_SECURE_SASL_USERNAME")?,
            sasl_password: var("TRIBUTARY_SECURE_SASL_PASSWORD")?,
            ca: var("TRIBUTARY_SECURE_CA")?,
            cert: var("TRIBUTARY_SECURE_CERT")?,
            key: var("TRIBUTARY_SECURE_KEY")?,
            client_cert: var("TRIBUTARY_SECURE_CLIENT_CERT")?,
            client_key: var("TRIBUTARY_SECURE_CLIENT_KEY")?,
            untrusted_ca: var("TRIBUTARY_SECURE_UNTRUSTED_CA")?,
            redis_url: var("TRIBUTARY_SECURE_REDIS_URL")?,
            redis_username: var("TRIBUTARY_SECURE_REDIS_USERNAME")?,
            redis_password: var("TRIBUTARY_SECURE_REDIS_PASSWORD")?,
            cluster_url: var("TRIBUTARY_CLUSTER_REDIS_URL")?,
            cluster_ports,
        };
        for f in [&stack.ca, &stack.cert, &stack.key, &stack.untrusted_ca] {
            anyhow::ensure!(
                std::path::Path::new(f).exists(),
                "{f} is missing: run `make up-secure`"
            );
        }
        Ok(stack)
    }

    /// `[source]` for SASL_SSL with SCRAM-SHA-512, trusting the stack's CA.
    pub fn source(&self, topic: &str) -> SourceConfig {
        SourceConfig {
            brokers: self.brokers.clone(),
            topic: topic.to_string(),
            group_prefix: topic.to_string(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some(self.sasl_username.clone()),
            sasl_password: Some(Secret::new(self.sasl_password.clone())),
            ssl_ca_location: Some(self.ca.clone()),
            ..SourceConfig::default()
        }
    }

    /// `[redis]` over TLS with the ACL user.
    pub fn redis(&self, key_prefix: &str) -> RedisConfig {
        RedisConfig {
            url: self.redis_url.clone(),
            username: Some(self.redis_username.clone()),
            password: Some(Secret::new(self.redis_password.clone())),
            ca_file: Some(self.ca.clone()),
            cluster: false,
            key_prefix: key_prefix.to_string(),
        }
    }

    /// `[redis]` on the Redis Cluster.
    pub fn cluster(&self, key_prefix: &str) -> RedisConfig {
        RedisConfig {
            url: self.cluster_url.clone(),
            cluster: true,
            key_prefix: key_prefix.to_string(),
            ..RedisConfig::default()
        }
    }
}
