//! Writes flushes to Redis, one atomic Lua script per view: the view's offsets are compared and
//! set in the same script that applies its aggregates, so a flush is applied entirely or not
//! at all, exactly once, and a consumer that lost its partitions is fenced off.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tributary_shared::Granularity;
use tributary_shared::layout::RedisKeys;
use tributary_shared::sketch::SketchBucket;
use tributary_shared::view::ViewPlan;

use crate::aggregate::{Flush, ViewFlush, ViewInputs};
use crate::watermark::Stored;

/// Applies one view's flush. KEYS: the view's offsets hash, epoch, rebuild hash and stats.
/// ARGV: the epoch this consumer holds, now (ms), the partition count, (partition, expected,
/// new) triples, then ops until the end: `I key field n` HINCRBY · `F key field x`
/// HINCRBYFLOAT · `m`/`M key field x` keep min/max · `S key member` SADD · `A key n m1..mn`
/// SADD many · `X key ms` PEXPIREAT.
///
/// Redis does not roll back a script that fails halfway, so everything that could fail is
/// checked before the first write: the epoch (`LOST` when the view's state is gone, `FENCED`
/// when another process rebuilt it), every partition's offset (`FENCED` when another consumer
/// moved on), and every float increment (`REFUSED` if a sum would leave the finite range;
/// events cannot make that happen, see `MAX_MAGNITUDE`, so it means the state was tampered
/// with). Then the data, then the offsets, then: if a rebuild is running and every partition
/// has reached its target, the rebuild record is deleted.
const APPLY_LUA: &str = r#"
local off, epoch_key, rebuild_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local epoch = redis.call('GET', epoch_key)
if not epoch then
  return redis.error_reply('LOST the view state is gone from redis (no epoch)')
end
if epoch ~= ARGV[1] then
  return redis.error_reply('FENCED the view was rebuilt: epoch ' .. epoch .. ', expected ' .. ARGV[1])
end
local np = tonumber(ARGV[3])
local i = 4
for _ = 1, np do
  local cur = redis.call('HGET', off, ARGV[i])
  if (cur or '') ~= ARGV[i + 1] then
    return redis.error_reply('FENCED partition ' .. ARGV[i] .. ' holds ' .. tostring(cur) .. ', expected ' .. ARGV[i + 1])
  end
  i = i + 3
end
local ops = i
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'F' then
    local cur = tonumber(redis.call('HGET', ARGV[i + 1], ARGV[i + 2]) or '0')
    local x = tonumber(ARGV[i + 3])
    local r = (cur or 0 / 0) + (x or 0 / 0)
    if r ~= r or r == math.huge or r == -math.huge then
      return redis.error_reply('REFUSED ' .. ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. ' would not stay a finite number')
    end
    i = i + 4
  elseif op == 'I' or op == 'm' or op == 'M' then
    i = i + 4
  elseif op == 'S' or op == 'X' then
    i = i + 3
  elseif op == 'A' then
    i = i + 3 + tonumber(ARGV[i + 2])
  else
    return redis.error_reply('REFUSED bad op ' .. tostring(op))
  end
