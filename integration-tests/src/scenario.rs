//! Hand-made events with a known ground truth, for the speed, batch and end-to-end tests: the
//! view `checkouts` of [`VIEWS`] over them, computed independently of the platform.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tributary_shared::Granularity;
use tributary_shared::sketch::exact_quantile_cont;

use crate::{produce_all, producer};

/// The `[fields]` table, as a macro so the constants below can `concat!` it.
macro_rules! fields_toml {
    () => {
        r#"
[fields]
country = "string"
device = "string"
user_id = "string"
amount = "float"
latency_ms = "float"
"#
    };
}

/// The fields of the events of [`events`] (for tests that need no view, e.g. the archive's).
pub const FIELDS: &str = fields_toml!();

/// Fields and views of the scenario (append to [`crate::test_config`]'s `extra`).
pub const VIEWS: &str = concat!(
    fields_toml!(),
    r#"
[[views]]
name = "checkouts"
where = { type = "checkout" }
dimensions = ["country", "device"]
granularities = ["minute", "hour", "day"]
measures = [
  { name = "events", agg = "count" },
  { name = "revenue", agg = "sum", field = "amount" },
  { name = "min_amount", agg = "min", field = "amount" },
  { name = "max_amount", agg = "max", field = "amount" },
  { name = "avg_amount", agg = "avg", field = "amount" },
  { name = "buyers", agg = "count_distinct", field = "user_id" },
  { name = "p90_latency", agg = "quantile", field = "latency_ms", q = 0.9 },
]

[[views]]
name = "all_types"
dimensions = ["type"]
granularities = ["day"]
measures = [{ name = "events", agg = "count" }]
"#
);

/// Fields and one view of sketches only (distinct users, median latency) over every event,
/// for the sketch-accuracy test. Apart from [`VIEWS`] because tests list, count and check
/// every view of their config (manifests, reports, orphaned files).
pub const LATENCY_VIEWS: &str = concat!(
    fields_toml!(),
    r#"
[[views]]
name = "latency"
granularities = ["day"]
measures = [
  { name = "users", agg = "count_distinct", field = "user_id" },
  { name = "p50", agg = "quantile", field = "latency_ms", q = 0.5 },
]
"#
);

/// One event, as the ground truth sees it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: String,
    pub ts: i64,
    pub checkout: bool,
    pub country: Option<&'static str>,
    pub device: &'static str,
    pub user: String,
    pub amount: Option<f64>,
    pub latency: f64,
}

impl Ev {
    pub fn json(&self) -> Vec<u8> {
        let mut v = serde_json::json!({
            "event_id": self.id, "event_time": self.ts,
            "type": if self.checkout { "checkout" } else { "view" },
            "device": self.device, "user_id": self.user, "latency_ms": self.latency,
        });
        if let Some(c) = self.country {
            v["country"] = c.into();
        }
        if let Some(a) = self.amount {
            v["amount"] = a.into();
        }
        v.to_string().into_bytes()
    }

    /// Dimension values in the view's order (country, device).
    pub fn dims(&self) -> [Option<String>; 2] {
        [
            self.country.map(str::to_string),
            Some(self.device.to_string()),
        ]
    }

    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id.to_string();
        self
    }
}

/// `n` events with times in `[start_ms, start_ms + span_ms)`, sorted by time, ids unique per
/// seed: 70% checkouts, 5 countries (one absent), 3 devices, 400 users, amounts sometimes
/// missing.
pub fn events(seed: u64, n: u64, start_ms: i64, span_ms: i64) -> Vec<Ev> {
    generate(seed, n, start_ms, span_ms, Shape::Mixed)
}

/// [`events`] for tests that compare sums bit for bit (the speed layer's): times evenly spaced
/// over the span (`span_ms / n` apart), every event with an amount, a multiple of 0.25 below
/// 100, so float sums are exact whatever the order.
pub fn exact_events(seed: u64, n: u64, start_ms: i64, span_ms: i64) -> Vec<Ev> {
    generate(seed, n, start_ms, span_ms, Shape::Exact)
}

/// How [`generate`] draws times and amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Random times, amounts in cents and sometimes missing.
    Mixed,
    /// Evenly spaced times, quarter amounts always present.
    Exact,
}

fn generate(seed: u64, n: u64, start_ms: i64, span_ms: i64, shape: Shape) -> Vec<Ev> {
    const COUNTRIES: [Option<&str>; 5] = [Some("DE"), Some("FR"), Some("US"), Some("GB"), None];
    const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
    let mut out: Vec<Ev> = (0..n)
        .map(|i| {
            let h = tributary_shared::hll::murmur64a(
                &seed.wrapping_mul(1_000_003).wrapping_add(i).to_le_bytes(),
                seed,
            );
            let (ts, amount) = match shape {
                Shape::Mixed => (
                    start_ms + (h % span_ms.max(1) as u64) as i64,
                    (!(h >> 32).is_multiple_of(13)).then(|| ((h >> 36) % 50_000) as f64 / 100.0),
                ),
                Shape::Exact => (
                    start_ms + (i as i64) * span_ms / n.max(1) as i64,
                    Some(((h >> 36) % 399 + 1) as f64 * 0.25),
                ),
            };
            Ev {
                id: format!("e-{seed}-{i}"),
                ts,
                checkout: h % 10 < 7,
                country: COUNTRIES[((h >> 8) % 5) as usize],
                device: DEVICES[((h >> 16) % 3) as usize],
                user: format!("u{}", (h >> 20) % 400),
                amount,
                latency: ((h >> 40) % 3000) as f64 / 3.0,
            }
        })
        .collect();
    out.sort_by_key(|e| e.ts);
    out
}

