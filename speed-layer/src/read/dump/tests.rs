//! Payloads captured from Redis 7.0.15 (`redis-cli --raw DUMP key | xxd -p`), after the
//! `HSET` in each test's comment.

use super::{Entry, hash_pairs};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex fixture"))
        .collect()
}

/// Every pair, the field as text and the value as text or integer.
fn pairs(payload: &[u8]) -> Option<Vec<(String, String)>> {
    hash_pairs(payload, |f, v| {
        let text = |e: Entry<'_>| match e {
            Entry::Str(s) => String::from_utf8_lossy(s).into_owned(),
            Entry::Int(i) => format!("#{i}"),
        };
        Some((text(f), text(v)))
    })
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
    sorted(
        v.iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect(),
    )
}

// HSET fx:small p5 1 (a listpack too short for LZF)
const SMALL: &str = "100d0d0000000200827035030101ff0a007d74e01ebe1f968d";
// HSET fx:ints z 1 p127 127 p128 128 n3 4095 p-7 -4096 p1000 5000 p1001 40000
//   p1002 10000000 p1003 5000000000 p1004 -1 p1005 -40000 p1006 -9000000000
// (a listpack compressed with LZF; every integer encoding of a listpack)
const INTS: &str = "10c34079408811880000001800817a0201018470313237057f60071e3805c08002826e3303cfff0283702d3704d0000285703130303006f1881303600a063106f2409c0004600b073206f38096980005600c073306f400f2052a01205a00096010033406dfff803e053506f2c063ff80330036202608e68ee7fdffffff09ff0a0072ac7b22c1ab280f";
// HSET fx:str64 p1 <64 × a> xq7 3 (a 12-bit string length)
const STR64: &str =
    "10c31b40550c55000000040082703103e04061e03600084283787137040301ff0a00a40263ae111aa993";
// HSET fx:table p1 12 p2 300 p3 70000 p4 hello n9 -5 big <97 × b> (a value over
// hash-max-listpack-value: a hash table; RDB's integer and LZF strings)
const TABLE: &str = "0406027032c12c0103626967c3094061016262e054000162620270340568656c6c6f027031c00c027033c270110100026e39c0fb0a00c22b8a50fea9eca0";

#[test]
fn a_small_listpack() {
    assert_eq!(pairs(&hex(SMALL)), Some(owned(&[("p5", "#1")])));
}

#[test]
fn every_listpack_integer_encoding_in_an_lzf_string() {
    let got = pairs(&hex(INTS)).map(sorted);
    let want = owned(&[
        ("z", "#1"),
        ("p127", "#127"),
        ("p128", "#128"),
        ("n3", "#4095"),
        ("p-7", "#-4096"),
        ("p1000", "#5000"),
        ("p1001", "#40000"),
        ("p1002", "#10000000"),
        ("p1003", "#5000000000"),
        ("p1004", "#-1"),
        ("p1005", "#-40000"),
        ("p1006", "#-9000000000"),
    ]);
    assert_eq!(got, Some(want));
}

#[test]
fn a_listpack_string_of_64_bytes() {
    let a64 = "a".repeat(64);
    let got = pairs(&hex(STR64)).map(sorted);
    assert_eq!(got, Some(owned(&[("p1", &a64), ("xq7", "#3")])));
}

#[test]
fn a_hash_table() {
    let b97 = "b".repeat(97);
    let got = pairs(&hex(TABLE)).map(sorted);
    let want = owned(&[
        ("p1", "#12"),
        ("p2", "#300"),
        ("p3", "#70000"),
        ("p4", "hello"),
        ("n9", "#-5"),
        ("big", &b97),
    ]);
    assert_eq!(got, Some(want));
}

#[test]
fn entries_read_as_counters() {
    assert_eq!(Entry::Int(7).as_u64(), Some(7));
    assert_eq!(Entry::Int(-7).as_u64(), None);
    assert_eq!(Entry::Str(b"12").as_u64(), Some(12));
    assert_eq!(Entry::Str(b"x").as_u64(), None);
}

#[test]
fn every_truncation_and_unknown_type_is_refused() {
    for fixture in [SMALL, INTS, STR64, TABLE] {
        let payload = hex(fixture);
        for len in 0..payload.len() {
            // Cut inside the object (the footer is not checked, so cutting within its
            // ten bytes moves the object's end: also refused).
            let mut cut = payload[..len].to_vec();
            cut.extend_from_slice(&[0; 10]);
            if len < payload.len() - 10 {
                assert_eq!(pairs(&cut), None, "{fixture} cut at {len}");
            }
        }
        let mut other = payload.clone();
        other[0] = 13; // a ziplist (Redis 6): read with HGETALL instead
        assert_eq!(pairs(&other), None);
        let mut longer = payload.clone();
        longer.insert(payload.len() - 10, 0);
        assert_eq!(pairs(&longer), None, "trailing bytes in the object");
    }
}

#[test]
fn corrupt_bytes_never_panic() {
    for fixture in [SMALL, INTS, STR64, TABLE] {
        let payload = hex(fixture);
        for at in 0..payload.len() {
            for flip in [0x01, 0x10, 0x80, 0xff] {
                let mut bad = payload.clone();
                bad[at] ^= flip;
                let _ = pairs(&bad);
            }
        }
    }
}
