//! The speed accuracy ledger after the first batch run: the speed layer dropped the late
//! events (beyond allowed lateness) that the batch counts, so the ledger must show exactly the
//! buckets they touched, with the errors the ground truth gives, and no error elsewhere.

use anyhow::Context;
use serde_json::Value;
use tributary_it::checks::get;
use tributary_it::scenario::{close, truth};
use tributary_shared::Granularity;
use tributary_shared::bucket::{format_rfc3339, parse_rfc3339};

use crate::fixture::{Ctx, fixture, got};

/// The ledger at hour granularity over the scenario's range, and the batch's metrics.
pub struct Ledger {
    pub hour: (u16, Value),
    pub metrics: String,
}

pub async fn observe(ctx: &Ctx) -> anyhow::Result<Ledger> {
    Ok(Ledger {
        hour: get(&format!(
            "{}/v1/views/checkouts/accuracy?granularity=hour&from={}&to={}",
            ctx.server.url,
            format_rfc3339(ctx.from),
            format_rfc3339(ctx.to)
        ))
        .await?,
        metrics: ctx.metrics.render(),
    })
}

#[test]
fn the_ledger_shows_exactly_the_buckets_late_events_touched() -> anyhow::Result<()> {
    let f = fixture()?;
    let ledger = got(&f.ledger)?;
    let (code, body) = &ledger.hour;
    assert_eq!(*code, 200, "{body}");
    let h1 = f.h1()?;
    let g = Granularity::Hour;
    let speed_truth = truth(&f.wave1, g, &[], &[]);
    let batch_truth = truth(&f.first_events(), g, &[], &[]);
    let late_checkouts = |t: i64| {
        f.late
            .iter()
            .filter(|e| e.checkout && g.floor(e.ts) == t)
            .count() as f64
    };
    let buckets = body["buckets"].as_array().context("buckets")?;
    let from = body["from"]
        .as_str()
        .and_then(parse_rfc3339)
        .context("from")?;
    // Every hour of the range the first run settled is in the ledger, and nothing else.
    let times: Vec<i64> = buckets
        .iter()
        .filter_map(|b| b["t"].as_str().and_then(parse_rfc3339))
        .collect();
    let expected: Vec<i64> = g.buckets(from, h1).filter(|b| g.end(*b) <= h1).collect();
    assert_eq!(times, expected, "settled buckets in the ledger");
    let (mut touched, mut untouched) = (0, 0);
    for b in buckets {
        let t = b["t"].as_str().and_then(parse_rfc3339).context("t")?;
        let m = &b["measures"];
        let value = |tr: &std::collections::BTreeMap<_, tributary_it::scenario::Truth>,
                     name: &str| {
            tr.get(&(Vec::<Option<String>>::new(), t))
                .and_then(|x| x.value(name))
        };
        let late = late_checkouts(t);
        let speed_events = value(&speed_truth, "events").unwrap_or(0.0);
        let batch_events = value(&batch_truth, "events").unwrap_or(0.0);
        assert_eq!(m["events"]["speed"].as_f64(), Some(speed_events), "{b}");
        assert_eq!(m["events"]["batch"].as_f64(), Some(batch_events), "{b}");
        assert_eq!(m["events"]["abs_error"].as_f64(), Some(late), "{b}");
        for name in ["revenue", "min_amount", "max_amount"] {
            let (s, bt) = (value(&speed_truth, name), value(&batch_truth, name));
            let api = (m[name]["speed"].as_f64(), m[name]["batch"].as_f64());
            for (got, want) in [(api.0, s), (api.1, bt)] {
                let ok = match (got, want) {
                    (Some(a), Some(b)) => close(a, b),
                    (a, b) => a == b,
                };
                assert!(ok, "{b} {name}: {got:?} vs truth {want:?}");
            }
        }
        if late == 0.0 {
            // Untouched: exact in both layers, no error at all; sketches within bounds.
            for name in [
                "events",
                "revenue",
                "min_amount",
                "max_amount",
                "avg_amount",
            ] {
                assert_eq!(m[name]["rel_error"].as_f64(), Some(0.0), "{b} {name}");
            }
            let users = value(&batch_truth, "buyers").unwrap_or(0.0);
            let rel = m["buyers"]["rel_error"].as_f64().context("buyers")?;
            assert!(
                rel * users <= 0.0325 * users + 2.0,
                "{b}: distinct buyers off by {rel}"
            );
            untouched += 1;
        } else {
            let want = late / batch_events;
            let rel = m["events"]["rel_error"].as_f64().context("rel_error")?;
            assert!((rel - want).abs() < 1e-12, "{b}: rel {rel} vs {want}");
            assert!(
                m["events"]["group_max_rel_error"].as_f64() > Some(0.0),
                "{b}: some group lost events"
            );
            touched += 1;
        }
    }
    assert!(
        touched >= 1 && untouched >= 1,
        "{touched} touched, {untouched} untouched"
    );
    let summary = &body["summary"]["events"];
    assert_eq!(summary["buckets"].as_u64(), Some(buckets.len() as u64));
    assert_eq!(summary["buckets_off"].as_u64(), Some(touched as u64));
    assert!(summary["within_bound_share"].is_null(), "{summary}");
    assert!(
        body["summary"]["buyers"]["within_bound_share"]
            .as_f64()
            .is_some()
    );
    // The histogram, and the status warning naming the buckets.
    assert!(
        ledger
            .metrics
            .contains("tributary_speed_relative_error_bucket{"),
        "{}",
        ledger.metrics
    );
    let status = got(&f.status)?;
    let warned = status["warnings"].as_array().is_some_and(|w| {
        w.iter().any(|w| {
            w.as_str()
                .is_some_and(|w| w.contains("events (count) differed between speed and batch"))
        })
    });
    assert!(warned, "{status}");
    Ok(())
}
