//! The rollup ([`view_sql`]) against the cube over the events ([`cube_sql`]): the same view
//! files, to the byte, for every kind of measure, with duplicates, nulls, dates before 1970,
//! no dimension and four, and a memory budget small enough that the queries spill.

use std::sync::Arc;

use anyhow::Context as _;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tributary_shared::view::ViewPlan;
use tributary_shared::{Config, EventSchema};

use super::{cube_sql, view_sql};
use crate::budget::Budget;
use crate::compute::{DateOutput, Engine, ScanStore};
use crate::master::{RowBuffer, master_schema};
use crate::snapshot::{DateInput, InputFile};

const CONFIG: &str = r#"
[source]
brokers = "127.0.0.1:1"
topic = "events"
[redis]
url = "redis://127.0.0.1:1/0"
[store]
url = "memory:///"
[fields]
country = "string"
device = "string"
os = "string"
plan = "string"
user_id = "string"
amount = "float"
latency_ms = "float"
items = "int"

[[views]]
name = "four_dims"
where = { type = "checkout" }
dimensions = ["country", "device", "os", "plan"]
granularities = ["minute", "hour", "day"]
measures = [
  { name = "events", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "min_amount", agg = "min", field = "amount" },
  { name = "max_amount", agg = "max", field = "amount" },
  { name = "avg_amount", agg = "avg", field = "amount" },
  { name = "avg_items", agg = "avg", field = "items" },
  { name = "buyers", agg = "count_distinct", field = "user_id" },
  { name = "p95_latency", agg = "quantile", field = "latency_ms", q = 0.95 },
  { name = "median_amount", agg = "quantile", field = "amount", q = 0.5 },
]

[[views]]
name = "no_dims"
dimensions = []
granularities = ["hour", "minute"]
measures = [
  { name = "events", agg = "count" },
  { name = "items", agg = "sum", field = "items" },
  { name = "min_latency", agg = "min", field = "latency_ms" },
  { name = "avg_latency", agg = "avg", field = "latency_ms" },
  { name = "users", agg = "count_distinct", field = "user_id" },
  { name = "p99_latency", agg = "quantile", field = "latency_ms", q = 0.99 },
]
"#;

/// `n` events over two days around the epoch (half before 1970), in `files` master files,
/// with some fields missing and some events sent twice (once with other values).
fn master_files(schema: &EventSchema, n: usize, files: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(7);
    let pick = |rng: &mut StdRng, values: &[&'static str]| {
        (rng.random_range(0..10) > 0).then(|| values[rng.random_range(0..values.len())])
    };
    let mut out = Vec::new();
    for f in 0..files {
        let mut rows = RowBuffer::new(schema);
        for i in (f..n).step_by(files) {
            // Every 50th event is a resend of an earlier one, a few with other values.
            let id = if i % 50 == 49 { i - 7 } else { i };
            // The parser takes no time before 1970; the master (and the query) would.
            let event_time = rng.random_range(-86_400_000i64..86_400_000);
            let mut event = serde_json::json!({
                "event_id": format!("e{id}"),
                "event_time": event_time + 86_400_000,
                "type": if rng.random_range(0..4) == 0 { "page_view" } else { "checkout" },
            });
            let fields = [
                (
                    "country",
                    pick(&mut rng, &["de", "fr", "us", "jp", "br"]).map(Into::into),
                ),
                (
                    "device",
                    pick(&mut rng, &["ios", "android", "web"]).map(Into::into),
                ),
                ("os", pick(&mut rng, &["a", "b"]).map(Into::into)),
                (
                    "plan",
                    pick(&mut rng, &["free", "pro", "team"]).map(Into::into),
                ),
                (
                    "user_id",
                    Some(format!("u{}", rng.random_range(0..3000)).into()),
                ),
                (
                    "amount",
                    (rng.random_range(0..8) > 0)
                        .then(|| (rng.random_range(-1e6..1e7f64) / 7.0).into()),
                ),
                (
                    "latency_ms",
                    (rng.random_range(0..8) > 0).then(|| rng.random_range(0.0..900.0f64).into()),
                ),
                ("items", Some(rng.random_range(0..40i64).into())),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    event[name] = value;
                }
            }
            let json = event.to_string();
            let mut parsed = schema.parse(json.as_bytes())?;
            parsed.event_time_ms = event_time;
            rows.push(&parsed, f as i32, i as i64, &json);
        }
        out.push(rows.into_parquet(master_schema(schema))?);
    }
    Ok(out)
}

