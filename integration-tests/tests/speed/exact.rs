//! Exact totals: against the ground truth, across crashes mid-flush, a rebalance and producer
//! duplicates.

use std::time::Duration;

use anyhow::Context;
use tributary_it::scenario::{Resend, add_ends, exact_events, produce};
use tributary_it::{
    binary, create_topic, hgetall, now_ms, redis, test_config, unique, wait_speed_applied,
    write_config,
};
use tributary_shared::Granularity;
use tributary_shared::bucket::MINUTE_MS;
use tributary_shared::layout::{RedisKeys, encode_group};

use crate::{check_against_truth, ground_truth, recent_events, speed_section, start, stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_equal_an_independent_ground_truth() -> anyhow::Result<()> {
    let topic = unique("speed-truth");
    create_topic(&topic, 4).await?;
    let prefix = unique("it");
    let config = test_config(&topic, &prefix, &speed_section("2h", ""))?;
    let keys = RedisKeys::new(prefix.clone());
    let events = recent_events(1, 8_000);
    let ends = produce(&topic, &events, 0, Resend::SamePartition, 4, &[]).await?;
    let (tx, handle) = start(config);
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    stop(tx, handle).await?;

    for g in [Granularity::Minute, Granularity::Hour] {
        check_against_truth(&keys, g, &ground_truth(&events, g)?, g.as_str()).await?;
    }
    // Every data key carries a TTL (checked on a cell that must exist: the first checkout's).
    let mut con = redis().await?;
    let first = events.iter().find(|e| e.checkout).context("a checkout")?;
    let key = keys.aggregates(
        "checkouts",
        Granularity::Hour,
        Granularity::Hour.floor(first.ts),
        &encode_group(&first.dims()),
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut con).await?;
    assert!(ttl > 0, "aggregate keys expire (PTTL {ttl})");
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    let checkouts = events.iter().filter(|e| e.checkout).count();
    assert_eq!(
        stats.get("applied").map(String::as_str),
        Some(checkouts.to_string().as_str())
    );
    Ok(())
}

/// Kill the process in the middle of flushes (after Redis was written but before Kafka was
/// committed; before Redis was written), restart it: the totals are still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_mid_flush_neither_lose_nor_double_count() -> anyhow::Result<()> {
    let topic = unique("speed-crash");
    create_topic(&topic, 2).await?;
    let prefix = unique("it");
    let section = speed_section("2h", "flush_max_events = 300\nflush_interval = \"10s\"")
        .replace("flush_interval = \"100ms\"\n", "");
    let config = test_config(&topic, &prefix, &section)?;
    let dir = tempfile::tempdir()?;
    let (config_path, env) = write_config(&config, dir.path())?;
    let keys = RedisKeys::new(prefix.clone());
    let events = recent_events(3, 3_000);
    let ends = produce(&topic, &events, 0, Resend::SamePartition, 2, &[]).await?;
    let bin = binary("speed-layer")?;

    for crash in ["after_redis@2", "before_redis@2", "after_redis@1"] {
        let status = tokio::process::Command::new(&bin)
            .arg("--config")
            .arg(&config_path)
            .arg("run")
            .envs(env.iter().cloned())
            .env("TRIBUTARY_CRASH_AT", crash)
            .env("RUST_LOG", "warn")
            .status();
        // Generous: a restart waits for the crashed member's session to expire on the broker.
        let status = tokio::time::timeout(Duration::from_secs(180), status)
            .await
            .with_context(|| format!("speed-layer with crash {crash} did not exit"))??;
        assert_eq!(
            status.code(),
            Some(101),
            "the fault injection {crash} fired"
        );
    }
    // A clean run to the end, stopped with SIGTERM.
    let mut child = tokio::process::Command::new(&bin)
        .arg("--config")
        .arg(&config_path)
        .arg("run")
        .envs(env.iter().cloned())
        .env("RUST_LOG", "warn")
        .spawn()?;
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    let pid = child.id().context("child pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");

    let g = Granularity::Hour;
    check_against_truth(&keys, g, &ground_truth(&events, g)?, "after crashes").await
}

