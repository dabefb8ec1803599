//! `batch-layer`: the immutable Parquet master dataset and exact recomputed views.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_shared::cli;

#[derive(Parser)]
#[command(
    name = "batch-layer",
    version,
    about = "Tributary batch layer: Parquet master dataset and exact batch views"
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
    /// Consume the events topic and append the Parquet master dataset (daemon).
    Archive,
    /// Recompute the changed dates of every view once, then exit.
    Run,
    /// Run `run` on the config's cron schedule (daemon).
    Schedule,
    /// Recompute a time range on demand.
    Backfill {
        /// Start (RFC 3339 or YYYY-MM-DD), inclusive.
        #[arg(long)]
        from: String,
        /// End (RFC 3339 or YYYY-MM-DD), exclusive.
        #[arg(long)]
        to: String,
        /// Only this view.
        #[arg(long)]
        view: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let config = match cli::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::run_async(async move {
        match args.command {
            Command::Archive => {
                tributary_batch_layer::archive(config, cli::shutdown_signal()).await
            }
            Command::Run => tributary_batch_layer::not_built_yet(&config, "run"),
            Command::Schedule => tributary_batch_layer::not_built_yet(&config, "schedule"),
            Command::Backfill { .. } => tributary_batch_layer::not_built_yet(&config, "backfill"),
        }
    })
}
