//! Schema evolution: dates archived before a field was declared read it as null, so a measure
//! added on it computes over them (null on the old dates, exact on the new); changing a
//! declared field's type is refused at start (exit 2) naming the field and the views.

use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tributary_batch_layer::master::{RowBuffer, master_schema};
use tributary_batch_layer::state::{PartitionState, StateStore};
use tributary_it::*;
use tributary_shared::bucket::{DAY_MS, HOUR_MS, date_string};
use tributary_shared::layout::paths;
use tributary_shared::{Config, EventSchema};

use super::view_contents;

fn config(url: &str, fields: &str, measures: &str) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[source]
topic = "evolve"
[store]
url = "{url}"
[batch]
idle_timeout = "1s"
metrics_listen = "127.0.0.1:0"
[fields]
country = "string"
{fields}
[[views]]
name = "orders"
dimensions = ["country"]
granularities = ["day"]
measures = [{{ name = "events", agg = "count" }}{measures}]
"#
    );
    Config::from_toml_str_with_env(&text, "evolution test", Vec::new()).context("config")
}

/// One master file of `events` (JSON lines) in partition 0 of `day`, committed up to `offset`.
async fn archive(
    store: &Arc<dyn ObjectStore>,
    config: &Config,
    day: i64,
    first: i64,
    events: &[String],
) -> anyhow::Result<i64> {
    let schema = EventSchema::from_config(config);
    let mut rows = RowBuffer::new(&schema);
    for (i, json) in events.iter().enumerate() {
        rows.push(&schema.parse(json.as_bytes())?, 0, first + i as i64, json);
    }
    let last = first + events.len() as i64 - 1;
    let bytes = rows.into_parquet(master_schema(&schema))?;
    store
        .put(
            &paths::master_file("evolve", day, 0, first, last),
            PutPayload::from(bytes),
        )
        .await?;
    let states = StateStore::new(store.clone(), "evolve");
    let previous = states.load(0).await?.map(|(_, v)| v);
    let end = day + DAY_MS - 1;
    let state = PartitionState {
        committed_offset: last + 1,
        watermark_ms: Some(end),
        max_event_time_ms: Some(end),
        high_watermark: Some(last + 1),
        last_record_ms: Some(0),
        updated_ms: now_ms(),
        rows: (last + 1) as u64,
        ..Default::default()
    };
    states.save(0, &state, previous).await?;
    Ok(last + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_added_later_is_null_on_old_dates_and_a_type_change_is_refused()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().display());
    let d1 = (now_ms() / DAY_MS - 3) * DAY_MS;
    let d2 = d1 + DAY_MS;
    let before = config(&url, "", "")?;
    let store = open(&before.store)?;
    let old: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"event_id":"a{i}","event_time":{},"type":"order","country":"c{}","discount":2.5}}"#,
                d1 + i * HOUR_MS / 2,
                i % 2
            )
        })
        .collect();
    let next = archive(&store, &before, d1, 0, &old).await?;
    let (code, out) = batch_cli(&before, &["run"]).await?;
    assert_eq!(code, 0, "{out}");

    // `discount` declared now, with a sum and a distinct count on it; day 2 carries it.
    let fields = r#"discount = "float""#;
    let measures = r#", { name = "discounts", agg = "sum", field = "discount" }, { name = "discount_values", agg = "count_distinct", field = "discount" }"#;
    let after = config(&url, fields, measures)?;
    let new: Vec<String> = (0..30)
        .map(|i| {
            format!(
                r#"{{"event_id":"b{i}","event_time":{},"type":"order","country":"c0","discount":{}}}"#,
                d2 + i * HOUR_MS / 2,
                i % 3
            )
        })
        .collect();
    archive(&store, &after, d2, next, &new).await?;
    let (code, out) = batch_cli(&after, &["run"]).await?;
    assert_eq!(code, 0, "a measure on a field the old files lack: {out}");
    let (manifest, files) = view_contents(&store, "orders").await?;
    assert_eq!(manifest.dates.len(), 2, "both dates recomputed");
    for (date, want_sum, want_distinct, want_events) in [
        (date_string(d1), None, 0, 40),
        (
            date_string(d2),
            Some((0..30).map(|i| (i % 3) as f64).sum::<f64>()),
            3,
            30,
        ),
    ] {
        let batches = files
            .get(&(date.clone(), "day".to_string()))
            .with_context(|| format!("day file of {date}"))?;
        let mut found = false;
        for b in batches {
            let gset = b
                .column_by_name("gset")
                .context("gset")?
                .as_primitive::<Int32Type>();
            let events = b
                .column_by_name("m:events")
                .context("events")?
                .as_primitive::<Int64Type>();
            let sum = b
                .column_by_name("m:discounts")
                .context("sum")?
                .as_primitive::<Float64Type>();
            let distinct = b
                .column_by_name("m:discount_values")
                .context("distinct")?
                .as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                if gset.value(i) != 0 {
                    continue;
                }
                found = true;
                assert_eq!(events.value(i), want_events, "{date} events");
                assert_eq!(
                    sum.is_valid(i).then(|| sum.value(i)),
                    want_sum,
                    "{date} sum"
                );
                assert_eq!(distinct.value(i), want_distinct, "{date} distinct");
            }
        }
        assert!(found, "{date} has its total row");
    }

    // discount float → string: refused at start, exit 2, naming the field and the view.
    // (A sum needs a number: the view keeps only its distinct count of the field.)
    let changed = config(
        &url,
        r#"discount = "string""#,
        r#", { name = "discount_values", agg = "count_distinct", field = "discount" }"#,
    )?;
    let (code, out) = batch_cli(&changed, &["run"]).await?;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("fields.discount") && out.contains("orders") && out.contains("float"),
        "{out}"
    );
    // The same change under a new view name is accepted.
    let renamed = Config {
        views: changed
            .views
            .iter()
            .cloned()
            .map(|mut v| {
                v.name = "orders_v2".into();
                v
            })
            .collect(),
        ..changed.clone()
    };
    let (code, out) = batch_cli(&renamed, &["run"]).await?;
    assert_eq!(code, 0, "a renamed view starts afresh: {out}");
    Ok(())
}
