//! The local stack really works the way the layers rely on: Tansu (Kafka API) with consumer
//! groups, committed offsets and mid-batch resume; Redis; object stores on `file://` and on
//! `s3://` through moto.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary_it::*;
use tributary_shared::config::StoreConfig;

fn consumer(group: &str) -> anyhow::Result<StreamConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()
        .context("create consumer")
}

/// Receives exactly `n` messages (or fails after a timeout), returning (partition, offset, payload).
async fn recv_n(c: &StreamConsumer, n: usize) -> anyhow::Result<Vec<(i32, i64, String)>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .with_context(|| format!("no message after 30 s; got {} of {n}", out.len()))??;
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        out.push((m.partition(), m.offset(), payload));
    }
    Ok(out)
}

#[tokio::test]
async fn kafka_group_commits_and_resumes_from_the_committed_offset() -> anyhow::Result<()> {
    let topic = unique("stack-group");
    create_topic(&topic, 4).await?;
    let producer = producer()?;
    produce_all(
        &producer,
        &topic,
        None,
        (0..400).map(|i| format!("m{i}").into_bytes()),
    )
    .await?;

    let group = unique("g");
    let first = consumer(&group)?;
    first.subscribe(&[&topic])?;
    let got = recv_n(&first, 150).await?;
    // Commit what was read, per partition: the next offset to read.
    let mut tpl = TopicPartitionList::new();
    let mut next = std::collections::HashMap::new();
    for (p, o, _) in &got {
        let e = next.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    for (p, o) in &next {
        tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))?;
    }
    first.commit(&tpl, CommitMode::Sync)?;
    let mut ask = TopicPartitionList::new();
    for p in next.keys() {
        ask.add_partition(&topic, *p);
    }
    let committed = first.committed_offsets(ask, Duration::from_secs(10))?;
    for (p, o) in &next {
        let stored = committed
            .find_partition(&topic, *p)
            .map(|e| e.offset())
            .context("committed partition")?;
        assert_eq!(
            stored,
            Offset::Offset(*o),
            "committed offset of partition {p}"
        );
    }
    drop(first);

    // A new member of the group resumes where the commit says: it gets exactly the rest.
    let second = consumer(&group)?;
    second.subscribe(&[&topic])?;
    let rest = recv_n(&second, 250).await?;
    let all: BTreeSet<String> = got
        .iter()
        .chain(rest.iter())
        .map(|(_, _, m)| m.clone())
        .collect();
    assert_eq!(all.len(), 400, "every message once across the two members");
    for (p, o, _) in &rest {
        assert!(
            *o >= *next.get(p).unwrap_or(&0),
            "partition {p} offset {o} re-read"
        );
    }
    Ok(())
}

/// Tansu's memory engine returns the next batch when a fetch starts inside a producer batch;
/// the SQLite engine the stack runs must return the records from that offset on.
#[tokio::test]
async fn kafka_resume_in_the_middle_of_a_producer_batch() -> anyhow::Result<()> {
    let topic = unique("stack-midbatch");
    create_topic(&topic, 1).await?;
    // One big linger so the 1000 records travel as one producer batch.
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "500")
        .set("batch.num.messages", "10000")
        .set("batch.size", "10000000")
        .create()?;
    let sends: Vec<_> = (0..1000)
        .map(|i| {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                let payload = format!("r{i}");
                producer
                    .send(
                        FutureRecord::<(), String>::to(&topic)
                            .payload(&payload)
                            .partition(0),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))
            }
        })
        .collect();
    for r in futures::future::join_all(sends).await {
        r?;
    }

    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("g"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(500))?;
    c.assign(&tpl)?;
    let got = recv_n(&c, 500).await?;
    let offsets: Vec<i64> = got.iter().map(|(_, o, _)| *o).collect();
    assert_eq!(offsets, (500..1000).collect::<Vec<_>>());
    assert_eq!(got[0].2, "r500");
    assert_eq!(got[499].2, "r999");
    Ok(())
}

