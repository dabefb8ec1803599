//! Unit tests of `hll` (their own file: they doubled the module's length).

use super::*;

#[test]
fn estimates_are_close_and_encoding_round_trips() {
    let mut h = Hll::new();
    assert_eq!(h.count(), 0);
    for i in 0..50_000 {
        h.add(format!("user-{i}").as_bytes());
    }
    let c = h.count() as f64;
    assert!((c - 50_000.0).abs() / 50_000.0 < 0.02, "{c}");
    let bytes = h.to_redis_dense();
    assert_eq!(bytes.len(), DENSE_SIZE);
    assert_eq!(Hll::from_redis_dense(&bytes), Some(h.clone()));
    // Merging with a subset changes nothing; with disjoint elements it grows.
    let mut sub = Hll::new();
    sub.add(b"user-1");
    let mut merged = h.clone();
    merged.merge(&sub);
    assert_eq!(merged, h);
    let mut other = Hll::new();
    for i in 50_000..60_000 {
        other.add(format!("user-{i}").as_bytes());
    }
    merged.merge(&other);
    let c = merged.count() as f64;
    assert!((c - 60_000.0).abs() / 60_000.0 < 0.02, "{c}");
    assert_eq!(Hll::from_redis_dense(b"nope"), None);
}

#[test]
fn sparse_encoding_round_trips_and_is_small() {
    let mut h = Hll::new();
    assert_eq!(Hll::from_redis(&h.to_redis()), Some(h.clone()));
    for i in 0..200 {
        h.add(format!("u{i}").as_bytes());
    }
    let sparse = h.to_redis();
    assert_eq!(sparse[4], 1);
    assert!(sparse.len() < 1200, "{}", sparse.len());
    assert_eq!(Hll::from_redis(&sparse), Some(h.clone()));
    assert_eq!(Hll::from_redis(&h.to_redis_dense()), Some(h.clone()));
    for i in 0..100_000 {
        h.add(format!("v{i}").as_bytes());
    }
    assert_eq!(Hll::from_redis(&h.to_redis()), Some(h.clone()));
    assert_eq!(Hll::from_redis(&sparse[..sparse.len() - 1]), None);
    assert_eq!(Hll::count_redis(&sparse[..sparse.len() - 1]), None);
    // Built from observations: the same bytes as through the registers.
    for n in [0usize, 1, 5, 300, 3000] {
        let mut h = Hll::new();
        let mut obs = Vec::new();
        for i in 0..n {
            let e = format!("o{i}");
            h.add(e.as_bytes());
            let (idx, rank) = register_of(e.as_bytes());
            obs.push((idx as u16, rank));
            obs.push((idx as u16, 1));
        }
        let bytes = Hll::redis_from_observations(&mut obs);
        assert_eq!(bytes, h.to_redis(), "{n} elements");
        let back = Hll::sparse_observations(&bytes).unwrap_or_default();
        let mut again = Hll::new();
        back.iter()
            .for_each(|(i, r)| again.observe(*i as usize, *r));
        assert_eq!(again, h);
    }
}

#[test]
fn counts_and_unions_read_in_place_equal_the_registers() {
    let (mut a, mut b) = (Hll::new(), Hll::new());
    for i in 0..300 {
        a.add(format!("a{i}").as_bytes());
        b.add(format!("b{i}").as_bytes());
    }
    assert_eq!(Hll::count_redis(&Hll::new().to_redis()), Some(0));
    for h in [&a, &b] {
        assert_eq!(Hll::count_redis(&h.to_redis()), Some(h.count()));
        assert_eq!(Hll::count_redis(&h.to_redis_dense()), Some(h.count()));
    }
    let mut union = a.clone();
    union.merge(&b);
    // Sparse into empty, dense into sparse-built: the same union either way.
    let mut read = Hll::new();
    assert_eq!(read.merge_redis(&a.to_redis()), Some(()));
    assert_eq!(read.merge_redis(&b.to_redis_dense()), Some(()));
    assert_eq!(read, union);
    // An invalid value merges nothing.
    let mut bad = a.to_redis();
    bad.push(0);
    assert_eq!(read.merge_redis(&bad), None);
    assert_eq!(read.merge_redis(b"HYLL"), None);
    assert_eq!(read, union);
    // The tracking union: the same count, sparse only or with a dense value, and empty
    // again once cleared.
    let mut tracked = Union::default();
    for round in 0..2 {
        tracked.merge_redis(&a.to_redis());
        tracked.merge_redis(&b.to_redis());
        assert_eq!(tracked.count(), union.count(), "round {round}");
        tracked.clear();
        assert_eq!(tracked.count(), 0);
    }
    tracked.merge_redis(&a.to_redis());
    tracked.merge_redis(&b.to_redis_dense());
    assert_eq!(tracked.count(), union.count());
    tracked.clear();
    tracked.merge_redis(&a.to_redis());
    assert_eq!(tracked.count(), a.count());
}

#[test]
fn murmur_is_deterministic_and_sensitive_to_every_byte() {
    // Agreement with Redis itself is checked against a real server in
    // integration-tests/tests/redis_hll.rs.
    assert_eq!(murmur64a(b"", 0), 0);
    assert_eq!(murmur64a(b"abc", SEED), murmur64a(b"abc", SEED));
    assert_ne!(murmur64a(b"a", SEED), murmur64a(b"b", SEED));
    assert_ne!(murmur64a(b"abcdefgh", SEED), murmur64a(b"abcdefgi", SEED));
}
