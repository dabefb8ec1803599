//! `speed-layer`: Kafka → Redis real-time aggregates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_shared::cli;

#[derive(Parser)]
#[command(
    name = "speed-layer",
    version,
    about = "Tributary speed layer: real-time aggregates from Kafka into Redis"
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
    /// Consume the events topic and keep every view's aggregates in Redis, exactly once
    /// (daemon; stops cleanly on SIGINT/SIGTERM after flushing).
    Run,
    /// Feed a file of JSON events (one per line, `-` for stdin) through the same pipeline into
    /// Redis, then print a summary; for re-feeding dumps and benchmarking the engine.
    Replay {
        /// The events file (JSON lines).
        #[arg(long)]
        file: PathBuf,
        /// Write invalid lines here with their reason (JSON lines).
        #[arg(long)]
        dlq_file: Option<PathBuf>,
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
            Command::Run => tributary_speed_layer::run(config, cli::shutdown_signal()).await,
            Command::Replay { file, dlq_file } => {
                let summary =
                    tributary_speed_layer::replay::replay(&config, &file, dlq_file).await?;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                Ok(())
            }
        }
    })
}
