//! The whole platform on the real stack: speed layer, archive, batch run and serving layer
//! on one topic. Generated history with late events, producer duplicates and malformed
//! events; the batch runs; the API answers per bucket from the right layer, exactly where it
//! must be exact and within the sketches' bounds elsewhere. Then more events arrive, the batch
//! runs again, the horizon moves, and the answers stay right. Also: Redis down (batch still
//! served, speed buckets listed), the 400s, top, status, health, metrics and OpenAPI.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tributary_batch_layer::metrics::BatchMetrics;
use tributary_batch_layer::run::{RunRequest, run_once};
use tributary_batch_layer::state::StateStore;
use tributary_it::checks::{check_series, get};
use tributary_it::scenario::*;
use tributary_it::*;
use tributary_shared::bucket::{HOUR_MS, MINUTE_MS, format_rfc3339, parse_rfc3339};
use tributary_shared::{Config, Granularity};

const SETTINGS: &str = r#"
[speed]
allowed_lateness = "5m"
dedup_window = "1h"
flush_interval = "100ms"
metrics_listen = "127.0.0.1:0"

[batch]
archive_max_rows = 5000
archive_flush_interval = "300ms"
metrics_listen = "127.0.0.1:0"
idle_timeout = "1s"

[serving]
listen = "127.0.0.1:0"
max_buckets = 2000
"#;

