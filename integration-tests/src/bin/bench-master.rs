//! `bench-master`: writes one UTC day of generated events straight into a master dataset on a
//! local directory, laid out exactly as `batch-layer archive` writes it (hour files per
//! partition, committed `_state` files), so the batch recompute can be timed against DuckDB
//! over the very same Parquet files without first pushing millions of events through Kafka.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Parser;
use object_store::{ObjectStoreExt, PutPayload};
use tributary_batch_layer::master::{RowBuffer, master_schema};
use tributary_batch_layer::state::{PartitionState, StateStore};
use tributary_it::generator::{Generator, GeneratorOptions};
use tributary_shared::bucket::{DAY_MS, HOUR_MS};
use tributary_shared::layout::paths;
use tributary_shared::{Config, EventSchema};

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
    let schema = EventSchema::from_config(&config);
    let arrow = master_schema(&schema);
    let store = tributary_shared::store::open_store(&tributary_shared::config::StoreConfig {
        url: format!("file://{}", args.dir.canonicalize()?.display()),
        ..Default::default()
    })?;
    // Yesterday, UTC: a whole day, complete.
    let day = (chrono::Utc::now().timestamp_millis() / DAY_MS - 1) * DAY_MS;
    let mut g = Generator::new(GeneratorOptions {
        seed: 4242,
        late: 0.0,
        malformed: 0.0,
        duplicates: 0.01,
        start_ms: day,
        span_ms: DAY_MS,
        count: args.events,
    });
    let mut offsets = vec![0i64; args.partitions as usize];
    let mut max_time = vec![i64::MIN; args.partitions as usize];
    let mut bufs: BTreeMap<(i32, i64), RowBuffer> = BTreeMap::new();
    let mut written = 0u64;
    for i in 0..args.events {
        let line = g.event(i);
        let Ok(ev) = schema.parse(line.as_bytes()) else {
            continue;
        };
        let p = (i % args.partitions as u64) as i32;
        let hour = ev.event_time_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let o = offsets[p as usize];
        offsets[p as usize] += 1;
        max_time[p as usize] = max_time[p as usize].max(ev.event_time_ms);
        let buf = bufs
            .entry((p, hour))
            .or_insert_with(|| RowBuffer::new(&schema));
        buf.push(&ev, p, o, &line);
        if buf.len() >= 250_000 {
            let full = std::mem::replace(buf, RowBuffer::new(&schema));
            written += write(&store, &args.topic, p, hour, full, &arrow).await?;
        }
    }
    for ((p, hour), buf) in bufs {
        if !buf.is_empty() {
            written += write(&store, &args.topic, p, hour, buf, &arrow).await?;
        }
    }
    let states = StateStore::new(store.clone(), &args.topic);
    let lateness = config.speed.allowed_lateness.as_millis() as i64;
    for p in 0..args.partitions {
        let state = PartitionState {
            committed_offset: offsets[p as usize],
            watermark_ms: Some(max_time[p as usize] - lateness),
            max_event_time_ms: Some(max_time[p as usize]),
            high_watermark: Some(offsets[p as usize]),
            last_record_ms: Some(0),
            updated_ms: chrono::Utc::now().timestamp_millis(),
            rows: offsets[p as usize] as u64,
            ..Default::default()
        };
        states.save(p, &state, None).await.context("write state")?;
    }
    eprintln!(
        "wrote {written} rows of {} into {}",
        tributary_shared::bucket::date_string(day),
        args.dir.display()
    );
    println!("{}", tributary_shared::bucket::date_string(day));
    Ok(())
}

async fn write(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    topic: &str,
    p: i32,
    hour: i64,
    buf: RowBuffer,
    arrow: &arrow::datatypes::SchemaRef,
) -> anyhow::Result<u64> {
    let rows = buf.len() as u64;
    let (first, last) = (buf.first_offset, buf.last_offset);
    let bytes = buf.into_parquet(arrow.clone())?;
    store
        .put(
            &paths::master_file(topic, hour, p, first, last),
            PutPayload::from(bytes),
        )
        .await?;
    Ok(rows)
}
