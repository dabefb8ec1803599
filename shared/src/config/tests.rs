use std::path::Path;

use super::*;

/// The shipped example config: the design brief's, pointed at the local stack.
const FULL: &str = include_str!("../../../infra/tributary.toml");

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str_with_env(text, "test.toml", Vec::new())
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_toml_str_with_env(text, "test.toml", env)
}

#[test]
fn the_design_example_loads() {
    let c = load(FULL).expect("the full example config is valid");
    assert_eq!(c.speed.flush_interval, Duration::from_millis(200));
    assert_eq!(c.speed.idle_flush, Duration::from_millis(2));
    assert_eq!(c.speed.fetch_wait, Duration::from_millis(10));
    assert_eq!(c.speed.retention, Duration::from_secs(48 * 3600));
    assert_eq!(c.speed.dedup_window, Duration::ZERO);
    assert_eq!(c.views[0].measures.len(), 5);
    assert_eq!(c.views[0].measures[4].q, Some(0.95));
    assert_eq!(c.source.dlq_topic(), "events.dlq");
    assert_eq!(c.source.speed_group(), "tributary-speed");
    assert_eq!(c.source.archive_group(), "tributary-archive");
}

#[test]
fn defaults_apply_without_a_file() {
    let c = load("").expect("defaults are valid");
    assert_eq!(c.source.topic, "events");
    assert_eq!(c.redis.url, "redis://127.0.0.1:16379/0");
    assert_eq!(c.speed.allowed_lateness, Duration::from_secs(300));
    assert!(c.views.is_empty());
}

