//! The serving layer: one REST API over the exact batch views and the fresh speed aggregates.
//!
//! - [`query`]: parameters, validated against the view (400s name the parameter);
//! - [`merge`]: per-bucket choice of batch / speed / missing / rebuilding, and `top`, answering
//!   with the types of [`response`];
//! - [`sources`]: the batch reader and a Redis connection that fails fast;
//! - [`points`]: rendered points and their byte-bounded cache;
//! - [`status`]: the `/v1/status` page; [`accuracy`]: the speed accuracy ledger's endpoint
//!   and warnings;
//! - [`api`]: routes and handlers; [`openapi`]: the document built from the configuration;
//!   [`dashboard`]: the page at `/`;
//! - [`access`]: API keys and CORS; [`tls`]: HTTPS;
//! - [`metrics`]: Prometheus metrics.

pub mod access;
pub mod accuracy;
pub mod answers;
pub mod api;
pub mod dashboard;
pub mod error;
pub mod merge;
pub mod metrics;
pub mod openapi;
pub mod points;
pub mod query;
pub mod response;
pub mod single_flight;
pub mod sources;
pub mod status;
pub mod tls;

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tributary_shared::Config;

/// Binds `[serving] listen` and serves until `shutdown` (HTTPS when `tls_cert`/`tls_key` are
/// set); returns the bound address through `bound` (tests listen on port 0).
pub async fn serve(
    config: Config,
    mut shutdown: watch::Receiver<bool>,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let listen = config.serving.listen.clone();
    // Certificates are read before binding: a bad file fails the start, not the first client.
    let tls = match (&config.serving.tls_cert, &config.serving.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert.as_ref(), key.as_ref())?),
        _ => None,
    };
    let cors = access::cors_layer(&config.serving.cors_origins)?;
    let keys = access::ApiKeys::new(&config.serving.api_keys);
    let sources = sources::Sources::new(config)?;
    sources.check_redis().await?;
    let openapi = openapi::document(&sources.config, &sources.views, !keys.is_open());
    let app = Arc::new(api::App {
        keys,
        openapi,
        sources,
        metrics: metrics::ServingMetrics::new(),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("serving.listen: cannot bind {listen}"))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        %addr,
        scheme,
        api_keys = !app.keys.is_open(),
        dashboard = %format!("{scheme}://{addr}/"),
        "serving"
    );
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    let router = api::router(app, cors);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    match tls {
        Some(acceptor) => {
            axum::serve(tls::TlsListener::new(listener, acceptor), router)
                .with_graceful_shutdown(stop)
                .await?
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await?
        }
    }
    tracing::info!("serving stopped");
    Ok(())
}
