//! Connecting to Redis as `[redis]` says: one server or a Cluster, plain or TLS (`rediss://`
//! with `ca_file`), the default user or an ACL user. Every layer and operator command opens
//! Redis through here, so all of them reach the same deployments and fail the same clear way.
//!
//! [`RedisConnection`] is one type for both topologies. On a Cluster, a view's keys share one
//! hash slot (`{<view>}` in [`crate::layout::RedisKeys`]), so each flush script stays atomic;
//! pipelines that mix slots (a view's keys and topic-wide progress, say) are sent command by
//! command, concurrently, because a Cluster node refuses a pipeline across slots.

use std::time::Duration;

mod cluster;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use cluster::{ClusterSettings, RepairingCluster};

use crate::config::RedisConfig;

/// Time to open a connection, and to wait for any one answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RedisConnectError {
    /// Names the endpoint (without credentials) and the cause; never the password.
    #[error("redis at {endpoint}: {cause}")]
    Connect {
        endpoint: String,
        cause: String,
        /// A credential or certificate problem: retrying cannot fix it.
        permanent: bool,
    },
    #[error("redis.{key}: {message}")]
    Config { key: &'static str, message: String },
}

/// A client for the configured Redis (not yet connected).
#[derive(Clone)]
pub struct RedisClient {
    endpoint: String,
    timeout: Duration,
    inner: Inner,
    config: RedisConfig,
}

// Made once per process and cloned rarely: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Inner {
    Single(redis::Client),
    Cluster(ClusterSettings),
}

/// A connection to one server (reconnecting) or to a Cluster (routing by slot).
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(RepairingCluster),
    /// One node, directly (a Cluster master for `SCAN`).
    Node(MultiplexedConnection),
}

impl RedisClient {
    pub fn new(config: &RedisConfig) -> Result<Self, RedisConnectError> {
        Self::with_timeout(config, CONNECT_TIMEOUT)
    }

    /// [`RedisClient::new`] with another connect and answer timeout than [`CONNECT_TIMEOUT`]
    /// (the serving layer's reads give up sooner).
    pub fn with_timeout(
        config: &RedisConfig,
        timeout: Duration,
    ) -> Result<Self, RedisConnectError> {
        let endpoint = config.endpoint();
        let url = config
            .connection_url()
            .map_err(|e| RedisConnectError::Config {
                key: "url",
                message: e.to_string(),
            })?;
        let certs = tls_certificates(config)?;
        let bad = |e: redis::RedisError| {
            let (permanent, cause) = describe(&e);
            RedisConnectError::Connect {
                endpoint: endpoint.clone(),
                cause,
                permanent,
            }
        };
        let inner = if config.cluster {
            let settings = ClusterSettings {
                config: config.clone(),
                url: url.clone(),
                timeout,
                certs,
            };
            // Built once here so a malformed setting fails now, not at the first connect.
            settings.client(&[]).map_err(bad)?;
            Inner::Cluster(settings)
        } else {
            let client = match certs {
                Some(c) => redis::Client::build_with_tls(url.as_str(), c),
                None => redis::Client::open(url.as_str()),
            };
            Inner::Single(client.map_err(bad)?)
        };
        Ok(RedisClient {
            endpoint,
            timeout,
            inner,
            config: config.clone(),
        })
    }

    /// `redis.url` without credentials, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Connects and proves it with a `PING`, within twice the timeout: a wrong password, an
    /// untrusted certificate or a TLS port spoken to in plaintext fails here, naming the
    /// endpoint and the cause.
    pub async fn connect(&self) -> Result<RedisConnection, RedisConnectError> {
        let attempt = async {
            let mut con = match &self.inner {
                Inner::Single(c) => {
                    // A direct connection first: the manager retries a refused login with
                    // backoff, and a wrong password must fail at once.
                    let probe_cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout));
                    let mut probe = c
                        .get_multiplexed_async_connection_with_config(&probe_cfg)
                        .await?;
                    redis::cmd("PING").query_async::<()>(&mut probe).await?;
                    let cfg = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    RedisConnection::Single(c.get_connection_manager_with_config(cfg).await?)
                }
                Inner::Cluster(s) => {
                    RedisConnection::Cluster(RepairingCluster::connect(s.clone()).await?)
                }
            };
            redis::cmd("PING").query_async::<()>(&mut con).await?;
            Ok::<_, redis::RedisError>(con)
        };
        match tokio::time::timeout(self.timeout * 2, attempt).await {
            Ok(Ok(con)) => Ok(con),
            Ok(Err(e)) => Err(self.failed(describe(&e))),
            Err(_) => Err(self.failed((
                false,
                format!(
                    "no answer within {:?} (a TLS port spoken to in plaintext, or the reverse?)",
                    self.timeout * 2
                ),
            ))),
        }
    }

    /// A direct connection to every master: the one server, or each master of the Cluster
    /// (found with `CLUSTER NODES`). `SCAN` walks one node's keys, so anything that scans
    /// must scan each of these.
    pub async fn masters(&self) -> Result<Vec<(String, RedisConnection)>, RedisConnectError> {
        let mut con = self.connect().await?;
        let Inner::Cluster(_) = &self.inner else {
            return Ok(vec![(self.endpoint.clone(), con)]);
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut con)
            .await
            .map_err(|e| self.failed(describe(&e)))?;
        let scheme = if self.config.uses_tls() {
            "rediss"
        } else {
            "redis"
        };
        let mut out = Vec::new();
        for addr in cluster_masters(&nodes) {
            let mut node = self.config.clone();
            node.cluster = false;
            node.url = format!("{scheme}://{addr}/0");
            let client = RedisClient::with_timeout(&node, self.timeout)?;
            let Inner::Single(c) = &client.inner else {
                continue;
            };
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout));
            let direct = c
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(|e| client.failed(describe(&e)))?;
            out.push((addr, RedisConnection::Node(direct)));
        }
        if out.is_empty() {
            return Err(self.failed((false, "CLUSTER NODES lists no healthy master".into())));
        }
        Ok(out)
    }

    /// A blocking connection, for the few places that cannot await (a Kafka rebalance
    /// callback).
    pub fn blocking(&self) -> redis::RedisResult<Box<dyn redis::ConnectionLike + Send>> {
        Ok(match &self.inner {
            Inner::Single(c) => Box::new(c.get_connection_with_timeout(self.timeout)?),
            Inner::Cluster(s) => Box::new(s.client(&[])?.get_connection()?),
        })
    }

    fn failed(&self, (permanent, cause): (bool, String)) -> RedisConnectError {
        RedisConnectError::Connect {
            endpoint: self.endpoint.clone(),
            cause,
            permanent,
        }
    }
}

