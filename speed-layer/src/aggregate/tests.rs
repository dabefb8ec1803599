use tributary_shared::{Config, Granularity};

use super::*;

const CONFIG: &str = r#"
[fields]
country = "string"
amount = "float"
user_id = "string"
latency_ms = "float"

[[views]]
name = "checkouts"
where = { type = "checkout" }
dimensions = ["country"]
granularities = ["minute", "hour"]
measures = [
  { name = "events", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "max_amount", agg = "max", field = "amount" },
  { name = "avg_amount", agg = "avg", field = "amount" },
  { name = "buyers", agg = "count_distinct", field = "user_id" },
  { name = "p95", agg = "quantile", field = "latency_ms", q = 0.95 },
]

[[views]]
name = "all_events"
dimensions = ["type"]
granularities = ["minute"]
measures = [{ name = "events", agg = "count" }]
"#;

pub(crate) const MIN: i64 = 60_000;
const LATENESS: i64 = 5 * MIN;

/// Also the replay tests' pipeline.
pub(crate) fn pipeline() -> Pipeline {
    let config = Config::from_toml_str_with_env(CONFIG, "test", Vec::new()).expect("valid config");
    let schema = EventSchema::from_config(&config);
    let views = ViewPlan::compile_all(&config, &schema).expect("plan");
    Pipeline::new(schema, views, LATENESS, MIN)
}

fn ev(id: u32, t: i64, ty: &str, country: &str, amount: f64, user: &str) -> Vec<u8> {
    format!(
        r#"{{"event_id":"e{id}","event_time":{t},"type":"{ty}","country":"{country}","amount":{amount},"user_id":"{user}","latency_ms":{}}}"#,
        100 + id
    )
    .into_bytes()
}

