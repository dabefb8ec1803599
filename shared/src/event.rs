//! Event parsing and validation: the event contract every layer reads (a JSON object with
//! `event_id`, `type`, `event_time` and the fields `[fields]` declares).
//!
//! Parsing borrows from the message bytes wherever the JSON has no escapes, and skips
//! undeclared fields without building them, because this is the hot path of both consumers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::config::FieldType;

/// Names that are not declarable in `[fields]`: the required keys and the archive's columns.
pub const RESERVED_FIELDS: &[&str] = &[
    "event_id",
    "event_time",
    "type",
    "partition",
    "offset",
    "payload",
];
/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;
/// Earliest accepted `event_time`: 1970-01-01T00:00:00Z.
pub const MIN_EVENT_TIME_MS: i64 = 0;
/// Latest accepted `event_time`: 9999-12-31T23:59:59.999Z (bucket arithmetic and RFC 3339
/// formatting stay in range, and every layer formats the same 4-digit years).
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;
/// Largest accepted magnitude of a declared number. Chosen so that the sum of up to 2^64 such
/// values stays finite: no sum the speed layer keeps in Redis (or the batch layer computes) can
/// overflow, whatever the events, so a flush never fails halfway on a value.
pub const MAX_MAGNITUDE: f64 = 1e288;

/// Why an event was rejected. The `Display` text goes into the DLQ's `tributary.error` header.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("not valid UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object: got {0}")]
    NotObject(&'static str),
    #[error("missing required field {0:?}")]
    Missing(&'static str),
    #[error("field \"event_id\": expected a string of 1 to 256 bytes, got {0}")]
    BadEventId(String),
    #[error(
        "field \"event_time\": expected an RFC 3339 string or integer epoch milliseconds, got {0}"
    )]
    BadEventTime(String),
    #[error(
        "field \"event_time\": {0} is outside 1970-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z"
    )]
    TimeOutOfRange(String),
    #[error("field \"type\": expected a non-empty string, got {0}")]
    BadType(String),
    #[error("field {field:?}: expected {expected}, got {got}")]
    FieldType {
        field: String,
        expected: FieldType,
        got: String,
    },
    #[error("field {field:?}: {got} is beyond ±1e288 (the largest magnitude a sum can take)")]
    NumberOutOfRange { field: String, got: String },
    #[error(
        "event_time {event_time} is {ahead_ms} ms ahead of now, more than max_future_skew ({max_ms} ms)"
    )]
    TooFarInFuture {
        event_time: String,
        ahead_ms: i64,
        max_ms: i64,
    },
}

impl EventError {
    /// A stable machine-readable code, for metrics labels and the `tributary.error_code` header.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::NotUtf8(_) => "not_utf8",
            EventError::NotJson(_) => "not_json",
            EventError::NotObject(_) => "not_object",
            EventError::Missing(_) => "missing_field",
            EventError::BadEventId(_) => "bad_event_id",
            EventError::BadEventTime(_) => "bad_event_time",
            EventError::TimeOutOfRange(_) => "time_out_of_range",
            EventError::BadType(_) => "bad_type",
            EventError::FieldType { .. } => "ill_typed_field",
            EventError::NumberOutOfRange { .. } => "number_out_of_range",
            EventError::TooFarInFuture { .. } => "future_event_time",
        }
    }

    /// Every code, for pre-registering metric series.
    pub const CODES: &'static [&'static str] = &[
        "not_utf8",
        "not_json",
        "not_object",
        "missing_field",
        "bad_event_id",
        "bad_event_time",
        "time_out_of_range",
        "bad_type",
        "ill_typed_field",
        "number_out_of_range",
        "future_event_time",
    ];
}

/// A typed value of a declared field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Float(f64),
    Int(i64),
    Bool(bool),
}

