//! Checks of the REST API's answers against a ground truth ([`crate::scenario::truth`]).

use anyhow::Context;
use serde_json::Value;
use tributary_shared::Granularity;
use tributary_shared::bucket::{format_rfc3339, parse_rfc3339};

use crate::scenario::{Ev, close, truth};

/// GET a JSON document: (status, body).
pub async fn get(url: &str) -> anyhow::Result<(u16, Value)> {
    let res = reqwest::get(url)
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = res.status().as_u16();
    let body = res
        .json::<Value>()
        .await
        .with_context(|| format!("GET {url}: body"))?;
    Ok((status, body))
}

/// Checks a `series` answer bucket by bucket: the source follows the horizon, batch points
/// equal the truth over every event, speed points the truth over the events the speed layer
/// applied (exact for additive measures, within the sketch bounds for the others).
pub fn check_series(
    body: &Value,
    g: Granularity,
    group_by: &[usize],
    all: &[Ev],
    applied_by_speed: &[Ev],
) -> anyhow::Result<(usize, usize)> {
    let horizon = body["batch_horizon"]
        .as_str()
        .and_then(parse_rfc3339)
        .context("batch_horizon")?;
    let batch_truth = truth(all, g, group_by, &[]);
    let speed_truth = truth(applied_by_speed, g, group_by, &[]);
    let names = ["country", "device"];
    let (mut batch_points, mut speed_points) = (0, 0);
    let series = body["series"].as_array().context("series")?;
    for s in series {
        let group: Vec<Option<String>> = group_by
            .iter()
            .map(|d| s["group"][names[*d]].as_str().map(str::to_string))
            .collect();
        for p in s["points"].as_array().context("points")? {
            let t = p["t"].as_str().and_then(parse_rfc3339).context("t")?;
            let source = p["source"].as_str().unwrap_or("");
            let ctx = format!("{g} {group:?} {} ({source})", format_rfc3339(t));
            let values = &p["values"];
            let v = |m: &str| values[m].as_f64();
            if g.end(t) <= horizon {
                assert_eq!(source, "batch", "{ctx}: ends before the horizon");
                assert_eq!(p["exact"], Value::Bool(true), "{ctx}");
                let tr = batch_truth
                    .get(&(group.clone(), t))
                    .with_context(|| format!("{ctx}: not in the truth"))?;
                for m in [
                    "events",
                    "revenue",
                    "min_amount",
                    "max_amount",
                    "avg_amount",
                    "buyers",
                    "p90_latency",
                ] {
                    let ok = match (v(m), tr.value(m)) {
                        (Some(a), Some(b)) => close(a, b),
                        (a, b) => a == b,
                    };
                    assert!(ok, "{ctx} {m}: api {:?}, truth {:?}", v(m), tr.value(m));
                }
                batch_points += 1;
            } else {
                assert_eq!(source, "speed", "{ctx}: after the horizon");
                let tr = speed_truth
                    .get(&(group.clone(), t))
                    .with_context(|| format!("{ctx}: not in the truth"))?;
                for m in [
                    "events",
                    "revenue",
                    "min_amount",
                    "max_amount",
                    "avg_amount",
                ] {
                    let ok = match (v(m), tr.value(m)) {
                        (Some(a), Some(b)) => close(a, b),
                        (a, b) => a == b,
                    };
                    assert!(ok, "{ctx} {m}: api {:?}, truth {:?}", v(m), tr.value(m));
                }
                let users = tr.users.len() as f64;
                let buyers = v("buyers").context("buyers")?;
                // Redis' HyperLogLog: 0.81 % standard error; four of them, plus two for the
                // small sets of a minute bucket (seen: 60 for 62 users, with every exact
                // measure of the bucket right).
                assert!(
                    (buyers - users).abs() <= 0.0325 * users + 2.0,
                    "{ctx} buyers {buyers} vs {users}"
                );
                let (lo, hi) = tr.p90_bounds().context("latencies")?;
                let est = v("p90_latency").context("p90")?;
                assert!(
                    est >= lo * 0.99 - 1e-9 && est <= hi * 1.01 + 1e-9,
                    "{ctx} p90 {est} outside [{lo}, {hi}]"
                );
                speed_points += 1;
            }
        }
    }
    // Nothing the truth has is missing from the answer.
    let range_from = body["from"]
        .as_str()
        .and_then(parse_rfc3339)
        .context("from")?;
    let range_to = body["to"].as_str().and_then(parse_rfc3339).context("to")?;
    let expected = batch_truth
        .keys()
        .filter(|(_, t)| *t >= g.floor(range_from) && *t < range_to && g.end(*t) <= horizon)
        .count()
        + speed_truth
            .keys()
            .filter(|(_, t)| *t >= g.floor(range_from) && *t < range_to && g.end(*t) > horizon)
            .count();
    assert_eq!(
        batch_points + speed_points,
        expected,
        "{g} {group_by:?}: points vs truth"
    );
    Ok((batch_points, speed_points))
}
