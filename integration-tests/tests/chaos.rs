//! The fault suite: the real binaries against the real Tansu, Redis and object stores, broken
//! the ways production breaks them. Each scenario streams generated events, breaks something
//! while they flow, and at the end checks every row of the master dataset (each valid Kafka
//! record exactly once), every dead letter, and the REST API's answers against a ground truth
//! read back from the topic itself.
//!
//! `make test` runs each scenario short; `make chaos` at full size (`TRIBUTARY_CHAOS=full`).
//! Every run prints its seed; `TRIBUTARY_CHAOS_SEED=<seed>` replays it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use object_store::ObjectStoreExt;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tributary_it::chaos::procs::Daemon;
use tributary_it::chaos::services::{self, FaultProxy, OwnBroker, OwnRedis, ProxyMode};
use tributary_it::chaos::*;
use tributary_it::checks::{check_series, get};
use tributary_it::master::{check_once, read_master};
use tributary_it::scenario::{Ev, events};
use tributary_it::*;
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS, format_rfc3339};
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

struct Server {
    url: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The serving layer in process, or as the binary of `TRIBUTARY_TEST_BIN_DIR` when the
/// suite runs against another build.
async fn serve(mut config: Config) -> anyhow::Result<Server> {
    let (stop, mut rx) = watch::channel(false);
    if std::env::var("TRIBUTARY_TEST_BIN_DIR").is_ok() {
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
        return Ok(Server { url, stop, task });
    }
    let (tx, bound) = oneshot::channel();
    let task = tokio::spawn(tributary_serving_layer::serve(config, rx, Some(tx)));
    let addr = bound.await.context("the serving layer did not bind")?;
    Ok(Server {
        url: format!("http://{addr}"),
        stop,
        task,
    })
}

impl Server {
    async fn series(&self, g: &str, from: i64, to: i64, extra: &str) -> anyhow::Result<Value> {
        let (code, body) = get(&format!(
            "{}/v1/views/checkouts/series?granularity={g}&from={}&to={}{extra}",
            self.url,
            format_rfc3339(from),
            format_rfc3339(to)
        ))
        .await?;
        anyhow::ensure!(code == 200, "series: {code} {body}");
        Ok(body)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
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

/// kill -9 of `speed-layer run`, `batch-layer archive` and `batch-layer run` at random
/// points while events stream in (a fresh group and topic, as the operator's bad day went):
/// both consumers get their partitions back, nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_storm_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let scale = Scale::from_env();
    let (seed, mut rng) = rng("kill_storm");
    let brokers = brokers();
    let topic = unique("chaos-kill");
    create_topic(&topic, 4).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    let n = scale.pick(6_000, 60_000);
    let now = now_ms();
    let evs = events(seed, n, now - 2 * HOUR_MS, 2 * HOUR_MS - MINUTE_MS);
    let per = spread(&evs, 4, &malformed(40), &mut rng);
    pf.speed.start()?;
    pf.archive.start()?;
    let chunks = scale.pick(20, 60);
    let stream = {
        let (brokers, topic, per) = (brokers.clone(), topic.clone(), per.clone());
        tokio::spawn(async move {
            produce_paced(&brokers, &topic, &per, chunks, Duration::from_millis(500)).await
        })
    };
    let target = scale.pick(10, 36);
    let mut kills = BTreeMap::<&str, u32>::new();
    let mut n_runs = 0;
    while !stream.is_finished() || kills.values().sum::<u32>() < target {
        sleep_ms(&mut rng, 200, 2500).await;
        match rng.random_range(0..5) {
            0 | 1 => {
                pf.speed.kill9().await?;
                sleep_ms(&mut rng, 0, 800).await;
                pf.speed.start()?;
                *kills.entry("speed").or_default() += 1;
            }
            2 | 3 => {
                pf.archive.kill9().await?;
                sleep_ms(&mut rng, 0, 800).await;
                pf.archive.start()?;
                *kills.entry("archive").or_default() += 1;
            }
            _ => {
                // A run killed at a random point once it holds the lock (a run refused
                // because a killed run's lock has not expired yet exits by itself).
                n_runs += 1;
                let mut run: Daemon = pf.batch_run(&format!("batch-{n_runs}"))?;
                run.start()?;
                let pid = run.pid().unwrap_or(0);
                let store = open(&pf.config.store)?;
                for _ in 0..600 {
                    let lock = match store
                        .get(&tributary_shared::layout::paths::batch_lock())
                        .await
                    {
                        Ok(r) => String::from_utf8_lossy(&r.bytes().await?).to_string(),
                        Err(_) => String::new(),
                    };
                    if lock.contains(&format!(":{pid}\"")) || !run.running() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // The storm's views are small (runs of 10-150 ms here): the kill lands
                // within the run, anywhere from taking the lock to landing.
                sleep_ms(&mut rng, 0, 60).await;
                if let Some(status) = run.exited() {
                    println!(
                        "[chaos] kill_storm: batch run {n_runs} ended ({status}) before its kill: {}",
                        run.tail(1)
                    );
                }
                run.kill9().await?;
                if run.kills > 0 {
                    *kills.entry("batch").or_default() += 1;
                }
            }
        }
    }
    stream.await??;
    println!("[chaos] kill_storm: seed {seed}, kills {kills:?}");
    Verify {
        pf: &pf,
        brokers: &brokers,
        generated: &evs,
        patience: Duration::from_secs(scale.pick(240, 420)),
    }
    .all()
    .await?;
    stop_clean(&mut pf).await
}

/// The truth of the speed layer's buckets while a wave streams in: buckets complete before
/// the wave must be exact or `rebuilding`; the wave's may only be below their final values.
struct Watch {
    complete: BTreeMap<(Vec<Option<String>>, i64), tributary_it::scenario::Truth>,
    complete_until: i64,
    finals: BTreeMap<(Vec<Option<String>>, i64), tributary_it::scenario::Truth>,
}

impl Watch {
    fn new(before: &[Ev], all: &[Ev], wave_from: i64) -> Watch {
        use tributary_it::scenario::truth;
        Watch {
            complete: truth(before, Granularity::Minute, &[], &[]),
            complete_until: Granularity::Minute.floor(wave_from),
            finals: truth(all, Granularity::Minute, &[], &[]),
        }
    }

    /// Checks one `series` answer (minute, no group-by); returns how many speed points were
    /// `rebuilding`.
    fn check(&self, body: &Value) -> anyhow::Result<usize> {
        let mut rebuilding = 0;
        for s in body["series"].as_array().context("series")? {
            for p in s["points"].as_array().context("points")? {
                let t = p["t"]
                    .as_str()
                    .and_then(tributary_shared::bucket::parse_rfc3339)
                    .context("t")?;
                let source = p["source"].as_str().unwrap_or_default();
                let events = p["values"]["events"].as_f64();
                match source {
                    "rebuilding" => {
                        assert!(p["values"].as_object().is_some_and(|v| v.is_empty()), "{p}");
                        rebuilding += 1;
                    }
                    "speed" if t + MINUTE_MS <= self.complete_until => {
                        let want = self.complete.get(&(Vec::new(), t)).map(|x| x.count as f64);
                        assert_eq!(events, want, "a complete speed bucket is exact: {p}");
                    }
                    "speed" => {
                        let max = self
                            .finals
                            .get(&(Vec::new(), t))
                            .map_or(0.0, |x| x.count as f64);
                        assert!(
                            events.unwrap_or(0.0) <= max,
                            "never above the truth: {p} > {max}"
                        );
                    }
                    "batch" | "missing" | "unreadable" => {}
                    other => anyhow::bail!("unexpected source {other}: {p}"),
                }
            }
        }
        Ok(rebuilding)
    }
}

/// Redis loses everything twice (FLUSHALL, then a restart without persistence) while events
/// stream in: the speed layer notices, rebuilds each view from Kafka from the batch horizon,
/// and meanwhile the API answers the speed buckets `rebuilding`, never a wrong number; after
/// each rebuild every bucket equals the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_losing_its_data_is_rebuilt_and_never_misreported() -> anyhow::Result<()> {
    let scale = Scale::from_env();
    let (seed, mut rng) = rng("redis_loss");
    let mut redis = OwnRedis::start(&[]).await?;
    let brokers = brokers();
    let topic = unique("chaos-redis");
    create_topic(&topic, 4).await?;
    let config = chaos_config(&brokers, &redis.url(), &topic, "tributary", "")?;
    let mut pf = Platform::new(config.clone())?;
    let now = now_ms();
    let n = scale.pick(3_000, 20_000) as u64;
    let waves = [
        events(seed, n, now - 3 * HOUR_MS, 2 * HOUR_MS),
        events(seed + 1, n / 2, now - HOUR_MS, 30 * MINUTE_MS),
        events(seed + 2, n / 2, now - 30 * MINUTE_MS, 29 * MINUTE_MS),
    ];
    pf.speed.start()?;
    pf.archive.start()?;
    let mut produced: Vec<Ev> = Vec::new();
    let server = serve(pf.config.clone()).await?;
    let (from, to) = (now - 4 * HOUR_MS, now + MINUTE_MS);
    for (i, wave) in waves.iter().enumerate() {
        let per = spread(wave, 4, &[], &mut rng);
        let mut all = produced.clone();
        all.extend(wave.iter().cloned());
        let watch = Watch::new(&produced, &all, wave.first().map_or(now, |e| e.ts));
        let stream = {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            tokio::spawn(async move {
                produce_paced(&brokers, &topic, &per, 10, Duration::from_millis(300)).await
            })
        };
        match i {
            0 => {}
            1 => {
                sleep_ms(&mut rng, 200, 1500).await;
                let mut con = redis::Client::open(redis.url())?
                    .get_multiplexed_async_connection()
                    .await?;
                let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
                println!("[chaos] redis_loss: FLUSHALL");
            }
            _ => {
                sleep_ms(&mut rng, 200, 1500).await;
                redis.restart_empty().await?;
                println!("[chaos] redis_loss: redis restarted empty");
            }
        }
        let mut rebuilding_seen = 0;
        while !stream.is_finished() {
            let body = server
                .series("minute", from, to, "&measures=events")
                .await?;
            rebuilding_seen += watch.check(&body)?;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        stream.await??;
        produced = all;
        Verify {
            pf: &pf,
            brokers: &brokers,
            generated: &produced,
            patience: Duration::from_secs(180),
        }
        .all()
        .await
        .with_context(|| format!("after wave {i}"))?;
        println!("[chaos] redis_loss: wave {i} exact ({rebuilding_seen} rebuilding points seen)");
    }
    let (_, status) = get(&format!("{}/v1/status", server.url)).await?;
    assert_eq!(status["speed"]["views"][0]["state"], "serving", "{status}");
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("tributary_serving"), "serving metrics");
    let speed_log = pf.speed.log();
    assert!(
        speed_log.contains("rebuilding the view's speed state from Kafka"),
        "the speed layer logged its rebuilds"
    );
    server.stop().await?;
    stop_clean(&mut pf).await
}

/// The broker restarted mid-stream, Redis unreachable (paused) for a while, the S3 endpoint
/// answering errors and dropping connections for a while, with a batch run during the store
/// outage: everything waits, retries and catches up; nothing is lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outages_of_broker_redis_and_store_are_ridden_out() -> anyhow::Result<()> {
    let scale = Scale::from_env();
    let (seed, mut rng) = rng("outages");
    let outage = Duration::from_secs(scale.pick(10, 30));
    let mut broker = OwnBroker::start().await?;
    let redis = OwnRedis::start(&[]).await?;
    let s3 = s3_endpoint();
    let proxy = FaultProxy::start(s3.trim_start_matches("http://")).await?;
    let topic = unique("chaos-outage");
    create_topic_on(&broker.brokers(), &topic, 4, false).await?;
    let mut config = chaos_config(&broker.brokers(), &redis.url(), &topic, "tributary", "")?;
    config.store = s3_store_config("chaos").await?;
    config.store.endpoint = Some(proxy.endpoint());
    let mut pf = Platform::new(config)?;
    let now = now_ms();
    let evs = events(
        seed,
        scale.pick(4_000, 30_000),
        now - 2 * HOUR_MS,
        2 * HOUR_MS - MINUTE_MS,
    );
    let per = spread(&evs, 4, &malformed(20), &mut rng);
    pf.speed.start()?;
    pf.archive.start()?;
    let stream = {
        let (brokers, topic) = (broker.brokers(), topic.clone());
        let chunks = scale.pick(30, 90);
        tokio::spawn(async move {
            produce_paced(&brokers, &topic, &per, chunks, Duration::from_millis(500)).await
        })
    };
    sleep_ms(&mut rng, 2000, 4000).await;
    println!("[chaos] outages: broker restart");
    broker.restart(Duration::from_secs(3)).await?;
    sleep_ms(&mut rng, 1000, 3000).await;
    println!("[chaos] outages: redis unreachable for {outage:?}");
    redis.pause()?;
    tokio::time::sleep(outage).await;
    redis.resume()?;
    sleep_ms(&mut rng, 1000, 3000).await;
    println!("[chaos] outages: the S3 endpoint fails for {outage:?}, a batch run meanwhile");
    proxy.set(ProxyMode::Fail);
    let mut run = pf.batch_run("batch-during-outage")?;
    run.start()?;
    tokio::time::sleep(outage / 2).await;
    proxy.set(ProxyMode::Reset);
    tokio::time::sleep(outage / 2).await;
    proxy.set(ProxyMode::Pass);
    let code = run.wait(Duration::from_secs(300)).await?;
    println!("[chaos] outages: the batch run during the outage exited {code:?}");
    stream.await??;
    Verify {
        pf: &pf,
        brokers: &broker.brokers(),
        generated: &evs,
        patience: Duration::from_secs(scale.pick(240, 420)),
    }
    .all()
    .await?;
    stop_clean(&mut pf).await
}

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

/// The run id a `batch-layer run` printed ("run <id> done ...").
fn run_id_of(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix("run ")?
            .split_whitespace()
            .next()
            .map(str::to_string)
    })
}

