//! The platform against secured and clustered infrastructure, started by `make up-secure`:
//! Kafka with SASL SCRAM-SHA-512 behind TLS, Redis over TLS with an ACL user, a 3-master Redis
//! Cluster with a replica each. Real services and the real binaries, nothing skipped: a test
//! whose service is not up fails, naming `make up-secure`.

mod cluster;
mod failures;
mod pipeline;

use std::collections::HashMap;

use tributary_it::produce_all;
use tributary_it::scenario::Ev;
use tributary_shared::config::SourceConfig;

/// Produces `evs` (in time order, so nothing is late) round-robin over `partitions` through
/// `source`'s connection settings; returns what each partition received.
async fn produce_via(
    source: &SourceConfig,
    evs: &[Ev],
    partitions: i32,
) -> anyhow::Result<HashMap<i32, i64>> {
    let producer = tributary_it::producer_via(source)?;
    let mut per: HashMap<i32, Vec<Vec<u8>>> = HashMap::new();
    for (i, e) in evs.iter().enumerate() {
        per.entry((i % partitions as usize) as i32)
            .or_default()
            .push(e.json());
    }
    let mut sent = HashMap::new();
    for (p, payloads) in per {
        sent.insert(p, payloads.len() as i64);
        produce_all(&producer, &source.topic, Some(p), payloads).await?;
    }
    Ok(sent)
}