struct Server {
    url: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve(config: Config) -> anyhow::Result<Server> {
    let (stop, rx) = watch::channel(false);
    let (tx, bound) = oneshot::channel();
    let task = tokio::spawn(tributary_serving_layer::serve(config, rx, Some(tx)));
    let addr = bound.await.context("the serving layer did not bind")?;
    Ok(Server {
        url: format!("http://{addr}"),
        stop,
        task,
    })
}

/// Waits for the speed layer to apply, and the archive to commit, every record.
async fn wait_consumed(config: &Config, ends: &HashMap<i32, i64>) -> anyhow::Result<()> {
    let topic = &config.source.topic;
    wait_speed_applied(&config.redis.key_prefix, "checkouts", topic, ends).await?;
    wait_archived(open(&config.store)?, topic, ends).await
}

fn malformed() -> Vec<Vec<u8>> {
    let future = now_ms() + 3_600_000;
    let mut out = Vec::new();
    for i in 0..10 {
        out.push(format!("not json {i}").into_bytes());
        out.push(format!(r#"{{"event_id":"m{i}","type":"checkout"}}"#).into_bytes());
        out.push(
            format!(
                r#"{{"event_id":"f{i}","event_time":{future},"type":"checkout","amount":1.0}}"#
            )
            .into_bytes(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_pipeline_answers_from_the_right_layer() -> anyhow::Result<()> {
    let topic = unique("e2e");
    create_topic(&topic, 4).await?;
    let store_dir = tempfile::tempdir()?;
    let mut config = test_config(&topic, &unique("e2e"), &format!("{SETTINGS}{VIEWS}"))?;
    config.store.url = format!("file://{}", store_dir.path().display());
    let store = open(&config.store)?;
    let now = now_ms();

    // History: 2.5 h ending 30 min ago (resends on the same partition, which the speed
    // layer's dedup window and the batch both remove), late events 2 h behind, malformed ones.
    let wave1 = events(11, 6000, now - 3 * HOUR_MS, 150 * MINUTE_MS);
    let late = events(12, 300, now - 170 * MINUTE_MS, HOUR_MS);
    let mut ends = produce(&topic, &wave1, 25, Resend::SamePartition, 4, &malformed()).await?;
    ends = add_ends(
        &ends,
        &produce(&topic, &late, 0, Resend::SamePartition, 4, &[]).await?,
    );

    let (stop_speed, rx) = watch::channel(false);
    let speed = tokio::spawn(tributary_speed_layer::run(config.clone(), rx));
    let (stop_archive, rx) = watch::channel(false);
    let archive = tokio::spawn(tributary_batch_layer::archive(config.clone(), rx));
    let server = serve(config.clone()).await?;
    wait_consumed(&config, &ends).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // every partition idle
    let metrics = BatchMetrics::new();
    run_once(&config, &store, &metrics, &RunRequest::default()).await?;

    let mut all: Vec<Ev> = wave1.clone();
    all.extend(late.iter().cloned());
    let from = Granularity::Hour.floor(now - 4 * HOUR_MS);
    let to = Granularity::Hour.floor(now) + 2 * HOUR_MS;
    let q = |g: &str, extra: &str| {
        format!(
            "{}/v1/views/checkouts/series?granularity={g}&from={}&to={}{extra}",
            server.url,
            format_rfc3339(from),
            format_rfc3339(to)
        )
    };
    let (code, body) = get(&q("hour", "")).await?;
    assert_eq!(code, 200, "{body}");
    let h1 = body["batch_horizon"]
        .as_str()
        .and_then(parse_rfc3339)
        .context("horizon")?;
    assert_eq!(
        h1,
        wave1.iter().map(|e| e.ts).max().unwrap_or(0) - 5 * MINUTE_MS
    );
    let (b, s) = check_series(&body, Granularity::Hour, &[], &all, &wave1)?;
    assert!(b >= 2 && s >= 1, "hours: {b} batch, {s} speed");
    let (code, body) = get(&q("minute", "&group_by=country")).await?;
    assert_eq!(code, 200, "{body}");
    let (b, s) = check_series(&body, Granularity::Minute, &[0], &all, &wave1)?;
    assert!(b > 100 && s > 10, "minutes: {b} batch, {s} speed");
    let (_, body) = get(&q("hour", "&group_by=country,device")).await?;
    check_series(&body, Granularity::Hour, &[0, 1], &all, &wave1)?;

    // Status: DLQ counts, late events, archive and batch progress, no warning for the horizon.
    let status = wait_for(
        "the DLQ counts in /v1/status",
        Duration::from_secs(30),
        || {
            let url = format!("{}/v1/status", server.url);
            async move {
                let (_, s) = get(&url).await?;
                let dlq: u64 = s["speed"]["dlq"]
                    .as_object()
                    .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
                Ok((dlq == 30).then_some(s))
            }
        },
    )
    .await?;
    assert_eq!(
        status["speed"]["late_dropped"]["checkouts"].as_u64(),
        Some(late.iter().filter(|e| e.checkout).count() as u64)
    );
    assert_eq!(
        status["archive"]["partitions"].as_array().map(Vec::len),
        Some(4)
    );
    assert!(status["batch"]["next_run"].is_string());
    assert_eq!(status["batch"]["last_run"]["ok"], Value::Bool(true));
    assert!(
        status["warnings"].as_array().is_some_and(|w| w
            .iter()
            .all(|w| !w.as_str().unwrap_or("").contains("behind speed retention"))),
        "{status}"
    );

    // top: the union of batch and speed per country.
    let (code, top) = get(&format!(
        "{}/v1/views/checkouts/top?dimension=country&measure=revenue&k=3&from={}&to={}",
        server.url,
        format_rfc3339(from),
        format_rfc3339(to)
    ))
    .await?;
    assert_eq!(code, 200, "{top}");
    let mut want: BTreeMap<Option<String>, f64> = BTreeMap::new();
    let batch_day = truth(&all, Granularity::Minute, &[0], &[]);
    let speed_day = truth(&wave1, Granularity::Minute, &[0], &[]);
    for ((g, t), tr) in batch_day.iter() {
        if Granularity::Hour.end(Granularity::Hour.floor(*t)) <= h1 {
            *want.entry(g[0].clone()).or_default() += tr.value("revenue").unwrap_or(0.0);
        }
    }
    for ((g, t), tr) in speed_day.iter() {
        if Granularity::Hour.end(Granularity::Hour.floor(*t)) > h1 {
            *want.entry(g[0].clone()).or_default() += tr.value("revenue").unwrap_or(0.0);
        }
    }
    let mut ranked: Vec<(Option<String>, f64)> = want.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let rows = top["rows"].as_array().context("rows")?;
    assert_eq!(rows.len(), 3);
    for (row, (country, revenue)) in rows.iter().zip(&ranked) {
        assert_eq!(row["value"].as_str().map(str::to_string), *country, "{top}");
        assert!(
            close(row["measure_value"].as_f64().unwrap_or(f64::NAN), *revenue),
            "{top}"
        );
        assert_eq!(row["source"], "batch+speed");
        assert_eq!(row["exact"], Value::Bool(true));
    }

    // Bad requests: 400 naming the parameter.
    for (query, param, code) in [
        ("/v1/views/nope/series", "view", "unknown_view"),
        (
            "/v1/views/checkouts/series?measures=nope",
            "measures",
            "unknown_measure",
        ),
        (
            "/v1/views/checkouts/series?group_by=planet",
            "group_by",
            "unknown_dimension",
        ),
        (
            "/v1/views/checkouts/series?from=2026-11-21T10:00:00Z&to=2026-11-21T09:00:00Z",
            "from",
            "bad_range",
        ),
        (
            "/v1/views/checkouts/series?granularity=minute&from=2026-01-01&to=2026-11-01",
            "granularity",
            "too_many_buckets",
        ),
        (
            "/v1/views/checkouts/series?filter=country",
            "filter",
            "bad_parameter",
        ),
        (
            "/v1/views/checkouts/top?measure=revenue",
            "dimension",
            "missing_parameter",
        ),
        (
            "/v1/views/checkouts/series?to=9223372036854775807",
            "to",
            "bad_parameter",
        ),
        (
            "/v1/views/checkouts/top?dimension=country&measure=events&from=-9223372036854775808",
            "from",
            "bad_parameter",
        ),
        (
            &format!(
                "/v1/views/checkouts/series?filter=country:{}",
                (0..1001)
                    .map(|i| format!("c{i}"))
                    .collect::<Vec<_>>()
                    .join("|")
            ),
            "filter",
            "too_many_values",
        ),
    ] {
        let (status, body) = get(&format!("{}{query}", server.url)).await?;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert_eq!(body["error"]["parameter"], param, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // A measure named twice is answered once.
    let (code, body) = get(&q("hour", "&measures=events,events")).await?;
    assert_eq!(code, 200, "{body}");
    let keys: Vec<&String> = body["series"][0]["points"][0]["values"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["events"], "{body}");

    // Work per request is bounded: a group-by past serving.max_groups is a 400 naming it.
    let mut few_groups = config.clone();
    few_groups.serving.max_groups = 2;
    let bounded = serve(few_groups).await?;
    for (query, param) in [
        (q("hour", "&group_by=country"), "group_by"),
        (
            format!(
                "{}/v1/views/checkouts/top?dimension=country&measure=events&from={}&to={}",
                server.url,
                format_rfc3339(from),
                format_rfc3339(to)
            ),
            "dimension",
        ),
    ] {
        let (status, body) = get(&query.replace(&server.url, &bounded.url)).await?;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "too_many_groups", "{body}");
        assert_eq!(body["error"]["parameter"], param, "{body}");
    }
    let _ = bounded.stop.send(true);
    bounded.task.await??;

    // Health, readiness, metrics, OpenAPI, CORS.
    assert_eq!(get(&format!("{}/healthz", server.url)).await?.0, 200);
    assert_eq!(get(&format!("{}/readyz", server.url)).await?.0, 200);
    let metrics_text = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    assert!(
        metrics_text.contains("tributary_serving_requests_total"),
        "{metrics_text}"
    );
    let (_, api) = get(&format!("{}/openapi.json", server.url)).await?;
    for path in [
        "/v1/views",
        "/v1/views/{view}",
        "/v1/views/{view}/series",
        "/v1/views/{view}/top",
        "/v1/status",
    ] {
        assert!(api["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(api["components"]["schemas"]["SeriesResponse"].is_object());
    let cors = reqwest::Client::new()
        .get(format!("{}/v1/views", server.url))
        .header("Origin", "http://dashboards.example")
        .send()
        .await?;
    assert_eq!(
        cors.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );

    // Redis down (a second server pointed at a closed port): batch still served, the speed
    // buckets listed as unreadable, never zero.
    let mut no_redis = config.clone();
    no_redis.redis.url = "redis://127.0.0.1:1/0".into();
    let degraded = serve(no_redis).await?;
    let started = std::time::Instant::now();
    let (code, body) = get(&q("hour", "").replace(&server.url, &degraded.url)).await?;
    assert_eq!(code, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "Redis down must not stall a query"
    );
    let unreadable: BTreeSet<&str> = body["unreadable"]
        .as_array()
        .context("unreadable")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !unreadable.is_empty() && body["errors"].as_array().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let mut batch_seen = 0;
    for p in body["series"][0]["points"].as_array().context("points")? {
        let t = p["t"].as_str().and_then(parse_rfc3339).context("t")?;
        if Granularity::Hour.end(t) <= h1 {
            assert_eq!(p["source"], "batch", "{p}");
            batch_seen += 1;
        } else {
            assert_eq!(p["source"], "unreadable", "{p}");
            assert!(unreadable.contains(p["t"].as_str().unwrap_or("")));
        }
    }
    assert!(batch_seen >= 2);
    let (code, ready) = get(&format!("{}/readyz", degraded.url)).await?;
    assert_eq!(code, 503, "{ready}");
    let _ = degraded.stop.send(true);
    degraded.task.await??;

    // More events arrive up to now; the batch runs again; the horizon moves; still right.
    let wave2 = events(13, 2000, now - 30 * MINUTE_MS, 29 * MINUTE_MS);
    let more = produce(&topic, &wave2, 25, Resend::SamePartition, 4, &[]).await?;
    let ends2 = add_ends(&ends, &more);
    wait_consumed(&config, &ends2).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run_once(&config, &store, &metrics, &RunRequest::default()).await?;
    all.extend(wave2.iter().cloned());
    let mut applied = wave1.clone();
    applied.extend(wave2.iter().cloned());
    let (code, body) = get(&q("minute", "")).await?;
    assert_eq!(code, 200, "{body}");
    let h2 = body["batch_horizon"]
        .as_str()
        .and_then(parse_rfc3339)
        .context("horizon")?;
    assert!(
        h2 > h1 + 20 * MINUTE_MS,
        "the horizon moved from {h1} to {h2}"
    );
    let (b, s) = check_series(&body, Granularity::Minute, &[], &all, &applied)?;
    assert!(b > 100 && s >= 1, "after wave 2: {b} batch, {s} speed");

    // Drain the DLQ to a file, fix the events that lacked a time, replay them: both layers
    // take them, nothing new lands in the DLQ, and a second drain finds nothing left.
    let dir = tempfile::tempdir()?;
    let (cfg_path, env) = write_config(&config, dir.path())?;
    let drained = dir.path().join("dlq.jsonl");
    let dlq_cli = |args: Vec<String>| {
        let (cfg_path, env) = (cfg_path.clone(), env.clone());
        async move {
            let out = tokio::process::Command::new(binary("speed-layer")?)
                .arg("--config")
                .arg(&cfg_path)
                .arg("dlq")
                .args(args)
                .envs(env)
                .output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            anyhow::ensure!(out.status.success(), "speed-layer dlq: {text}");
            Ok::<_, anyhow::Error>(text)
        }
    };
    let out = dlq_cli(vec![
        "drain".into(),
        "--out".into(),
        drained.display().to_string(),
        "--idle".into(),
        "3s".into(),
    ])
    .await?;
    assert!(out.contains("drained 30 record(s)"), "{out}");
    let lines: Vec<Value> = std::fs::read_to_string(&drained)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        lines
            .iter()
            .all(|l| l["error"].as_str().is_some_and(|e| !e.is_empty())),
        "every record says why"
    );
    let fixed_time = now_ms() - 10 * MINUTE_MS;
    let fixed: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let mut ev: Value = serde_json::from_str(l["payload"].as_str()?).ok()?;
            if ev.get("event_time").is_some() || !ev["event_id"].as_str()?.starts_with('m') {
                return None;
            }
            ev["event_time"] = fixed_time.into();
            Some(serde_json::json!({"payload": ev.to_string(), "error": l["error"], "partition": l["partition"], "offset": l["offset"]}).to_string())
        })
        .collect();
    assert_eq!(fixed.len(), 10);
    let fixed_file = dir.path().join("fixed.jsonl");
    std::fs::write(&fixed_file, fixed.join("\n"))?;
    let rows_before: u64 = StateStore::new(store.clone(), &topic)
        .load_all()
        .await?
        .iter()
        .map(|(_, s)| s.rows)
        .sum();
    let out = dlq_cli(vec![
        "replay".into(),
        "--file".into(),
        fixed_file.display().to_string(),
    ])
    .await?;
    assert!(out.contains("produced 10 record(s)"), "{out}");
    wait_for(
        "the replayed events in the master dataset",
        Duration::from_secs(60),
        || {
            let states = StateStore::new(store.clone(), &topic);
            async move {
                let rows: u64 = states.load_all().await?.iter().map(|(_, s)| s.rows).sum();
                Ok((rows == rows_before + 10).then_some(()))
            }
        },
    )
    .await?;
    let (_, status) = get(&format!("{}/v1/status", server.url)).await?;
    let dlq: u64 = status["speed"]["dlq"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    assert_eq!(dlq, 30, "the fixed events are valid: {status}");
    let out = dlq_cli(vec![
        "drain".into(),
        "--out".into(),
        dir.path().join("again.jsonl").display().to_string(),
        "--idle".into(),
        "2s".into(),
    ])
    .await?;
    assert!(out.contains("drained 0 record(s)"), "{out}");

    for stop in [stop_speed, stop_archive] {
        let _ = stop.send(true);
    }
    speed.await??;
    archive.await??;
    let _ = server.stop.send(true);
    server.task.await??;
    Ok(())
}
