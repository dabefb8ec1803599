//! What the speed consumers publish per partition after each flush, for `/v1/status` and lag
//! tools: one JSON document per partition in the hash `<prefix>:speed:<topic>:progress`. This
//! struct is the contract: the speed layer writes it, the serving layer reads it through
//! [`read`].

use std::collections::{BTreeMap, HashMap};

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use tributary_shared::layout::RedisKeys;

/// One partition's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionReport {
    /// When it was published (wall clock, ms).
    pub updated_ms: i64,
    /// Next offset the consumer reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<i64>,
    /// The partition's end offset as the broker last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_offsets: Option<i64>,
    /// Newest event time seen on the partition (over its views).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_time_ms: Option<i64>,
    /// `max_event_time_ms - allowed_lateness`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
}

/// Publishes reports (a progress hash outside any view's slot: informational, not fenced).
pub async fn publish<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    topic: &str,
    reports: &[(i32, PartitionReport)],
) -> redis::RedisResult<()> {
    if reports.is_empty() {
        return Ok(());
    }
    let fields: Vec<(String, String)> = reports
        .iter()
        .map(|(p, r)| {
            (
                p.to_string(),
                serde_json::to_string(r).unwrap_or_else(|_| "{}".into()),
            )
        })
        .collect();
    redis::cmd("HSET")
        .arg(keys.speed_progress(topic))
        .arg(fields)
        .query_async(con)
        .await
}

/// Every partition's last report (reports that do not parse are left out).
pub async fn read<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    topic: &str,
) -> redis::RedisResult<BTreeMap<i32, PartitionReport>> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.speed_progress(topic))
        .query_async(con)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(p, v)| Some((p.parse().ok()?, serde_json::from_str(&v).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_keep_the_published_field_names() {
        let r = PartitionReport {
            updated_ms: 5,
            next_offset: Some(10),
            high_watermark: Some(12),
            lag_offsets: Some(2),
            max_event_time_ms: Some(1_000),
            watermark_ms: Some(700),
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"updated_ms":5,"next_offset":10,"high_watermark":12,"lag_offsets":2,"max_event_time_ms":1000,"watermark_ms":700}"#
        );
        assert_eq!(serde_json::from_str::<PartitionReport>(&text).ok(), Some(r));
        let sparse: PartitionReport =
            serde_json::from_str(r#"{"updated_ms":1}"#).unwrap_or_default();
        assert_eq!(sparse.next_offset, None);
    }
}