#[test]
fn env_overrides_win_and_keep_types() {
    let c = load_env(
        FULL,
        &[
            ("TRIBUTARY__SOURCE__TOPIC", "123"),
            ("TRIBUTARY__SPEED__FLUSH_INTERVAL", "1s"),
            ("TRIBUTARY__SPEED__FLUSH_MAX_EVENTS", "77"),
            ("TRIBUTARY__STORE__ALLOW_HTTP", "true"),
            ("TRIBUTARY__STORE__ENDPOINT", "http://127.0.0.1:19000"),
            ("TRIBUTARY__STORE__SECRET_ACCESS_KEY", "s3cr3t"),
            ("TRIBUTARY__REDIS__URL", "redis://10.0.0.1:6379/2"),
            ("TRIBUTARY_CONFIG", "/not/a/key"),
            ("PATH", "/usr/bin"),
        ],
    )
    .expect("valid overrides");
    assert_eq!(c.source.topic, "123");
    assert_eq!(c.speed.flush_interval, Duration::from_secs(1));
    assert_eq!(c.speed.flush_max_events, 77);
    assert!(c.store.allow_http);
    assert_eq!(c.store.endpoint.as_deref(), Some("http://127.0.0.1:19000"));
    assert_eq!(
        c.store.secret_access_key.as_ref().map(Secret::expose),
        Some("s3cr3t")
    );
    assert_eq!(c.redis.url, "redis://10.0.0.1:6379/2");
    // Secrets never show in Debug output.
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn bad_env_values_name_the_variable() {
    let err =
        load_env(FULL, &[("TRIBUTARY__SPEED__FLUSH_MAX_EVENTS", "lots")]).expect_err("bad int");
    assert!(
        err.to_string()
            .contains("TRIBUTARY__SPEED__FLUSH_MAX_EVENTS"),
        "{err}"
    );
    let err = load_env(FULL, &[("TRIBUTARY__SPEED__NOPE", "1")]).expect_err("unknown key");
    assert!(err.to_string().contains("speed"), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = load_env(FULL, &[("TRIBUTARY__TOPIC", "x")]).expect_err("no section");
    assert!(err.to_string().contains("TRIBUTARY__TOPIC"), "{err}");
}

/// Every invalid config names its key. (replacement in FULL, key expected, message fragment)
#[test]
fn every_bad_key_is_named() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "agg = \"count\" }",
            "agg = \"median\" }",
            "views[0].measures[0].agg",
            "unknown variant `median`",
        ),
        (
            "field = \"amount\" }",
            "field = \"country\" }",
            "views[0].measures[1].field",
            "numeric field",
        ),
        (
            "field = \"amount\" }",
            "field = \"price\" }",
            "views[0].measures[1].field",
            "not a declared field",
        ),
        (
            "q = 0.95",
            "q = 1.5",
            "views[0].measures[4].q",
            "outside (0, 1)",
        ),
        (
            "q = 0.95",
            "q = 0.0",
            "views[0].measures[4].q",
            "outside (0, 1)",
        ),
        (
            ", q = 0.95",
            "",
            "views[0].measures[4].q",
            "quantile needs q",
        ),
        (
            "name = \"revenue\"",
            "name = \"events\"",
            "views[0].measures[1].name",
            "duplicate measure name",
        ),
        (
            "schedule = \"0 */15 * * * *\"",
            "schedule = \"every 15 minutes\"",
            "batch.schedule",
            "cron",
        ),
        (
            "\"minute\", \"hour\"",
            "\"minute\", \"week\"",
            "views[0].granularities[1]",
            "unknown variant `week`",
        ),
        (
            "url = \"file:///var/lib/tributary\"",
            "url = \"ftp://x/y\"",
            "store.url",
            "unsupported scheme",
        ),
        (
            "url = \"file:///var/lib/tributary\"",
            "url = \"relative/dir\"",
            "store.url",
            "not a store URL",
        ),
        (
            "flush_interval = \"200ms\"",
            "flush_interval = \"fast\"",
            "speed.flush_interval",
            "not a duration",
        ),
        (
            "flush_interval = \"200ms\"",
            "flush_interval = \"0s\"",
            "speed.flush_interval",
            "greater than 0",
        ),
        (
            "flush_interval = \"200ms\"",
            "flush_interval = \"200ms\"\nfetch_wait = \"10m\"",
            "speed.fetch_wait",
            "at most 300s",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            "serving.listen",
            "not host:port",
        ),
        (
            "\"country\", \"device\"]",
            "\"country\", \"browser\"]",
            "views[0].dimensions[1]",
            "neither `type` nor a declared field",
        ),
        (
            "\"country\", \"device\"]",
            "\"country\", \"country\"]",
            "views[0].dimensions[1]",
            "duplicate dimension",
        ),
        (
            "\"country\", \"device\"]",
            "\"country\", \"device\", \"type\", \"user_id\", \"amount\"]",
            "views[0].dimensions",
            "at most 4",
        ),
        (
            "where = { type = \"checkout\" }",
            "where = { kind = \"checkout\" }",
            "views[0].where.kind",
            "declared field",
        ),
        (
            "where = { type = \"checkout\" }",
            "where = { amount = \"x\" }",
            "views[0].where.amount",
            "is float",
        ),
        (
            "amount = \"float\"",
            "amount = \"decimal\"",
            "fields.amount",
            "unknown variant `decimal`",
        ),
        (
            "amount = \"float\"\nlatency_ms",
            "amount = \"float\"\noffset = \"int\"\nlatency_ms",
            "fields.offset",
            "identifier",
        ),
        (
            "topic = \"events\"",
            "topic = \"bad topic\"",
            "source.topic",
            "not a valid Kafka topic",
        ),
        (
            "name = \"checkouts\"",
            "name = \"check-outs\"",
            "views[0].name",
            "must match",
        ),
        (
            "{ name = \"events\",  agg = \"count\" }",
            "{ name = \"events\",  agg = \"count\", field = \"amount\" }",
            "views[0].measures[0].field",
            "count takes no field",
        ),
        (
            "agg = \"count_distinct\", field = \"user_id\"",
            "agg = \"count_distinct\"",
            "views[0].measures[3].field",
            "needs a field",
        ),
        (
            "[serving]",
            "[serving]\nport = 1",
            "serving.port",
            "unknown field `port`",
        ),
        (
            "max_future_skew",
            "max_future_skeww",
            "speed.max_future_skeww",
            "unknown field",
        ),
        (
            "granularities = [\"minute\", \"hour\", \"day\"]",
            "granularities = []",
            "views[0].granularities",
            "at least one",
        ),
    ];
    for (from, to, key, fragment) in cases {
        assert!(
            FULL.contains(from),
            "test case replaces missing text {from:?}"
        );
        let text = FULL.replacen(from, to, 1);
        let err = load(&text).expect_err(&format!("{key} should be rejected"));
        let msg = err.to_string();
        assert!(msg.contains(key), "error for {key} does not name it: {msg}");
        assert!(
            msg.contains(fragment),
            "error for {key} lacks {fragment:?}: {msg}"
        );
    }
}