/// Two `batch-layer run` at once, one slowed (SIGSTOP) past `lock_ttl`, one killed midway:
/// exactly one manifest version per run that landed, every file a manifest names present, and
/// no orphaned view file left after the next run's GC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_slowed_and_killed_batch_runs_land_once() -> anyhow::Result<()> {
    use tributary_batch_layer::manifest::Manifest;
    let (seed, mut rng) = rng("batch_races");
    let brokers = brokers();
    let topic = unique("chaos-batch");
    create_topic(&topic, 2).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    let store = open(&pf.config.store)?;
    let now = now_ms();
    // Several days, so a run has several dates to write.
    let evs = events(seed, 6_000, now - 6 * 24 * HOUR_MS, 6 * 24 * HOUR_MS);
    let per = spread(&evs, 2, &[], &mut rng);
    produce_paced(&brokers, &topic, &per, 1, Duration::ZERO).await?;
    pf.archive.start()?;
    let ends: std::collections::HashMap<i32, i64> =
        per.iter().map(|(p, v)| (*p, v.len() as i64)).collect();
    wait_archived_within(store.clone(), &topic, &ends, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let version = |m: &Option<(Manifest, String)>| m.as_ref().map_or(0, |(m, _)| m.version);

    // A and B at once: A takes the lock and is paused (SIGSTOP) past lock_ttl; B is refused
    // while A's lock is fresh; C, once it expired, takes it over and lands.
    let mut a = pf.batch_run("batch-a")?;
    a.start()?;
    let a_pid = a.pid().context("a's pid")?;
    wait_for("run A to hold the lock", Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            let lock = match store
                .get(&tributary_shared::layout::paths::batch_lock())
                .await
            {
                Ok(r) => String::from_utf8_lossy(&r.bytes().await?).to_string(),
                Err(_) => return Ok(None),
            };
            let held = serde_json::from_str::<Value>(&lock).ok().is_some_and(|l| {
                l["owner"]
                    .as_str()
                    .is_some_and(|o| o.ends_with(&format!(":{a_pid}")))
                    && l["released"] != Value::Bool(true)
            });
            Ok(held.then_some(()))
        }
    })
    .await?;
    tributary_it::chaos::procs::signal(a_pid, "STOP")?;
    let mut b = pf.batch_run("batch-b")?;
    b.start()?;
    assert_eq!(
        b.wait(Duration::from_secs(60)).await?,
        Some(1),
        "B is refused: {}",
        b.tail(5)
    );
    assert!(b.log().contains("holds the lock"), "{}", b.tail(5));
    let before = Manifest::load(&store, "checkouts").await?;
    tokio::time::sleep(Duration::from_secs(6)).await; // past lock_ttl (5s)
    let mut c = pf.batch_run("batch-c")?;
    c.start()?;
    assert_eq!(
        c.wait(Duration::from_secs(300)).await?,
        Some(0),
        "C lands: {}",
        c.tail(20)
    );
    let c_id = run_id_of(&c.log()).context("C's run id")?;
    let after_c = Manifest::load(&store, "checkouts").await?;
    assert_eq!(
        version(&after_c),
        version(&before) + 1,
        "C landed one version"
    );
    tributary_it::chaos::procs::signal(a_pid, "CONT")?;
    let a_code = a.wait(Duration::from_secs(300)).await?;
    let after_a = Manifest::load(&store, "checkouts").await?;
    assert_eq!(
        after_a.as_ref().map(|(m, _)| m.run_id.clone()),
        Some(c_id.clone()),
        "A (exit {a_code:?}) did not land over C:\n{}",
        a.tail(10)
    );
    assert_eq!(version(&after_a), version(&after_c));
    assert_ne!(
        a_code,
        Some(0),
        "A lost its lock and says so: {}",
        a.tail(10)
    );

    // D recomputes every date (a backfill) and is killed midway: its files are orphans.
    let mut d = tributary_it::chaos::procs::Daemon::new(
        "batch-d",
        "batch-layer",
        &[
            "backfill",
            "--from",
            &format_rfc3339(now - 8 * 24 * HOUR_MS),
            "--to",
            &format_rfc3339(now + HOUR_MS),
        ],
        &pf.config_path,
        &pf.env,
        pf.dir.path(),
    )?;
    d.start()?;
    let named = |m: &Option<(Manifest, String)>| -> std::collections::BTreeSet<String> {
        m.iter()
            .flat_map(|(m, _)| {
                m.dates
                    .values()
                    .flat_map(|d| d.files.values().map(|f| f.path.clone()))
                    .chain(m.retired.iter().map(|r| r.path.clone()))
            })
            .collect()
    };
    let view_files = || {
        let store = store.clone();
        async move {
            use futures::TryStreamExt;
            let metas: Vec<object_store::ObjectMeta> = store
                .list(Some(&object_store::path::Path::from("views")))
                .try_collect()
                .await?;
            anyhow::Ok(
                metas
                    .into_iter()
                    .map(|m| m.location.to_string())
                    .filter(|p| p.ends_with(".parquet"))
                    .collect::<std::collections::BTreeSet<String>>(),
            )
        }
    };
    let manifests = || {
        let store = store.clone();
        async move {
            let mut all = Vec::new();
            for v in ["checkouts", "all_types"] {
                all.push(Manifest::load(&store, v).await?);
            }
            anyhow::Ok(all)
        }
    };
    let named_all = |ms: &[Option<(Manifest, String)>]| -> std::collections::BTreeSet<String> {
        ms.iter().flat_map(named).collect()
    };
    let known = named_all(&manifests().await?);
    wait_for(
        "run D to write a view file",
        Duration::from_secs(120),
        || {
            let known = known.clone();
            let files = view_files();
            async move { Ok((files.await?.difference(&known).count() > 0).then_some(())) }
        },
    )
    .await?;
    sleep_ms(&mut rng, 0, 300).await;
    d.kill9().await?;
    let orphans: Vec<String> = view_files().await?.difference(&known).cloned().collect();
    println!(
        "[chaos] batch_races: D killed, leaving {} orphaned file(s)",
        orphans.len()
    );
    assert!(!orphans.is_empty());

    // E, after D's lock expired and the grace period passed, lands and collects D's files.
    tokio::time::sleep(Duration::from_secs(6)).await;
    pf.batch_until_ok(Duration::from_secs(120)).await?;
    let last = manifests().await?;
    let files = view_files().await?;
    let named_now = named_all(&last);
    for (m, _) in last.iter().flatten() {
        for d in m.dates.values() {
            for f in d.files.values() {
                assert!(
                    files.contains(&f.path),
                    "the manifest names {}, which is missing",
                    f.path
                );
            }
        }
    }
    let stray: Vec<&String> = files.difference(&named_now).collect();
    assert!(stray.is_empty(), "orphaned view files after GC: {stray:?}");
    pf.archive.stop(Duration::from_secs(30)).await?;
    Ok(())
}

