//! Kafka helpers both consumers need: client settings, the events-topic check, the
//! dead-letter topic, partition end offsets from librdkafka's statistics, and the consumer
//! group watchdog ([`group`]).

pub mod group;

pub use group::{ALONE_FOR, GroupAction, GroupWatch, Membership, MembershipEvent};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::statistics::Statistics;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka at {brokers}: {cause}")]
    Metadata { brokers: String, cause: String },
    #[error(
        "the events topic {topic:?} does not exist on {brokers}; create it first (topics are not auto-created)"
    )]
    Missing { topic: String, brokers: String },
    #[error("metadata probe failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("kafka admin at {brokers}: {message}")]
    Admin { brokers: String, message: String },
}

/// The client settings every Kafka client of the project starts from: the brokers, how to
/// reach them (`security_protocol`, SASL, TLS) and the `[source.librdkafka]` pass-through.
/// Callers add the keys they own on top (the pass-through cannot hold those: validation
/// refuses them).
pub fn client_config(source: &crate::config::SourceConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    // New partitions are noticed (and rebalanced) within seconds, not librdkafka's 5 min.
    c.set("topic.metadata.refresh.interval.ms", "10000");
    for (k, v) in &source.librdkafka {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &source.brokers).set(
        "security.protocol",
        source.security_protocol.as_librdkafka(),
    );
    if let Some(m) = source.sasl_mechanism {
        c.set("sasl.mechanism", m.as_librdkafka());
    }
    if let Some(u) = &source.sasl_username {
        c.set("sasl.username", u);
    }
    if let Some(p) = &source.sasl_password {
        c.set("sasl.password", p.expose());
    }
    if let Some(p) = &source.ssl_key_password {
        c.set("ssl.key.password", p.expose());
    }
    for (key, value) in [
        ("ssl.ca.location", &source.ssl_ca_location),
        ("ssl.certificate.location", &source.ssl_certificate_location),
        ("ssl.key.location", &source.ssl_key_location),
    ] {
        if let Some(v) = value {
            c.set(key, v);
        }
    }
    c
}

/// The settings both consumers (speed, archive) start from: their own group, offsets kept by
/// the consumer itself (Redis or the archive state is the commit point; Kafka commits are
/// advisory), reading from the start of a partition nothing was committed for, and
/// statistics every 2 s (partition end offsets, see [`HighWatermarks`]).
pub fn consumer_config(
    source: &crate::config::SourceConfig,
    group: &str,
    session_timeout: Duration,
) -> ClientConfig {
    let mut c = client_config(source);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "2000");
    c
}

/// Number of partitions of `topic`, or a clear error naming it when it does not exist.
///
/// This is also the start-up check of the connection: a wrong credential, an untrusted
/// certificate or a TLS listener spoken to in plaintext fails here within seconds, naming the
/// endpoint and librdkafka's own reason (which never holds the password), instead of a
/// consumer retrying in the background forever.
pub async fn topic_partitions(
    source: &crate::config::SourceConfig,
    topic: &str,
) -> Result<i32, TopicError> {
    let mut config = client_config(source);
    // A TLS listener spoken to in plaintext may never answer the first request (the proxy
    // waits for the rest of a "TLS record"): give up on it well inside the probe's deadline.
    config.set("api.version.request.timeout.ms", "3000");
    let t = topic.to_string();
    let meta = tokio::task::spawn_blocking(move || probe_metadata(config, &t))
        .await?
        .map_err(|cause| TopicError::Metadata {
            brokers: source.endpoint(),
            cause,
        })?;
    match meta.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        Some(t)
            if t.error()
                == Some(
                    rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                ) =>
        {
            Err(TopicError::Metadata {
                brokers: source.endpoint(),
                cause: format!(
                    "not authorized to describe topic {topic:?} (grant the user Describe and Read on it)"
                ),
            })
        }
        _ => Err(TopicError::Missing {
            topic: topic.to_string(),
            brokers: source.endpoint(),
        }),
    }
}

