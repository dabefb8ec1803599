//! Event-time buckets: minute, hour and day in UTC, as epoch milliseconds.
//!
//! Unix time has no leap seconds and UTC no DST, so every bucket of one granularity has the
//! same length and flooring is plain Euclidean division (correct before 1970 too).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Width of a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// Length of one bucket in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }

    /// Start of the bucket holding `ts_ms`.
    pub fn floor(self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.millis()) * self.millis()
    }

    /// End (exclusive) of the bucket starting at `start_ms`.
    pub fn end(self, start_ms: i64) -> i64 {
        start_ms.saturating_add(self.millis())
    }

    /// Start of the first bucket at or after `ts_ms`.
    pub fn ceil(self, ts_ms: i64) -> i64 {
        let f = self.floor(ts_ms);
        if f == ts_ms { f } else { f + self.millis() }
    }

    /// Buckets overlapping the half-open range `[from_ms, to_ms)`: from the bucket holding
    /// `from_ms` to the one holding `to_ms - 1`.
    pub fn buckets(self, from_ms: i64, to_ms: i64) -> impl Iterator<Item = i64> {
        let step = self.millis();
        let first = self.floor(from_ms);
        let count = self.count(from_ms, to_ms);
        (0..count).map(move |i| first + i as i64 * step)
    }

    /// Number of buckets [`Granularity::buckets`] yields.
    pub fn count(self, from_ms: i64, to_ms: i64) -> u64 {
        if to_ms <= from_ms {
            return 0;
        }
        let first = self.floor(from_ms);
        let last = self.floor(to_ms - 1);
        ((last - first) / self.millis() + 1) as u64
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown granularity name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown granularity {0:?}; expected minute, hour or day")]
pub struct UnknownGranularity(pub String);

impl FromStr for Granularity {
    type Err = UnknownGranularity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minute" => Ok(Granularity::Minute),
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            other => Err(UnknownGranularity(other.to_string())),
        }
    }
}

/// Epoch milliseconds as a chrono timestamp; out-of-range values clamp to the epoch.
pub fn to_datetime(ts_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ts_ms).unwrap_or_default()
}

/// RFC 3339 in UTC with a `Z`, seconds precision unless there are milliseconds.
pub fn format_rfc3339(ts_ms: i64) -> String {
    let format = if ts_ms.rem_euclid(1000) == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    to_datetime(ts_ms).to_rfc3339_opts(format, true)
}

/// `YYYY-MM-DD` of the UTC day holding `ts_ms` (the master dataset's `date=` partition).
pub fn date_string(ts_ms: i64) -> String {
    to_datetime(ts_ms).format("%Y-%m-%d").to_string()
}

/// Hour of day (0-23, UTC) of `ts_ms` (the master dataset's `hour=` partition).
pub fn hour_of_day(ts_ms: i64) -> u32 {
    (ts_ms.rem_euclid(DAY_MS) / HOUR_MS) as u32
}

/// Parses `YYYY-MM-DD` into the epoch milliseconds of its midnight UTC.
pub fn parse_date(s: &str) -> Option<i64> {
    // RFC 3339's full-date exactly: chrono's `%Y` and `%m` would also take a sign or one digit.
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shape {
        return None;
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A time as operators and dashboards write it: RFC 3339 or a date (its midnight UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    parse_rfc3339(s).or_else(|| parse_date(s))
}

/// How [`parse_time`] expects a time, for error messages.
pub const TIME_FORMATS: &str = "RFC 3339 (2026-11-21T10:00:00Z) or a date (2026-11-21)";

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        parse_rfc3339(s).unwrap_or_else(|| panic!("bad test timestamp {s}"))
    }

    #[test]
    fn floor_and_end_at_boundaries() {
        let cases = [
            // (granularity, timestamp, expected floor)
            (
                Granularity::Minute,
                "2026-11-21T10:00:59.999Z",
                "2026-11-21T10:00:00Z",
            ),
            (
                Granularity::Minute,
                "2026-11-21T10:01:00Z",
                "2026-11-21T10:01:00Z",
            ),
            (
                Granularity::Hour,
                "2026-11-21T10:59:59.999Z",
                "2026-11-21T10:00:00Z",
            ),
            (
                Granularity::Day,
                "2026-12-31T23:59:59.999Z",
                "2026-12-31T00:00:00Z",
            ),
            (
                Granularity::Day,
                "2027-01-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                Granularity::Day,
                "2028-02-29T12:00:00Z",
                "2028-02-29T00:00:00Z",
            ),
            (
                Granularity::Hour,
                "2026-11-30T23:30:00Z",
                "2026-11-30T23:00:00Z",
            ),
            (
                Granularity::Minute,
                "1969-12-31T23:59:59.500Z",
                "1969-12-31T23:59:00Z",
            ),
        ];
        for (g, ts, want) in cases {
            assert_eq!(g.floor(ms(ts)), ms(want), "{g} floor of {ts}");
            assert_eq!(g.end(g.floor(ms(ts))), ms(want) + g.millis());
        }
        // The day after a leap day, and the month roll-over.
        let leap = Granularity::Day.floor(ms("2028-02-29T01:00:00Z"));
        assert_eq!(
            format_rfc3339(Granularity::Day.end(leap)),
            "2028-03-01T00:00:00Z"
        );
        let nov30 = Granularity::Day.floor(ms("2026-11-30T08:00:00Z"));
        assert_eq!(date_string(Granularity::Day.end(nov30)), "2026-12-01");
    }

    #[test]
    fn bucket_ranges_and_counts() {
        let from = ms("2026-11-21T10:00:00Z");
        let to = ms("2026-11-21T13:00:00Z");
        let hours: Vec<_> = Granularity::Hour.buckets(from, to).collect();
        assert_eq!(hours.len(), 3);
        assert_eq!(Granularity::Hour.count(from, to), 3);
        assert_eq!(hours[2], ms("2026-11-21T12:00:00Z"));
        // A range that starts and ends mid-bucket still covers both partial buckets.
        assert_eq!(Granularity::Hour.count(from + 1, to + 1), 4);
        assert_eq!(Granularity::Minute.count(from, from), 0);
        assert_eq!(Granularity::Minute.count(to, from), 0);
        assert_eq!(Granularity::Day.count(from, to), 1);
        assert_eq!(Granularity::Day.ceil(from), ms("2026-11-22T00:00:00Z"));
        assert_eq!(
            Granularity::Day.ceil(ms("2026-11-22T00:00:00Z")),
            ms("2026-11-22T00:00:00Z")
        );
    }

    #[test]
    fn formatting_and_partitions() {
        let t = ms("2026-11-21T10:00:03.250Z");
        assert_eq!(format_rfc3339(t), "2026-11-21T10:00:03.250Z");
        assert_eq!(
            format_rfc3339(Granularity::Minute.floor(t)),
            "2026-11-21T10:00:00Z"
        );
        assert_eq!(date_string(t), "2026-11-21");
        assert_eq!(hour_of_day(t), 10);
        assert_eq!(parse_date("2026-11-21"), Some(ms("2026-11-21T00:00:00Z")));
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_time("2026-11-21"), Some(ms("2026-11-21T00:00:00Z")));
        assert_eq!(
            parse_time("2026-11-21T10:00:00+01:00"),
            Some(ms("2026-11-21T09:00:00Z"))
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(ms("2026-11-21T11:00:03.250+01:00"), t);
        assert_eq!("hour".parse::<Granularity>().ok(), Some(Granularity::Hour));
        assert!("week".parse::<Granularity>().is_err());
    }
}
