//! Redis settings checked when the speed layer starts.

use std::time::Duration;

use anyhow::Context;
use tributary_it::chaos::procs::Daemon;
use tributary_it::chaos::services::OwnRedis;
use tributary_it::chaos::{Platform, chaos_config};
use tributary_it::{brokers, create_topic, unique, wait_for};

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
