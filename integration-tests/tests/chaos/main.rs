//! The fault suite: the real binaries against the real Tansu, Redis and object stores, broken
//! the ways production breaks them. Each scenario streams generated events, breaks something
//! while they flow, and at the end checks every row of the master dataset (each valid Kafka
//! record exactly once), every dead letter, and the REST API's answers against a ground truth
//! read back from the topic itself.
//!
//! `make test` runs each scenario short; `make chaos` at full size (`TRIBUTARY_CHAOS=full`).
//! Every run prints its seed; `TRIBUTARY_CHAOS_SEED=<seed>` replays it.
//!
//! One module per scenario family; the checks they share are here.

mod bad_input;
mod batch_races;
mod cancelled_reads;
mod hung_member;
mod kept_answers;
mod kill_storm;
mod outages;
mod redis_loss;
mod redis_settings;
mod slow_partition;

use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;
use tokio::sync::watch;
use tributary_it::chaos::procs::Daemon;
use tributary_it::chaos::services;
use tributary_it::chaos::{Platform, dead_letters, topic_records, valid_records};
use tributary_it::checks::check_series;
use tributary_it::master::{check_once, read_master};
use tributary_it::scenario::Ev;
use tributary_it::server::Server;
use tributary_it::{open, wait_archived_within, wait_for, wait_speed_applied_on, write_config};
use tributary_shared::bucket::HOUR_MS;
use tributary_shared::{Config, EventSchema, Granularity};

/// Malformed payloads of every kind the speed layer must dead-letter.
fn malformed(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("not json {i}").into_bytes(),
            1 => format!(r#"{{"event_id":"m{i}","type":"checkout"}}"#).into_bytes(),
            2 => format!(r#"{{"event_id":"t{i}","event_time":-5,"type":"checkout"}}"#).into_bytes(),
            _ => {
                let mut b = format!(r#"{{"event_id":"u{i}","event_time":1,"type":"x","note":""#)
                    .into_bytes();
                b.extend_from_slice(&[0xc3, 0x28]);
                b.extend_from_slice(b"\"}");
                b
            }
        })
        .collect()
}

/// The serving layer in process, or as the binary of `TRIBUTARY_TEST_BIN_DIR` when the
/// suite runs against another build.
async fn serve(mut config: Config) -> anyhow::Result<Server> {
    if std::env::var("TRIBUTARY_TEST_BIN_DIR").is_err() {
        return Server::start(config).await;
    }
    let (stop, mut rx) = watch::channel(false);
    let port = services::free_port()?;
    config.serving.listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir()?;
    let (path, env) = write_config(&config, dir.path())?;
    let mut d = Daemon::new(
        "serving",
        "serving-layer",
        &["serve"],
        &path,
        &env,
        dir.path(),
    )?;
    d.start()?;
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the serving layer", Duration::from_secs(30), || {
        let url = format!("{url}/healthz");
        async move { Ok(reqwest::get(&url).await.ok().map(|_| ())) }
    })
    .await?;
    let task = tokio::spawn(async move {
        let _dir = dir;
        let _ = rx.changed().await;
        d.stop(Duration::from_secs(10)).await.map(|_| ())
    });
    Ok(Server { url, stop, task })
}

/// What a scenario checks at the end, once everything is running again.
struct Verify<'a> {
    pf: &'a Platform,
    brokers: &'a str,
    generated: &'a [Ev],
    /// How long the platform may take to catch up (a broker's group recovering included).
    patience: Duration,
}

impl Verify<'_> {
    /// Every valid record once in the master dataset, every invalid one in the DLQ, the
    /// speed layer caught up, a batch run landed, and the API equal to the truth at minute
    /// and hour granularity, with and without a group-by.
    async fn all(&self) -> anyhow::Result<()> {
        let c = &self.pf.config;
        let topic = &c.source.topic;
        let schema = EventSchema::from_config(c);
        let started = std::time::Instant::now();
        let records = topic_records(self.brokers, topic).await?;
        println!(
            "[chaos] read {} records back from {topic} in {:.1}s",
            records.len(),
            started.elapsed().as_secs_f64()
        );
        let mut ends: std::collections::HashMap<i32, i64> = Default::default();
        for (p, o) in records.keys() {
            let e = ends.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        let (valid, evs) = valid_records(&records, &schema, self.generated);
        wait_speed_applied_on(
            &c.redis.url,
            &c.redis.key_prefix,
            "checkouts",
            topic,
            &ends,
            self.patience,
        )
        .await
        .with_context(|| self.pf.logs())?;
        let store = open(&c.store)?;
        wait_archived_within(store.clone(), topic, &ends, self.patience)
            .await
            .with_context(|| self.pf.logs())?;
        // Every partition idle, so the horizon covers everything archived.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        self.pf.batch_until_ok(Duration::from_secs(120)).await?;

        let rows = read_master(&store, topic).await?;
        check_once(&rows, &valid);

        let invalid: Vec<(i32, i64)> = records
            .iter()
            .filter(|(_, b)| schema.parse(b).is_err())
            .map(|(k, _)| *k)
            .collect();
        let (dead, _) = dead_letters(self.brokers, topic).await?;
        let lost: Vec<_> = invalid.iter().filter(|k| !dead.contains_key(k)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} invalid records are not in the DLQ: {:?}",
            lost.len(),
            invalid.len(),
            &lost[..lost.len().min(5)]
        );

        let server = serve(c.clone()).await?;
        let (from, to) = span(&evs);
        for (g, gran, extra, group_by) in [
            ("hour", Granularity::Hour, "", vec![]),
            ("minute", Granularity::Minute, "", vec![]),
            ("hour", Granularity::Hour, "&group_by=country", vec![0]),
        ] {
            let body = server.series(g, from, to, extra).await?;
            check_series(&body, gran, &group_by, &evs, &evs)
                .with_context(|| format!("{g}{extra}: {}", compact(&body)))?;
        }
        server.stop().await
    }
}

/// The hours the events cover.
fn span(evs: &[Ev]) -> (i64, i64) {
    let lo = evs.iter().map(|e| e.ts).min().unwrap_or(0);
    let hi = evs.iter().map(|e| e.ts).max().unwrap_or(0);
    (
        Granularity::Hour.floor(lo),
        Granularity::Hour.floor(hi) + HOUR_MS,
    )
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(2000).collect()
}

async fn sleep_ms(rng: &mut StdRng, lo: u64, hi: u64) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(lo..hi))).await;
}

/// Stops the daemons with SIGTERM: each flushes and exits 0.
async fn stop_clean(pf: &mut Platform) -> anyhow::Result<()> {
    for d in [&mut pf.speed, &mut pf.archive] {
        let code = d.stop(Duration::from_secs(30)).await?;
        assert_eq!(
            code,
            Some(0),
            "{} exits 0 on SIGTERM:\n{}",
            d.name,
            d.tail(30)
        );
    }
    Ok(())
}