/// How long the metadata probe tries before giving up on an endpoint that does not answer.
const PROBE_DEADLINE: Duration = Duration::from_secs(8);

/// Fetches `topic`'s metadata, giving up at the first error librdkafka reports as fatal to
/// the connection (authentication, TLS, a protocol mismatch) or after [`PROBE_DEADLINE`].
fn probe_metadata(
    config: ClientConfig,
    topic: &str,
) -> Result<rdkafka::metadata::Metadata, String> {
    let probe: BaseConsumer<ProbeContext> = config
        .create_with_context(ProbeContext::default())
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + PROBE_DEADLINE;
    loop {
        let attempt = probe.fetch_metadata(Some(topic), Duration::from_millis(1000));
        // Error callbacks are served by polling: without it the cause never arrives.
        let _ = probe.poll(Duration::ZERO);
        let seen = probe.context().last_error();
        match attempt {
            Ok(meta) => return Ok(meta),
            Err(e) => {
                if let Some((true, reason)) = &seen {
                    return Err(reason.clone());
                }
                if std::time::Instant::now() >= deadline {
                    return Err(match seen {
                        Some((_, reason)) => reason,
                        None => format!("no answer within {PROBE_DEADLINE:?}: {e}"),
                    });
                }
            }
        }
    }
}

/// Keeps what librdkafka reported while probing: the first causes (distinct, in order) and
/// whether any of them is one retrying cannot fix.
#[derive(Default)]
struct ProbeContext(Mutex<Seen>);

#[derive(Default)]
struct Seen {
    fatal: bool,
    causes: Vec<String>,
}

impl ProbeContext {
    /// `Some((fatal, causes))` once anything was reported.
    fn last_error(&self) -> Option<(bool, String)> {
        let seen = self.0.lock().ok()?;
        (!seen.causes.is_empty()).then(|| (seen.fatal, seen.causes.join("; ")))
    }

    fn note(&self, message: &str) {
        let (fatal, what) = classify(message);
        let Ok(mut seen) = self.0.lock() else { return };
        // librdkafka prefixes each line with the broker; the cause is what follows.
        let cause = format!("{what}: {message}");
        if fatal && !seen.fatal {
            seen.causes.clear();
        }
        if (fatal || !seen.fatal) && seen.causes.len() < 3 && !seen.causes.contains(&cause) {
            seen.causes.push(cause);
        }
        seen.fatal |= fatal;
    }
}

/// What a librdkafka error or log line means for an operator, and whether retrying can fix
/// it (a credential, a certificate or a protocol mismatch cannot).
fn classify(message: &str) -> (bool, &'static str) {
    let m = message.to_ascii_lowercase();
    if m.contains("sasl") || m.contains("authentication") {
        (true, "authentication failed")
    } else if m.contains("certificate") || m.contains("ssl") || m.contains("handshake") {
        (true, "TLS failed")
    } else if m.contains("apiversion") || m.contains("security.protocol") {
        // The broker's port hung up on our first request: a TLS listener spoken to in
        // plaintext (or a SASL one without SASL).
        (
            true,
            "the broker closed the connection at the first request (check source.security_protocol: a TLS or SASL listener spoken to in plaintext?)",
        )
    } else {
        (false, "cannot connect")
    }
}

