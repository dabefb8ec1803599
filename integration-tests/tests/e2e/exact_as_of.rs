//! `exact=true` and `as_of` across the two batch runs: exact-only answers are `pending` until
//! the batch settles a bucket and then equal the truth; an `as_of` answer taken after the
//! first run is byte for byte the same after the second run landed a new manifest.

use anyhow::Context;
use serde_json::Value;
use tributary_it::checks::get;
use tributary_it::now_ms;
use tributary_it::scenario::{Ev, close, truth};
use tributary_shared::Granularity;
use tributary_shared::bucket::{DAY_MS, HOUR_MS, format_rfc3339, parse_rfc3339};

use crate::fixture::{Ctx, fixture, got, horizon};

/// What the phase after the first run saw.
pub struct Before {
    pub exact_minute: (u16, Value),
    pub exact_top: (u16, Value),
    /// The instant of the `as_of` queries (after the first run landed).
    pub as_of: i64,
    pub as_of_series: (u16, String),
    pub as_of_top: (u16, String),
    pub view: Value,
    pub future: (u16, Value),
    pub too_old: (u16, Value),
    pub sketch_over_a_set: (u16, Value),
}

/// What the phase after the second run saw.
pub struct After {
    pub exact_minute: (u16, Value),
    pub as_of_series: (u16, String),
    pub as_of_top: (u16, String),
    pub plain: (u16, Value),
}

async fn get_text(url: &str) -> anyhow::Result<(u16, String)> {
    let res = reqwest::get(url)
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok((res.status().as_u16(), res.text().await?))
}

fn top_url(ctx: &Ctx, extra: &str) -> String {
    format!(
        "{}/v1/views/checkouts/top?dimension=country&measure=revenue&k=5&from={}&to={}{extra}",
        ctx.server.url,
        format_rfc3339(ctx.from),
        format_rfc3339(ctx.to)
    )
}

pub async fn observe_before(ctx: &Ctx) -> anyhow::Result<Before> {
    let as_of = now_ms();
    let at = format!("&as_of={}", format_rfc3339(as_of));
    Ok(Before {
        exact_minute: get(&ctx.q("minute", "&exact=true")).await?,
        exact_top: get(&top_url(ctx, "&exact=true")).await?,
        as_of,
        as_of_series: get_text(&ctx.q("hour", &format!("&group_by=country{at}"))).await?,
        as_of_top: get_text(&top_url(ctx, &at)).await?,
        view: get(&format!("{}/v1/views/checkouts", ctx.server.url))
            .await?
            .1,
        future: get(&ctx.q(
            "hour",
            &format!("&as_of={}", format_rfc3339(now_ms() + HOUR_MS)),
        ))
        .await?,
        too_old: get(&ctx.q(
            "hour",
            &format!("&as_of={}", format_rfc3339(now_ms() - 8 * DAY_MS)),
        ))
        .await?,
        sketch_over_a_set: get(&ctx.q("hour", "&exact=true&measures=buyers&filter=country:DE|FR"))
            .await?,
    })
}

pub async fn observe_after(ctx: &Ctx, before: &Before) -> anyhow::Result<After> {
    let at = format!("&as_of={}", format_rfc3339(before.as_of));
    Ok(After {
        exact_minute: get(&ctx.q("minute", "&exact=true")).await?,
        as_of_series: get_text(&ctx.q("hour", &format!("&group_by=country{at}"))).await?,
        as_of_top: get_text(&top_url(ctx, &at)).await?,
        plain: get(&ctx.q("hour", "")).await?,
    })
}

/// Checks an `exact=true` series at minutes (the second run moves the horizon by more than
/// 20 of them): settled buckets equal the truth over `all`, every other bucket is `pending`
/// without values. Returns (exact, pending) bucket counts.
fn check_exact(body: &Value, all: &[Ev]) -> anyhow::Result<(usize, usize)> {
    let h = horizon(body)?;
    let g = Granularity::Minute;
    let tr = truth(all, g, &[], &[]);
    let (mut exact, mut pending) = (0, 0);
    let points = body["series"][0]["points"].as_array().context("points")?;
    for p in points {
        let t = p["t"].as_str().and_then(parse_rfc3339).context("t")?;
        let source = p["source"].as_str().unwrap_or("");
        if g.end(t) <= h {
            assert_eq!(source, "batch", "{p}");
            assert_eq!(p["exact"], Value::Bool(true), "{p}");
            let truth = tr
                .get(&(Vec::new(), t))
                .context("bucket not in the truth")?;
            for m in ["events", "revenue", "min_amount", "max_amount", "buyers"] {
                let ok = match (p["values"][m].as_f64(), truth.value(m)) {
                    (Some(a), Some(b)) => close(a, b),
                    (a, b) => a == b,
                };
                assert!(ok, "{p} {m}: truth {:?}", truth.value(m));
            }
            exact += 1;
        } else {
            assert_eq!(source, "pending", "{p}: after the horizon, exact only");
            assert_eq!(p["values"], serde_json::json!({}), "{p}");
            pending += 1;
        }
    }
    assert_eq!(body["buckets"]["speed"], 0, "{body}");
    assert_eq!(body["buckets"]["pending"].as_u64(), Some(pending as u64));
    assert_eq!(body["exact"], Value::Bool(true));
    Ok((exact, pending))
}

