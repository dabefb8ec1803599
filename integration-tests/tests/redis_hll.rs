//! `shared::hll` speaks Redis's HyperLogLog: the same registers for the same elements, the same
//! count as PFCOUNT, and values Redis accepts for PFCOUNT and PFMERGE.

use tributary_it::{redis, unique};
use tributary_shared::hll::Hll;

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
