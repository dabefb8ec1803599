//! `speed-layer`: Kafka → Redis real-time aggregates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_shared::cli;

// jemalloc's per-thread caches: every record parsed allocates and frees its event's strings
// and maps, where glibc's allocator spent ~22 % of `speed-layer replay`'s CPU (malloc, free,
// consolidation) in a `perf` profile of the shipped view over 2M events.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// The dead-letter topic: drain it to a file, replay a fixed file onto the events topic.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Drop every view's Redis state and restart it from Kafka at a time: after Redis lost
    /// its data, or to redo a stretch. Stop `speed-layer run` first.
    Reset {
        /// RFC 3339 time or date; events from then on are re-applied on the next `run`.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Save the records in `<topic>.dlq` to a JSON-lines file (payload, error, origin) and
    /// mark them drained.
    Drain {
        #[arg(long)]
        out: PathBuf,
        /// Stop after no record came for this long.
        #[arg(long, default_value = "5s")]
        idle: humantime::Duration,
    },
    /// Produce the payloads of a drained (and fixed) file back onto the events topic.
    Replay {
        #[arg(long)]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let config = match cli::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let reset_to = match &args.command {
        Command::Reset { to } => match tributary_shared::bucket::parse_time(to) {
            Some(t) => Some(t),
            None => {
                eprintln!(
                    "error: --to {to:?}: expected {}",
                    tributary_shared::bucket::TIME_FORMATS
                );
                return ExitCode::from(cli::EXIT_CONFIG);
            }
        },
        _ => None,
    };
    cli::run_async(async move {
        match args.command {
            Command::Dlq { action } => {
                match action {
                    DlqAction::Drain { out, idle } => {
                        let n =
                            tributary_speed_layer::dlq::drain(&config, &out, idle.into()).await?;
                        println!(
                            "drained {n} record(s) from {} into {}",
                            config.source.dlq_topic(),
                            out.display()
                        );
                    }
                    DlqAction::Replay { file } => {
                        let n = tributary_speed_layer::dlq::replay(&config, &file).await?;
                        println!(
                            "produced {n} record(s) from {} to {}",
                            file.display(),
                            config.source.topic
                        );
                    }
                }
                Ok(())
            }
            Command::Reset { .. } => {
                let summary =
                    tributary_speed_layer::reset::reset(&config, reset_to.unwrap_or_default())
                        .await?;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                Ok(())
            }
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
