//! `bench-master`: writes one UTC day of generated events straight into a master dataset on a
//! local directory, laid out exactly as `batch-layer archive` writes it (hour files per
//! partition, committed `_state` files), so the batch recompute can be timed against DuckDB
//! over the very same Parquet files without first pushing millions of events through Kafka.

use clap::Parser;
use tributary_shared::Config;
use tributary_shared::bucket::DAY_MS;

#[derive(Parser)]
struct Args {
    /// Events in the day.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Store directory (created).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Topic name in the layout.
    #[arg(long, default_value = "events")]
    topic: String,
    /// Also write the same events, in order, as JSON lines here (for `speed-layer replay`, so
    /// the speed side of the day is in Redis too: the ledger's cost in `make bench`).
    #[arg(long)]
    jsonl: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let config = Config::from_toml_str_with_env(
        include_str!("../../../infra/tributary.toml"),
        "infra/tributary.toml",
        Vec::new(),
    )?;
    let store = tributary_shared::store::open_store(&tributary_shared::config::StoreConfig {
        url: format!("file://{}", args.dir.canonicalize()?.display()),
        ..Default::default()
    })?;
    // Yesterday, UTC: a whole day, complete.
    let day = (chrono::Utc::now().timestamp_millis() / DAY_MS - 1) * DAY_MS;
    let spec = tributary_it::master::DaySpec {
        day_ms: day,
        events: args.events,
        partitions: args.partitions,
        seed: 4242,
    };
    let written = tributary_it::master::write_day(&store, &config, &args.topic, &spec).await?;
    if let Some(path) = &args.jsonl {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut g = spec.generator();
        for i in 0..spec.events {
            out.write_all(g.event(i).as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    eprintln!(
        "wrote {written} rows of {} into {}",
        tributary_shared::bucket::date_string(day),
        args.dir.display()
    );
    println!("{}", tributary_shared::bucket::date_string(day));
    Ok(())
}
