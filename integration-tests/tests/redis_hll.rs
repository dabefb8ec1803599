//! `shared::hll` speaks Redis's HyperLogLog: the same registers for the same elements, the same
//! count as PFCOUNT, and values Redis accepts for PFCOUNT and PFMERGE.

use tributary_it::{redis, unique};
use tributary_shared::hll::{Hll, Union};

#[tokio::test]
async fn our_hyperloglog_is_redis_hyperloglog() -> anyhow::Result<()> {
    let mut con = redis().await?;
    let prefix = unique("it-hll");
    let (theirs, ours, merged) = (
        format!("{prefix}:theirs"),
        format!("{prefix}:ours"),
        format!("{prefix}:merged"),
    );
    for n in [1usize, 7, 300, 5_000, 40_000] {
        // Elements of every length 0..=20 bytes, so every MurmurHash tail is exercised.
        let elements: Vec<String> = (0..n)
            .map(|i| format!("{}{i}", "x".repeat(i % 21)))
            .collect();
        let _: () = redis::cmd("DEL").arg(&theirs).query_async(&mut con).await?;
        for chunk in elements.chunks(1000) {
            let _: i64 = redis::cmd("PFADD")
                .arg(&theirs)
                .arg(chunk)
                .query_async(&mut con)
                .await?;
        }
        let mut h = Hll::new();
        for e in &elements {
            h.add(e.as_bytes());
        }
        let redis_count: u64 = redis::cmd("PFCOUNT")
            .arg(&theirs)
            .query_async(&mut con)
            .await?;
        assert_eq!(h.count(), redis_count, "estimate for {n} elements");

        // Our bytes are a valid Redis HLL with the same count.
        let _: () = redis::cmd("SET")
            .arg(&ours)
            .arg(h.to_redis_dense())
            .query_async(&mut con)
            .await?;
        let ours_count: u64 = redis::cmd("PFCOUNT")
            .arg(&ours)
            .query_async(&mut con)
            .await?;
        assert_eq!(
            ours_count, redis_count,
            "PFCOUNT of our encoding for {n} elements"
        );

        // Merging ours into theirs adds nothing: the registers are identical.
        let _: () = redis::cmd("PFMERGE")
            .arg(&merged)
            .arg(&theirs)
            .arg(&ours)
            .query_async(&mut con)
            .await?;
        let merged_count: u64 = redis::cmd("PFCOUNT")
            .arg(&merged)
            .query_async(&mut con)
            .await?;
        assert_eq!(merged_count, redis_count);
        // PFMERGE writes dense: read Redis's registers back and compare with ours.
        let bytes: Vec<u8> = redis::cmd("GET").arg(&merged).query_async(&mut con).await?;
        let back = Hll::from_redis_dense(&bytes)
            .ok_or_else(|| anyhow::anyhow!("Redis's merge is not dense"))?;
        assert_eq!(back, h, "registers for {n} elements");

        // Our sparse encoding too: Redis counts it the same, and the sparse key Redis itself
        // keeps for a small set reads back to the same registers.
        let _: () = redis::cmd("SET")
            .arg(&ours)
            .arg(h.to_redis())
            .query_async(&mut con)
            .await?;
        let sparse_count: u64 = redis::cmd("PFCOUNT")
            .arg(&ours)
            .query_async(&mut con)
            .await?;
        assert_eq!(sparse_count, redis_count, "PFCOUNT of our sparse bytes");
        let theirs_bytes: Vec<u8> = redis::cmd("GET").arg(&theirs).query_async(&mut con).await?;
        // Counted in place from what GET returns (the accuracy ledger's read): PFCOUNT's count.
        assert_eq!(
            Hll::count_redis(&theirs_bytes),
            Some(redis_count),
            "count of Redis's own value for {n} elements"
        );
        assert_eq!(
            Hll::from_redis(&theirs_bytes).as_ref(),
            Some(&h),
            "Redis's own encoding of {n} elements (byte 4 = {})",
            theirs_bytes.get(4).copied().unwrap_or(255)
        );
        let _: () = redis::cmd("DEL")
            .arg(&[&theirs, &ours, &merged])
            .query_async(&mut con)
            .await?;
    }
    Ok(())
}

/// A union of keys read with GET, counted here (`hll::Union`), is what a multi-key PFCOUNT of
/// the same keys answers: tens of small (sparse) keys, as a ledger bucket's total, and with a
/// large (dense) one among them.
#[tokio::test]
async fn a_union_counted_here_is_multi_key_pfcount() -> anyhow::Result<()> {
    let mut con = redis().await?;
    let prefix = unique("it-hll-union");
    let mut keys: Vec<String> = (0..30).map(|i| format!("{prefix}:cell{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let elements: Vec<String> = (0..40 + i * 7).map(|e| format!("u{}", e * 3 + i)).collect();
        let _: i64 = redis::cmd("PFADD")
            .arg(key)
            .arg(&elements)
            .query_async(&mut con)
            .await?;
    }
    let big = format!("{prefix}:big");
    let elements: Vec<String> = (0..20_000).map(|e| format!("big{e}")).collect();
    let _: i64 = redis::cmd("PFADD")
        .arg(&big)
        .arg(&elements)
        .query_async(&mut con)
        .await?;
    let mut union = Union::default();
    for with_big in [false, true] {
        if with_big {
            keys.push(big.clone());
        }
        let expected: u64 = redis::cmd("PFCOUNT")
            .arg(&keys)
            .query_async(&mut con)
            .await?;
        union.clear();
        for key in &keys {
            let bytes: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut con).await?;
            union
                .merge_redis(&bytes)
                .ok_or_else(|| anyhow::anyhow!("{key}: not a HyperLogLog"))?;
        }
        assert_eq!(union.count(), expected, "with the dense key: {with_big}");
    }
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
    Ok(())
}
