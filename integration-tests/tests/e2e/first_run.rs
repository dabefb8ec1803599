//! The phases on the state of the first batch run: series from the right layer, status, top,
//! the 400s, bounded work per request, the operational endpoints, and Redis down.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tributary_it::checks::{check_series, get};
use tributary_it::scenario::{close, truth};
use tributary_it::server::Server;
use tributary_it::wait_for;
use tributary_shared::Granularity;
use tributary_shared::bucket::{MINUTE_MS, format_rfc3339, parse_rfc3339};

use crate::fixture::{Ctx, fixture, got, horizon};

/// The series at hour (no group-by), minute by country, hour by country and device.
pub struct Series {
    pub hour: (u16, Value),
    pub minute_by_country: (u16, Value),
    pub hour_by_country_device: Value,
}

pub async fn observe_series(ctx: &Ctx) -> anyhow::Result<Series> {
    Ok(Series {
        hour: get(&ctx.q("hour", "")).await?,
        minute_by_country: get(&ctx.q("minute", "&group_by=country")).await?,
        hour_by_country_device: get(&ctx.q("hour", "&group_by=country,device")).await?.1,
    })
}

#[test]
fn the_whole_pipeline_answers_from_the_right_layer() -> anyhow::Result<()> {
    let f = fixture()?;
    let s = got(&f.series)?;
    let all = f.first_events();
    let (code, body) = &s.hour;
    assert_eq!(*code, 200, "{body}");
    let h1 = horizon(body)?;
    assert_eq!(
        h1,
        f.wave1.iter().map(|e| e.ts).max().unwrap_or(0) - 5 * MINUTE_MS
    );
    let (b, s_) = check_series(body, Granularity::Hour, &[], &all, &f.wave1)?;
    assert!(b >= 2 && s_ >= 1, "hours: {b} batch, {s_} speed");
    let (code, body) = &s.minute_by_country;
    assert_eq!(*code, 200, "{body}");
    let (b, s_) = check_series(body, Granularity::Minute, &[0], &all, &f.wave1)?;
    assert!(b > 100 && s_ > 10, "minutes: {b} batch, {s_} speed");
    check_series(
        &s.hour_by_country_device,
        Granularity::Hour,
        &[0, 1],
        &all,
        &f.wave1,
    )?;
    Ok(())
}

/// `/v1/status` once it counts every dead letter.
pub async fn observe_status(ctx: &Ctx) -> anyhow::Result<Value> {
    wait_for(
        "the DLQ counts in /v1/status",
        Duration::from_secs(30),
        || {
            let url = format!("{}/v1/status", ctx.server.url);
            async move {
                let (_, s) = get(&url).await?;
                let dlq: u64 = s["speed"]["dlq"]
                    .as_object()
                    .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
                Ok((dlq == 30).then_some(s))
            }
        },
    )
    .await
}