impl rdkafka::ClientContext for ProbeContext {
    fn error(&self, _error: rdkafka::error::KafkaError, reason: &str) {
        self.note(reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, _fac: &str, message: &str) {
        // Some causes (a refused SCRAM proof, a disconnect during the first request) arrive
        // only as log lines before the generic transport error.
        let level = level as i32;
        let telling_disconnect = message.contains("Disconnected")
            && ["APIVERSION_QUERY", "SSL_HANDSHAKE", "AUTH_"]
                .iter()
                .any(|state| message.contains(state));
        if level <= rdkafka::config::RDKafkaLogLevel::Warning as i32
            || (level <= rdkafka::config::RDKafkaLogLevel::Info as i32 && telling_disconnect)
        {
            self.note(message);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// Partition count of `topic`, `None` when it does not exist.
async fn partitions_if_exists(
    source: &crate::config::SourceConfig,
    topic: &str,
) -> Result<Option<i32>, TopicError> {
    match topic_partitions(source, topic).await {
        Ok(n) => Ok(Some(n)),
        Err(TopicError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes sure `<topic>.dlq` exists with at least `partitions` partitions (the events topic's
/// count, so a dead letter keeps its source partition): created when missing, grown when
/// smaller. A broker without CreatePartitions (Tansu 0.6) keeps the smaller count; dead
/// letters then wrap around its partitions. Returns the DLQ's partition count.
pub async fn ensure_dlq(
    config: &crate::config::Config,
    partitions: i32,
) -> Result<i32, TopicError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let brokers = &config.source.endpoint();
    let dlq = config.source.dlq_topic();
    let existing = partitions_if_exists(&config.source, &dlq).await?;
    if existing.is_some_and(|n| n >= partitions) {
        return Ok(existing.unwrap_or(partitions));
    }
    let admin_err = |message: String| TopicError::Admin {
        brokers: brokers.clone(),
        message,
    };
    let admin: AdminClient<DefaultClientContext> = client_config(&config.source)
        .create()
        .map_err(|e| admin_err(e.to_string()))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match existing {
        None => {
            let new = NewTopic::new(&dlq, partitions, TopicReplication::Fixed(1));
            let res = admin
                .create_topics([&new], &opts)
                .await
                .map_err(|e| admin_err(format!("create dead-letter topic {dlq}: {e}")))?;
            for r in res {
                match r {
                    Ok(_) => tracing::info!(topic = %dlq, partitions, "created dead-letter topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((t, code)) => {
                        return Err(admin_err(format!("create dead-letter topic {t}: {code}")));
                    }
                }
            }
            Ok(partitions_if_exists(&config.source, &dlq)
                .await?
                .unwrap_or(partitions))
        }
        Some(n) => {
            let grow = NewPartitions::new(&dlq, partitions as usize);
            let grown = match admin.create_partitions([&grow], &opts).await {
                Ok(res) => res.into_iter().all(|r| r.is_ok()),
                Err(_) => false,
            };
            if grown {
                tracing::info!(topic = %dlq, from = n, to = partitions, "grew the dead-letter topic with the events topic");
                Ok(partitions)
            } else {
                tracing::warn!(topic = %dlq, partitions = n, events_partitions = partitions,
                    "cannot grow the dead-letter topic (the broker refused CreatePartitions); dead letters of the new partitions go to its existing ones");
                Ok(n)
            }
        }
    }
}

/// End offset of each partition of one topic, fed by the `stats` callback
/// (`statistics.interval.ms`), read by the consumer loops for lag and idleness.
#[derive(Debug, Clone, Default)]
pub struct HighWatermarks(Arc<Mutex<HashMap<i32, i64>>>);

impl HighWatermarks {
    /// Records the end offsets a statistics report gives for `topic`.
    pub fn record(&self, statistics: &Statistics, topic: &str) {
        let (Some(t), Ok(mut hw)) = (statistics.topics.get(topic), self.0.lock()) else {
            return;
        };
        for (p, s) in &t.partitions {
            if *p >= 0 && s.hi_offset >= 0 {
                let e = hw.entry(*p).or_insert(s.hi_offset);
                *e = (*e).max(s.hi_offset);
            }
        }
    }

    /// Records an end offset seen another way (the consumer reached the partition's end).
    pub fn observe(&self, partition: i32, end: i64) {
        if let Ok(mut hw) = self.0.lock() {
            let e = hw.entry(partition).or_insert(end);
            *e = (*e).max(end);
        }
    }

    pub fn snapshot(&self) -> HashMap<i32, i64> {
        self.0.lock().map(|h| h.clone()).unwrap_or_default()
    }
}
