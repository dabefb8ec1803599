//! Serde adapters for the config's human units: durations and byte sizes.

/// Durations written as strings: "200ms", "5m", "48h", "0s".
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(D::Error::custom)
    }

    /// Parses "200ms", "5m", "48h", "1h 30m"; a bare "0" is zero.
    pub fn parse(s: &str) -> Result<Duration, String> {
        if s.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration like \"200ms\", \"5m\" or \"48h\": {e}"))
    }
}

/// Sizes written as strings: "256MiB", "2GiB", "1048576".
pub mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Written back exactly (a serialized config is loaded again by subprocesses).
    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        let text = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
            .iter()
            .find(|(unit, _)| *n > 0 && n.is_multiple_of(*unit))
            .map_or_else(
                || format!("{n}B"),
                |(unit, name)| format!("{}{name}", n / unit),
            );
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Text(s) => parse(&s).map_err(D::Error::custom),
        }
    }

    /// Parses "256MiB", "2 GiB", "512kB", "1048576".
    pub fn parse(s: &str) -> Result<u64, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("{s:?} is not a size like \"256MiB\" or \"2GiB\": {e}"))
    }
}

/// An optional [`byte_size`] (absent key = `None`).
pub mod byte_size_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => super::byte_size::serialize(n, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::byte_size")] u64);
        Ok(Some(Wrap::deserialize(d)?.0))
    }
}