#[tokio::test]
async fn redis_round_trip_with_transactions_and_hyperloglog() -> anyhow::Result<()> {
    let mut con = redis().await?;
    let prefix = unique("it-redis");
    let (h, hll) = (format!("{prefix}:h"), format!("{prefix}:hll"));
    let (count, ok): (i64, String) = redis::pipe()
        .atomic()
        .hincr(&h, "count", 3)
        .hset(&h, "max", "7.5")
        .ignore()
        .pexpire(&h, 60_000)
        .ignore()
        .cmd("PFADD")
        .arg(&hll)
        .arg(&["a", "b", "c", "a"])
        .ignore()
        .cmd("SET")
        .arg(format!("{prefix}:s"))
        .arg("v")
        .query_async(&mut con)
        .await?;
    assert_eq!((count, ok.as_str()), (3, "OK"));
    let max: String = redis::cmd("HGET")
        .arg(&h)
        .arg("max")
        .query_async(&mut con)
        .await?;
    assert_eq!(max, "7.5");
    let distinct: i64 = redis::cmd("PFCOUNT")
        .arg(&hll)
        .query_async(&mut con)
        .await?;
    assert_eq!(distinct, 3);
    let ttl: i64 = redis::cmd("PTTL").arg(&h).query_async(&mut con).await?;
    assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl}");
    let _: () = redis::cmd("DEL")
        .arg(&[&h, &hll, &format!("{prefix}:s")])
        .query_async(&mut con)
        .await?;
    Ok(())
}

/// One suite, every backend: what the batch layer needs from an object store.
async fn object_store_suite(store: &dyn ObjectStore, label: &str) -> anyhow::Result<()> {
    let a = Path::from("master/events/date=2026-11-21/hour=10/p0-1-2.parquet");
    let b = Path::from("master/events/date=2026-11-21/hour=11/p1-3-4.parquet");
    let state = Path::from("master/events/_state/p0.json");
    store.put(&a, Bytes::from_static(b"first").into()).await?;
    store.put(&b, Bytes::from_static(b"second").into()).await?;
    store.put(&state, Bytes::from_static(b"{}").into()).await?;

    let got = store.get(&a).await?.bytes().await?;
    assert_eq!(&got[..], b"first", "{label}: get");
    let prefix = Path::from("master/events/date=2026-11-21");
    let mut listed: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await?;
    listed.sort();
    assert_eq!(listed, vec![a.to_string(), b.to_string()], "{label}: list");
    let head = store.head(&b).await?;
    assert_eq!(head.size, 6, "{label}: head size");

    // Create-only puts are how a run lock is taken: the second one must fail.
    let lock = Path::from("_batch/lock.json");
    let create = PutOptions::from(PutMode::Create);
    store
        .put_opts(&lock, Bytes::from_static(b"1").into(), create.clone())
        .await?;
    let again = store
        .put_opts(&lock, Bytes::from_static(b"2").into(), create)
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{label}: second create-only put must fail, got {again:?}"
    );

    store.delete(&a).await?;
    assert!(
        matches!(
            store.get(&a).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "{label}: deleted object is gone"
    );
    Ok(())
}

#[tokio::test]
async fn object_store_on_a_local_directory() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique("tributary-it-store"));
    let config = StoreConfig {
        url: format!("file://{}", dir.display()),
        ..StoreConfig::default()
    };
    let store = open(&config)?;
    object_store_suite(store.as_ref(), "file").await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[tokio::test]
async fn object_store_on_s3_through_moto() -> anyhow::Result<()> {
    let config = s3_store_config("tributary/it").await?;
    let store = open(&config)?;
    object_store_suite(store.as_ref(), "s3").await
}

#[tokio::test]
async fn object_store_in_memory() -> anyhow::Result<()> {
    let config = StoreConfig {
        url: "memory://".into(),
        ..StoreConfig::default()
    };
    object_store_suite(open(&config)?.as_ref(), "memory").await
}