/// The masters' `host:port` in a `CLUSTER NODES` answer (failed ones left out).
fn cluster_masters(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let (_id, addr, flags) = (cols.next()?, cols.next()?, cols.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            let healthy = flags.contains(&"master")
                && !flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "fail?" | "noaddr"));
            healthy.then(|| node_address(addr)).flatten()
        })
        .collect()
}

/// `host:port` of a `CLUSTER NODES` address (`ip:port@cport[,hostname]`); `None` for a node
/// without one (`:0@0`).
fn node_address(addr: &str) -> Option<String> {
    let hostport = addr.split(['@', ',']).next()?;
    (!hostport.starts_with(':')).then(|| hostport.to_string())
}

/// The TLS trust `ca_file` names (`None`: system roots, or no TLS at all).
fn tls_certificates(
    config: &RedisConfig,
) -> Result<Option<redis::TlsCertificates>, RedisConnectError> {
    let Some(path) = config.ca_file.as_deref().filter(|_| config.uses_tls()) else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| RedisConnectError::Config {
        key: "ca_file",
        message: format!("cannot read {path}: {e}"),
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A connection error in words an operator can act on, and whether it is permanent (a
/// credential or certificate: retrying cannot fix it). Redis's own messages never carry the
/// password; the URL (which may) is never part of them.
fn describe(e: &redis::RedisError) -> (bool, String) {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let (permanent, hint) = if ["wrongpass", "noauth", "noperm", "auth"]
        .iter()
        .any(|w| lower.contains(w))
    {
        (
            true,
            "authentication failed (or the ACL user lacks a permission)",
        )
    } else if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("tls")
        || lower.contains("handshake")
    {
        (true, "TLS failed")
    } else if lower.contains("refused") {
        (false, "connection refused")
    } else if lower.contains("reset") || lower.contains("broken pipe") || lower.contains("eof") {
        (
            true,
            "the server closed the connection (a TLS port spoken to in plaintext?)",
        )
    } else {
        (false, "cannot connect")
    };
    (permanent, format!("{hint}: {text}"))
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    let r = c.current().req_packed_command(cmd).await;
                    if let Err(e) = &r {
                        c.after_error(e).await;
                    }
                    r
                })
            }
            RedisConnection::Node(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => {
                // A transaction must stay one request (its keys share a slot by construction).
                let c = c.clone();
                Box::pin(async move {
                    let r = if pipeline.is_transaction() {
                        c.current()
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    } else {
                        let con = c.current();
                        let sends = pipeline.cmd_iter().map(|cmd| {
                            let mut con = con.clone();
                            async move { con.req_packed_command(cmd).await }
                        });
                        futures::future::try_join_all(sends).await
                    };
                    if let Err(e) = &r {
                        c.after_error(e).await;
                    }
                    r
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(_) => 0,
            RedisConnection::Node(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_off_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:17001@27001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:17002@27002 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:17003@27003,host3 master,fail - 0 0 3 connected
d4 127.0.0.1:17004@27004 slave a1 0 0 1 connected
e5 :0@0 master,noaddr - 0 0 0 disconnected
";
        assert_eq!(
            cluster_masters(nodes),
            vec!["127.0.0.1:17001".to_string(), "127.0.0.1:17002".to_string()]
        );
    }

    #[test]
    fn causes_name_the_problem_without_the_url() {
        let e = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGPASS invalid username-password pair",
        ));
        let (permanent, cause) = describe(&e);
        assert!(
            permanent && cause.starts_with("authentication failed"),
            "{cause}"
        );
    }
}