/// Where producer duplicates go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// The same partition (what the speed layer's dedup window catches).
    SamePartition,
    /// The next partition (a retry after a metadata refresh; only the batch dedups it).
    NextPartition,
}

/// Produces events round-robin over partitions, every `dup_every`-th one twice (a producer
/// resend of the same bytes), plus `extra` raw payloads (malformed ones) on partition 0;
/// returns what each partition received.
pub async fn produce(
    topic: &str,
    evs: &[Ev],
    dup_every: usize,
    resend: Resend,
    partitions: i32,
    extra: &[Vec<u8>],
) -> anyhow::Result<HashMap<i32, i64>> {
    let producer = producer()?;
    let mut per: HashMap<i32, Vec<Vec<u8>>> = HashMap::new();
    for (i, e) in evs.iter().enumerate() {
        let p = (i % partitions as usize) as i32;
        per.entry(p).or_default().push(e.json());
        if dup_every > 0 && i % dup_every == 0 {
            let q = match resend {
                Resend::SamePartition => p,
                Resend::NextPartition => (p + 1) % partitions,
            };
            per.entry(q).or_default().push(e.json());
        }
    }
    per.entry(0).or_default().extend(extra.iter().cloned());
    let mut sent = HashMap::new();
    for (p, payloads) in per {
        sent.insert(p, payloads.len() as i64);
        produce_all(&producer, topic, Some(p), payloads).await?;
    }
    Ok(sent)
}

/// Adds per-partition counts.
pub fn add_ends(a: &HashMap<i32, i64>, b: &HashMap<i32, i64>) -> HashMap<i32, i64> {
    let mut out = a.clone();
    for (p, n) in b {
        *out.entry(*p).or_insert(0) += n;
    }
    out
}

/// The exact aggregates of one group and bucket.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub count: u64,
    pub amounts: Vec<f64>,
    pub users: BTreeSet<String>,
    pub latencies: Vec<f64>,
}

impl Truth {
    /// The value of a measure of the `checkouts` view.
    pub fn value(&self, measure: &str) -> Option<f64> {
        match measure {
            "events" => Some(self.count as f64),
            "revenue" => (!self.amounts.is_empty()).then(|| self.amounts.iter().sum()),
            "min_amount" => self.amounts.iter().copied().reduce(f64::min),
            "max_amount" => self.amounts.iter().copied().reduce(f64::max),
            "avg_amount" => (!self.amounts.is_empty())
                .then(|| self.amounts.iter().sum::<f64>() / self.amounts.len() as f64),
            "buyers" => Some(self.users.len() as f64),
            "p90_latency" => {
                let mut v = self.latencies.clone();
                v.sort_by(f64::total_cmp);
                exact_quantile_cont(&v, 0.9)
            }
            _ => None,
        }
    }

    /// The neighbours of the exact p90 rank (what a sketch estimate must lie between, give or
    /// take its 1% relative accuracy).
    pub fn p90_bounds(&self) -> Option<(f64, f64)> {
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        let pos = 0.9 * (v.len().checked_sub(1)? as f64);
        Some((v[pos.floor() as usize], v[pos.ceil() as usize]))
    }
}

/// Ground truth of the `checkouts` view: unique event ids (first wins), checkouts only,
/// `filters` (dimension index, accepted values), grouped by `group_by` dimension indices.
pub fn truth(
    evs: &[Ev],
    g: Granularity,
    group_by: &[usize],
    filters: &[(usize, Vec<String>)],
) -> BTreeMap<(Vec<Option<String>>, i64), Truth> {
    let mut seen = BTreeSet::new();
    let mut out: BTreeMap<(Vec<Option<String>>, i64), Truth> = BTreeMap::new();
    for e in evs {
        if !seen.insert(e.id.as_str()) || !e.checkout {
            continue;
        }
        let dims = e.dims();
        if filters
            .iter()
            .any(|(d, vals)| dims[*d].as_ref().is_none_or(|v| !vals.contains(v)))
        {
            continue;
        }
        let key: Vec<Option<String>> = group_by.iter().map(|d| dims[*d].clone()).collect();
        let t = out.entry((key, g.floor(e.ts))).or_default();
        t.count += 1;
        t.amounts.extend(e.amount);
        t.users.insert(e.user.clone());
        t.latencies.push(e.latency);
    }
    out
}

/// Equal up to floating-point summation order.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the speed tests rely on: every amount a quarter, times in order and evenly spaced,
    /// so sums are the same in any order and the last events are close together.
    #[test]
    fn exact_events_sum_the_same_in_any_order() {
        let evs = exact_events(3, 3_000, 1_000_000, 40 * 60_000);
        assert!(evs.iter().all(|e| {
            e.amount
                .is_some_and(|a| a > 0.0 && (a * 4.0).fract() == 0.0)
        }));
        assert!(evs.windows(2).all(|w| w[1].ts - w[0].ts == 800));
        let amounts: Vec<f64> = evs.iter().filter_map(|e| e.amount).collect();
        let forward: f64 = amounts.iter().sum();
        let backward: f64 = amounts.iter().rev().sum();
        assert_eq!(forward, backward);
    }
}
