//! Logging set-up shared by the three binaries.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber: `RUST_LOG` filters (default `info`), `TRIBUTARY_LOG_FORMAT=json`
/// switches to JSON lines for log shippers.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        // Colours only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::stderr().is_terminal());
    let json = std::env::var("TRIBUTARY_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A second initialisation (tests) is harmless, so its error is ignored.
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
