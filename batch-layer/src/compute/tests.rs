use std::collections::BTreeMap;

use object_store::memory::InMemory;
use object_store::{ObjectStoreExt, PutPayload};
use tributary_shared::config::FieldType;
use tributary_shared::{Config, EventSchema};

use anyhow::Context as _;

use super::*;
use crate::master::{RowBuffer, master_schema};
use crate::snapshot::InputFile;

/// A date whose rows all fail the view's `where` (found by the fault suite: the cube's
/// SQL then named encoded columns the empty result did not have).
#[tokio::test]
async fn a_date_with_no_row_for_the_view_computes_empty_tables() -> anyhow::Result<()> {
    let config = Config::from_toml_str_with_env(
        include_str!("../../../infra/tributary.toml"),
        "t",
        Vec::new(),
    )?;
    let schema = EventSchema::from_config(&config);
    let view = ViewPlan::compile_all(&config, &schema)?
        .into_iter()
        .next()
        .context("a view")?;
    let fields: BTreeMap<String, FieldType> = config.fields.clone();
    let es = EventSchema::new(fields.iter());
    let mut rows = RowBuffer::new(&es);
    let json =
        r#"{"event_id":"a","event_time":1000,"type":"page_view","user_id":"u1","latency_ms":3}"#;
    rows.push(&es.parse(json.as_bytes())?, 0, 0, json);
    let bytes = rows.into_parquet(master_schema(&es))?;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let path = object_store::path::Path::from("master/e/date=1970-01-01/hour=00/p0-0-0.parquet");
    let size = bytes.len() as u64;
    store.put(&path, PutPayload::from(bytes)).await?;
    let scan = ScanStore {
        root: store,
        prefix: String::new(),
    };
    let engine = Engine::local(
        scan,
        master_schema(&es),
        Budget {
            memory_limit: 256 << 20,
            spill_dir: None,
        },
    )?;
    let out = engine
        .compute_date(
            &view,
            &DateInput {
                files: vec![InputFile { path, size }],
            },
        )
        .await?;
    assert_eq!(out.events, 0);
    assert!(out.tables.iter().all(|(_, t)| t.num_rows() == 0));
    Ok(())
}
