//! The small HTTP server each daemon exposes: `/metrics` (Prometheus text) and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;

/// Renders the current metrics as Prometheus text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `listen` and serves until the process ends; returns the bound address (port 0 picks
/// a free one).
pub async fn serve(listen: SocketAddr, render: Render) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(addr)
}

/// [`serve`] on a config value, naming the config `key` when it is not `host:port` or cannot
/// be bound; logs the bound address.
pub async fn serve_config(key: &str, listen: &str, render: Render) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("{key}: {listen:?} is not host:port"))?;
    let bound = serve(addr, render)
        .await
        .with_context(|| format!("{key}: cannot bind {addr}"))?;
    tracing::info!(%bound, "metrics listening");
    Ok(bound)
}
