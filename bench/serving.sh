#!/usr/bin/env bash
# The serving layer's `series` at 64 clients (issue 16's figures), run by bench/run.sh or alone:
#   bench/serving.sh WORK_DIR        (BENCH_RUNS, BENCH_SERVE_SECONDS override the sizes)
# A day of events through the real speed layer (its watermark seals the older buckets) and the
# real archive + one batch run, then the last one and a half hours through the speed layer only:
# the 24-hour chart a dashboard reads an hour after the last batch run, 22 settled hours from
# the batch view and the previous and current hours from Redis (issue 16's shape). Per run:
#   1. the chart, nothing arriving, loaded by `bench-serve` (`serve-$i.json`, the server's CPU
#      in `serve-cpu-$i`) and by `wrk` (`serve-wrk-$i.json`, CPU included): two load
#      generators, because on two shared cores the client's own CPU per request is part of
#      what the latency measures (both are single-threaded on bare HTTP/1.1 connections; the
#      reqwest bench-serve before the eighth stop cost about the server's CPU per request),
#   2. the chart asked as a browser asks, accepting gzip (`serve-gzip-$i.json`, CPU included:
#      a kept answer is compressed once, ~29 KB -> ~3 KB), and the same chart `as_of` a
#      moment ago (`serve-asof-$i.json`),
#   3. `redis-benchmark` GET at 64 clients, the peer (`redis-$i.csv`),
#   4. the chart while events arrive at 2,000/s through the speed layer, every flush changing
#      the open hour (`serve-live-$i.json`; the answers kept vs computed in `serve-live-kept-$i`).
# Needs the release binaries (bench/run.sh builds them) and the stack (`make up`).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: bench/serving.sh WORK_DIR}
runs=${BENCH_RUNS:-3}
serve_seconds=${BENCH_SERVE_SECONDS:-15}
live_rate=${BENCH_LIVE_RATE:-2000}
# Another build's server on the same data, to compare (e.g. the previous commit's).
serving_bin=${BENCH_SERVING_BIN:-target/release/serving-layer}
eval "$(infra/stack.sh env)"
redis_url=${TRIBUTARY_TEST_REDIS:-redis://127.0.0.1:16379/0}
redis_port=${redis_url#redis://127.0.0.1:}; redis_port=${redis_port%%/*}
mkdir -p "$work"

serve_prefix=bench-serve-$$
serve_topic=bench-serve-$$
serve_store=$work/serve-store
mkdir -p "$serve_store"
now_s=$(date -u +%s)
cut_ago=$((now_s - now_s / 3600 * 3600 + 1800))   # half an hour before the current hour began
settled_count=$((300000 * (86400 - cut_ago) / 86400))
target/release/tributary-gen --brokers "$TRIBUTARY_TEST_BROKERS" --topic "$serve_topic" --create-partitions 4 \
  --count "$settled_count" --span-secs $((86400 - cut_ago)) --end-secs-ago "$cut_ago" --seed 7 2>/dev/null
serve_env=(TRIBUTARY__SOURCE__BROKERS="$TRIBUTARY_TEST_BROKERS" TRIBUTARY__SOURCE__TOPIC=$serve_topic
  TRIBUTARY__SOURCE__GROUP_PREFIX=$serve_prefix TRIBUTARY__REDIS__URL="$redis_url"
  TRIBUTARY__REDIS__KEY_PREFIX=$serve_prefix TRIBUTARY__STORE__URL="file://$serve_store"
  TRIBUTARY__SPEED__METRICS_LISTEN=127.0.0.1:0 TRIBUTARY__BATCH__METRICS_LISTEN=127.0.0.1:0 RUST_LOG=warn)
# Runs the speed layer (and the archive, with `archive`) until both have read `$1` records.
serve_read() {
  env "${serve_env[@]}" target/release/speed-layer --config infra/tributary.toml run &
  local pids=($!)
  [ "${2:-}" = archive ] && { env "${serve_env[@]}" target/release/batch-layer --config infra/tributary.toml archive & pids+=($!); }
  for _ in $(seq 300); do
    applied=$(redis-cli -u "$redis_url" HVALS "$serve_prefix:{checkouts}:offsets:$serve_topic" 2>/dev/null |
      awk -F: '{s += $1} END {print s + 0}')
    archived=$(python3 -c 'import glob, json, sys
print(sum(json.load(open(f))["committed_offset"] for f in glob.glob(sys.argv[1] + "/master/*/_state/p*.json")))' "$serve_store")
    [ "$applied" -ge "$1" ] && { [ "${2:-}" != archive ] || [ "$archived" -ge "$1" ]; } && break
    sleep 1
  done
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}
serve_read "$settled_count" archive
env "${serve_env[@]}" target/release/batch-layer --config infra/tributary.toml run >/dev/null
target/release/tributary-gen --brokers "$TRIBUTARY_TEST_BROKERS" --topic "$serve_topic" \
  --count $((300000 - settled_count)) --span-secs "$cut_ago" --seed 8 2>/dev/null
serve_read 300000
serve_port=${BENCH_SERVE_PORT:-18080}
env "${serve_env[@]}" TRIBUTARY__SERVING__LISTEN=127.0.0.1:$serve_port \
  "$serving_bin" --config infra/tributary.toml serve &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$serve_port/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
# The 24 hours up to the end of the current one: the settled hours from the batch view, the
# two newest from the speed layer.
to=$(date -u -d '+1 hour' +%Y-%m-%dT%H:00:00Z)
from=$(date -u -d '-23 hours' +%Y-%m-%dT%H:00:00Z)
url="http://127.0.0.1:$serve_port/v1/views/checkouts/series?measures=events,revenue,buyers&granularity=hour&group_by=country&from=$from&to=$to"
curl -fsS "$url" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print("  query mix: %s buckets by source, %d groups, horizon %s" % (d["buckets"], len(d["series"]), d["batch_horizon"]))
json.dump(d["buckets"], open(sys.argv[1], "w"))' "$work/serve-mix.json"
# The server's CPU seconds (user + system), read around each plain run.
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$serve_pid/stat"; }
# The server's count of series answers made one way (kept or computed).
answers() {
  curl -fsS "http://127.0.0.1:$serve_port/metrics" |
    awk -v how="$1" 'index($0, "tributary_serving_series_answers_total{how=\"" how "\"}") == 1 {print $2; f = 1} END {if (!f) print 0}'
}
# The same query as the batch views stood a moment ago (as_of: the manifest then, no Redis).
as_of_url="$url&as_of=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
curl -fsS "$as_of_url" >/dev/null || { echo "[bench] the as_of query fails: $as_of_url" >&2; exit 1; }
for i in $(seq "$runs"); do
  before=$(server_cpu)
  target/release/bench-serve --url "$url" --clients 64 --seconds "$serve_seconds" >"$work/serve-$i.json"
  echo "$before $(server_cpu)" >"$work/serve-cpu-$i"
  before=$(server_cpu)
  wrk -t1 -c64 -d"${serve_seconds}s" --latency "$url" >"$work/serve-wrk-$i.txt"
  python3 - "$work/serve-wrk-$i.txt" "$before" "$(server_cpu)" >"$work/serve-wrk-$i.json" <<'PY'
import json, re, sys
text, before, after = open(sys.argv[1]).read(), float(sys.argv[2]), float(sys.argv[3])
def ms(p):
    v, unit = re.search(rf"^\s+{p}%\s+([0-9.]+)(us|ms|s)\s*$", text, re.M).groups()
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
requests = int(re.search(r"^\s*(\d+) requests in", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(json.dumps({"requests": requests, "requests_per_sec": float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1)),
                  "p50_ms": ms(50), "p99_ms": ms(99), "errors": int(errors.group(1)) if errors else 0,
                  "server_cpu_us_per_request": (after - before) / max(requests, 1) * 1e6}))
PY
  before=$(server_cpu)
  target/release/bench-serve --url "$url" --accept-gzip --clients 64 --seconds "$serve_seconds" >"$work/serve-gzip-$i.json"
  python3 - "$work/serve-gzip-$i.json" "$before" "$(server_cpu)" <<'PY'
import json, sys
f, before, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
d = json.load(open(f))
# Counted as bench/run.sh counts the plain round's (the warm-up's CPU included).
d["server_cpu_us_per_request"] = (after - before) / max(d["requests"], 1) * 1e6
json.dump(d, open(f, "w"))
PY
  target/release/bench-serve --url "$as_of_url" --clients 64 --seconds "$serve_seconds" >"$work/serve-asof-$i.json"
  redis-benchmark -h 127.0.0.1 -p "$redis_port" -c 64 -n 200000 -t get -P 1 --csv 2>/dev/null | tail -1 >"$work/redis-$i.csv"
  # Events arriving: the speed layer applies them as they come (every flush a new version of
  # the open hour, so the kept answer of the hour before is recomputed once per flush).
  env "${serve_env[@]}" target/release/speed-layer --config infra/tributary.toml run &
  speed_pid=$!
  target/release/tributary-gen --brokers "$TRIBUTARY_TEST_BROKERS" --topic "$serve_topic" \
    --rate "$live_rate" --count $((live_rate * (serve_seconds + 4))) --span-secs 0 --seed $((100 + i)) 2>/dev/null &
  gen_pid=$!
  sleep 2
  kept=$(answers kept); computed=$(answers computed)
  target/release/bench-serve --url "$url" --clients 64 --seconds "$serve_seconds" >"$work/serve-live-$i.json"
  echo "$(($(answers kept) - kept)) $(($(answers computed) - computed))" >"$work/serve-live-kept-$i"
  kill "$gen_pid" "$speed_pid" 2>/dev/null || true; wait "$gen_pid" "$speed_pid" 2>/dev/null || true
  echo "  run $i: serving $(python3 -c "import json;d=json.load(open('$work/serve-$i.json'));print(f\"{d['requests_per_sec']:.0f} req/s p50 {d['p50_ms']:.2f} ms p99 {d['p99_ms']:.2f} ms\")") / wrk $(python3 -c "import json;d=json.load(open('$work/serve-wrk-$i.json'));print(f\"{d['requests_per_sec']:.0f} req/s p50 {d['p50_ms']:.2f} ms p99 {d['p99_ms']:.2f} ms, {d['server_cpu_us_per_request']:.0f} us CPU/req\")") / gzip $(python3 -c "import json;d=json.load(open('$work/serve-gzip-$i.json'));print(f\"{d['requests_per_sec']:.0f} req/s p99 {d['p99_ms']:.2f} ms, {d['server_cpu_us_per_request']:.0f} us CPU/req\")") / as_of $(python3 -c "import json;d=json.load(open('$work/serve-asof-$i.json'));print(f\"p99 {d['p99_ms']:.2f} ms\")") / redis GET $(cut -d, -f2 "$work/redis-$i.csv") req/s / with $live_rate ev/s arriving $(python3 -c "import json;d=json.load(open('$work/serve-live-$i.json'));print(f\"{d['requests_per_sec']:.0f} req/s p99 {d['p99_ms']:.2f} ms\")"), kept/computed $(cat "$work/serve-live-kept-$i")"
done
