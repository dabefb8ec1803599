//! The sketches: HyperLogLog and the quantile sketch within their error bounds.

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tributary_it::scenario::LATENCY_VIEWS;
use tributary_it::{hgetall, now_ms, redis, test_config, unique};
use tributary_shared::Granularity;
use tributary_shared::layout::{RedisKeys, encode_group};
use tributary_shared::sketch::{QuantileSketch, exact_quantile_cont};

/// 100k events through `replay` (the same pipeline, without the broker): HyperLogLog and the
/// quantile sketch stay within their error bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_counts_and_quantiles_are_within_their_bounds() -> anyhow::Result<()> {
    let prefix = unique("it");
    let text = format!("[speed]\nallowed_lateness = \"48h\"\n{LATENCY_VIEWS}");
    let config = test_config("replay-test", &prefix, &text)?;
    let keys = RedisKeys::new(prefix);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("events.jsonl");
    let mut rng = StdRng::seed_from_u64(7);
    let day = Granularity::Day.floor(now_ms() - 3_600_000);
    let t = day.max(now_ms() - 20 * 3_600_000);
    let mut latencies = Vec::with_capacity(100_000);
    let mut lines = String::new();
    for i in 0..100_000u64 {
        // Log-normal-ish latencies: a long right tail, as real latencies have.
        let latency = (rng.random_range(0.0f64..1.0).powi(3) * 5_000.0 + 1.0).round();
        latencies.push(latency);
        lines.push_str(&format!(
            "{{\"event_id\":\"r{i}\",\"event_time\":{},\"type\":\"req\",\"user_id\":\"user-{}\",\"latency_ms\":{latency}}}\n",
            t + (i as i64 % 1000),
            i % 50_000
        ));
    }
    std::fs::write(&file, lines)?;
    let summary = tributary_speed_layer::replay::replay(&config, &file, None).await?;
    assert_eq!(summary.lines, 100_000);
    assert_eq!(summary.applied, 100_000);

    let mut con = redis().await?;
    let group = encode_group::<&str>(&[]);
    let bucket = Granularity::Day.floor(t);
    let distinct: i64 = redis::cmd("PFCOUNT")
        .arg(keys.hll("latency", "user_id", Granularity::Day, bucket, &group))
        .query_async(&mut con)
        .await?;
    let err = (distinct as f64 - 50_000.0).abs() / 50_000.0;
    assert!(
        err < 0.02,
        "distinct {distinct} is {:.2}% off 50000",
        err * 100.0
    );

    let fields = hgetall(
        &mut con,
        &keys.sketch("latency", "latency_ms", Granularity::Day, bucket, &group),
    )
    .await?;
    let mut sketch = QuantileSketch::new();
    for (f, c) in &fields {
        sketch.add_field(f, c.parse()?);
    }
    assert_eq!(sketch.count(), 100_000);
    latencies.sort_by(f64::total_cmp);
    for q in [0.5, 0.95, 0.99] {
        let exact = exact_quantile_cont(&latencies, q).context("non-empty")?;
        let est = sketch.quantile(q).context("non-empty sketch")?;
        let rel = (est - exact).abs() / exact;
        assert!(
            rel <= 0.01,
            "p{} estimate {est} vs exact {exact}: {:.3}% off",
            q * 100.0,
            rel * 100.0
        );
    }
    Ok(())
}
