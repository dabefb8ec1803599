//! Every Redis key and object-store path of the platform, so no layer formats one by hand.
//!
//! Redis keys are `<prefix>:{<view>}:...`: the braces are a Redis Cluster hash tag, so all
//! keys of a view live in one slot and a flush of a view can be one transaction.

use object_store::path::Path;

use crate::bucket::{Granularity, date_string};

/// Redis key layout under a prefix (`tributary` unless a test isolates itself).
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub fn new(prefix: impl Into<String>) -> Self {
        RedisKeys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:{<view>}`: the start of every key of a view.
    pub fn view(&self, view: &str) -> String {
        format!("{}:{{{view}}}", self.prefix)
    }

    /// Hash of additive aggregates of one bucket and group: `count`, `sum:<m>`, `min:<m>`,
    /// `max:<m>`.
    pub fn aggregates(&self, view: &str, g: Granularity, bucket_ms: i64, group: &str) -> String {
        format!("{}:{{{view}}}:a:{g}:{bucket_ms}:{group}", self.prefix)
    }

    /// HyperLogLog of a `count_distinct` measure for one bucket and group.
    pub fn hll(
        &self,
        view: &str,
        measure: &str,
        g: Granularity,
        bucket_ms: i64,
        group: &str,
    ) -> String {
        format!(
            "{}:{{{view}}}:h:{measure}:{g}:{bucket_ms}:{group}",
            self.prefix
        )
    }

    /// Hash of log-bucket counts of a `quantile` measure for one bucket and group.
    pub fn sketch(
        &self,
        view: &str,
        measure: &str,
        g: Granularity,
        bucket_ms: i64,
        group: &str,
    ) -> String {
        format!(
            "{}:{{{view}}}:q:{measure}:{g}:{bucket_ms}:{group}",
            self.prefix
        )
    }

    /// Set of the groups (encoded with [`encode_group`]) that have data in a bucket.
    pub fn groups(&self, view: &str, g: Granularity, bucket_ms: i64) -> String {
        format!("{}:{{{view}}}:g:{g}:{bucket_ms}", self.prefix)
    }

    /// Hash `<partition>` → next offset to apply, written in the same transaction as the data.
    pub fn offsets(&self, view: &str, topic: &str) -> String {
        format!("{}:{{{view}}}:offsets:{topic}", self.prefix)
    }

    /// The view's epoch: an id the speed layer writes when it (re)builds the view's state and
    /// checks in every flush. Gone means Redis lost the view's data (a restart without
    /// persistence, a failover, `FLUSHALL`); changed means another process rebuilt it.
    pub fn epoch(&self, view: &str) -> String {
        format!("{}:{{{view}}}:epoch", self.prefix)
    }

    /// Hash describing a rebuild in progress (`epoch`, `from_ms`, `started_ms`, `reason`, and
    /// `t:<partition>` → the offset the rebuild must reach); deleted by the flush that
    /// completes it.
    pub fn rebuild(&self, view: &str) -> String {
        format!("{}:{{{view}}}:rebuild", self.prefix)
    }

    /// Counter of the view's applied flushes, incremented by the script that applies each one
    /// (atomically with its data): with the epoch, a version of the view's speed state that
    /// one `GET` reads, so a reader can tell an answer it cached is still current.
    pub fn flushes(&self, view: &str) -> String {
        format!("{}:{{{view}}}:flushes", self.prefix)
    }

    /// Lock taken by the one process that rebuilds a view's state.
    pub fn rebuild_lock(&self, view: &str) -> String {
        format!("{}:{{{view}}}:rebuild-lock", self.prefix)
    }

    /// The events topic's partition count as the speed layer last saw it (a speed bucket is
    /// sealed only when every partition's watermark has passed it).
    pub fn topic_partitions(&self, topic: &str) -> String {
        format!("{}:speed:{topic}:partitions", self.prefix)
    }

    /// Hash of per-view counters (`late_dropped`, `applied`, ...).
    pub fn view_stats(&self, view: &str) -> String {
        format!("{}:{{{view}}}:stats", self.prefix)
    }

    /// Hash of per-partition progress of the speed layer on a topic (watermark, event time, lag).
    pub fn speed_progress(&self, topic: &str) -> String {
        format!("{}:speed:{topic}:progress", self.prefix)
    }

    /// Hash of topic-wide counters of the speed layer (DLQ counts by reason).
    pub fn speed_stats(&self, topic: &str) -> String {
        format!("{}:speed:{topic}:stats", self.prefix)
    }

    /// Set of event-id hashes the producer-duplicate filter saw in one event-time slot of a
    /// partition, for one view.
    pub fn dedup(&self, view: &str, topic: &str, partition: i32, slot: i64) -> String {
        format!(
            "{}:{{{view}}}:dedup:{topic}:{partition}:{slot}",
            self.prefix
        )
    }
}

/// Encodes a group (one value per dimension, `None` when absent) as a compact JSON array:
/// unambiguous for any value, and readable in `redis-cli`.
pub fn encode_group<S: AsRef<str>>(values: &[Option<S>]) -> String {
    let mut out = String::with_capacity(2 + values.len() * 12);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match v {
            Some(s) => push_json_string(&mut out, s.as_ref()),
            None => out.push_str("null"),
        }
    }
    out.push(']');
    out
}

/// Appends `s` as a JSON string literal, escaping exactly as `serde_json` does, so that group
/// encodings built incrementally on the hot path equal [`encode_group`]'s.
pub fn push_json_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Inverse of [`encode_group`].
pub fn decode_group(s: &str) -> Option<Vec<Option<String>>> {
    serde_json::from_str(s).ok()
}

/// Object-store paths of the master dataset and of the batch views.
pub mod paths {
    use super::*;

    /// `master/<topic>`
    pub fn master_root(topic: &str) -> Path {
        Path::from(format!("master/{topic}"))
    }

    /// `master/<topic>/date=YYYY-MM-DD/`
    pub fn master_date(topic: &str, date: &str) -> Path {
        Path::from(format!("master/{topic}/date={date}"))
    }

    /// `master/<topic>/date=YYYY-MM-DD/hour=HH/p<partition>-<first>-<last>.parquet`, offsets
    /// zero-padded to 20 digits so names sort by offset.
    pub fn master_file(
        topic: &str,
        hour_start_ms: i64,
        partition: i32,
        first: i64,
        last: i64,
    ) -> Path {
        Path::from(format!(
            "master/{topic}/date={}/hour={:02}/p{partition}-{first:020}-{last:020}.parquet",
            date_string(hour_start_ms),
            crate::bucket::hour_of_day(hour_start_ms),
        ))
    }

    /// What a master file's name says about it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MasterFile {
        pub date: String,
        pub hour: u32,
        pub partition: i32,
        pub first_offset: i64,
        pub last_offset: i64,
    }

    /// Parses a path made by [`master_file`]; `None` for anything else (`_state`, stray files).
    pub fn parse_master_file(topic: &str, path: &Path) -> Option<MasterFile> {
        let rest = path
            .as_ref()
            .strip_prefix(&format!("master/{topic}/date="))?;
        let (date, rest) = rest.split_once("/hour=")?;
        let (hour, name) = rest.split_once('/')?;
        let name = name.strip_prefix('p')?.strip_suffix(".parquet")?;
        let mut parts = name.split('-');
        let partition = parts.next()?.parse().ok()?;
        let first_offset = parts.next()?.parse().ok()?;
        let last_offset = parts.next()?.parse().ok()?;
        if parts.next().is_some() || crate::bucket::parse_date(date).is_none() {
            return None;
        }
        Some(MasterFile {
            date: date.to_string(),
            hour: hour.parse().ok().filter(|h| *h < 24)?,
            partition,
            first_offset,
            last_offset,
        })
    }

    /// `master/<topic>/_state/p<partition>.json`: the archive's commit point for a partition.
    pub fn archive_state(topic: &str, partition: i32) -> Path {
        Path::from(format!("master/{topic}/_state/p{partition}.json"))
    }

    /// `master/<topic>/_state/topic.json`: the topic's partition count as the archive saw it.
    pub fn archive_topic_state(topic: &str) -> Path {
        Path::from(format!("master/{topic}/_state/topic.json"))
    }

    /// `master/<topic>/_state/`
    pub fn archive_state_dir(topic: &str) -> Path {
        Path::from(format!("master/{topic}/_state"))
    }

    /// `views/<view>/<granularity>/date=YYYY-MM-DD/<run-id>.parquet`
    pub fn view_file(view: &str, g: Granularity, date: &str, run_id: &str) -> Path {
        Path::from(format!("views/{view}/{g}/date={date}/{run_id}.parquet"))
    }

    /// `views/<view>/`
    pub fn view_root(view: &str) -> Path {
        Path::from(format!("views/{view}"))
    }

    /// `views/<view>/manifest.json`, written last by a run.
    pub fn view_manifest(view: &str) -> Path {
        Path::from(format!("views/{view}/manifest.json"))
    }

    /// `views/<view>/accuracy/date=YYYY-MM-DD/<run-id>.parquet`: the speed accuracy ledger
    /// of the buckets of that date a run settled.
    pub fn accuracy_file(view: &str, date: &str, run_id: &str) -> Path {
        Path::from(format!(
            "views/{view}/accuracy/date={date}/{run_id}.parquet"
        ))
    }

    /// `views/<view>/history/`: every manifest version a run landed, kept for
    /// `batch.history_retention` (the `as_of` queries' source).
    pub fn view_history(view: &str) -> Path {
        Path::from(format!("views/{view}/history"))
    }

    /// `views/<view>/history/<version, 12 digits>-<landed, epoch ms>.json`: the name alone
    /// tells which version was current at an instant, without reading the file.
    pub fn view_history_entry(view: &str, version: u64, landed_ms: i64) -> Path {
        Path::from(format!(
            "views/{view}/history/{version:012}-{landed_ms}.json"
        ))
    }

    /// `_batch/lock.json`: one batch run at a time per store.
    pub fn batch_lock() -> Path {
        Path::from("_batch/lock.json")
    }

    /// `_batch/last_run.json`: outcome of the last run, for `/v1/status`.
    pub fn batch_last_run() -> Path {
        Path::from("_batch/last_run.json")
    }
}

#[cfg(test)]
mod tests {
    use super::paths::*;
    use super::*;

    #[test]
    fn redis_keys_share_the_view_hash_tag() {
        let k = RedisKeys::new("tributary");
        let group = encode_group(&[Some("DE"), None]);
        assert_eq!(group, r#"["DE",null]"#);
        assert_eq!(
            k.aggregates("checkouts", Granularity::Minute, 1_763_719_200_000, &group),
            r#"tributary:{checkouts}:a:minute:1763719200000:["DE",null]"#
        );
        for key in [
            k.hll("checkouts", "buyers", Granularity::Hour, 0, &group),
            k.sketch("checkouts", "p95", Granularity::Day, 0, &group),
            k.groups("checkouts", Granularity::Hour, 0),
            k.offsets("checkouts", "events"),
            k.view_stats("checkouts"),
            k.epoch("checkouts"),
            k.rebuild("checkouts"),
            k.rebuild_lock("checkouts"),
        ] {
            assert!(key.starts_with("tributary:{checkouts}:"), "{key}");
        }
        assert_eq!(
            decode_group(&group),
            Some(vec![Some("DE".to_string()), None])
        );
        let odd = encode_group(&[Some("a\"b:{c}|"), Some("")]);
        for tricky in ["a\"b\\c", "tab\there", "nl\n\u{1}\u{8}\u{c}\u{1f}", "ünï ✓"] {
            let ours = encode_group(&[Some(tricky), None]);
            let theirs = serde_json::to_string(&[Some(tricky), None]).unwrap_or_default();
            assert_eq!(ours, theirs);
        }
        assert_eq!(
            decode_group(&odd),
            Some(vec![Some("a\"b:{c}|".to_string()), Some(String::new())])
        );
    }

    #[test]
    fn master_paths_round_trip() {
        let hour = crate::bucket::parse_rfc3339("2026-11-21T07:00:00Z").unwrap_or_default();
        let p = master_file("events", hour, 3, 1200, 1299);
        assert_eq!(
            p.as_ref(),
            "master/events/date=2026-11-21/hour=07/p3-00000000000000001200-00000000000000001299.parquet"
        );
        assert_eq!(
            parse_master_file("events", &p),
            Some(MasterFile {
                date: "2026-11-21".into(),
                hour: 7,
                partition: 3,
                first_offset: 1200,
                last_offset: 1299
            })
        );
        assert_eq!(
            parse_master_file("events", &archive_state("events", 3)),
            None
        );
        assert_eq!(parse_master_file("other", &p), None);
        assert_eq!(
            archive_state("events", 3).as_ref(),
            "master/events/_state/p3.json"
        );
        assert_eq!(
            view_file("checkouts", Granularity::Hour, "2026-11-21", "r1").as_ref(),
            "views/checkouts/hour/date=2026-11-21/r1.parquet"
        );
        assert_eq!(
            view_manifest("checkouts").as_ref(),
            "views/checkouts/manifest.json"
        );
    }
}