/// A speed bucket is sealed (and cached) only when every partition of the topic is past it:
/// a partition that has applied nothing yet (a start, a catch-up) keeps them open, so answers
/// never stick at a partial value. (Seen before: the serving layer sealed buckets on the
/// partitions that had published progress and served partial values for minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_that_has_applied_nothing_keeps_buckets_open() -> anyhow::Result<()> {
    let (seed, mut rng) = rng("slow_partition");
    let brokers = brokers();
    let topic = unique("chaos-slow");
    create_topic(&topic, 2).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    let now = now_ms();
    // Minutes well behind the watermark a single partition would set.
    let evs = events(seed, 2_000, now - 40 * MINUTE_MS, 38 * MINUTE_MS);
    let per = spread(&evs, 2, &[], &mut rng);
    pf.speed.start()?;
    let server = serve(pf.config.clone()).await?;
    let only_p0: BTreeMap<i32, Vec<Vec<u8>>> = per
        .iter()
        .filter(|(p, _)| **p == 0)
        .map(|(p, v)| (*p, v.clone()))
        .collect();
    produce_paced(&brokers, &topic, &only_p0, 1, Duration::ZERO).await?;
    let p0_end: std::collections::HashMap<i32, i64> = [(0, per[&0].len() as i64)].into();
    wait_speed_applied_on(
        &redis_url(),
        &pf.config.redis.key_prefix,
        "checkouts",
        &topic,
        &p0_end,
        Duration::from_secs(90),
    )
    .await?;
    let (from, to) = (now - 45 * MINUTE_MS, now + MINUTE_MS);
    // A dashboard polls while partition 1 has nothing yet.
    for _ in 0..5 {
        server
            .series("minute", from, to, "&measures=events")
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let only_p1: BTreeMap<i32, Vec<Vec<u8>>> = per
        .iter()
        .filter(|(p, _)| **p == 1)
        .map(|(p, v)| (*p, v.clone()))
        .collect();
    produce_paced(&brokers, &topic, &only_p1, 1, Duration::ZERO).await?;
    let ends: std::collections::HashMap<i32, i64> =
        per.iter().map(|(p, v)| (*p, v.len() as i64)).collect();
    wait_speed_applied_on(
        &redis_url(),
        &pf.config.redis.key_prefix,
        "checkouts",
        &topic,
        &ends,
        Duration::from_secs(90),
    )
    .await?;
    // Within a couple of refreshes every minute equals the truth of both partitions.
    let want = tributary_it::scenario::truth(&evs, Granularity::Minute, &[], &[]);
    wait_for(
        "answers equal to the truth",
        Duration::from_secs(10),
        || {
            let server = &server;
            let want = &want;
            async move {
                let body = server
                    .series("minute", from, to, "&measures=events")
                    .await?;
                let mut wrong = Vec::new();
                for p in body["series"][0]["points"].as_array().context("points")? {
                    let t = p["t"]
                        .as_str()
                        .and_then(tributary_shared::bucket::parse_rfc3339);
                    let got = p["values"]["events"].as_f64();
                    let truth = t
                        .and_then(|t| want.get(&(Vec::new(), t)))
                        .map(|x| x.count as f64);
                    if got != truth {
                        wrong.push(format!("{}: {got:?} vs {truth:?}", p["t"]));
                    }
                }
                Ok(wrong.is_empty().then_some(()).or_else(|| {
                    println!(
                        "[chaos] slow_partition: {} minutes differ, e.g. {:?}",
                        wrong.len(),
                        wrong.first()
                    );
                    None
                }))
            }
        },
    )
    .await?;
    server.stop().await?;
    pf.speed.stop(Duration::from_secs(30)).await?;
    Ok(())
}

