use std::collections::BTreeMap;

use super::*;

fn schema() -> EventSchema {
    let fields: BTreeMap<String, FieldType> = [
        ("amount", FieldType::Float),
        ("country", FieldType::String),
        ("items", FieldType::Int),
        ("returning", FieldType::Bool),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    EventSchema::new(fields.iter())
}

const GOOD: &str = r#"{"event_id":"e-1","event_time":"2026-11-21T10:00:03.250Z","type":"checkout","country":"DE","amount":12.5,"items":3,"returning":true,"extra":{"nested":[1,2]}}"#;

#[test]
fn parses_a_good_event_and_borrows_strings() {
    let s = schema();
    let e = s.parse(GOOD.as_bytes()).expect("good event");
    assert_eq!(e.event_id, "e-1");
    assert!(matches!(e.event_id, Cow::Borrowed(_)));
    assert_eq!(e.event_time_ms, 1_795_255_203_250);
    assert_eq!(e.event_type, "checkout");
    let amount = s.index_of("amount").expect("declared");
    assert_eq!(e.fields[amount], Some(Value::Float(12.5)));
    assert_eq!(
        e.fields[s.index_of("items").expect("declared")],
        Some(Value::Int(3))
    );
    assert_eq!(
        e.fields[s.index_of("returning").expect("declared")],
        Some(Value::Bool(true))
    );
    assert_eq!(
        e.fields[s.index_of("country").expect("declared")],
        Some(Value::Str(Cow::Borrowed("DE")))
    );
}

#[test]
fn epoch_ms_and_rfc3339_are_the_same_instant() {
    let s = schema();
    let a = s
        .parse(br#"{"event_id":"a","event_time":1795255203250,"type":"t"}"#)
        .expect("epoch ms");
    let b = s
        .parse(br#"{"event_id":"a","event_time":"2026-11-21T11:00:03.250+01:00","type":"t"}"#)
        .expect("rfc3339 with offset");
    assert_eq!(a.event_time_ms, b.event_time_ms);
}

#[test]
fn optional_fields_may_be_absent_or_null_and_escapes_are_decoded() {
    let s = schema();
    let e = s
        .parse(
            br#"{"event_id":"e\u002d2","event_time":0,"type":"view","amount":null,"amount":null}"#,
        )
        .expect("nulls are absent");
    assert_eq!(e.event_id, "e-2");
    assert!(e.fields.iter().all(Option::is_none));
    // An integer is a valid float.
    let e = s
        .parse(br#"{"event_id":"x","event_time":0,"type":"t","amount":12}"#)
        .expect("int as float");
    assert_eq!(
        e.fields[s.index_of("amount").expect("declared")],
        Some(Value::Float(12.0))
    );
}

#[test]
fn every_bad_event_has_its_own_reason() {
    let long_id = "x".repeat(257);
    let long = format!(r#"{{"event_id":"{long_id}","event_time":0,"type":"t"}}"#);
    let cases: Vec<(&str, &str, &str)> = vec![
        // (input, expected code, expected message fragment)
        ("{not json", "not_json", "not valid JSON"),
        ("", "not_json", "not valid JSON"),
        (
            r#"{"event_id":"a","event_time":0,"type":"t"} trailing"#,
            "not_json",
            "trailing",
        ),
        ("[1,2]", "not_object", "got an array"),
        ("\"str\"", "not_object", "got a string"),
        ("null", "not_object", "got null"),
        (
            r#"{"event_time":0,"type":"t"}"#,
            "missing_field",
            "missing required field \"event_id\"",
        ),
        (
            r#"{"event_id":null,"event_time":0,"type":"t"}"#,
            "missing_field",
            "\"event_id\"",
        ),
        (
            r#"{"event_id":"a","type":"t"}"#,
            "missing_field",
            "\"event_time\"",
        ),
        (
            r#"{"event_id":"a","event_time":0}"#,
            "missing_field",
            "\"type\"",
        ),
        (
            r#"{"event_id":7,"event_time":0,"type":"t"}"#,
            "bad_event_id",
            "got integer 7",
        ),
        (
            r#"{"event_id":"","event_time":0,"type":"t"}"#,
            "bad_event_id",
            "string of 0 bytes",
        ),
        (&long, "bad_event_id", "string of 257 bytes"),
        (
            r#"{"event_id":"a","event_time":"yesterday","type":"t"}"#,
            "bad_event_time",
            "got string \"yesterday\"",
        ),
        (
            r#"{"event_id":"a","event_time":1.5,"type":"t"}"#,
            "bad_event_time",
            "got number 1.5",
        ),
        (
            r#"{"event_id":"a","event_time":"2026-13-01T00:00:00Z","type":"t"}"#,
            "bad_event_time",
            "RFC 3339",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":""}"#,
            "bad_type",
            "non-empty string",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":["x"]}"#,
            "bad_type",
            "got an array",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":"t","amount":"12,5"}"#,
            "ill_typed_field",
            "field \"amount\": expected float, got string \"12,5\"",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":"t","items":2.5}"#,
            "ill_typed_field",
            "field \"items\": expected int, got number 2.5",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":"t","country":42}"#,
            "ill_typed_field",
            "field \"country\": expected string, got integer 42",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":"t","returning":"yes"}"#,
            "ill_typed_field",
            "expected bool",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":"t","items":18446744073709551615}"#,
            "ill_typed_field",
            "expected int",
        ),
        (
            r#"{"event_id":"a","event_time":0,"type":"t","amount":{"v":1}}"#,
            "ill_typed_field",
            "got an object",
        ),
    ];
    let s = schema();
    for (input, code, fragment) in cases {
        let err = s.parse(input.as_bytes()).expect_err(input);
        assert_eq!(err.code(), code, "code for {input}: {err}");
        assert!(
            err.to_string().contains(fragment),
            "message for {input}: {err}"
        );
        assert!(EventError::CODES.contains(&err.code()));
    }
    // Bytes that are not UTF-8 inside a string.
    let err = s
        .parse(b"{\"event_id\":\"\xff\",\"event_time\":0,\"type\":\"t\"}")
        .expect_err("invalid utf-8");
    assert_eq!(err.code(), "not_utf8");
}

#[test]
fn future_skew_is_checked_against_the_clock() {
    let s = schema();
    let e = s
        .parse(br#"{"event_id":"a","event_time":1000000,"type":"t"}"#)
        .expect("valid");
    assert!(check_future_skew(&e, 1_000_000 - 300_000, 300_000).is_ok());
    let err = check_future_skew(&e, 1_000_000 - 300_001, 300_000).expect_err("too far ahead");
    assert_eq!(err.code(), "future_event_time");
    assert!(err.to_string().contains("300001 ms ahead"), "{err}");
}

#[test]
fn value_text_matches_sql_casts() {
    let mut out = String::new();
    for v in [
        Value::Float(1.5),
        Value::Float(2.0),
        Value::Int(-3),
        Value::Bool(false),
    ] {
        v.write_text(&mut out);
        out.push('|');
    }
    assert_eq!(out, "1.5|2|-3|false|");
}

#[test]
fn invalid_utf8_anywhere_is_rejected_even_in_an_undeclared_field() {
    let s = schema();
    let mut bytes = br#"{"event_id":"a","event_time":1000,"type":"t","note":"x"#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#""}"#);
    let err = s.parse(&bytes).expect_err("invalid UTF-8");
    assert_eq!(err.code(), "not_utf8");
    assert!(err.to_string().contains("offset 54"), "{err}");
}

#[test]
fn event_times_outside_1970_to_9999_are_rejected() {
    let s = schema();
    for time in [
        "-1",
        "-9223372036854775808",
        "253402300800000",
        "18446744073709551615",
        r#""1969-12-31T23:59:59Z""#,
    ] {
        let json = format!(r#"{{"event_id":"a","event_time":{time},"type":"t"}}"#);
        let err = s.parse(json.as_bytes()).expect_err(&json);
        assert_eq!(err.code(), "time_out_of_range", "{json}: {err}");
    }
    for time in ["0", "253402300799999", r#""9999-12-31T23:59:59.999Z""#] {
        let json = format!(r#"{{"event_id":"a","event_time":{time},"type":"t"}}"#);
        assert!(s.parse(json.as_bytes()).is_ok(), "{json}");
    }
}

#[test]
fn numbers_beyond_the_summable_range_are_rejected() {
    let s = schema();
    let err = s
        .parse(br#"{"event_id":"a","event_time":1,"type":"t","amount":1.5e308}"#)
        .expect_err("too large");
    assert_eq!(err.code(), "number_out_of_range");
    assert!(err.to_string().contains("amount"), "{err}");
    assert!(
        s.parse(br#"{"event_id":"a","event_time":1,"type":"t","amount":-1e288}"#)
            .is_ok()
    );
    // 2^64 values of the largest accepted magnitude still sum to a finite number.
    assert!((MAX_MAGNITUDE * 2f64.powi(64)).is_finite());
}