#[test]
fn duplicate_views_and_syntax_errors() {
    let twice = format!("{FULL}\n{}", &FULL[FULL.find("[[views]]").unwrap_or(0)..]);
    let err = load(&twice).expect_err("duplicate view");
    assert!(err.to_string().contains("views[1].name"), "{err}");
    assert!(err.to_string().contains("duplicate view name"), "{err}");
    let err = load("[source\nbrokers=").expect_err("syntax");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("test.toml"), "{err}");
    let err = Config::load_with_env(Some(Path::new("/nonexistent/tributary.toml")), Vec::new())
        .expect_err("missing file");
    assert!(
        err.to_string().contains("/nonexistent/tributary.toml"),
        "{err}"
    );
}

#[test]
fn several_problems_are_reported_together() {
    let text = FULL.replacen("q = 0.95", "q = 2.0", 1).replacen(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"nowhere\"",
        1,
    );
    let msg = load(&text).expect_err("two problems").to_string();
    assert!(
        msg.contains("views[0].measures[4].q") && msg.contains("serving.listen"),
        "{msg}"
    );
}

#[test]
fn a_numeric_secret_from_the_environment_works_and_is_never_echoed() {
    let c = load_env(FULL, &[("TRIBUTARY__REDIS__PASSWORD", "123456")]).expect("numeric secret");
    assert_eq!(
        c.redis.password.as_ref().map(Secret::expose),
        Some("123456")
    );
    // Written unquoted in the file it is a TOML integer: refused, without showing it.
    let err = load(&FULL.replace("[redis]\n", "[redis]\npassword = 123456\n"))
        .expect_err("integer password")
        .to_string();
    assert!(!err.contains("123456"), "{err}");
    assert!(err.contains("redis.password"), "{err}");
}

#[test]
fn durations_that_break_the_batch_lock_or_gc_are_refused() {
    for (var, value, key) in [
        ("TRIBUTARY__BATCH__LOCK_TTL", "0s", "batch.lock_ttl"),
        ("TRIBUTARY__BATCH__LOCK_TTL", "1s", "batch.lock_ttl"),
        ("TRIBUTARY__BATCH__GC_GRACE", "0s", "batch.gc_grace"),
        ("TRIBUTARY__BATCH__IDLE_TIMEOUT", "0s", "batch.idle_timeout"),
        (
            "TRIBUTARY__BALLISTA__JOB_TIMEOUT",
            "0s",
            "ballista.job_timeout",
        ),
        (
            "TRIBUTARY__BALLISTA__EXECUTOR_SLOTS",
            "0",
            "ballista.executor_slots",
        ),
        ("TRIBUTARY__SERVING__MAX_GROUPS", "0", "serving.max_groups"),
        (
            "TRIBUTARY__SERVING__CACHE_SIZE",
            "lots",
            "serving.cache_size",
        ),
    ] {
        let err = load_env(FULL, &[(var, value)]).expect_err(var);
        assert!(err.to_string().contains(key), "{var}={value}: {err}");
    }
    let c = load_env(FULL, &[("TRIBUTARY__SERVING__CACHE_SIZE", "64MiB")]).expect("size");
    assert_eq!(c.serving.cache_size, 64 << 20);
}