/// A granularity's table as the view file's bytes.
fn file_bytes(batch: &arrow::record_batch::RecordBatch) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), None)?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}

async fn compute(
    schema: &EventSchema,
    store: Arc<dyn ObjectStore>,
    input: &DateInput,
    view: &ViewPlan,
    memory_limit: u64,
    sql: fn(&ViewPlan, &str) -> String,
) -> anyhow::Result<DateOutput> {
    let scan = ScanStore {
        root: store,
        prefix: String::new(),
    };
    let budget = Budget {
        memory_limit,
        spill_dir: None,
    };
    let engine = Engine::local(scan, master_schema(schema), budget)?;
    Ok(engine.compute_date_with(view, input, sql).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_writes_the_cubes_files_to_the_byte() -> anyhow::Result<()> {
    let config = Config::from_toml_str_with_env(CONFIG, "test.toml", Vec::new())?;
    let schema = EventSchema::from_config(&config);
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut input = DateInput { files: Vec::new() };
    for (i, bytes) in master_files(&schema, 60_000, 3)?.into_iter().enumerate() {
        let path = Path::from(format!("master/e/date=1970-01-01/hour=00/p{i}-0-0.parquet"));
        let size = bytes.len() as u64;
        store.put(&path, PutPayload::from(bytes)).await?;
        input.files.push(InputFile { path, size });
    }
    for view in ViewPlan::compile_all(&config, &schema)? {
        for memory_limit in [512 << 20, 64 << 20] {
            let at = format!("view {}, {} MiB", view.name, memory_limit >> 20);
            let cube = compute(
                &schema,
                store.clone(),
                &input,
                &view,
                memory_limit,
                cube_sql,
            )
            .await
            .with_context(|| format!("the cube, {at}"))?;
            let rollup = compute(
                &schema,
                store.clone(),
                &input,
                &view,
                memory_limit,
                view_sql,
            )
            .await
            .with_context(|| format!("the rollup, {at}"))?;
            eprintln!(
                "{at}: spilled {} / {} bytes",
                cube.spilled_bytes, rollup.spilled_bytes
            );
            assert!(cube.events > 20_000, "{at}: {} events", cube.events);
            assert_eq!(rollup.events, cube.events, "{at}");
            for ((g, want), (_, got)) in cube.tables.iter().zip(&rollup.tables) {
                assert!(want.num_rows() > 10, "{at}, {g}: {} rows", want.num_rows());
                assert_eq!(got, want, "{at}, {g}");
                assert_eq!(file_bytes(got)?, file_bytes(want)?, "{at}, {g}");
            }
        }
    }
    Ok(())
}

/// The shipped view's rollup fits the default budget on the benchmark's 10M-event day, and
/// not a 2 GiB budget on a 50M-event day (which then runs the plain cube).
#[test]
fn the_rollup_runs_where_its_states_fit() -> anyhow::Result<()> {
    let config = Config::from_toml_str_with_env(
        include_str!("../../../infra/tributary.toml"),
        "tributary.toml",
        Vec::new(),
    )?;
    let schema = EventSchema::from_config(&config);
    let view = ViewPlan::compile_all(&config, &schema)?
        .into_iter()
        .next()
        .context("a view")?;
    assert!(super::rollup_fits(&view, 10_000_000, 12 << 30));
    assert!(!super::rollup_fits(&view, 50_000_000, 2 << 30));
    assert!(!super::rollup_fits(&view, 10_000_000, 2 << 30));
    Ok(())
}
