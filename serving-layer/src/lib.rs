//! The serving layer: one REST API over the exact batch views and the fresh speed aggregates.
//!
//! - [`query`]: parameters, validated against the view (400s name the parameter);
//! - [`merge`]: per-bucket choice of batch / speed / missing / rebuilding, and `top`, answering
//!   with the types of [`response`];
//! - [`sources`]: the batch reader and a Redis connection that fails fast;
//! - [`points`]: rendered points and their byte-bounded cache;
//! - [`status`]: the `/v1/status` page;
//! - [`api`]: routes, handlers, OpenAPI; [`dashboard`]: the page at `/`;
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod dashboard;
pub mod error;
pub mod merge;
pub mod metrics;
pub mod points;
pub mod query;
pub mod response;
pub mod sources;
pub mod status;

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tributary_shared::Config;

/// Binds `[serving] listen` and serves until `shutdown`; returns the bound address through
/// `bound` (tests listen on port 0).
pub async fn serve(
    config: Config,
    mut shutdown: watch::Receiver<bool>,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let listen = config.serving.listen.clone();
    let app = Arc::new(api::App {
        sources: sources::Sources::new(config)?,
        metrics: metrics::ServingMetrics::new(),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("serving.listen: cannot bind {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, dashboard = %format!("http://{addr}/"), "serving");
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    axum::serve(listener, api::router(app))
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await?;
    tracing::info!("serving stopped");
    Ok(())
}
