//! The counters the speed layer keeps in Redis for operators: dead letters per reason (one hash
//! per topic) and late events dropped per view (each view's stats hash, written by the flush
//! script). Their field names are written here once, for the writers and for [`read`].

use std::collections::{BTreeMap, HashMap};

use redis::aio::ConnectionLike;
use tributary_shared::layout::RedisKeys;

/// Field of a view's stats hash: events dropped as later than the watermark.
pub const LATE_DROPPED: &str = "late_dropped";

/// Field of the topic's stats hash counting dead letters of reason `code`.
pub fn dlq_field(code: &str) -> String {
    format!("dlq:{code}")
}

/// What `/v1/status` shows of the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeedStats {
    /// Dead letters per reason code.
    pub dlq: BTreeMap<String, u64>,
    /// Late events dropped, per view (every view asked for, 0 when it has none).
    pub late_dropped: BTreeMap<String, u64>,
}

/// Reads the topic's counters and those of `views`, in one round trip. Fields that do not
/// parse as counts are left out.
pub async fn read<C: ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    topic: &str,
    views: &[String],
) -> redis::RedisResult<SpeedStats> {
    let mut pipe = redis::pipe();
    pipe.hgetall(keys.speed_stats(topic));
    for v in views {
        pipe.hgetall(keys.view_stats(v));
    }
    let hashes: Vec<HashMap<String, String>> = pipe.query_async(con).await?;
    let mut hashes = hashes.into_iter();
    let dlq = hashes
        .next()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| {
            let code = k.strip_prefix("dlq:")?.to_string();
            Some((code, v.parse().ok()?))
        })
        .collect();
    let late_dropped = views
        .iter()
        .zip(hashes)
        .map(|(v, h)| {
            let n = h.get(LATE_DROPPED).and_then(|x| x.parse().ok());
            (v.clone(), n.unwrap_or(0))
        })
        .collect();
    Ok(SpeedStats { dlq, late_dropped })
}