/// Status: DLQ counts, late events, archive and batch progress, no warning for the horizon.
#[test]
fn status_reports_dead_letters_late_events_and_progress() -> anyhow::Result<()> {
    let f = fixture()?;
    let status = got(&f.status)?;
    assert_eq!(
        status["speed"]["late_dropped"]["checkouts"].as_u64(),
        Some(f.late.iter().filter(|e| e.checkout).count() as u64)
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
    Ok(())
}

pub async fn observe_top(ctx: &Ctx) -> anyhow::Result<(u16, Value)> {
    get(&format!(
        "{}/v1/views/checkouts/top?dimension=country&measure=revenue&k=3&from={}&to={}",
        ctx.server.url,
        format_rfc3339(ctx.from),
        format_rfc3339(ctx.to)
    ))
    .await
}

/// top: the union of batch and speed per country.
#[test]
fn top_ranks_the_union_of_batch_and_speed() -> anyhow::Result<()> {
    let f = fixture()?;
    let (code, top) = got(&f.top)?;
    let h1 = f.h1()?;
    assert_eq!(*code, 200, "{top}");
    let mut want: BTreeMap<Option<String>, f64> = BTreeMap::new();
    let batch_day = truth(&f.first_events(), Granularity::Minute, &[0], &[]);
    let speed_day = truth(&f.wave1, Granularity::Minute, &[0], &[]);
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
    Ok(())
}

/// A bad request, the parameter and error code it must be refused with, and the answer.
pub struct BadRequest {
    pub query: String,
    pub param: &'static str,
    pub code: &'static str,
    pub answer: (u16, Value),
}

pub async fn observe_bad_requests(ctx: &Ctx) -> anyhow::Result<Vec<BadRequest>> {
    let too_many_values = format!(
        "/v1/views/checkouts/series?filter=country:{}",
        (0..1001)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join("|")
    );
    let mut out = Vec::new();
    for (query, param, code) in [
        ("/v1/views/nope/series", "view", "unknown_view"),
        (
            "/v1/views/checkouts/series?granularity=",
            "granularity",
            "bad_parameter",
        ),
        (
            "/v1/views/checkouts/top?dimension=&measure=events",
            "dimension",
            "bad_parameter",
        ),
        (
            "/v1/views/checkouts/top?dimension=country&measure=events&k=%2B5",
            "k",
            "bad_parameter",
        ),
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
        (too_many_values.as_str(), "filter", "too_many_values"),
    ] {
        out.push(BadRequest {
            query: query.to_string(),
            param,
            code,
            answer: get(&format!("{}{query}", ctx.server.url)).await?,
        });
    }
    Ok(out)
}

/// Bad requests: 400 naming the parameter (404 for a view the server does not have).
#[test]
fn bad_requests_are_400s_naming_the_parameter() -> anyhow::Result<()> {
    let f = fixture()?;
    for r in got(&f.bad_requests)? {
        let (query, (status, body)) = (&r.query, &r.answer);
        let expected = if r.code == "unknown_view" { 404 } else { 400 };
        assert_eq!(*status, expected, "{query}: {body}");
        assert_eq!(body["error"]["code"], r.code, "{query}: {body}");
        assert_eq!(body["error"]["parameter"], r.param, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    Ok(())
}

pub async fn observe_measures_twice(ctx: &Ctx) -> anyhow::Result<(u16, Value)> {
    get(&ctx.q("hour", "&measures=events,events")).await
}

/// A measure named twice is answered once.
#[test]
fn a_measure_named_twice_is_answered_once() -> anyhow::Result<()> {
    let f = fixture()?;
    let (code, body) = got(&f.measures_twice)?;
    assert_eq!(*code, 200, "{body}");
    let keys: Vec<&String> = body["series"][0]["points"][0]["values"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["events"], "{body}");
    Ok(())
}

/// The answers of a second server with `serving.max_groups = 2`, and how it stopped.
pub struct Bounded {
    /// (query, the parameter it must name, status, body).
    pub answers: Vec<(String, &'static str, u16, Value)>,
    pub stopped: Result<(), String>,
}

pub async fn observe_bounded(ctx: &Ctx) -> anyhow::Result<Bounded> {
    let mut few_groups = ctx.config.clone();
    few_groups.serving.max_groups = 2;
    let bounded = Server::start(few_groups).await?;
    let answers = async {
        let mut out = Vec::new();
        for (query, param) in [
            (ctx.q("hour", "&group_by=country"), "group_by"),
            (
                format!(
                    "{}/v1/views/checkouts/top?dimension=country&measure=events&from={}&to={}",
                    ctx.server.url,
                    format_rfc3339(ctx.from),
                    format_rfc3339(ctx.to)
                ),
                "dimension",
            ),
        ] {
            let (status, body) = get(&query.replace(&ctx.server.url, &bounded.url)).await?;
            out.push((query, param, status, body));
        }
        anyhow::Ok(out)
    }
    .await;
    // Stopped whatever the answers were, so it does not outlive its phase.
    let stopped = bounded.stop().await.map_err(|e| format!("{e:#}"));
    Ok(Bounded {
        answers: answers?,
        stopped,
    })
}

/// Work per request is bounded: a group-by past serving.max_groups is a 400 naming it.
#[test]
fn group_bys_past_max_groups_are_refused() -> anyhow::Result<()> {
    let f = fixture()?;
    let b = got(&f.bounded)?;
    for (query, param, status, body) in &b.answers {
        assert_eq!(*status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "too_many_groups", "{body}");
        assert_eq!(body["error"]["parameter"], *param, "{body}");
    }
    b.stopped.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Health, readiness, metrics, OpenAPI and CORS as the server answered them.
pub struct Ops {
    pub healthz: u16,
    pub readyz: u16,
    pub metrics: String,
    pub openapi: Value,
    pub cors: Option<String>,
}

pub async fn observe_ops(ctx: &Ctx) -> anyhow::Result<Ops> {
    let url = &ctx.server.url;
    let healthz = get(&format!("{url}/healthz")).await?.0;
    let readyz = get(&format!("{url}/readyz")).await?.0;
    let metrics = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let (_, openapi) = get(&format!("{url}/openapi.json")).await?;
    let cors = reqwest::Client::new()
        .get(format!("{url}/v1/views"))
        .header("Origin", "http://dashboards.example")
        .send()
        .await?;
    let cors = cors
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(Ops {
        healthz,
        readyz,
        metrics,
        openapi,
        cors,
    })
}

/// Health, readiness, metrics, OpenAPI, CORS.
#[test]
fn health_readiness_metrics_openapi_and_cors() -> anyhow::Result<()> {
    let f = fixture()?;
    let ops = got(&f.ops)?;
    assert_eq!(ops.healthz, 200);
    assert_eq!(ops.readyz, 200);
    let metrics_text = &ops.metrics;
    assert!(
        metrics_text.contains("tributary_serving_requests_total"),
        "{metrics_text}"
    );
    let api = &ops.openapi;
    for path in [
        "/v1/views",
        "/v1/views/checkouts",
        "/v1/views/checkouts/series",
        "/v1/views/checkouts/top",
        "/v1/status",
    ] {
        assert!(api["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(api["components"]["schemas"]["SeriesResponse"].is_object());
    // No `serving.cors_origins` in this config: no CORS header at all (tests/api_access
    // covers configured origins).
    assert_eq!(ops.cors, None);
    Ok(())
}

/// A second server pointed at a closed Redis port: its hourly series, how long it took, its
/// readiness, and how it stopped.
pub struct Degraded {
    pub series: (u16, Value),
    pub elapsed: Duration,
    pub ready: (u16, Value),
    pub stopped: Result<(), String>,
}

pub async fn observe_degraded(ctx: &Ctx) -> anyhow::Result<Degraded> {
    let mut no_redis = ctx.config.clone();
    no_redis.redis.url = "redis://127.0.0.1:1/0".into();
    let degraded = Server::start(no_redis).await?;
    let answers = async {
        let started = Instant::now();
        let series = get(&ctx.q("hour", "").replace(&ctx.server.url, &degraded.url)).await?;
        let elapsed = started.elapsed();
        let ready = get(&format!("{}/readyz", degraded.url)).await?;
        anyhow::Ok((series, elapsed, ready))
    }
    .await;
    // Stopped whatever the answers were, so it does not outlive its phase.
    let stopped = degraded.stop().await.map_err(|e| format!("{e:#}"));
    let (series, elapsed, ready) = answers?;
    Ok(Degraded {
        series,
        elapsed,
        ready,
        stopped,
    })
}

/// Redis down (a second server pointed at a closed port): batch still served, the speed
/// buckets listed as unreadable, never zero.
#[test]
fn redis_down_serves_batch_and_lists_speed_buckets_unreadable() -> anyhow::Result<()> {
    let f = fixture()?;
    let d = got(&f.degraded)?;
    let h1 = f.h1()?;
    let (code, body) = &d.series;
    assert_eq!(*code, 200, "{body}");
    assert!(
        d.elapsed < Duration::from_secs(5),
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
    let (code, ready) = &d.ready;
    assert_eq!(*code, 503, "{ready}");
    d.stopped.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