/// Redis settings checked at start: a Redis that may evict keys is refused (naming the
/// setting); a numeric password given through the environment works, and a wrong one fails
/// fast without being echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_settings_are_checked_at_start() -> anyhow::Result<()> {
    let topic = unique("chaos-redis-settings");
    create_topic(&topic, 1).await?;
    let evicting =
        OwnRedis::start(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]).await?;
    let config = chaos_config(&brokers(), &evicting.url(), &topic, "tributary", "")?;
    let mut pf = Platform::new(config)?;
    pf.speed.start()?;
    let code = pf.speed.wait(Duration::from_secs(30)).await?;
    let log = pf.speed.log();
    assert_eq!(code, Some(1), "refused: {log}");
    assert!(
        log.contains("maxmemory-policy") && log.contains("noeviction"),
        "{log}"
    );

    let locked = OwnRedis::start(&["--requirepass", "123456"]).await?;
    for (password, ok) in [("123456", true), ("654321", false)] {
        let config = chaos_config(&brokers(), &locked.url(), &topic, "tributary", "")?;
        let mut pf = Platform::new(config)?;
        pf.env
            .push(("TRIBUTARY__REDIS__PASSWORD".into(), password.into()));
        pf.speed = Daemon::new(
            "speed",
            "speed-layer",
            &["run"],
            &pf.config_path,
            &pf.env,
            pf.dir.path(),
        )?;
        pf.speed.start()?;
        if ok {
            let mut con =
                redis::Client::open(format!("redis://:123456@127.0.0.1:{}/0", locked.port))?
                    .get_multiplexed_async_connection()
                    .await?;
            wait_for(
                "the speed layer to write its epoch",
                Duration::from_secs(30),
                || {
                    let mut con = con.clone();
                    async move {
                        let e: Option<String> = redis::cmd("GET")
                            .arg("tributary:{checkouts}:epoch")
                            .query_async(&mut con)
                            .await?;
                        Ok(e)
                    }
                },
            )
            .await
            .with_context(|| pf.speed.log())?;
            let _: () = redis::cmd("PING").query_async(&mut con).await?;
            assert_eq!(pf.speed.stop(Duration::from_secs(30)).await?, Some(0));
        } else {
            let started = std::time::Instant::now();
            let code = pf.speed.wait(Duration::from_secs(30)).await?;
            let log = pf.speed.log();
            assert_eq!(code, Some(1), "{log}");
            assert!(started.elapsed() < Duration::from_secs(15), "fails fast");
            assert!(
                !log.contains(password),
                "the password is never echoed: {log}"
            );
            assert!(
                log.contains(&format!("127.0.0.1:{}", locked.port)),
                "names the endpoint: {log}"
            );
        }
    }
    Ok(())
}