impl Value<'_> {
    /// The value as a number, for numeric measures (`None` for strings and booleans).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// Writes the canonical text form (used for dimensions and distinct counting); it matches
    /// what the batch SQL gets from `CAST(x AS VARCHAR)`.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Str(s) => out.push_str(s),
            Value::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_text(&mut s);
        f.write_str(&s)
    }
}

/// A valid event. `fields[i]` is the i-th declared field of the [`EventSchema`], `None` when
/// absent or null.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub event_time_ms: i64,
    pub event_type: Cow<'a, str>,
    pub fields: Vec<Option<Value<'a>>>,
}

/// The declared `[fields]`, in a fixed order, compiled for parsing.
#[derive(Debug, Clone)]
pub struct EventSchema {
    fields: Vec<(String, FieldType)>,
    index: foldhash::HashMap<String, usize>,
}

impl EventSchema {
    pub fn new<'s>(fields: impl IntoIterator<Item = (&'s String, &'s FieldType)>) -> Self {
        let fields: Vec<(String, FieldType)> =
            fields.into_iter().map(|(n, t)| (n.clone(), *t)).collect();
        let index = fields
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        EventSchema { fields, index }
    }

    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(config.fields.iter())
    }

    /// Declared fields in column order.
    pub fn fields(&self) -> &[(String, FieldType)] {
        &self.fields
    }

    /// Position of a declared field.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Parses and validates one message. Time skew is checked separately by
    /// [`check_future_skew`] because it depends on the clock.
    pub fn parse<'a>(&self, bytes: &'a [u8]) -> Result<Event<'a>, EventError> {
        // serde_json checks UTF-8 only in the strings it decodes, not in skipped ones, so an
        // undeclared field could smuggle invalid bytes into the archived payload.
        let text = std::str::from_utf8(bytes).map_err(|e| EventError::NotUtf8(e.valid_up_to()))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let raw = RawSeed { schema: self }
            .deserialize(&mut de)
            .map_err(|e| EventError::NotJson(e.to_string()))?;
        de.end().map_err(|e| EventError::NotJson(e.to_string()))?;
        let raw = raw.map_err(EventError::NotObject)?;
        self.validate(raw)
    }

    fn validate<'a>(&self, raw: RawEvent<'a>) -> Result<Event<'a>, EventError> {
        let event_id = match raw.event_id {
            None | Some(Scalar::Null) => return Err(EventError::Missing("event_id")),
            Some(Scalar::Str(s)) if !s.is_empty() && s.len() <= MAX_EVENT_ID_BYTES => s,
            Some(Scalar::Str(s)) => {
                return Err(EventError::BadEventId(format!(
                    "a string of {} bytes",
                    s.len()
                )));
            }
            Some(other) => return Err(EventError::BadEventId(other.describe())),
        };
        let event_time_ms = match raw.event_time {
            None | Some(Scalar::Null) => return Err(EventError::Missing("event_time")),
            Some(Scalar::Int(ms)) if (MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ms) => ms,
            Some(Scalar::Int(ms)) => {
                return Err(EventError::TimeOutOfRange(format!("integer {ms}")));
            }
            Some(Scalar::BigUint(ms)) => {
                return Err(EventError::TimeOutOfRange(format!("integer {ms}")));
            }
            Some(Scalar::Str(s)) => {
                let ms = crate::bucket::parse_rfc3339(&s).ok_or_else(|| {
                    EventError::BadEventTime(format!("string {:?}", truncate(&s)))
                })?;
                if !(MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ms) {
                    return Err(EventError::TimeOutOfRange(format!("{:?}", truncate(&s))));
                }
                ms
            }
            Some(other) => return Err(EventError::BadEventTime(other.describe())),
        };
        let event_type = match raw.event_type {
            None | Some(Scalar::Null) => return Err(EventError::Missing("type")),
            Some(Scalar::Str(s)) if !s.is_empty() => s,
            Some(other) => return Err(EventError::BadType(other.describe())),
        };
        let mut fields = Vec::with_capacity(self.fields.len());
        for ((name, ty), raw) in self.fields.iter().zip(raw.fields) {
            fields.push(match raw {
                None | Some(Scalar::Null) => None,
                Some(v) => Some(typed(name, *ty, v)?),
            });
        }
        Ok(Event {
            event_id,
            event_time_ms,
            event_type,
            fields,
        })
    }
}

