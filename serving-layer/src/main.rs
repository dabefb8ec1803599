//! `serving-layer`: the REST API and dashboard merging batch and speed views.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_shared::cli;

// jemalloc's per-thread caches: the server allocates and frees a response-sized buffer and
// many small points per request on every worker thread, where glibc's arenas spent ~27 % of
// the server's CPU (allocation, consolidation, arena locks) in a `perf` profile of `series`
// at 64 clients.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "serving-layer",
    version,
    about = "Tributary serving layer: REST API merging batch and speed views"
)]
struct Cli {
    /// Config file (tributary.toml); env TRIBUTARY__SECTION__KEY overrides any key.
    #[arg(long, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API, /metrics and the dashboard on `[serving] listen` (daemon).
    Serve,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let config = match cli::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::run_async(async move {
        match args.command {
            Command::Serve => {
                tributary_serving_layer::serve(config, cli::shutdown_signal(), None).await
            }
        }
    })
}
