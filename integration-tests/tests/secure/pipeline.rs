//! Speed, archive, batch and serving over SASL_SSL Kafka and TLS Redis with an ACL user: the
//! answers equal the ground truth exactly as on the plain stack.

use std::time::Duration;

use tributary_it::chaos::{Platform, chaos_config};
use tributary_it::checks::check_series;
use tributary_it::scenario::exact_events;
use tributary_it::secure::SecureStack;
use tributary_it::server::Server;
use tributary_it::{create_topic_via, now_ms, open, unique, wait_archived, wait_speed_applied_via};
use tributary_shared::Granularity;
use tributary_shared::bucket::HOUR_MS;

use crate::produce_via;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_pipeline_over_sasl_ssl_kafka_and_tls_redis() -> anyhow::Result<()> {
    let stack = SecureStack::from_env()?;
    let topic = unique("secure");
    let prefix = unique("secure");
    let mut config = chaos_config(&stack.brokers, &stack.redis_url, &topic, &prefix, "")?;
    config.source = stack.source(&topic);
    config.redis = stack.redis(&prefix);
    create_topic_via(&config.source, &topic, 3, false).await?;

    let mut platform = Platform::new(config)?;
    let config = platform.config.clone();
    platform.speed.start()?;
    platform.archive.start()?;

    let now = now_ms();
    let start = Granularity::Hour.floor(now) - 2 * HOUR_MS;
    let evs = exact_events(13, 3000, start, now - 30_000 - start);
    let ends = produce_via(&config.source, &evs, 3).await?;

    let waited = async {
        wait_speed_applied_via(
            &config.redis,
            &prefix,
            "checkouts",
            &topic,
            &ends,
            Duration::from_secs(120),
        )
        .await?;
        wait_archived(open(&config.store)?, &topic, &ends).await?;
        platform.batch_until_ok(Duration::from_secs(120)).await
    };
    if let Err(e) = waited.await {
        anyhow::bail!("{e:#}{}", platform.logs());
    }

    let server = Server::start(config.clone()).await?;
    let body = server
        .series("hour", start, Granularity::Hour.floor(now) + HOUR_MS, "")
        .await?;
    let (batch, speed) = check_series(&body, Granularity::Hour, &[], &evs, &evs)?;
    let grouped = server
        .series(
            "hour",
            start,
            Granularity::Hour.floor(now) + HOUR_MS,
            "&group_by=country",
        )
        .await?;
    check_series(&grouped, Granularity::Hour, &[0], &evs, &evs)?;
    server.stop().await?;
    anyhow::ensure!(
        batch >= 1 && speed >= 1,
        "expected settled hours from batch and the open hour from speed: {batch} batch, {speed} speed points\n{body}"
    );
    let logs = platform.logs();
    anyhow::ensure!(
        !logs.contains(&stack.sasl_password) && !logs.contains(&stack.redis_password),
        "a secret appears in the logs"
    );
    platform.speed.stop(Duration::from_secs(10)).await?;
    platform.archive.stop(Duration::from_secs(10)).await?;
    Ok(())
}