/// Two consumers in one group, the second joining mid-stream: exact totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_consumers_keeps_totals_exact() -> anyhow::Result<()> {
    let topic = unique("speed-rebalance");
    create_topic(&topic, 4).await?;
    let prefix = unique("it");
    let config = test_config(&topic, &prefix, &speed_section("2h", ""))?;
    let keys = RedisKeys::new(prefix.clone());
    let events = recent_events(5, 12_000);
    let (first, second) = events.split_at(6_000);
    let with_port = |port: u16| {
        let mut c = config.clone();
        c.speed.metrics_listen = format!("127.0.0.1:{port}");
        c
    };
    // Both listeners held at once, so the two ports differ.
    let (la, lb) = (
        std::net::TcpListener::bind("127.0.0.1:0")?,
        std::net::TcpListener::bind("127.0.0.1:0")?,
    );
    let (port_a, port_b) = (la.local_addr()?.port(), lb.local_addr()?.port());
    drop((la, lb));

    let (tx_a, a) = start(with_port(port_a));
    // Chunks are multiples of the 4 partitions, so each event lands where a single
    // round-robin over all of them would put it.
    let mut ends = produce(&topic, first, 0, Resend::SamePartition, 4, &[]).await?;
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    let consumed = |port: u16| async move {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .text()
            .await?;
        anyhow::Ok(
            text.lines()
                .find_map(|l| l.strip_prefix("tributary_speed_events_in_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0),
        )
    };
    let (tx_b, b) = start(with_port(port_b));
    // Records keep arriving, a trickle at a time, while the group rebalances; once the second
    // consumer has records of its own, the rest comes at once.
    for chunk in second.chunks(300) {
        let sent = produce(&topic, chunk, 0, Resend::SamePartition, 4, &[]).await?;
        ends = add_ends(&ends, &sent);
        if consumed(port_b).await? == 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    // The second consumer really took partitions over.
    let (in_a, in_b) = (consumed(port_a).await?, consumed(port_b).await?);
    assert!(
        in_b > 0,
        "the second consumer received no records (a: {in_a})"
    );
    assert!(
        in_a >= first.len() as u64,
        "the first consumer read the first half"
    );
    stop(tx_a, a).await?;
    stop(tx_b, b).await?;

    let g = Granularity::Hour;
    check_against_truth(&keys, g, &ground_truth(&events, g)?, "after a rebalance").await
}

/// Producer duplicates (same event_id and time) are applied once with `dedup_window` on, even
/// when the copy arrives after a restart, and when the events are older than the dedup window
/// and the lateness by the clock (a backfill, a lagging consumer: the ids outlive wall-clock
/// time; with a TTL counted from event time they were gone before the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_duplicates_are_applied_once_across_a_restart() -> anyhow::Result<()> {
    let topic = unique("speed-dedup");
    create_topic(&topic, 1).await?;
    let prefix = unique("it");
    let config = test_config(
        &topic,
        &prefix,
        &speed_section("5m", "dedup_window = \"10m\""),
    )?;
    let keys = RedisKeys::new(prefix.clone());
    // 400 events 6 s apart, from two hours to one hour and 20 minutes ago.
    let events = exact_events(11, 400, now_ms() - 120 * MINUTE_MS, 40 * MINUTE_MS);
    let checkouts = events.iter().filter(|e| e.checkout).count() as i64;
    // First run: every event, and every tenth one twice.
    let ends = produce(&topic, &events, 10, Resend::SamePartition, 1, &[]).await?;
    let dup_checkouts = events.iter().step_by(10).filter(|e| e.checkout).count() as i64;
    let (tx, handle) = start(config.clone());
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    stop(tx, handle).await?;

    // After a restart, copies of the last 50 events arrive again (6 s apart: all within the
    // 5 minutes of allowed lateness, so they meet the dedup window, not the late check).
    let again = &events[350..];
    let again_checkouts = again.iter().filter(|e| e.checkout).count() as i64;
    let sent = produce(&topic, again, 0, Resend::SamePartition, 1, &[]).await?;
    let ends = add_ends(&ends, &sent);
    let (tx, handle) = start(config);
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    stop(tx, handle).await?;

    let mut con = redis().await?;
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    assert_eq!(
        stats.get("applied").map(String::as_str),
        Some(checkouts.to_string().as_str())
    );
    assert_eq!(
        stats.get("duplicates").map(String::as_str),
        Some((dup_checkouts + again_checkouts).to_string().as_str())
    );
    // The id sets the watermark passed are deleted (not left to a TTL); the others are there.
    let window = 10 * MINUTE_MS;
    let max_time = events.iter().map(|e| e.ts).max().context("no events")?;
    let kept_from = (max_time - 5 * MINUTE_MS).div_euclid(window);
    let first_slot = events.iter().map(|e| e.ts).min().context("no events")? / window;
    for slot in first_slot..=max_time.div_euclid(window) {
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys.dedup("checkouts", &topic, 0, slot))
            .query_async(&mut con)
            .await?;
        let had_checkouts = events
            .iter()
            .any(|e| e.checkout && e.ts.div_euclid(window) == slot);
        assert_eq!(
            exists,
            had_checkouts && slot >= kept_from,
            "dedup set of slot {slot}"
        );
    }
    let g = Granularity::Hour;
    check_against_truth(
        &keys,
        g,
        &ground_truth(&events, g)?,
        "with producer duplicates",
    )
    .await
}
