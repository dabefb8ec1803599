//! `speed-layer reset --to T` on the real stack: after Redis lost the speed layer's keys, a
//! reset and a restart rebuild the aggregates from Kafka exactly; a reset to a later time
//! rebuilds from then on and leaves nothing counted twice.

use std::collections::HashMap;

use tokio::sync::watch;
use tributary_it::scenario::*;
use tributary_it::*;
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS, format_rfc3339};
use tributary_shared::layout::RedisKeys;
use tributary_shared::{Config, Granularity};

const SETTINGS: &str = r#"
[speed]
allowed_lateness = "5m"
flush_interval = "100ms"
metrics_listen = "127.0.0.1:0"
"#;

async fn run_until_applied(config: &Config, ends: &HashMap<i32, i64>) -> anyhow::Result<()> {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(tributary_speed_layer::run(config.clone(), rx));
    let waited = wait_speed_applied(
        &config.redis.key_prefix,
        "checkouts",
        &config.source.topic,
        ends,
    )
    .await;
    let _ = stop.send(true);
    task.await??;
    waited
}

/// Hourly event counts (total group) as Redis holds them.
async fn hourly_counts(config: &Config, hours: &[i64]) -> anyhow::Result<Vec<Option<u64>>> {
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let mut con = redis().await?;
    let mut out = Vec::new();
    for h in hours {
        // The total over groups: sum of each group's count.
        let groups: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.groups("checkouts", Granularity::Hour, *h))
            .query_async(&mut con)
            .await?;
        let mut total = None;
        for g in groups {
            let c: Option<u64> = redis::cmd("HGET")
                .arg(keys.aggregates("checkouts", Granularity::Hour, *h, &g))
                .arg("count")
                .query_async(&mut con)
                .await?;
            *total.get_or_insert(0) += c.unwrap_or(0);
        }
        out.push(total);
    }
    Ok(out)
}

async fn reset_cli(config: &Config, to: i64) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let (path, env) = write_config(config, dir.path())?;
    let out = tokio::process::Command::new(binary("speed-layer")?)
        .arg("--config")
        .arg(&path)
        .args(["reset", "--to", &format_rfc3339(to)])
        .envs(env)
        .output()
        .await?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "speed-layer reset failed: {text}");
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_rebuilds_redis_from_kafka_without_double_counting() -> anyhow::Result<()> {
    let topic = unique("reset");
    create_topic(&topic, 2).await?;
    let config = test_config(&topic, &unique("reset"), &format!("{SETTINGS}{VIEWS}"))?;
    let start = Granularity::Hour.floor(now_ms()) - 4 * HOUR_MS;
    let evs = events(21, 3000, start, 3 * HOUR_MS);
    let ends = produce(&topic, &evs, 0, Resend::SamePartition, 2, &[]).await?;
    run_until_applied(&config, &ends).await?;
    let hours: Vec<i64> = (0..3).map(|i| start + i * HOUR_MS).collect();
    let want: Vec<Option<u64>> = hours
        .iter()
        .map(|h| {
            truth(&evs, Granularity::Hour, &[], &[])
                .get(&(Vec::new(), *h))
                .map(|t| t.count)
        })
        .collect();
    assert_eq!(hourly_counts(&config, &hours).await?, want, "first pass");

    // Redis loses everything of the speed layer (its prefix).
    let mut con = redis().await?;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", config.redis.key_prefix))
        .query_async(&mut con)
        .await?;
    let _: () = redis::cmd("DEL").arg(&all).query_async(&mut con).await?;
    assert_eq!(
        hourly_counts(&config, &hours).await?,
        vec![None, None, None]
    );

    // Reset to the start of the data: the restart rebuilds every bucket exactly.
    let out = reset_cli(&config, start).await?;
    assert!(out.contains("\"offsets\""), "{out}");
    run_until_applied(&config, &ends).await?;
    assert_eq!(
        hourly_counts(&config, &hours).await?,
        want,
        "after reset to the start"
    );

    // Reset to the second hour: the view is rebuilt from that day's start (its coarsest
    // bucket, so no bucket is rebuilt half): hours before it are gone, later ones rebuilt
    // once, not added to what was there.
    let to = start + HOUR_MS + 5 * MINUTE_MS;
    let from = Granularity::Day.floor(to);
    let out = reset_cli(&config, to).await?;
    assert!(out.contains(&format_rfc3339(from)), "{out}");
    run_until_applied(&config, &ends).await?;
    let got = hourly_counts(&config, &hours).await?;
    for (i, h) in hours.iter().enumerate() {
        if *h >= from {
            assert_eq!(got[i], want[i], "hour {i} is rebuilt exactly ({out})");
        } else {
            assert_eq!(got[i], None, "hour {i} is before the reset ({out})");
        }
    }

    // A reset while the speed layer runs: it is fenced by the new epoch, reloads and seeks;
    // the totals stay exact.
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(tributary_speed_layer::run(config.clone(), rx));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    reset_cli(&config, start).await?;
    wait_speed_applied(
        &config.redis.key_prefix,
        "checkouts",
        &config.source.topic,
        &ends,
    )
    .await?;
    let _ = stop.send(true);
    task.await??;
    assert_eq!(
        hourly_counts(&config, &hours).await?,
        want,
        "after a reset under a running speed layer"
    );
    Ok(())
}