#[test]
fn aggregates_per_bucket_group_and_view() {
    let mut p = pipeline();
    let t0 = 1_000 * MIN;
    let now = t0 + 10 * MIN;
    let inputs = [
        ev(1, t0, "checkout", "DE", 10.0, "u1"),
        ev(2, t0 + 1_000, "checkout", "DE", 5.0, "u1"),
        ev(3, t0 + 2_000, "checkout", "FR", 7.5, "u2"),
        ev(4, t0 + MIN, "checkout", "DE", 1.0, "u3"),
        ev(5, t0 + 3_000, "view", "DE", 0.0, "u4"),
    ];
    for (i, e) in inputs.iter().enumerate() {
        assert!(matches!(p.process(0, i as i64, e, now), Outcome::Processed));
    }
    assert_eq!(p.pending(), 5);
    let flush = p.take_flush().expect("something to flush");
    assert_eq!(flush.records, 5);
    assert_eq!(flush.positions, vec![(0, 5)]);
    let co = &flush.views[0].data;
    assert_eq!(co.applied, 4);
    let de = co
        .groups
        .iter()
        .position(|g| g == r#"["DE"]"#)
        .expect("DE group") as u32;
    let cell = &co.cells[&(Granularity::Minute, t0, de)];
    assert_eq!(cell.count, 2);
    assert_eq!(
        cell.numeric[0],
        NumAcc {
            sum: 15.0,
            n: 2,
            min: 5.0,
            max: 10.0
        }
    );
    assert_eq!(cell.distinct[0].len(), 1);
    let hour = Granularity::Hour.floor(t0);
    assert_eq!(co.cells[&(Granularity::Hour, hour, de)].count, 3);
    assert_eq!(
        co.cells[&(Granularity::Hour, hour, de)].distinct[0].len(),
        2
    );
    // The second view sees every type.
    let all = &flush.views[1].data;
    assert_eq!(all.applied, 5);
    assert_eq!(all.groups.len(), 2);
    // Offsets: every view moves partition 0 to 5 from nothing.
    assert_eq!(flush.views[0].offsets.len(), 1);
    assert_eq!(flush.views[0].offsets[0].0, 0);
    assert_eq!(flush.views[0].offsets[0].1, None);
    assert_eq!(flush.views[0].offsets[0].2.next_offset, 5);
    assert!(p.take_flush().is_none());
}

#[test]
fn late_events_are_counted_not_applied_and_invalid_ones_reported() {
    let mut p = pipeline();
    let t0 = 1_000 * MIN;
    let now = t0;
    assert!(matches!(
        p.process(0, 0, &ev(1, t0, "checkout", "DE", 1.0, "u"), now),
        Outcome::Processed
    ));
    // Exactly at the watermark is on time; one ms behind is late.
    assert!(matches!(
        p.process(0, 1, &ev(2, t0 - LATENESS, "checkout", "DE", 1.0, "u"), now),
        Outcome::Processed
    ));
    assert!(matches!(
        p.process(
            0,
            2,
            &ev(3, t0 - LATENESS - 1, "checkout", "DE", 1.0, "u"),
            now
        ),
        Outcome::Processed
    ));
    // Too far in the future, and malformed.
    assert!(matches!(
        p.process(0, 3, &ev(4, now + MIN + 1, "checkout", "DE", 1.0, "u"), now),
        Outcome::Invalid(EventError::TooFarInFuture { .. })
    ));
    assert!(matches!(
        p.process(0, 4, b"{oops", now),
        Outcome::Invalid(EventError::NotJson(_))
    ));
    let flush = p.take_flush().expect("flush");
    assert_eq!(flush.records, 5);
    assert_eq!(flush.views[0].data.applied, 2);
    assert_eq!(flush.views[0].data.late_dropped, 1);
    // Invalid records still advance the offsets: they are in the DLQ, not to be re-read.
    assert_eq!(flush.views[0].offsets[0].2.next_offset, 5);
}

#[test]
fn restored_progress_skips_applied_offsets_and_keeps_the_watermark() {
    let mut p = pipeline();
    let t0 = 1_000 * MIN;
    // View 0 applied up to offset 10, view 1 only up to 5 (a crash between their scripts).
    let mut restored = HashMap::new();
    restored.insert(
        0,
        PartitionProgress::new(vec![
            Some(Stored {
                next_offset: 10,
                max_event_time_ms: t0,
            }),
            Some(Stored {
                next_offset: 5,
                max_event_time_ms: t0,
            }),
        ]),
    );
    p.reset(restored);
    assert!(matches!(
        p.process(0, 4, &ev(1, t0, "checkout", "DE", 1.0, "u"), t0),
        Outcome::AlreadyApplied
    ));
    assert!(matches!(
        p.process(0, 7, &ev(2, t0, "checkout", "DE", 1.0, "u"), t0),
        Outcome::Processed
    ));
    // Late against the restored watermark.
    assert!(matches!(
        p.process(
            0,
            12,
            &ev(3, t0 - LATENESS - 1, "checkout", "DE", 1.0, "u"),
            t0
        ),
        Outcome::Processed
    ));
    let flush = p.take_flush().expect("flush");
    assert_eq!(
        flush.views[0].data.applied, 0,
        "offset 7 was already applied for view 0"
    );
    assert_eq!(flush.views[0].data.late_dropped, 1);
    assert_eq!(
        flush.views[1].data.applied, 1,
        "view 1 still needed offset 7"
    );
    assert_eq!(flush.views[1].data.late_dropped, 1);
    let (_, expected, new) = flush.views[0].offsets[0];
    assert_eq!(expected.map(|s| s.next_offset), Some(10));
    assert_eq!(new.next_offset, 13);
}

#[test]
fn dedup_sets_are_kept_for_the_retention_and_dropped_when_the_watermark_passes_them() {
    let window = 10 * MIN;
    let retention = 48 * 60 * MIN;
    let mut p = pipeline().with_dedup_window(window, retention);
    // Events an hour old or more: their ids must not expire by the clock (a backfill).
    let t0 = 1_000 * window;
    let now = t0 + 2 * 60 * MIN;
    let first = ev(1, t0 + 1_000, "checkout", "DE", 1.0, "u1");
    assert!(matches!(p.process(0, 0, &first, now), Outcome::Processed));
    assert!(matches!(p.process(0, 1, &first, now), Outcome::Processed));
    let flush = p.take_flush().expect("a flush");
    let co = &flush.views[0];
    assert_eq!((co.data.applied, co.data.duplicates), (1, 1));
    assert_eq!(co.dedup.len(), 1);
    let (partition, slot, expire_at, ids) = &co.dedup[0];
    assert_eq!((*partition, *slot, ids.len()), (0, 1_000, 1));
    assert_eq!(*expire_at, 1_001 * window + retention);
    assert!(co.dedup_dropped.is_empty());

    // The watermark passes slot 1000 (an event 20 minutes later, lateness 5): its set goes.
    let later = ev(2, t0 + 2 * window, "checkout", "DE", 1.0, "u1");
    assert!(matches!(p.process(0, 2, &later, now), Outcome::Processed));
    let flush = p.take_flush().expect("a flush");
    assert_eq!(flush.views[0].dedup_dropped, vec![(0, 1_000)]);
    assert_eq!(flush.views[1].dedup_dropped, vec![(0, 1_000)]);
}
