//! Parameter validation: every refusal names its parameter.

use super::*;
use tributary_shared::bucket::format_rfc3339;
use tributary_shared::event::MAX_EVENT_TIME_MS;
use tributary_shared::{Config, EventSchema};

fn plan() -> ViewPlan {
    let config = Config::from_toml_str_with_env(
        include_str!("../../../infra/tributary.toml"),
        "t",
        Vec::new(),
    )
    .unwrap_or_default();
    ViewPlan::compile_all(&config, &EventSchema::from_config(&config))
        .ok()
        .and_then(|v| v.into_iter().next())
        .unwrap_or_else(|| panic!("example view"))
}

fn limits() -> Limits {
    Limits {
        max_buckets: 1000,
        max_groups: 100,
        max_filter_values: 5,
        history_retention_ms: 7 * 24 * 3_600_000,
    }
}

fn err(q: &str) -> (Option<&'static str>, String, String) {
    match SeriesParams::parse(&plan(), &pairs(Some(q)), 1_763_719_200_000, limits()) {
        Ok(_) => (None, String::new(), String::new()),
        Err(e) => (e.parameter, e.code.to_string(), e.message),
    }
}

#[test]
fn bad_parameters_are_named() {
    assert_eq!(err("measures=events,nope").0, Some("measures"));
    assert_eq!(err("granularity=week").0, Some("granularity"));
    assert_eq!(err("group_by=planet").0, Some("group_by"));
    assert_eq!(err("filter=planet:x").0, Some("filter"));
    assert_eq!(err("filter=country").0, Some("filter"));
    assert_eq!(err("from=yesterday").0, Some("from"));
    let (p, code, _) = err("from=2026-11-21T10:00:00Z&to=2026-11-21T09:00:00Z");
    assert_eq!((p, code.as_str()), (Some("from"), "bad_range"));
    let (p, code, msg) = err("granularity=minute&from=2026-11-01&to=2026-11-21");
    assert_eq!(
        (p, code.as_str()),
        (Some("granularity"), "too_many_buckets")
    );
    assert!(msg.contains("28800"), "{msg}");
    assert_eq!(err("colour=red").1, "unknown_parameter");
    // exact and as_of: a bool; an instant neither in the future nor past the history.
    assert_eq!(err("exact=yes").0, Some("exact"));
    assert_eq!(err("as_of=2025-11-21T11:00:00Z").0, Some("as_of"));
    let (p, code, msg) = err("as_of=2025-11-01T00:00:00Z");
    assert_eq!((p, code.as_str()), (Some("as_of"), "out_of_history"));
    assert!(msg.contains("batch.history_retention"), "{msg}");
    assert_eq!(
        err("as_of=2025-11-20T10:00:00Z&exact=true&granularity=hour").0,
        None
    );
    // A distinct count over a set filter merges sketches: never exact.
    let (p, code, _) = err("exact=true&measures=buyers&filter=country:DE|FR");
    assert_eq!((p, code.as_str()), (Some("exact"), "not_exact"));
    assert_eq!(
        err("exact=true&measures=events&filter=country:DE|FR&granularity=hour").0,
        None
    );
    assert_eq!(
        err("exact=true&measures=buyers&filter=country:DE&granularity=hour").0,
        None
    );
    let as_of = SeriesParams::parse(
        &plan(),
        &pairs(Some("as_of=2025-11-20T10:00:00Z&granularity=hour")),
        1_763_719_200_000,
        limits(),
    )
    .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(
        (as_of.range.to_ms, as_of.range.as_of),
        (1_763_632_800_000, Some(1_763_632_800_000)),
        "to defaults to as_of"
    );
    // Times are RFC 3339 or a date, nothing else (no epoch numbers, no sign, no short
    // fields); an empty value is refused, not read as absent.
    for q in [
        "to=9223372036854775807",
        "from=-9223372036854775808",
        "from=1763719200000",
        "from=2026-1-1",
        "from=+2026-01-01",
        "to=",
        "from=",
        "as_of=",
    ] {
        let (p, code, _) = err(q);
        assert!(
            p == Some("from") || p == Some("to") || p == Some("as_of"),
            "{q}: {p:?}"
        );
        assert_eq!(code, "bad_parameter", "{q}");
    }
    for q in ["granularity=", "exact=", "measures=", "group_by="] {
        assert_eq!(err(q).1, "bad_parameter", "{q}");
    }
    // Times outside the calendar events can have are clamped to it, not overflowed.
    let clamped = SeriesParams::parse(
        &plan(),
        &pairs(Some(
            "granularity=day&from=0001-01-01T00:00:00Z&to=1970-01-03T00:00:00%2B05:00",
        )),
        1_763_719_200_000,
        limits(),
    )
    .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(
        (clamped.range.from_ms, clamped.range.to_ms),
        (0, 2 * 86_400_000 - 5 * 3_600_000)
    );
    let late = SeriesParams::parse(
        &plan(),
        &pairs(Some(
            "granularity=day&from=9999-12-30&to=9999-12-31T23:59:59-05:00",
        )),
        1_763_719_200_000,
        limits(),
    )
    .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(late.range.to_ms, MAX_EVENT_TIME_MS);
    assert_eq!(format_rfc3339(late.range.to_ms), "9999-12-31T23:59:59.999Z");
    // Names are exact: no spaces around them.
    assert_eq!(err("measures=events,%20revenue").0, Some("measures"));
    let (p, code, _) = err("filter=country:a|b|c&filter=device:d|e|f");
    assert_eq!((p, code.as_str()), (Some("filter"), "too_many_values"));
    let dup = SeriesParams::parse(
        &plan(),
        &pairs(Some("measures=events,revenue,events&granularity=hour")),
        1_763_719_200_000,
        limits(),
    )
    .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(
        dup.measures.len(),
        2,
        "a measure named twice is answered once"
    );
    let ok = SeriesParams::parse(
        &plan(),
        &pairs(Some(
            "measures=events&granularity=hour&group_by=country&filter=device:mobile|tablet&from=2026-11-21T00:00:00Z&to=2026-11-21T06:00:00Z",
        )),
        0,
        limits(),
    );
    let ok = ok.unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(
        ok.range.filters,
        vec![(1, vec!["mobile".to_string(), "tablet".to_string()])]
    );
    assert_eq!(ok.group_by, vec![0]);
    assert!(TopParams::parse(&plan(), &pairs(Some("measure=events")), 0, limits()).is_err());
    for q in ["k=0", "k=1001", "k=%2B5", "k=", "k=-1"] {
        let top = TopParams::parse(
            &plan(),
            &pairs(Some(&format!("dimension=country&measure=events&{q}"))),
            0,
            limits(),
        );
        assert_eq!(top.err().and_then(|e| e.parameter), Some("k"), "{q}");
    }
    for q in ["dimension=&measure=events", "dimension=country&measure="] {
        let top = TopParams::parse(&plan(), &pairs(Some(q)), 0, limits());
        assert!(top.is_err(), "{q}");
    }
}
