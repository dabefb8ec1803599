//! Clear failures: a wrong password, a wrong SASL mechanism, an untrusted certificate, a TLS
//! port spoken to in plaintext. Each stops the binary at start within seconds with exit 1 and
//! a message naming the endpoint and the cause, and never the secret.

use std::time::{Duration, Instant};

use tributary_it::chaos::chaos_config;
use tributary_it::chaos::procs::Daemon;
use tributary_it::secure::SecureStack;
use tributary_it::{brokers, create_topic, redis_url, unique, write_config};
use tributary_shared::Config;
use tributary_shared::config::{SaslMechanism, SecurityProtocol};
use tributary_shared::secret::Secret;

/// A config on the plain stack with its own (existing) topic.
async fn plain_config() -> anyhow::Result<Config> {
    let topic = unique("fail");
    create_topic(&topic, 1).await?;
    chaos_config(&brokers(), &redis_url(), &topic, &unique("fail"), "")
}

/// Runs `bin args` on `config` and checks it fails the clear way: exit 1 within 12 s, every
/// one of `expect` in its output (case-insensitive), and no `secret` in it.
async fn fails_clearly(
    what: &str,
    config: &Config,
    bin: &str,
    args: &[&str],
    expect: &[&str],
    secret: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (path, env) = write_config(config, dir.path())?;
    let mut daemon = Daemon::new(what, bin, args, &path, &env, dir.path())?;
    let started = Instant::now();
    daemon.start()?;
    let code = daemon.wait(Duration::from_secs(30)).await?;
    let took = started.elapsed();
    let out = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    anyhow::ensure!(
        code == Some(1),
        "{what}: {bin} should exit 1, got {code:?} after {took:?}:\n{out}"
    );
    anyhow::ensure!(
        took < Duration::from_secs(12),
        "{what}: {bin} took {took:?} to fail (at most ~10 s):\n{out}"
    );
    let lower = out.to_lowercase();
    for e in expect {
        anyhow::ensure!(
            lower.contains(&e.to_lowercase()),
            "{what}: the message does not say {e:?}:\n{out}"
        );
    }
    anyhow::ensure!(
        secret.is_empty() || !out.contains(secret),
        "{what}: the output shows the secret"
    );
    println!("{what}: exit 1 after {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_credential_and_tls_mistakes_fail_at_start() -> anyhow::Result<()> {
    let stack = SecureStack::from_env()?;
    let base = plain_config().await?;
    let topic = base.source.topic.clone();
    let endpoint = format!("sasl_ssl://{}", stack.brokers);

    let wrong = "not-the-password-0123456789";
    let mut c = base.clone();
    c.source = stack.source(&topic);
    c.source.sasl_password = Some(Secret::new(wrong));
    fails_clearly(
        "kafka-wrong-password",
        &c,
        "speed-layer",
        &["run"],
        &[&endpoint, "authentication"],
        wrong,
    )
    .await?;
    fails_clearly(
        "archive-wrong-password",
        &c,
        "batch-layer",
        &["archive"],
        &[&endpoint, "authentication"],
        wrong,
    )
    .await?;

    let mut c = base.clone();
    c.source = stack.source(&topic);
    c.source.sasl_mechanism = Some(SaslMechanism::ScramSha256);
    fails_clearly(
        "kafka-wrong-mechanism",
        &c,
        "speed-layer",
        &["run"],
        &[&endpoint, "authentication"],
        &stack.sasl_password,
    )
    .await?;

    let mut c = base.clone();
    c.source = stack.source(&topic);
    c.source.ssl_ca_location = Some(stack.untrusted_ca.clone());
    fails_clearly(
        "kafka-untrusted-certificate",
        &c,
        "speed-layer",
        &["run"],
        &[&endpoint, "certificate"],
        &stack.sasl_password,
    )
    .await?;

    let mut c = base.clone();
    c.source.brokers = stack.brokers.clone();
    c.source.security_protocol = SecurityProtocol::Plaintext;
    fails_clearly(
        "kafka-plaintext-to-tls",
        &c,
        "speed-layer",
        &["run"],
        &[
            &format!("plaintext://{}", stack.brokers),
            "security_protocol",
        ],
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_credential_and_tls_mistakes_fail_at_start() -> anyhow::Result<()> {
    let stack = SecureStack::from_env()?;
    let base = plain_config().await?;
    let prefix = base.redis.key_prefix.clone();
    let endpoint = stack.redis_url.clone();

    let wrong = "not-the-redis-password-0123";
    let mut c = base.clone();
    c.redis = stack.redis(&prefix);
    c.redis.password = Some(Secret::new(wrong));
    for (bin, args) in [
        ("speed-layer", &["run"][..]),
        ("serving-layer", &["serve"][..]),
    ] {
        fails_clearly(
            &format!("redis-wrong-password-{bin}"),
            &c,
            bin,
            args,
            &[&endpoint, "authentication"],
            wrong,
        )
        .await?;
    }
    fails_clearly(
        "redis-wrong-password-reset",
        &c,
        "speed-layer",
        &["reset", "--to", "2026-01-01T00:00:00Z"],
        &[&endpoint, "authentication"],
        wrong,
    )
    .await?;

    let mut c = base.clone();
    c.redis = stack.redis(&prefix);
    c.redis.ca_file = Some(stack.untrusted_ca.clone());
    fails_clearly(
        "redis-untrusted-certificate",
        &c,
        "speed-layer",
        &["run"],
        &[&endpoint, "TLS"],
        &stack.redis_password,
    )
    .await?;

    let mut c = base.clone();
    c.redis = stack.redis(&prefix);
    c.redis.url = stack.redis_url.replacen("rediss://", "redis://", 1);
    c.redis.ca_file = None;
    fails_clearly(
        "redis-plaintext-to-tls",
        &c,
        "speed-layer",
        &["run"],
        &[&c.redis.url],
        &stack.redis_password,
    )
    .await
}
