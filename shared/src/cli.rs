//! What the three binaries share: config loading with exit code 2, logging, a runtime, and
//! the shutdown signal.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use tokio::sync::watch;

use crate::config::{CONFIG_PATH_ENV, Config};

/// Exit code for bad config or arguments.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for a runtime failure.
pub const EXIT_RUNTIME: u8 = 1;

/// Sets up logging and loads the config; on error prints it (naming the key) and returns the
/// exit code to use.
pub fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    crate::telemetry::init_tracing();
    if path.is_none() {
        tracing::warn!("no --config and no {CONFIG_PATH_ENV}: using built-in defaults");
    }
    Config::load(path).map_err(|e| {
        eprintln!("error: invalid configuration: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// A config that loads but that what already exists refuses (a view's field changed type, say):
/// found at start once the store is read, it exits with [`EXIT_CONFIG`] like a bad key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigRefused(pub String);

/// Runs the binary's main future on a multi-threaded runtime; errors print with their causes
/// and exit 1 ([`EXIT_CONFIG`] for a [`ConfigRefused`]).
pub fn run_async<F>(fut: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigRefused>().is_some() => {
            tracing::error!(error = format!("{e:#}"), "config refused");
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed");
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// A receiver that turns true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    rx
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
