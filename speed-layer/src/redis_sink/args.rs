//! A view's flush encoded as the apply script's arguments (see `apply.lua`), and the
//! HyperLogLog updates that go beside it in one pipeline.

use tributary_shared::Granularity;
use tributary_shared::layout::RedisKeys;
use tributary_shared::sketch::SketchBucket;
use tributary_shared::view::ViewPlan;

use super::SADD_CHUNK;
use crate::aggregate::{ViewFlush, ViewInputs};
use crate::watermark::Stored;

/// The script's arguments for one view's flush, from the partition count on.
pub(super) fn build_args(
    keys: &RedisKeys,
    topic: &str,
    retention_ms: i64,
    vf: &ViewFlush,
    plan: &ViewPlan,
    inputs: &ViewInputs,
) -> Vec<String> {
    let mut args: Vec<String> = Vec::with_capacity(64 + vf.data.cells.len() * 16);
    args.push(vf.offsets.len().to_string());
    for (p, expected, new) in &vf.offsets {
        args.push(p.to_string());
        args.push(expected.map(|s: Stored| s.to_string()).unwrap_or_default());
        args.push(new.to_string());
    }
    let stats = keys.view_stats(&plan.name);
    if vf.data.applied > 0 {
        push(
            &mut args,
            ["I", &stats, "applied", &vf.data.applied.to_string()],
        );
    }
    if vf.data.duplicates > 0 {
        push(
            &mut args,
            ["I", &stats, "duplicates", &vf.data.duplicates.to_string()],
        );
    }
    for (p, slot, expire_at, ids) in &vf.dedup {
        let key = keys.dedup(&plan.name, topic, *p, *slot);
        for chunk in ids.chunks(SADD_CHUNK) {
            args.push("A".into());
            args.push(key.clone());
            args.push(chunk.len().to_string());
            args.extend(chunk.iter().map(u64::to_string));
        }
        push(&mut args, ["X", &key, &expire_at.to_string()]);
    }
    // After the adds: a slot can gain ids and be passed by the watermark in one flush.
    for (p, slot) in &vf.dedup_dropped {
        push(&mut args, ["D", &keys.dedup(&plan.name, topic, *p, *slot)]);
    }
    if vf.data.late_dropped > 0 {
        push(
            &mut args,
            [
                "I",
                &stats,
                crate::stats::LATE_DROPPED,
                &vf.data.late_dropped.to_string(),
            ],
        );
    }
    let mut expire: Vec<(String, i64)> = Vec::new();
    let mut groups_touched: std::collections::HashSet<(Granularity, i64)> = Default::default();
    for ((g, bucket, gid), cell) in &vf.data.cells {
        let Some(group) = vf.data.groups.get(*gid as usize) else {
            continue;
        };
        let expire_at = g.end(*bucket) + retention_ms;
        let key = keys.aggregates(&plan.name, *g, *bucket, group);
        push(&mut args, ["I", &key, "count", &cell.count.to_string()]);
        for ((field, _), acc) in inputs.numeric.iter().zip(&cell.numeric) {
            if acc.n == 0 {
                continue;
            }
            push(
                &mut args,
                ["I", &key, &format!("n:{field}"), &acc.n.to_string()],
            );
            push(
                &mut args,
                ["F", &key, &format!("sum:{field}"), &acc.sum.to_string()],
            );
            push(
                &mut args,
                ["m", &key, &format!("min:{field}"), &acc.min.to_string()],
            );
            push(
                &mut args,
                ["M", &key, &format!("max:{field}"), &acc.max.to_string()],
            );
        }
        expire.push((key, expire_at));
        let gkey = keys.groups(&plan.name, *g, *bucket);
        push(&mut args, ["S", &gkey, group]);
        if groups_touched.insert((*g, *bucket)) {
            expire.push((gkey, expire_at));
        }
        for ((field, _), sketch) in inputs.quantile.iter().zip(&cell.sketches) {
            if sketch.is_empty() {
                continue;
            }
            let qkey = keys.sketch(&plan.name, field, *g, *bucket, group);
            for (b, c) in sketch {
                push(
                    &mut args,
                    ["I", &qkey, &SketchBucket::field(*b), &c.to_string()],
                );
            }
            expire.push((qkey, expire_at));
        }
    }
    for (key, at) in expire {
        push(&mut args, ["X", &key, &at.to_string()]);
    }
    args
}

/// PFADD and PEXPIREAT of every distinct set of a view's flush; `None` when there are none.
pub(super) fn hll_pipeline(
    keys: &RedisKeys,
    retention_ms: i64,
    vf: &ViewFlush,
    plan: &ViewPlan,
    inputs: &ViewInputs,
) -> Option<redis::Pipeline> {
    if inputs.distinct.is_empty() {
        return None;
    }
    let mut pipe = redis::pipe();
    let mut any = false;
    for ((g, bucket, gid), cell) in &vf.data.cells {
        let Some(group) = vf.data.groups.get(*gid as usize) else {
            continue;
        };
        for ((field, _), set) in inputs.distinct.iter().zip(&cell.distinct) {
            if set.is_empty() {
                continue;
            }
            let hkey = keys.hll(&plan.name, field, *g, *bucket, group);
            let elems: Vec<&str> = set.iter().map(|s| s.as_ref()).collect();
            pipe.cmd("PFADD").arg(&hkey).arg(elems).ignore();
            pipe.cmd("PEXPIREAT")
                .arg(&hkey)
                .arg(g.end(*bucket) + retention_ms)
                .ignore();
            any = true;
        }
    }
    any.then_some(pipe)
}

fn push<const N: usize>(args: &mut Vec<String>, items: [&str; N]) {
    args.extend(items.iter().map(|s| s.to_string()));
}