/// A request cancelled while its speed read waits (a client gone, the request timeout) leaves
/// no read behind in the single-flight map, and the next request reads afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_leave_no_read_in_flight() -> anyhow::Result<()> {
    use tributary_serving_layer::sources::Sources;
    use tributary_speed_layer::read::SpeedQuery;
    let redis = OwnRedis::start(&[]).await?;
    let config = chaos_config(&brokers(), &redis.url(), "unused", "tributary", "")?;
    let sources = Sources::new(config)?;
    let view = sources.view("checkouts").context("view")?.clone();
    let query = || SpeedQuery {
        granularity: Granularity::Minute,
        buckets: vec![0, 60_000],
        filters: Vec::new(),
        group_by: Vec::new(),
        measures: vec![0],
        epoch: None,
        max_groups: 100,
    };
    sources.redis().await?;
    redis.pause()?;
    let mut cancelled = 0;
    for i in 0..20 {
        let key = format!("k{}", i % 3);
        let r = tokio::time::timeout(
            Duration::from_millis(50),
            sources.speed_series(key, &view, query()),
        )
        .await;
        // Most wait on the paused Redis and are cancelled; a few share a read that just
        // timed out.
        cancelled += usize::from(r.is_err());
    }
    assert!(
        cancelled > 10,
        "requests were cancelled while their read waited ({cancelled})"
    );
    redis.resume()?;
    wait_for("no read left in flight", Duration::from_secs(10), || {
        let n = sources.inflight_reads();
        async move { Ok((n == 0).then_some(())) }
    })
    .await?;
    let fresh = sources.speed_series("k0".into(), &view, query()).await;
    assert!(fresh.is_ok(), "a new read succeeds: {fresh:?}");
    Ok(())
}

