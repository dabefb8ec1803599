//! A Redis Cluster connection that repairs its view of the cluster after a failover.
//!
//! The redis crate's cluster client refreshes its slot map when a node answers `MOVED`, or
//! once when a connection drops. A master killed outright is noticed at once, before its
//! replica is promoted (a few seconds later), so that one refresh still maps the dead
//! master's slots to it; nothing answers `MOVED` for them afterwards and every request to
//! those slots times out for good. So after a connection-level error this wrapper opens a
//! fresh connection from every node it knows (at most once a second), which reads the slot
//! map again; callers retry as they do for any Redis error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, RedisResult};

use crate::config::RedisConfig;

/// How often a broken view of the cluster may be rebuilt.
const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// A cheap clone; every clone sees the repaired connection.
#[derive(Clone)]
pub struct RepairingCluster {
    con: Arc<Mutex<ClusterConnection>>,
    repair: Arc<Repair>,
}

struct Repair {
    settings: ClusterSettings,
    /// Every node address the cluster reported (masters and replicas): a fresh connection
    /// starts from any of them that answers.
    nodes: Mutex<Vec<String>>,
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// What a cluster client is built with, besides its first nodes.
#[derive(Clone)]
pub(super) struct ClusterSettings {
    pub config: RedisConfig,
    pub url: String,
    pub timeout: Duration,
    pub certs: Option<redis::TlsCertificates>,
}

impl ClusterSettings {
    /// A client starting from `nodes` (`host:port`), or from `url` when none is known.
    pub fn client(&self, nodes: &[String]) -> RedisResult<ClusterClient> {
        let scheme = if self.config.uses_tls() {
            "rediss"
        } else {
            "redis"
        };
        let initial: Vec<String> = if nodes.is_empty() {
            vec![self.url.clone()]
        } else {
            nodes.iter().map(|n| format!("{scheme}://{n}")).collect()
        };
        let mut b = ClusterClientBuilder::new(initial)
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout);
        if let Some(u) = &self.config.username {
            b = b.username(u);
        }
        if let Some(p) = &self.config.password {
            b = b.password(p.expose());
        }
        if let Some(c) = &self.certs {
            b = b.certs(c.clone());
        }
        b.build()
    }
}

impl RepairingCluster {
    pub(super) async fn connect(settings: ClusterSettings) -> RedisResult<RepairingCluster> {
        let mut con = settings.client(&[])?.get_async_connection().await?;
        let nodes = all_nodes(&mut con).await.unwrap_or_default();
        Ok(RepairingCluster {
            con: Arc::new(Mutex::new(con)),
            repair: Arc::new(Repair {
                settings,
                nodes: Mutex::new(nodes),
                last: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The connection to send on now.
    pub fn current(&self) -> ClusterConnection {
        match self.con.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Called with every error a request met: rebuilds the connection when the error says a
    /// node is gone (not for answers such as a script error).
    pub async fn after_error(&self, e: &RedisError) {
        let broken = e.is_timeout()
            || e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == redis::ErrorKind::ClusterConnectionNotFound;
        if !broken {
            return;
        }
        let mut last = self.repair.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < REPAIR_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let nodes = self
            .repair
            .nodes
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default();
        let fresh = async {
            let mut con = self
                .repair
                .settings
                .client(&nodes)?
                .get_async_connection()
                .await?;
            let nodes = all_nodes(&mut con).await?;
            Ok::<_, RedisError>((con, nodes))
        };
        match tokio::time::timeout(self.repair.settings.timeout * 2, fresh).await {
            Ok(Ok((con, nodes))) => {
                tracing::warn!(error = %e, nodes = nodes.len(), "redis cluster: reconnected and re-read the slot map");
                if let Ok(mut c) = self.con.lock() {
                    *c = con;
                }
                if let Ok(mut n) = self.repair.nodes.lock()
                    && !nodes.is_empty()
                {
                    *n = nodes;
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "redis cluster: cannot reconnect yet");
            }
            Err(_) => tracing::warn!("redis cluster: reconnect timed out"),
        }
    }
}

/// Every node's `host:port` in `CLUSTER NODES` (masters and replicas, failed ones too: a
/// failed master comes back as a replica).
async fn all_nodes(con: &mut ClusterConnection) -> RedisResult<Vec<String>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(con).await?;
    Ok(text
        .lines()
        .filter_map(|l| super::node_address(l.split_whitespace().nth(1)?))
        .collect())
}
