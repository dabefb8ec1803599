//! `[source]` security, `[redis]` TLS/ACL/Cluster and `[serving]` access: every mistake is
//! named by its key, and no secret reaches a message.

use super::*;

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_toml_str_with_env(text, "test.toml", env)
}

fn err(text: &str) -> String {
    load_env(text, &[])
        .expect_err("should be refused")
        .to_string()
}

fn ca_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), "-----BEGIN CERTIFICATE-----\n").expect("write");
    f
}

#[test]
fn sasl_ssl_loads_with_its_secret_from_the_environment() {
    let ca = ca_file();
    let text = format!(
        r#"
[source]
brokers = "kafka.internal:9093"
security_protocol = "sasl_ssl"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "tributary"
ssl_ca_location = "{}"
[source.librdkafka]
"fetch.wait.max.ms" = "20"
"#,
        ca.path().display()
    );
    let c = load_env(
        &text,
        &[("TRIBUTARY__SOURCE__SASL_PASSWORD", "s3cret-s3cret")],
    )
    .expect("valid");
    assert_eq!(c.source.security_protocol, SecurityProtocol::SaslSsl);
    assert_eq!(c.source.sasl_mechanism, Some(SaslMechanism::ScramSha512));
    assert_eq!(
        c.source.sasl_password.as_ref().map(Secret::expose),
        Some("s3cret-s3cret")
    );
    assert_eq!(c.source.endpoint(), "sasl_ssl://kafka.internal:9093");
    assert!(!format!("{c:?}").contains("s3cret"));

    let k = crate::kafka::client_config(&c.source);
    assert_eq!(k.get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(k.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    assert_eq!(k.get("sasl.password"), Some("s3cret-s3cret"));
    assert_eq!(k.get("fetch.wait.max.ms"), Some("20"));
    assert_eq!(k.get("bootstrap.servers"), Some("kafka.internal:9093"));
}

#[test]
fn sasl_needs_its_mechanism_user_and_password() {
    let e = err("[source]\nsecurity_protocol = \"sasl_ssl\"\n");
    for key in [
        "source.sasl_mechanism",
        "source.sasl_username",
        "source.sasl_password",
    ] {
        assert!(e.contains(key), "{e}");
    }
    let e = err("[source]\nsasl_username = \"u\"\n");
    assert!(
        e.contains("source.sasl_username") && e.contains("does not use SASL"),
        "{e}"
    );
    let e = err("[source]\nsecurity_protocol = \"tls\"\n");
    assert!(e.contains("source.security_protocol"), "{e}");
    let e = err("[source]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\"\n");
    assert!(e.contains("source.sasl_mechanism"), "{e}");
}

#[test]
fn tls_files_must_exist_and_pair() {
    let e =
        err("[source]\nsecurity_protocol = \"ssl\"\nssl_ca_location = \"/nonexistent/ca.pem\"\n");
    assert!(
        e.contains("source.ssl_ca_location") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let ca = ca_file();
    let e = err(&format!(
        "[source]\nsecurity_protocol = \"ssl\"\nssl_certificate_location = \"{}\"\n",
        ca.path().display()
    ));
    assert!(e.contains("source.ssl_key_location"), "{e}");
    let e = err(&format!(
        "[source]\nssl_ca_location = \"{}\"\n",
        ca.path().display()
    ));
    assert!(e.contains("does not use TLS"), "{e}");
}

#[test]
fn the_pass_through_refuses_owned_and_unknown_keys() {
    let e =
        err("[source.librdkafka]\n\"group.id\" = \"mine\"\n\"enable.auto.commit\" = \"true\"\n");
    assert!(e.contains("source.librdkafka.\"group.id\""), "{e}");
    assert!(
        e.contains("source.librdkafka.\"enable.auto.commit\""),
        "{e}"
    );
    assert!(e.contains("set by Tributary"), "{e}");
    let e = err("[source.librdkafka]\n\"sasl.password\" = \"x\"\n");
    assert!(e.contains("source.librdkafka.\"sasl.password\""), "{e}");
    let e = err("[source.librdkafka]\n\"fetch.wait.max.msec\" = \"20\"\n");
    assert!(
        e.contains("source.librdkafka.\"fetch.wait.max.msec\""),
        "{e}"
    );
    let e = err("[source.librdkafka]\n\"fetch.wait.max.ms\" = \"soon\"\n");
    assert!(e.contains("source.librdkafka.\"fetch.wait.max.ms\""), "{e}");
}

#[test]
fn redis_tls_acl_and_cluster() {
    let ca = ca_file();
    let text = format!(
        "[redis]\nurl = \"rediss://redis.internal:6380/0\"\nusername = \"tributary\"\nca_file = \"{}\"\n",
        ca.path().display()
    );
    let c = load_env(&text, &[("TRIBUTARY__REDIS__PASSWORD", "pw-pw-pw")]).expect("valid");
    assert!(c.redis.uses_tls());
    assert_eq!(
        c.redis.connection_url().expect("url"),
        "rediss://tributary:pw-pw-pw@redis.internal:6380/0"
    );
    assert_eq!(c.redis.endpoint(), "rediss://redis.internal:6380/0");

    let e = err("[redis]\nurl = \"redis://:hunter2@h:6379/0\"\n");
    assert!(e.contains("redis.url") && !e.contains("hunter2"), "{e}");
    let e = err(&format!(
        "[redis]\nurl = \"redis://h:6379/0\"\nca_file = \"{}\"\n",
        ca.path().display()
    ));
    assert!(
        e.contains("redis.ca_file") && e.contains("rediss://"),
        "{e}"
    );
    let e = err("[redis]\nurl = \"redis://h:6379/0\"\nusername = \"u\"\n");
    assert!(e.contains("redis.password"), "{e}");
    let e = err("[redis]\nurl = \"redis://h:6379/3\"\ncluster = true\n");
    assert!(e.contains("redis.url") && e.contains("database 0"), "{e}");
    let e = err("[redis]\nurl = \"http://h:6379\"\n");
    assert!(e.contains("redis.url"), "{e}");
}

#[test]
fn serving_keys_origins_and_tls() {
    let e = err("[serving]\napi_keys = [\"short-key\"]\n");
    assert!(
        e.contains("serving.api_keys[0]") && !e.contains("short-key"),
        "{e}"
    );
    let c = load_env(
        "[serving]\napi_keys = [\"0123456789abcdef-key\"]\ncors_origins = [\"https://dash.example.com\", \"http://localhost:3000\"]\n",
        &[],
    )
    .expect("valid");
    assert_eq!(c.serving.api_keys.len(), 1);
    assert!(!format!("{c:?}").contains("0123456789abcdef-key"));
    for bad in ["dash.example.com", "https://dash.example.com/", "ftp://x"] {
        let e = err(&format!("[serving]\ncors_origins = [\"{bad}\"]\n"));
        assert!(e.contains("serving.cors_origins[0]"), "{bad}: {e}");
    }
    let ca = ca_file();
    let e = err(&format!(
        "[serving]\ntls_cert = \"{}\"\n",
        ca.path().display()
    ));
    assert!(e.contains("serving.tls_key"), "{e}");
    let e = err("[serving]\ntls_cert = \"/nonexistent/a.pem\"\ntls_key = \"/nonexistent/b.pem\"\n");
    assert!(
        e.contains("serving.tls_cert") && e.contains("serving.tls_key"),
        "{e}"
    );
}