end
i = ops
while i <= n do
  local op = ARGV[i]
  if op == 'I' then
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'F' then
    redis.call('HINCRBYFLOAT', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'm' or op == 'M' then
    local cur = redis.call('HGET', ARGV[i + 1], ARGV[i + 2])
    local x = tonumber(ARGV[i + 3])
    if not cur or (op == 'm' and x < tonumber(cur)) or (op == 'M' and x > tonumber(cur)) then
      redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'S' then
    redis.call('SADD', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 'A' then
    local cnt = tonumber(ARGV[i + 2])
    redis.call('SADD', ARGV[i + 1], unpack(ARGV, i + 3, i + 2 + cnt)); i = i + 3 + cnt
  else
    redis.call('PEXPIREAT', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  end
end
i = 4
for _ = 1, np do
  redis.call('HSET', off, ARGV[i], ARGV[i + 2])
  i = i + 3
end
if redis.call('EXISTS', rebuild_key) == 1 then
  local r = redis.call('HGETALL', rebuild_key)
  local done = true
  for j = 1, #r, 2 do
    if string.sub(r[j], 1, 2) == 't:' then
      local cur = redis.call('HGET', off, string.sub(r[j], 3))
      local at = cur and tonumber(string.match(cur, '^(-?%d+):'))
      if not at or at < tonumber(r[j + 1]) then
        done = false
        break
      end
    end
  end
  if done then
    redis.call('DEL', rebuild_key)
    redis.call('HSET', stats_key, 'last_rebuild_done_ms', ARGV[2])
    redis.call('HINCRBY', stats_key, 'rebuilds', 1)
  end
end
return 'OK'
"#;

/// Members per SADD op: Lua's `unpack` has a stack limit.
const SADD_CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Another consumer moved the partitions on, or another process rebuilt the view.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The view's state is gone from Redis: it must be rebuilt.
    #[error("the view's state is gone from redis: {0}")]
    Lost(String),
    /// The flush does not fit what Redis holds (tampered state): the view must be rebuilt.
    #[error("refused: {0}")]
    Refused(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl SinkError {
    fn classify(e: redis::RedisError) -> SinkError {
        let text = e.to_string();
        if text.contains("FENCED") {
            SinkError::Fenced(text)
        } else if text.contains("LOST") {
            SinkError::Lost(text)
        } else if text.contains("REFUSED") {
            SinkError::Refused(text)
        } else {
            SinkError::Redis(e)
        }
    }

    /// Worth retrying as is (Redis unreachable, loading, read-only during a failover, out of
    /// memory), as opposed to a refusal that needs the consumer to reload or rebuild first.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Fenced(_) | SinkError::Lost(_) | SinkError::Refused(_) => false,
            SinkError::Redis(e) => {
                let text = e.to_string();
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || [
                        "LOADING",
                        "READONLY",
                        "OOM",
                        "BUSY",
                        "TRYAGAIN",
                        "CLUSTERDOWN",
                        "MASTERDOWN",
                    ]
                    .iter()
                    .any(|k| text.contains(k))
            }
        }
    }
}

/// The Redis side of the speed layer (cheap to clone: one shared, reconnecting connection).
#[derive(Clone)]
pub struct RedisSink {
    con: ConnectionManager,
    script: redis::Script,
    keys: RedisKeys,
    topic: String,
    retention_ms: i64,
}

impl RedisSink {
    pub async fn connect(
        client: &redis::Client,
        keys: RedisKeys,
        topic: String,
        retention: Duration,
    ) -> redis::RedisResult<Self> {
        let con = ConnectionManager::new(client.clone()).await?;
        Ok(RedisSink {
            con,
            script: redis::Script::new(APPLY_LUA),
            keys,
            topic,
            retention_ms: retention.as_millis() as i64,
        })
    }

    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// Applies a flush, view by view (each view atomically).
    /// `epochs[v]` is the epoch this consumer holds for view `v`.
    pub async fn write(
        &mut self,
        flush: &Flush,
        views: &[ViewPlan],
        inputs: &[ViewInputs],
        epochs: &[String],
    ) -> Result<(), SinkError> {
        for vf in &flush.views {
            let (Some(plan), Some(inp), Some(epoch)) =
                (views.get(vf.view), inputs.get(vf.view), epochs.get(vf.view))
            else {
                continue;
            };
            if vf.offsets.is_empty()
                && vf.data.cells.is_empty()
                && vf.data.late_dropped == 0
                && vf.dedup.is_empty()
            {
                continue;
            }
            // HyperLogLog adds are idempotent, so they need no transaction: a replay after a
            // crash, or a fenced consumer, adds elements that are there anyway. Plain
            // pipelined PFADDs cost Redis far less than the same adds inside the script.
            if let Some(pipe) = hll_pipeline(&self.keys, self.retention_ms, vf, plan, inp) {
                pipe.query_async::<()>(&mut self.con).await?;
            }
            let args = build_args(&self.keys, &self.topic, self.retention_ms, vf, plan, inp);
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(self.keys.offsets(&plan.name, &self.topic))
                .key(self.keys.epoch(&plan.name))
                .key(self.keys.rebuild(&plan.name))
                .key(self.keys.view_stats(&plan.name))
                .arg(epoch)
                .arg(chrono::Utc::now().timestamp_millis());
            for a in args {
                invocation.arg(a);
            }
            invocation
                .invoke_async::<()>(&mut self.con)
                .await
                .map_err(SinkError::classify)?;
        }
        Ok(())
    }

    /// Loads what Redis holds for (view, partition) offsets.
    pub async fn load_offsets(
        &mut self,
        view: &str,
        partitions: &[i32],
    ) -> redis::RedisResult<Vec<Option<Stored>>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.keys.offsets(view, &self.topic);
        let fields: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&fields)
            .query_async(&mut self.con)
            .await?;
        Ok(values
            .iter()
            .map(|v| v.as_deref().and_then(Stored::parse))
            .collect())
    }

    /// Loads the event-id hashes of the producer-duplicate filter for some slots of a partition.
    pub async fn load_dedup(
        &mut self,
        view: &str,
        partition: i32,
        slots: std::ops::RangeInclusive<i64>,
    ) -> redis::RedisResult<Vec<(i64, Vec<u64>)>> {
        let slots: Vec<i64> = slots.collect();
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for s in &slots {
            pipe.smembers(self.keys.dedup(view, &self.topic, partition, *s));
        }
        let sets: Vec<Vec<u64>> = pipe.query_async(&mut self.con).await?;
        Ok(slots.into_iter().zip(sets).collect())
    }

    /// A handle on the sink's connection (shared, reconnecting).
    pub fn connection(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Records the events topic's partition count (see `RedisKeys::topic_partitions`).
    pub async fn set_topic_partitions(&mut self, n: i32) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(self.keys.topic_partitions(&self.topic))
            .arg(n)
            .query_async(&mut self.con)
            .await
    }

    /// Counts DLQ records by reason code.
    pub async fn count_dlq(&mut self, by_code: &[(&'static str, u64)]) -> redis::RedisResult<()> {
        if by_code.is_empty() {
            return Ok(());
        }
        let key = self.keys.speed_stats(&self.topic);
        let mut pipe = redis::pipe();
        for (code, n) in by_code {
            pipe.hincr(&key, format!("dlq:{code}"), *n).ignore();
        }
        pipe.query_async::<()>(&mut self.con).await
    }
}

/// The view's epoch, created when there is none: for writers that are not consumers (`replay`
/// of a file), which have no Kafka offsets to rebuild from.
pub async fn epoch_or_create<C: redis::aio::ConnectionLike>(
    con: &mut C,
    keys: &RedisKeys,
    view: &str,
) -> redis::RedisResult<String> {
    let fresh = format!(
        "{}-replay-{:08x}",
        chrono::Utc::now().timestamp_millis(),
        rand::random::<u32>()
    );
    let _: Option<String> = redis::cmd("SET")
        .arg(keys.epoch(view))
        .arg(&fresh)
        .arg("NX")
        .query_async(con)
        .await?;
    redis::cmd("GET")
        .arg(keys.epoch(view))
        .query_async(con)
        .await
}

/// Refuses a Redis that may evict keys: every data key has a TTL, so even the `volatile-*`
/// policies would drop aggregates (and offsets with them) under memory pressure, silently.
pub async fn check_no_eviction<C: redis::aio::ConnectionLike>(
    con: &mut C,
) -> Result<(), EvictionError> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    let policy = info
        .lines()
        .find_map(|l| l.strip_prefix("maxmemory_policy:"))
        .map(|p| p.trim().to_string())
        .unwrap_or_default();
    if policy == "noeviction" {
        Ok(())
    } else {
        Err(EvictionError::Policy(policy))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvictionError {
    #[error(
        "maxmemory-policy is {0:?}: Redis could evict the speed layer's keys and silently lose counts. \
         Set it to noeviction (`CONFIG SET maxmemory-policy noeviction`, and `maxmemory-policy noeviction` \
         in redis.conf; on a managed Redis, in its parameter group) and size maxmemory for the retention"
    )]
    Policy(String),
    #[error("cannot read its memory settings (INFO memory): {0}")]
    Redis(#[from] redis::RedisError),
}

/// The script's arguments for one view's flush, from the partition count on.
fn build_args(
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
    if vf.data.late_dropped > 0 {
        push(
            &mut args,
            [
                "I",
                &stats,
                "late_dropped",
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
fn hll_pipeline(
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
