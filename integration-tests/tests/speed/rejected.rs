//! Input the speed layer does not apply: malformed events (dead-lettered with their reason)
//! and events behind the watermark (counted, never written).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use tributary_it::chaos::services::free_port;
use tributary_it::{
    brokers, create_topic, hgetall, now_ms, produce_all, producer, redis, test_config, unique,
    wait_speed_applied,
};
use tributary_shared::Granularity;
use tributary_shared::layout::{RedisKeys, encode_group};

use crate::{speed_section, start, stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_go_to_the_dlq_with_their_reason() -> anyhow::Result<()> {
    let topic = unique("speed-dlq");
    create_topic(&topic, 1).await?;
    let prefix = unique("it");
    let metrics_port = free_port()?;
    let section = speed_section("2h", "").replace(
        "metrics_listen = \"127.0.0.1:0\"",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let config = test_config(&topic, &prefix, &section)?;
    let keys = RedisKeys::new(prefix.clone());
    let now = now_ms();
    let good = |i: i64| {
        format!(
            r#"{{"event_id":"g{i}","event_time":{},"type":"checkout","country":"DE","device":"mobile","user_id":"u","amount":1.5,"latency_ms":10}}"#,
            now - 60_000 + i
        )
        .into_bytes()
    };
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{this is not json".to_vec(), "not valid JSON"),
        (
            br#"{"event_time":1,"type":"checkout"}"#.to_vec(),
            "missing required field \"event_id\"",
        ),
        (
            format!(r#"{{"event_id":"b3","event_time":{now},"type":"checkout","amount":"12,5"}}"#)
                .into_bytes(),
            "field \"amount\": expected float, got string \"12,5\"",
        ),
        (
            format!(
                r#"{{"event_id":"b4","event_time":{},"type":"checkout"}}"#,
                now + 3_600_000
            )
            .into_bytes(),
            "max_future_skew",
        ),
    ];
    let mut payloads = Vec::new();
    for (i, (b, _)) in bad.iter().enumerate() {
        payloads.push(good(i as i64));
        payloads.push(b.clone());
    }
    payloads.push(good(99));
    produce_all(&producer()?, &topic, Some(0), payloads.clone()).await?;

    let (tx, handle) = start(config);
    let mut ends = HashMap::new();
    ends.insert(0, payloads.len() as i64);
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    // Prometheus sees them too.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await?
        .text()
        .await?;
    for line in [
        "tributary_speed_dlq_total{reason=\"not_json\"} 1",
        "tributary_speed_dlq_total{reason=\"missing_field\"} 1",
        "tributary_speed_dlq_total{reason=\"ill_typed_field\"} 1",
        "tributary_speed_dlq_total{reason=\"future_event_time\"} 1",
        "tributary_speed_events_in_total 9",
        "tributary_speed_applied_total{view=\"checkouts\"} 5",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }
    assert!(
        metrics.contains("tributary_speed_flush_seconds_bucket"),
        "flush latency histogram"
    );
    stop(tx, handle).await?;

    // The good events around the bad ones are all counted.
    let mut con = redis().await?;
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    assert_eq!(stats.get("applied").map(String::as_str), Some("5"));
    let dlq_stats = hgetall(&mut con, &keys.speed_stats(&topic)).await?;
    let dlq_total: u64 = dlq_stats
        .values()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    assert_eq!(dlq_total, 4, "dlq counters {dlq_stats:?}");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&format!("{topic}.dlq")])?;
    let mut seen = Vec::new();
    while seen.len() < bad.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("waiting for dlq records")??;
        let headers = m.headers().context("dlq record has headers")?;
        let reason = headers
            .iter()
            .find(|h| h.key == "tributary.error")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .context("tributary.error header")?;
        seen.push((m.payload().unwrap_or_default().to_vec(), reason));
    }
    for ((payload, fragment), (got_payload, got_reason)) in bad.iter().zip(&seen) {
        assert_eq!(payload, got_payload, "the DLQ keeps the original bytes");
        assert!(
            got_reason.contains(fragment),
            "reason {got_reason:?} should mention {fragment:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_are_not_applied_and_are_counted() -> anyhow::Result<()> {
    let topic = unique("speed-late");
    create_topic(&topic, 1).await?;
    let prefix = unique("it");
    let config = test_config(&topic, &prefix, &speed_section("5m", ""))?;
    let keys = RedisKeys::new(prefix.clone());
    let t0 = Granularity::Hour.floor(now_ms()) - 3_600_000;
    let ev = |id: &str, t: i64| {
        format!(
            r#"{{"event_id":"{id}","event_time":{t},"type":"checkout","country":"DE","device":"mobile","user_id":"u","amount":2.0,"latency_ms":5}}"#
        )
        .into_bytes()
    };
    // Watermark after e2 is t0+10m-5m = t0+5m: e3 (t0+1m) is late, e4 (t0+6m) is not.
    let payloads = vec![
        ev("e1", t0),
        ev("e2", t0 + 600_000),
        ev("e3", t0 + 60_000),
        ev("e4", t0 + 360_000),
    ];
    produce_all(&producer()?, &topic, Some(0), payloads).await?;
    let (tx, handle) = start(config);
    let mut ends = HashMap::new();
    ends.insert(0, 4);
    wait_speed_applied(&prefix, "checkouts", &topic, &ends).await?;
    stop(tx, handle).await?;

    let mut con = redis().await?;
    let stats = hgetall(&mut con, &keys.view_stats("checkouts")).await?;
    assert_eq!(stats.get("late_dropped").map(String::as_str), Some("1"));
    assert_eq!(stats.get("applied").map(String::as_str), Some("3"));
    let group = encode_group(&[Some("DE"), Some("mobile")]);
    let hour = hgetall(
        &mut con,
        &keys.aggregates("checkouts", Granularity::Hour, t0, &group),
    )
    .await?;
    assert_eq!(hour.get("count").map(String::as_str), Some("3"));
    let late_minute = keys.aggregates("checkouts", Granularity::Minute, t0 + 60_000, &group);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&late_minute)
        .query_async(&mut con)
        .await?;
    assert_eq!(
        exists, 0,
        "the late event's minute bucket was never written"
    );
    Ok(())
}
