//! Requests cancelled while their speed read waits.

use std::time::Duration;

use anyhow::Context;
use tributary_it::chaos::chaos_config;
use tributary_it::chaos::services::OwnRedis;
use tributary_it::{brokers, wait_for};
use tributary_shared::Granularity;

/// A request cancelled while its speed read waits (a client gone, the request timeout) leaves
/// no read behind in the single-flight map, and the next request reads afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_leave_no_read_in_flight() -> anyhow::Result<()> {
    use tributary_serving_layer::sources::Sources;
    use tributary_shared::selection::Selection;
    use tributary_speed_layer::read::SpeedQuery;
    let redis = OwnRedis::start(&[]).await?;
    let config = chaos_config(&brokers(), &redis.url(), "unused", "tributary", "")?;
    let sources = Sources::new(config)?;
    let view = sources.view("checkouts").context("view")?.clone();
    let query = || SpeedQuery {
        granularity: Granularity::Minute,
        buckets: vec![0, 60_000],
        selection: Selection {
            measures: vec![0],
            ..Selection::default()
        },
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
