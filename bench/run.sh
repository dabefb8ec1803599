#!/usr/bin/env bash
# Benchmark harness. Every figure is measured next to a peer in the same run, because these
# machines are noisy; each is the median of several runs, with min and max.
#   bench/run.sh [--quick]      (BENCH_EVENTS, BENCH_RUNS override the sizes)
# Figures: the speed layer and the archive through the broker (each vs a bare rdkafka consumer
# on the same topic), the speed engine alone (`speed-layer replay`), the batch recompute of one
# day (vs DuckDB over the same Parquet files, with peak memory; and again with the speed side
# of that day in Redis, which the accuracy ledger compares), and the serving layer's `series`
# at 64 clients, plain, `as_of` and with events arriving (next to redis-benchmark GET; alone:
# bench/serving.sh). Writes
# bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
events=${BENCH_EVENTS:-$([ "$quick" = 1 ] && echo 300000 || echo 2000000)}
batch_events=${BENCH_BATCH_EVENTS:-$([ "$quick" = 1 ] && echo 1000000 || echo 10000000)}
serve_seconds=${BENCH_SERVE_SECONDS:-$([ "$quick" = 1 ] && echo 5 || echo 15)}
runs=${BENCH_RUNS:-3}
eval "$(infra/stack.sh env)"

if [ -z "${BENCH_NO_BUILD:-}" ]; then
  echo "[bench] building release binaries (BENCH_NO_BUILD=1 skips this)"
  cargo build --release -q --bins
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "[bench] speed layer through the broker vs a bare consumer ($events events, $runs runs)"
RUST_LOG=warn target/release/bench-speed --events "$events" --runs "$runs" >"$work/broker.json"

echo "[bench] speed layer over SASL_SSL Kafka + TLS Redis vs a bare consumer over SASL_SSL ($events events)"
RUST_LOG=warn target/release/bench-speed --mode secure --events "$events" --runs "$runs" >"$work/secure.json"

echo "[bench] speed layer on the Redis Cluster vs on the single Redis, same events"
RUST_LOG=warn target/release/bench-speed --mode cluster --events "$events" --runs "$runs" >"$work/cluster.json"