/// A member that holds partitions and never reads them (a hung process whose heartbeat
/// thread lives on): rejoining the group does not free them, so after two rejoins the speed
/// layer and the archiver read every partition without the group, and everything is applied
/// and archived exactly once all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_holds_partitions_and_reads_nothing_is_worked_around() -> anyhow::Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let (seed, mut rng) = rng("hung_member");
    let brokers = brokers();
    let topic = unique("chaos-hung");
    create_topic(&topic, 4).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let mut pf = Platform::new(config)?;
    // The hung members: one in each group, polling (so they keep their partitions) and never
    // committing or writing anything.
    let mut hung = Vec::new();
    for group in [
        pf.config.source.speed_group(),
        pf.config.source.archive_group(),
    ] {
        let c: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .create()?;
        c.subscribe(&[&topic])?;
        hung.push(tokio::spawn(async move {
            loop {
                let _ = c.recv().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = now_ms();
    let evs = events(seed, 6_000, now - HOUR_MS, HOUR_MS - MINUTE_MS);
    let per = spread(&evs, 4, &malformed(8), &mut rng);
    pf.speed.start()?;
    pf.archive.start()?;
    // A stream that lasts until both have given up on the group (the hung member's
    // partitions keep having unread records whatever the assignment), at most a few minutes.
    let alone = |d: &Daemon| {
        d.log()
            .contains("every partition without the consumer group")
    };
    let chunks = 200;
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while sent < chunks
        && !(alone(&pf.speed) && alone(&pf.archive))
        && tokio::time::Instant::now() < deadline
    {
        let slice: BTreeMap<i32, Vec<Vec<u8>>> = per
            .iter()
            .map(|(p, v)| {
                let size = v.len().div_ceil(chunks);
                (*p, v.iter().skip(sent * size).take(size).cloned().collect())
            })
            .collect();
        produce_paced(&brokers, &topic, &slice, 1, Duration::from_secs(1)).await?;
        sent += 1;
    }
    let rest: BTreeMap<i32, Vec<Vec<u8>>> = per
        .iter()
        .map(|(p, v)| {
            let size = v.len().div_ceil(chunks);
            (*p, v.iter().skip(sent * size).cloned().collect())
        })
        .collect();
    produce_paced(&brokers, &topic, &rest, 1, Duration::ZERO).await?;
    Verify {
        pf: &pf,
        brokers: &brokers,
        generated: &evs,
        patience: Duration::from_secs(400),
    }
    .all()
    .await?;
    for (d, what) in [(&pf.speed, "speed"), (&pf.archive, "archive")] {
        assert!(
            d.log()
                .contains("every partition without the consumer group"),
            "the {what} read every partition alone:\n{}",
            d.tail(30)
        );
    }
    for h in hung {
        h.abort();
    }
    stop_clean(&mut pf).await
}
