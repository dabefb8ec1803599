//! `batch-layer`: the immutable Parquet master dataset and exact recomputed views.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tributary_batch_layer::run::RunRequest;
use tributary_shared::bucket::{TIME_FORMATS, parse_time};
use tributary_shared::cli;

// jemalloc: the engine's hash tables and per-group states, and the archive's per-record
// parsing, allocate and free at high rates on every core (an A/B in docs/benchmarks.md).
// Its build-time options (`oversize_threshold:0`, why) are in `.cargo/config.toml`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Ballista scheduler for `batch.engine = "ballista://…"` (daemon, `[ballista]` section).
    Scheduler,
    /// Ballista executor registered with `ballista.scheduler_url` (daemon).
    Executor {
        /// Flight address HOST:PORT (gRPC on the next port); default `ballista.executor_bind`.
        #[arg(long)]
        bind: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let config = match cli::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let command = args.command;
    let request = match &command {
        Command::Backfill { from, to, view } => match backfill_request(&config, from, to, view) {
            Ok(r) => Some(r),
            Err(msg) => {
                eprintln!("error: {msg}");
                return ExitCode::from(cli::EXIT_CONFIG);
            }
        },
        _ => None,
    };
    cli::run_async(async move {
        match command {
            Command::Archive => {
                tributary_batch_layer::archive(config, cli::shutdown_signal()).await
            }
            Command::Run => tributary_batch_layer::run(config, RunRequest::default()).await,
            Command::Schedule => {
                tributary_batch_layer::schedule(config, cli::shutdown_signal()).await
            }
            Command::Backfill { .. } => {
                tributary_batch_layer::run(config, request.unwrap_or_default()).await
            }
            Command::Scheduler => tributary_batch_layer::scheduler(config).await,
            Command::Executor { bind } => tributary_batch_layer::executor(config, bind).await,
        }
    })
}

/// `--from`/`--to` as RFC 3339 or a date; `--view` must name a configured view.
fn backfill_request(
    config: &tributary_shared::Config,
    from: &str,
    to: &str,
    view: &Option<String>,
) -> Result<RunRequest, String> {
    let parse = |flag: &str, s: &str| {
        parse_time(s).ok_or_else(|| format!("--{flag} {s:?}: expected {TIME_FORMATS}"))
    };
    let from_ms = parse("from", from)?;
    let to_ms = parse("to", to)?;
    if from_ms >= to_ms {
        return Err(format!("--from {from} must be before --to {to}"));
    }
    if let Some(v) = view
        && config.view(v).is_none()
    {
        let known: Vec<&str> = config.views.iter().map(|v| v.name.as_str()).collect();
        return Err(format!(
            "--view {v:?}: no such view (configured: {})",
            known.join(", ")
        ));
    }
    Ok(RunRequest {
        range: Some((from_ms, to_ms)),
        view: view.clone(),
    })
}