echo "[bench] speed layer engine alone: replay of $events generated events"
target/release/tributary-gen --count "$events" --out "$work/events.jsonl" --span-secs 7200 2>/dev/null
redis_url=${TRIBUTARY_TEST_REDIS:-redis://127.0.0.1:16379/0}
redis_port=${redis_url#redis://127.0.0.1:}; redis_port=${redis_port%%/*}
# Redis's own CPU seconds (main thread and helpers), read around each replay.
redis_cpu() { redis-cli -u "$redis_url" info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.3f", s}'; }
for config in tributary heavy; do
  # The shipped example config (its checkouts view), then bench/heavy.toml (every event,
  # every aggregate kind, three granularities), pointed at this run's Redis keys.
  file=$([ "$config" = tributary ] && echo infra/tributary.toml || echo bench/heavy.toml)
  for i in $(seq "$runs"); do
    before=$(redis_cpu)
    TRIBUTARY__REDIS__URL="$redis_url" TRIBUTARY__REDIS__KEY_PREFIX="bench-replay-$$-$config-$i" \
    TRIBUTARY__SPEED__ALLOWED_LATENESS=48h TRIBUTARY__SPEED__FLUSH_MAX_EVENTS=100000 \
    RUST_LOG=warn target/release/speed-layer --config "$file" replay --file "$work/events.jsonl" >"$work/replay-$config-$i.json"
    echo "$before $(redis_cpu)" >"$work/replay-$config-$i.redis-cpu"
    echo "  run $i, $config: $(python3 -c "import json;d=json.load(open('$work/replay-$config-$i.json'));print(f\"{d['events_per_second']:,.0f} ev/s\")")"
  done
done

echo "[bench] batch recompute of one day ($batch_events events) vs DuckDB over the same files"
py=${TRIBUTARY_VENV:-.stack/venv}/bin/python
master=$work/master
date=$(target/release/bench-master --events "$batch_events" --dir "$master" --jsonl "$work/day.jsonl")
# The speed side of the same day in Redis (replayed), so the runs "with ledger" compare every
# settled bucket; the runs without read a prefix holding nothing (the ledger finds no state).
export ledger_prefix=bench-ledger-$$
TRIBUTARY__REDIS__URL="$redis_url" TRIBUTARY__REDIS__KEY_PREFIX=$ledger_prefix \
  TRIBUTARY__SPEED__FLUSH_MAX_EVENTS=100000 RUST_LOG=warn \
  target/release/speed-layer --config infra/tributary.toml replay --file "$work/day.jsonl" >/dev/null
rm -f "$work/day.jsonl"
# Replay is not a consumer and writes no offsets; give the view the consumer state a speed
# layer that read the same records would hold (each partition's offset and newest event time,
# from the master's committed _state files), so its watermark seals the day as it would.
python3 - "$master" <<'PY' | redis-cli -u "$redis_url" >/dev/null
import glob, json, os, sys
for f in sorted(glob.glob(sys.argv[1] + "/master/events/_state/p*.json")):
    s = json.load(open(f))
    p = os.path.basename(f)[1:-5]
    print(f"HSET {os.environ['ledger_prefix']}:{{checkouts}}:offsets:events {p} {s['committed_offset']}:{s['max_event_time_ms']}")
print(f"SET {os.environ['ledger_prefix']}:speed:events:partitions {len(glob.glob(sys.argv[1] + '/master/events/_state/p*.json'))}")
PY
for i in $(seq "$runs"); do
  rm -rf "$master/views" "$master/_batch"
  TRIBUTARY__STORE__URL="file://$master" TRIBUTARY__REDIS__URL="$redis_url" \
    TRIBUTARY__REDIS__KEY_PREFIX=bench-noledger-$$ RUST_LOG=info \
    /usr/bin/time -f '%e %M' -o "$work/batch-time-$i" \
    target/release/batch-layer --config infra/tributary.toml run >/dev/null
  /usr/bin/time -f '%e %M' -o "$work/duck-time-$i" \
    "$py" bench/duckdb_views.py "$master" events "$date" >"$work/duck-out-$i"
  rm -rf "$master/views" "$master/_batch"
  TRIBUTARY__STORE__URL="file://$master" TRIBUTARY__REDIS__URL="$redis_url" \
    TRIBUTARY__REDIS__KEY_PREFIX=$ledger_prefix RUST_LOG=info \
    /usr/bin/time -f '%e %M' -o "$work/ledger-time-$i" \
    target/release/batch-layer --config infra/tributary.toml run >"$work/ledger-log-$i" 2>&1
  # The ledger's own line: rows compared and its seconds (ANSI colours stripped).
  { grep 'accuracy ledger written' "$work/ledger-log-$i" || true; } | sed 's/\x1b\[[0-9;]*m//g' >"$work/ledger-line-$i"
  echo "  run $i: batch-layer $(cat "$work/batch-time-$i") / duckdb $(cat "$work/duck-time-$i") / with the ledger $(cat "$work/ledger-time-$i") (seconds, peak KiB)"
done

echo "[bench] batch at scale: one day within batch.memory_limit vs DuckDB within its memory_limit, and on Ballista"
BENCH_SCALE_EVENTS=${BENCH_SCALE_EVENTS:-$([ "$quick" = 1 ] && echo 5000000 || echo 50000000)} \
  bash bench/batch_scale.sh "$work/scale.json"

echo "[bench] serving: series over 24 hourly buckets, group_by country, 64 clients, next to redis-benchmark"
BENCH_RUNS=$runs BENCH_SERVE_SECONDS=$serve_seconds bash bench/serving.sh "$work"

echo "[bench] end-to-end freshness: produce → visible in series, at 2000 events/s"
for i in $(seq "$runs"); do
  RUST_LOG=warn target/release/bench-fresh --rate 2000 --probes "$([ "$quick" = 1 ] && echo 40 || echo 100)" >"$work/fresh-$i.json"
  echo "  run $i: $(python3 -c "import json;d=json.load(open('$work/fresh-$i.json'));print(f\"p50 {d['p50_ms']:.0f} ms p99 {d['p99_ms']:.0f} ms\")")"
done

python3 - "$work" "$events" "$runs" "$batch_events" <<'PY'
import json, os, platform, statistics, subprocess, sys, time
work, events, runs, batch_events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
broker = json.load(open(f"{work}/broker.json"))
secure = json.load(open(f"{work}/secure.json"))
cluster = json.load(open(f"{work}/cluster.json"))
scale = json.load(open(f"{work}/scale.json"))
def replay_runs(config):
    out = []
    for i in range(1, runs + 1):
        r = json.load(open(f"{work}/replay-{config}-{i}.json"))
        before, after = map(float, open(f"{work}/replay-{config}-{i}.redis-cpu").read().split())
        out.append((r["events_per_second"], (after - before) / r["lines"] * 1e6))
    return out
replay_shipped, replay_heavy = replay_runs("tributary"), replay_runs("heavy")
replay = [r[0] for r in replay_shipped]
def stats(v):
    s = sorted(v)
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "runs": v}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def pairs(name_a, name_b):
    out = []
    for i in range(1, runs + 1):
        a = open(f"{work}/{name_a}-{i}").read().split()
        b = open(f"{work}/{name_b}-{i}").read().split()
        out.append((float(a[0]), int(a[1]), float(b[0]), int(b[1])))
    return out
batch = pairs("batch-time", "duck-time")
ledger = pairs("ledger-time", "batch-time")
def ledger_line(i):
    import re
    line = open(f"{work}/ledger-line-{i}").read()
    rows = re.search(r"rows=(\d+)", line)
    secs = re.search(r'seconds="?([0-9.]+)', line)
    if not rows or int(rows.group(1)) == 0 or not secs:
        sys.exit(f"run {i}: the ledger compared nothing (no 'accuracy ledger written' line with rows in {work}/ledger-log-{i}): the figure would be meaningless")
    return (int(rows.group(1)), float(secs.group(1)))
ledger_lines = [ledger_line(i) for i in range(1, runs + 1)]
serve_as_of = [json.load(open(f"{work}/serve-asof-{i}.json")) for i in range(1, runs + 1)]
serve = [json.load(open(f"{work}/serve-{i}.json")) for i in range(1, runs + 1)]
serve_wrk = [json.load(open(f"{work}/serve-wrk-{i}.json")) for i in range(1, runs + 1)]
serve_live = [json.load(open(f"{work}/serve-live-{i}.json")) for i in range(1, runs + 1)]
serve_gzip = [json.load(open(f"{work}/serve-gzip-{i}.json")) for i in range(1, runs + 1)]
serve_live_kept = [tuple(map(int, open(f"{work}/serve-live-kept-{i}").read().split())) for i in range(1, runs + 1)]
def cpu_per_request(i):
    before, after = map(float, open(f"{work}/serve-cpu-{i}").read().split())
    return (after - before) / max(serve[i - 1]["requests"], 1) * 1e6
serve_cpu_us = [cpu_per_request(i) for i in range(1, runs + 1)]
def redis_row(i):
    cols = [c.strip('"') for c in open(f"{work}/redis-{i}.csv").read().strip().split(",")]
    return {"rps": float(cols[1]), "p50_ms": float(cols[4]), "p99_ms": float(cols[6])}
redis_get = [redis_row(i) for i in range(1, runs + 1)]
fresh = [json.load(open(f"{work}/fresh-{i}.json")) for i in range(1, runs + 1)]
result = {
    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
    "events": events,
    "speed_through_broker": broker,
    "speed_secure_sasl_ssl_tls_redis": secure,
    "speed_redis_cluster_vs_single": cluster,
    "speed_replay_events_per_sec": stats(replay),
    "speed_replay_redis_cpu_seconds_per_million": stats([r[1] for r in replay_shipped]),
    "speed_replay_heavy_events_per_sec": stats([r[0] for r in replay_heavy]),
    "speed_replay_heavy_redis_cpu_seconds_per_million": stats([r[1] for r in replay_heavy]),
    "archive_through_broker": broker.get("archive"),
    "batch_one_day": {
        "events": batch_events,
        "batch_seconds": stats([b[0] for b in batch]),
        "duckdb_seconds": stats([b[2] for b in batch]),
        "ratio_batch_to_duckdb": stats([b[0] / b[2] for b in batch]),
        "batch_peak_mib": stats([b[1] / 1024 for b in batch]),
        "duckdb_peak_mib": stats([b[3] / 1024 for b in batch]),
    },
    "ledger_one_day": {
        "events": batch_events,
        "batch_with_ledger_seconds": stats([l[0] for l in ledger]),
        "batch_without_seconds": stats([l[2] for l in ledger]),
        "ratio_with_to_without": stats([l[0] / l[2] for l in ledger]),
        "ledger_rows": [l[0] for l in ledger_lines],
        "ledger_own_seconds": stats([l[1] for l in ledger_lines]),
    },
    "batch_at_scale": scale,
    "freshness_ms": {
        "rate_events_per_sec": fresh[0]["rate_events_per_sec"],
        "p50": stats([f["p50_ms"] for f in fresh]),
        "p99": stats([f["p99_ms"] for f in fresh]),
    },
    "serving_series_64_clients": {
        "buckets_by_source": json.load(open(f"{work}/serve-mix.json")),
        "requests_per_sec": stats([s["requests_per_sec"] for s in serve]),
        "server_cpu_us_per_request": stats(serve_cpu_us),
        "p50_ms": stats([s["p50_ms"] for s in serve]),
        "p99_ms": stats([s["p99_ms"] for s in serve]),
        "errors": sum(s["errors"] for s in serve),
        "as_of_errors": sum(s["errors"] for s in serve_as_of),
        "as_of_p99_ms": stats([s["p99_ms"] for s in serve_as_of]),
        "as_of_requests_per_sec": stats([s["requests_per_sec"] for s in serve_as_of]),
        "ratio_as_of_to_plain_p99": stats([a["p99_ms"] / s["p99_ms"] for a, s in zip(serve_as_of, serve)]),
        "wrk_requests_per_sec": stats([s["requests_per_sec"] for s in serve_wrk]),
        "wrk_p50_ms": stats([s["p50_ms"] for s in serve_wrk]),
        "wrk_p99_ms": stats([s["p99_ms"] for s in serve_wrk]),
        "wrk_server_cpu_us_per_request": stats([s["server_cpu_us_per_request"] for s in serve_wrk]),
        "wrk_errors": sum(s["errors"] for s in serve_wrk),
        "gzip_requests_per_sec": stats([s["requests_per_sec"] for s in serve_gzip]),
        "gzip_p50_ms": stats([s["p50_ms"] for s in serve_gzip]),
        "gzip_p99_ms": stats([s["p99_ms"] for s in serve_gzip]),
        "gzip_server_cpu_us_per_request": stats([s["server_cpu_us_per_request"] for s in serve_gzip]),
        "gzip_errors": sum(s["errors"] for s in serve_gzip),
        "live_requests_per_sec": stats([s["requests_per_sec"] for s in serve_live]),
        "live_p50_ms": stats([s["p50_ms"] for s in serve_live]),
        "live_p99_ms": stats([s["p99_ms"] for s in serve_live]),
        "live_errors": sum(s["errors"] for s in serve_live),
        "live_kept_share": stats([k / max(k + c, 1) for k, c in serve_live_kept]),
        "redis_benchmark_get_rps": stats([r["rps"] for r in redis_get]),
        "redis_benchmark_get_p99_ms": stats([r["p99_ms"] for r in redis_get]),
    },
}
os.makedirs("bench/results", exist_ok=True)
json.dump(result, open("bench/results/latest.json", "w"), indent=2)
def row(name, d, fmt):
    return (name, fmt.format(d["median"]), fmt.format(d["min"]) + "-" + fmt.format(d["max"]))
b, s, r = broker["bare_consumer_events_per_sec"], broker["speed_layer_events_per_sec"], broker["ratio_speed_to_bare"]
rows = [
    ("bare rdkafka consumer (peer)", f"{b['median']:,.0f} ev/s", f"{b['min']:,.0f}-{b['max']:,.0f}"),
    ("speed-layer run, through Tansu", f"{s['median']:,.0f} ev/s", f"{s['min']:,.0f}-{s['max']:,.0f}"),
    ("  ratio to bare consumer (target >= 0.95)", f"{r['median']:.2f}x", f"{r['min']:.2f}-{r['max']:.2f}"),
    ("bare consumer over SASL_SSL (peer)", f"{secure['bare_consumer_events_per_sec']['median']:,.0f} ev/s", f"{secure['bare_consumer_events_per_sec']['min']:,.0f}-{secure['bare_consumer_events_per_sec']['max']:,.0f}"),
    ("speed-layer run, SASL_SSL Kafka + TLS/ACL Redis", f"{secure['speed_layer_events_per_sec']['median']:,.0f} ev/s", f"{secure['speed_layer_events_per_sec']['min']:,.0f}-{secure['speed_layer_events_per_sec']['max']:,.0f}"),
    ("  ratio to bare consumer (target >= 0.9)", f"{secure['ratio_speed_to_bare']['median']:.2f}x", f"{secure['ratio_speed_to_bare']['min']:.2f}-{secure['ratio_speed_to_bare']['max']:.2f}"),
    ("speed-layer run, single Redis (peer)", f"{cluster['single_redis_events_per_sec']['median']:,.0f} ev/s", f"{cluster['single_redis_events_per_sec']['min']:,.0f}-{cluster['single_redis_events_per_sec']['max']:,.0f}"),
    ("speed-layer run, 3-master Redis Cluster", f"{cluster['redis_cluster_events_per_sec']['median']:,.0f} ev/s", f"{cluster['redis_cluster_events_per_sec']['min']:,.0f}-{cluster['redis_cluster_events_per_sec']['max']:,.0f}"),
    ("  ratio cluster / single", f"{cluster['ratio_cluster_to_single']['median']:.2f}x", f"{cluster['ratio_cluster_to_single']['min']:.2f}-{cluster['ratio_cluster_to_single']['max']:.2f}"),
    ("speed-layer replay, engine alone (target >= 1M)", f"{statistics.median(replay):,.0f} ev/s", f"{min(replay):,.0f}-{max(replay):,.0f}"),
]
rows += [
    row("  Redis CPU per million events (s)", result["speed_replay_redis_cpu_seconds_per_million"], "{:.2f}"),
    row("speed-layer replay, heavy view (bench/heavy.toml)", result["speed_replay_heavy_events_per_sec"], "{:,.0f} ev/s"),
    row("  Redis CPU per million events (s)", result["speed_replay_heavy_redis_cpu_seconds_per_million"], "{:.2f}"),
]
a = broker.get("archive")
if a:
    rows += [
        ("bare rdkafka consumer (peer, archive runs)", f"{a['bare_consumer_events_per_sec']['median']:,.0f} ev/s", f"{a['bare_consumer_events_per_sec']['min']:,.0f}-{a['bare_consumer_events_per_sec']['max']:,.0f}"),
        ("batch-layer archive, through Tansu", f"{a['archive_events_per_sec']['median']:,.0f} ev/s", f"{a['archive_events_per_sec']['min']:,.0f}-{a['archive_events_per_sec']['max']:,.0f}"),
        ("  ratio to bare consumer (target >= 0.95)", f"{a['ratio_archive_to_bare']['median']:.2f}x", f"{a['ratio_archive_to_bare']['min']:.2f}-{a['ratio_archive_to_bare']['max']:.2f}"),
    ]
bd = result["batch_one_day"]
sv = result["serving_series_64_clients"]
rows += [
    row(f"batch-layer run, one day of {batch_events:,} events (s)", bd["batch_seconds"], "{:.2f}"),
    row("DuckDB, same aggregates, same files (peer, s)", bd["duckdb_seconds"], "{:.2f}"),
    row("  ratio batch / DuckDB (target <= 1.0)", bd["ratio_batch_to_duckdb"], "{:.2f}"),
    row("  peak memory batch-layer (MiB)", bd["batch_peak_mib"], "{:.0f}"),
    row("  peak memory DuckDB (MiB)", bd["duckdb_peak_mib"], "{:.0f}"),
    row("batch-layer run, same day, speed side in Redis (s)", result["ledger_one_day"]["batch_with_ledger_seconds"], "{:.2f}"),
    row("  ratio with / without the ledger (target <= 1.10)", result["ledger_one_day"]["ratio_with_to_without"], "{:.2f}"),
    row("  the ledger's time after the dates are computed (s)", result["ledger_one_day"]["ledger_own_seconds"], "{:.2f}"),
    row(f"batch-layer run, {scale['events']:,} events, memory_limit {scale['memory_limit']} (s)", scale["local_seconds"], "{:.1f}"),
    row("  peak memory batch-layer (MiB, target <= 2560)", scale["local_peak_mib"], "{:.0f}"),
]
if scale["ratio_local_to_duckdb"]:
    rows += [
        row(f"DuckDB, same files, memory_limit {scale['duckdb_memory_limit']} (peer, s)", scale["duckdb_seconds"], "{:.1f}"),
        row("  ratio batch / DuckDB (target <= 1.2)", scale["ratio_local_to_duckdb"], "{:.2f}"),
        row("  peak memory DuckDB (MiB)", scale["duckdb_peak_mib"], "{:.0f}"),
    ]
rows += [
    ("  DuckDB runs out of memory", str(scale["duckdb_out_of_memory_runs"]), ""),
    row("same day on Ballista, scheduler + 2 executors (s)", scale["ballista_seconds"], "{:.1f}"),
    row("  ratio Ballista / local engine", scale["ratio_ballista_to_local"], "{:.2f}"),
    ("  peak memory per executor (MiB)", " / ".join(f"{p:.0f}" for p in scale["ballista_executor_peak_mib"]), ""),
    (f"serving series, 64 clients, buckets {sv['buckets_by_source']}", "", ""),
    row("  loaded by bench-serve (hyper, one thread), req/s", sv["requests_per_sec"], "{:,.0f}"),
    row("  bench-serve, server CPU per request (us)", sv["server_cpu_us_per_request"], "{:.0f}"),
    row("  bench-serve p50 (ms)", sv["p50_ms"], "{:.2f}"),
    row("  bench-serve p99 (ms, target <= 5)", sv["p99_ms"], "{:.2f}"),
    row("  same query with as_of, p99 (ms)", sv["as_of_p99_ms"], "{:.2f}"),
    row("  ratio as_of / plain p99 (target <= 2.0)", sv["ratio_as_of_to_plain_p99"], "{:.2f}"),
    row("  loaded by wrk instead (C client), req/s", sv["wrk_requests_per_sec"], "{:,.0f}"),
    row("  loaded by wrk, server CPU per request (us)", sv["wrk_server_cpu_us_per_request"], "{:.0f}"),
    row("  loaded by wrk, p50 (ms)", sv["wrk_p50_ms"], "{:.2f}"),
    row("  loaded by wrk, p99 (ms, target <= 5)", sv["wrk_p99_ms"], "{:.2f}"),
    row("  asked accepting gzip (as browsers do), req/s", sv["gzip_requests_per_sec"], "{:,.0f}"),
    row("  accepting gzip, server CPU per request (us)", sv["gzip_server_cpu_us_per_request"], "{:.0f}"),
    row("  accepting gzip, p99 (ms, target <= 5)", sv["gzip_p99_ms"], "{:.2f}"),
    row("  same query, 2,000 ev/s arriving, req/s", sv["live_requests_per_sec"], "{:,.0f}"),
    row("  same query, 2,000 ev/s arriving, p99 (ms)", sv["live_p99_ms"], "{:.2f}"),
    row("  share of answers kept while events arrive", sv["live_kept_share"], "{:.2f}"),
    row("redis-benchmark -P 1 GET, 64 clients (peer, req/s)", sv["redis_benchmark_get_rps"], "{:,.0f}"),
    row("freshness p50, produce to visible in series (ms, target <= 50)", result["freshness_ms"]["p50"], "{:.0f}"),
    row("freshness p99 (ms, target <= 100)", result["freshness_ms"]["p99"], "{:.0f}"),
]
print(f"\n{'figure':<52} {'median':>16} {'min-max':>24}")
for name, med, rng in rows:
    print(f"{name:<52} {med:>16} {rng:>24}")
print(f"\nmachine: {os.cpu_count()} cpus, {cpu}; results in bench/results/latest.json")
PY