/// Rejects an event whose time is more than `max_skew_ms` ahead of `now_ms`.
pub fn check_future_skew(
    event: &Event<'_>,
    now_ms: i64,
    max_skew_ms: i64,
) -> Result<(), EventError> {
    let ahead = event.event_time_ms.saturating_sub(now_ms);
    if ahead > max_skew_ms {
        return Err(EventError::TooFarInFuture {
            event_time: crate::bucket::format_rfc3339(event.event_time_ms),
            ahead_ms: ahead,
            max_ms: max_skew_ms,
        });
    }
    Ok(())
}

fn typed<'a>(name: &str, ty: FieldType, v: Scalar<'a>) -> Result<Value<'a>, EventError> {
    if let Scalar::Float(f) = v
        && f.abs() > MAX_MAGNITUDE
    {
        return Err(EventError::NumberOutOfRange {
            field: name.to_string(),
            got: format!("{f:e}"),
        });
    }
    let value = match (ty, v) {
        (FieldType::String, Scalar::Str(s)) => Value::Str(s),
        (FieldType::Float, Scalar::Float(f)) => Value::Float(f),
        (FieldType::Float, Scalar::Int(i)) => Value::Float(i as f64),
        (FieldType::Float, Scalar::BigUint(u)) => Value::Float(u as f64),
        (FieldType::Int, Scalar::Int(i)) => Value::Int(i),
        (FieldType::Bool, Scalar::Bool(b)) => Value::Bool(b),
        (expected, got) => {
            return Err(EventError::FieldType {
                field: name.to_string(),
                expected,
                got: got.describe(),
            });
        }
    };
    Ok(value)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A JSON value as far as validation needs to know it.
#[derive(Debug)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`.
    BigUint(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Composite(&'static str),
}

impl Scalar<'_> {
    fn describe(&self) -> String {
        match self {
            Scalar::Null => "null".into(),
            Scalar::Bool(b) => format!("bool {b}"),
            Scalar::Int(i) => format!("integer {i}"),
            Scalar::BigUint(u) => format!("integer {u}"),
            Scalar::Float(f) => format!("number {f:?}"),
            Scalar::Str(s) => format!("string {:?}", truncate(s)),
            Scalar::Composite(kind) => kind.to_string(),
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Scalar::BigUint(v), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Composite("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A map key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

struct RawEvent<'a> {
    event_id: Option<Scalar<'a>>,
    event_time: Option<Scalar<'a>>,
    event_type: Option<Scalar<'a>>,
    fields: Vec<Option<Scalar<'a>>>,
}

struct RawSeed<'s> {
    schema: &'s EventSchema,
}

/// Deserializes to `Err(kind)` (not an error of the deserializer) for valid JSON that is not an
/// object, so that syntax errors and shape errors stay apart.
impl<'de> DeserializeSeed<'de> for RawSeed<'_> {
    type Value = Result<RawEvent<'de>, &'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RawSeed<'_> {
    type Value = Result<RawEvent<'de>, &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent {
            event_id: None,
            event_time: None,
            event_type: None,
            fields: (0..self.schema.fields.len()).map(|_| None).collect(),
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let slot = match key.as_ref() {
                "event_id" => &mut raw.event_id,
                "event_time" => &mut raw.event_time,
                "type" => &mut raw.event_type,
                other => match self.schema.index.get(other) {
                    Some(&i) => &mut raw.fields[i],
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                },
            };
            *slot = Some(map.next_value::<Scalar<'de>>()?);
        }
        Ok(Ok(raw))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("a string"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a bool"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }
}

#[cfg(test)]
mod tests;