#[test]
fn exact_only_answers_are_pending_until_the_batch_settles_them() -> anyhow::Result<()> {
    let f = fixture()?;
    let before = got(&f.exact_as_of)?;
    let after = got(&f.exact_as_of_after)?;
    let (code, body) = &before.exact_minute;
    assert_eq!(*code, 200, "{body}");
    let (settled1, pending1) = check_exact(body, &f.first_events())?;
    assert!(
        settled1 >= 2 && pending1 >= 2,
        "{settled1} exact, {pending1} pending"
    );

    // After the second run the horizon moved: buckets that were pending are exact now.
    let (code, body) = &after.exact_minute;
    assert_eq!(*code, 200, "{body}");
    let mut all = f.first_events();
    all.extend(f.wave2.iter().cloned());
    let (settled2, pending2) = check_exact(body, &all)?;
    assert!(
        settled2 > settled1 && pending2 < pending1,
        "before: {settled1} exact {pending1} pending; after: {settled2} exact {pending2} pending"
    );

    // top over settled buckets only, saying which range that was.
    let (code, top) = &before.exact_top;
    assert_eq!(*code, 200, "{top}");
    let h1 = f.h1()?;
    let covered_to = top["covered"]["to"].as_str().and_then(parse_rfc3339);
    assert!(
        covered_to.is_some_and(|t| t <= h1),
        "covered {} vs horizon {h1}",
        top["covered"]
    );
    let tr = truth(&f.first_events(), Granularity::Hour, &[0], &[]);
    let from = top["covered"]["from"]
        .as_str()
        .and_then(parse_rfc3339)
        .context("covered.from")?;
    let to = covered_to.context("covered.to")?;
    for row in top["rows"].as_array().context("rows")? {
        let country = row["value"].as_str().map(str::to_string);
        let expected: f64 = tr
            .iter()
            .filter(|((g, t), _)| g.first() == Some(&country) && *t >= from && *t < to)
            .filter_map(|(_, v)| v.value("revenue"))
            .sum();
        let got = row["measure_value"].as_f64().context("measure_value")?;
        assert!(close(got, expected), "{row}: truth {expected}");
        assert_eq!(row["source"], "batch", "{row}");
    }
    assert!(
        top["pending"].as_array().is_some_and(|p| !p.is_empty()),
        "{top}"
    );

    // A sketch over several values is never exact: refused, naming the parameter.
    let (code, body) = &before.sketch_over_a_set;
    assert_eq!(*code, 400, "{body}");
    assert_eq!(body["error"]["parameter"], "exact", "{body}");
    Ok(())
}

#[test]
fn as_of_answers_are_byte_identical_after_a_new_run() -> anyhow::Result<()> {
    let f = fixture()?;
    let before = got(&f.exact_as_of)?;
    let after = got(&f.exact_as_of_after)?;
    let (code, first) = &before.as_of_series;
    assert_eq!(*code, 200, "{first}");
    assert_eq!(
        before.as_of_series, after.as_of_series,
        "the same as_of after the second run"
    );
    assert_eq!(before.as_of_top.0, 200, "{}", before.as_of_top.1);
    assert_eq!(before.as_of_top, after.as_of_top);

    // It is the first run's version; without as_of the second run's.
    let body: Value = serde_json::from_str(first)?;
    let h1 = f.h1()?;
    assert_eq!(horizon(&body)?, h1);
    let (code, plain) = &after.plain;
    assert_eq!(*code, 200, "{plain}");
    assert!(horizon(plain)? > h1, "the second run moved the horizon");
    assert!(
        plain["manifest_version"].as_u64() > body["manifest_version"].as_u64(),
        "{} vs {}",
        plain["manifest_version"],
        body["manifest_version"]
    );
    // Buckets after that version's horizon are missing (no speed part); before it, batch.
    let mut points = 0;
    for s in body["series"].as_array().context("series")? {
        for p in s["points"].as_array().context("points")? {
            let t = p["t"].as_str().and_then(parse_rfc3339).context("t")?;
            let expected = if Granularity::Hour.end(t) <= h1 {
                "batch"
            } else {
                "missing"
            };
            assert_eq!(p["source"], expected, "{p}");
            points += 1;
        }
    }
    assert!(points > 0);
    assert_eq!(body["buckets"]["speed"], 0);

    // The view lists the versions as_of can name; the first landed before the as_of instant.
    let versions = before.view["versions"].as_array().context("versions")?;
    let first_landed = versions
        .first()
        .and_then(|v| v["landed_at"].as_str())
        .and_then(parse_rfc3339)
        .context("a version")?;
    assert!(first_landed <= before.as_of, "{}", before.view);
    assert!(before.view["as_of_from"].is_string());

    // In the future, or older than the history keeps: 400 naming as_of.
    for (code, body) in [&before.future, &before.too_old] {
        assert_eq!(*code, 400, "{body}");
        assert_eq!(body["error"]["parameter"], "as_of", "{body}");
    }
    Ok(())
}
