#!/usr/bin/env bash
# Benchmark harness. Every figure is measured next to a peer in the same run, because these
# machines are noisy; each is the median of several runs, with min and max.
#   bench/run.sh [--quick]      (BENCH_EVENTS, BENCH_RUNS override the sizes)
# So far: the speed layer through the broker (vs a bare rdkafka consumer on the same topic) and
# the engine alone (`speed-layer replay`). Writes bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
events=${BENCH_EVENTS:-$([ "$quick" = 1 ] && echo 300000 || echo 2000000)}
runs=${BENCH_RUNS:-3}
eval "$(infra/stack.sh env)"

if [ -z "${BENCH_NO_BUILD:-}" ]; then
  echo "[bench] building release binaries (BENCH_NO_BUILD=1 skips this)"
  cargo build --release -q -p speed-layer -p integration-tests --bins
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "[bench] speed layer through the broker vs a bare consumer ($events events, $runs runs)"
RUST_LOG=warn target/release/bench-speed --events "$events" --runs "$runs" >"$work/broker.json"

echo "[bench] speed layer engine alone: replay of $events generated events"
target/release/tributary-gen --count "$events" --out "$work/events.jsonl" --span-secs 7200 2>/dev/null
redis_url=${TRIBUTARY_TEST_REDIS:-redis://127.0.0.1:16379/0}
for i in $(seq "$runs"); do
  # The shipped example config (DESIGN.md's view), pointed at this run's Redis keys.
  TRIBUTARY__REDIS__URL="$redis_url" TRIBUTARY__REDIS__KEY_PREFIX="bench-replay-$$-$i" \
  TRIBUTARY__SPEED__ALLOWED_LATENESS=48h TRIBUTARY__SPEED__FLUSH_MAX_EVENTS=100000 \
  RUST_LOG=warn target/release/speed-layer --config infra/tributary.toml replay --file "$work/events.jsonl" >"$work/replay-$i.json"
done

python3 - "$work" "$events" "$runs" <<'PY'
import json, os, platform, statistics, subprocess, sys, time
work, events, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
broker = json.load(open(f"{work}/broker.json"))
replay = [json.load(open(f"{work}/replay-{i}.json"))["events_per_second"] for i in range(1, runs + 1)]
def stats(v):
    s = sorted(v)
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "runs": v}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
result = {
    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
    "events": events,
    "speed_through_broker": broker,
    "speed_replay_events_per_sec": stats(replay),
}
os.makedirs("bench/results", exist_ok=True)
json.dump(result, open("bench/results/latest.json", "w"), indent=2)
b, s, r = broker["bare_consumer_events_per_sec"], broker["speed_layer_events_per_sec"], broker["ratio_speed_to_bare"]
rows = [
    ("bare rdkafka consumer (peer)", f"{b['median']:,.0f} ev/s", f"{b['min']:,.0f}-{b['max']:,.0f}"),
    ("speed-layer run, through Tansu", f"{s['median']:,.0f} ev/s", f"{s['min']:,.0f}-{s['max']:,.0f}"),
    ("  ratio to bare consumer (target >= 0.8)", f"{r['median']:.2f}x", f"{r['min']:.2f}-{r['max']:.2f}"),
    ("speed-layer replay, engine alone (target >= 300k)", f"{statistics.median(replay):,.0f} ev/s", f"{min(replay):,.0f}-{max(replay):,.0f}"),
]
print(f"\n{'figure':<52} {'median':>16} {'min-max':>24}")
for name, med, rng in rows:
    print(f"{name:<52} {med:>16} {rng:>24}")
print(f"\nmachine: {os.cpu_count()} cpus, {cpu}; results in bench/results/latest.json")
PY
