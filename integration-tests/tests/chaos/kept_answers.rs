//! The serving layer keeps whole `series` answers while nothing they came from changes: a
//! kept answer must never outlive a flush. An event the speed layer has applied is in the
//! very next answer (asked right after, no retry), and a chart polled between flushes is
//! answered from what was kept.
//!
//! (Not a fault, but a property the fault suite's harness checks best: the real speed layer
//! flushing into Redis while the serving layer answers.)

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tributary_it::chaos::{Platform, chaos_config, produce_paced, rng, spread};
use tributary_it::scenario::{Ev, exact_events, truth};
use tributary_it::{brokers, create_topic, now_ms, redis_url, unique, wait_speed_applied_on};
use tributary_shared::Granularity;
use tributary_shared::bucket::{MINUTE_MS, format_rfc3339, parse_rfc3339};

use crate::serve;

/// Per minute, the answer's `events` that differ from the truth of `evs`.
fn wrong_minutes(body: &Value, evs: &[Ev]) -> anyhow::Result<Vec<String>> {
    let want = truth(evs, Granularity::Minute, &[], &[]);
    let mut wrong = Vec::new();
    for p in body["series"][0]["points"].as_array().context("points")? {
        let t = p["t"].as_str().and_then(parse_rfc3339);
        let got = p["values"]["events"].as_f64();
        let truth = t
            .and_then(|t| want.get(&(Vec::new(), t)))
            .map(|x| x.count as f64);
        if got != truth {
            wrong.push(format!("{}: {got:?}, truth {truth:?}", p["t"]));
        }
    }
    Ok(wrong)
}

/// The serving layer's count of `series` answers made `how` (kept or computed).
async fn answers(url: &str, how: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let line = format!("tributary_serving_series_answers_total{{how=\"{how}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_applied_flush_is_in_the_next_answer() -> anyhow::Result<()> {
    let (seed, mut rng) = rng("kept_answers");
    let brokers = brokers();
    let topic = unique("chaos-kept");
    create_topic(&topic, 2).await?;
    let config = chaos_config(&brokers, &redis_url(), &topic, &unique("chaos"), "")?;
    let prefix = config.redis.key_prefix.clone();
    let mut pf = Platform::new(config)?;
    let now = now_ms();
    // The last eight minutes, in four rounds in time order: the newest minutes stay open
    // (read from Redis), the older ones seal as the watermark passes them.
    let evs = exact_events(seed, 800, now - 8 * MINUTE_MS, 8 * MINUTE_MS);
    pf.speed.start()?;
    let server = serve(pf.config.clone()).await?;
    let (from, to) = (now - 10 * MINUTE_MS, now + MINUTE_MS);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let rounds = 4;
    for round in 0..rounds {
        let upto = evs.len() * (round + 1) / rounds;
        let batch = &evs[evs.len() * round / rounds..upto];
        let per: BTreeMap<i32, Vec<Vec<u8>>> = spread(batch, 2, &[], &mut rng);
        for (p, payloads) in &per {
            *ends.entry(*p).or_default() += payloads.len() as i64;
        }
        produce_paced(&brokers, &topic, &per, 1, Duration::ZERO).await?;
        wait_speed_applied_on(
            &redis_url(),
            &prefix,
            "checkouts",
            &topic,
            &ends,
            Duration::from_secs(90),
        )
        .await?;
        // Asked right after the flush landed: the answer holds it. Asked again with nothing
        // applied in between: the same answer, kept.
        let first = server
            .series("minute", from, to, "&measures=events")
            .await?;
        let wrong = wrong_minutes(&first, &evs[..upto])?;
        anyhow::ensure!(
            wrong.is_empty(),
            "round {round}: the answer right after the flush misses it in {} minutes, e.g. {:?} (seed {seed})",
            wrong.len(),
            wrong.first()
        );
        // Past the serving layer's refresh of the view's state (its watermark), asked twice
        // with nothing applied in between: the same numbers, the second answer kept.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = server
            .series("minute", from, to, "&measures=events")
            .await?;
        anyhow::ensure!(
            wrong_minutes(&again, &evs[..upto])?.is_empty(),
            "round {round}: the answer changed with no event applied"
        );
        let kept_before = answers(&server.url, "kept").await?;
        let third = server
            .series("minute", from, to, "&measures=events")
            .await?;
        anyhow::ensure!(third == again, "round {round}: a kept answer differs");
        anyhow::ensure!(
            answers(&server.url, "kept").await? > kept_before,
            "round {round}: the same query, asked again with nothing changed, was computed again"
        );
        // A client that accepts gzip (a browser) gets the kept answer compressed: the same JSON.
        let url = format!(
            "{}/v1/views/checkouts/series?granularity=minute&from={}&to={}&measures=events",
            server.url,
            format_rfc3339(from),
            format_rfc3339(to)
        );
        let response = reqwest::Client::new()
            .get(&url)
            .header("accept-encoding", "gzip, deflate, br")
            .send()
            .await?;
        let encoding = response.headers().get("content-encoding").cloned();
        let bytes = response.bytes().await?;
        anyhow::ensure!(
            encoding.as_ref().is_some_and(|e| e == "gzip"),
            "round {round}: a kept answer asked with gzip accepted came as {encoding:?}"
        );
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut json)
            .context("gunzip the kept answer")?;
        anyhow::ensure!(
            serde_json::from_slice::<Value>(&json)? == third,
            "round {round}: the gzipped kept answer differs from the plain one"
        );
    }
    anyhow::ensure!(answers(&server.url, "computed").await? >= rounds as f64);
    server.stop().await?;
    pf.speed.stop(Duration::from_secs(30)).await?;
    Ok(())
}
