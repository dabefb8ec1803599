//! Input that once stopped or fooled the speed layer, and a topic that grows.

use std::time::Duration;

use anyhow::Context;
use tributary_it::chaos::services::OwnBroker;
use tributary_it::chaos::{
    Platform, Scale, chaos_config, dead_letters, produce_paced, rng, spread, topic_headers,
};
use tributary_it::scenario::events;
use tributary_it::{create_topic_on, now_ms, redis_url, unique, wait_speed_applied_on};
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS};

use crate::{Verify, malformed, stop_clean};

/// Input that once stopped or fooled the speed layer: sums past f64 (two 1.5e308 amounts in
/// one cell), invalid UTF-8, event times before 1970 or after 9999, a dead letter larger than
/// the broker takes, and a burst of malformed events; and the topic's partitions grow
/// mid-stream. Every invalid record is dead-lettered with its reason, every valid one
/// applied and archived once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_and_a_growing_topic_stop_nothing() -> anyhow::Result<()> {
    let scale = Scale::from_env();
    let (seed, mut rng) = rng("bad_input");
    let broker = OwnBroker::start().await?;
    let topic = unique("chaos-input");
    create_topic_on(&broker.brokers(), &topic, 2, false).await?;
    let config = chaos_config(
        &broker.brokers(),
        &redis_url(),
        &topic,
        &unique("chaos"),
        "",
    )?;
    let mut pf = Platform::new(config)?;
    let now = now_ms();
    let t = now - 30 * MINUTE_MS;
    let mut bad: Vec<Vec<u8>> = vec![
        // One cell (minute, country, device) gets two amounts whose sum is not a float.
        format!(r#"{{"event_id":"o1","event_time":{t},"type":"checkout","country":"DE","device":"mobile","amount":1.5e308}}"#).into_bytes(),
        format!(r#"{{"event_id":"o2","event_time":{t},"type":"checkout","country":"DE","device":"mobile","amount":1.5e308}}"#).into_bytes(),
        br#"{"event_id":"t1","event_time":-9223372036854775808,"type":"checkout"}"#.to_vec(),
        br#"{"event_id":"t2","event_time":"10000-01-01T00:00:00Z","type":"checkout"}"#.to_vec(),
        br#"{"event_id":"t3","event_time":253402300800000,"type":"checkout"}"#.to_vec(),
    ];
    let mut invalid_utf8 =
        format!(r#"{{"event_id":"u1","event_time":{t},"type":"checkout","note":""#).into_bytes();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    invalid_utf8.extend_from_slice(b"\"}");
    bad.push(invalid_utf8);
    // A malformed record just under librdkafka's 1,000,000-byte limit: with the dead-letter
    // headers it is over it.
    let mut huge = b"{\"not closed\": \"".to_vec();
    huge.resize(999_000, b'x');
    bad.push(huge);
    let burst = scale.pick(10_000, 100_000);
    bad.extend(malformed(burst));
    let evs = events(
        seed,
        scale.pick(4_000, 20_000),
        now - 2 * HOUR_MS,
        2 * HOUR_MS - MINUTE_MS,
    );
    let (early, late) = evs.split_at(evs.len() / 2);
    pf.speed.start()?;
    pf.archive.start()?;
    let first = spread(early, 2, &bad, &mut rng);
    let started = std::time::Instant::now();
    produce_paced(
        &broker.brokers(),
        &topic,
        &first,
        10,
        Duration::from_millis(200),
    )
    .await?;
    // The burst's dead letters take the broker a while (Tansu writes each record to SQLite):
    // the topic grows once the speed layer has had them confirmed.
    let first_ends: std::collections::HashMap<i32, i64> =
        first.iter().map(|(p, v)| (*p, v.len() as i64)).collect();
    wait_speed_applied_on(
        &redis_url(),
        &pf.config.redis.key_prefix,
        "checkouts",
        &topic,
        &first_ends,
        Duration::from_secs(scale.pick(300, 900)),
    )
    .await
    .with_context(|| pf.logs())?;
    println!(
        "[chaos] bad_input: {} records, {} of them invalid, applied or dead-lettered in {:.1}s",
        first.values().map(Vec::len).sum::<usize>(),
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    println!("[chaos] bad_input: growing {topic} from 2 to 4 partitions");
    broker.grow_partitions(&topic, 4).await?;
    let second = spread(late, 4, &malformed(20), &mut rng);
    produce_paced(
        &broker.brokers(),
        &topic,
        &second,
        10,
        Duration::from_millis(200),
    )
    .await?;
    Verify {
        pf: &pf,
        brokers: &broker.brokers(),
        generated: &evs,
        patience: Duration::from_secs(scale.pick(300, 600)),
    }
    .all()
    .await?;
    let (dead, codes) = dead_letters(&broker.brokers(), &topic).await?;
    println!("[chaos] bad_input: dead letters by reason {codes:?}");
    for code in [
        "number_out_of_range",
        "not_utf8",
        "time_out_of_range",
        "not_json",
    ] {
        assert!(
            codes.contains_key(code),
            "no dead letter with reason {code}: {codes:?}"
        );
    }
    assert_eq!(codes.get("number_out_of_range"), Some(&2), "{codes:?}");
    assert!(
        dead.len() >= burst + 7,
        "{} dead letters for {} invalid",
        dead.len(),
        burst + 7
    );
    let headers = topic_headers(&broker.brokers(), &format!("{topic}.dlq")).await?;
    let truncated: Vec<_> = headers
        .iter()
        .filter(|h| h.contains_key("tributary.truncated"))
        .collect();
    assert!(
        !truncated.is_empty(),
        "the oversize dead letter is there, truncated"
    );
    for h in truncated {
        assert_eq!(
            h.get("tributary.truncated").map(String::as_str),
            Some("999000")
        );
        let len: usize = h.get("__len").and_then(|l| l.parse().ok()).unwrap_or(0);
        assert!(len > 0 && len < 999_000, "truncated to {len} bytes");
    }
    stop_clean(&mut pf).await
}
