#!/usr/bin/env bash
# `make demo`: the whole platform on generated events. Expects the stack up (`make up` runs
# first). Builds the release binaries (a second run reuses them), creates the demo topic,
# produces three hours of history (with late, malformed and duplicate events) and then a live
# trickle, starts the speed layer, the archiver, the batch schedule and the serving layer,
# runs one batch, prints a merged query and the dashboard URL, and stops everything on Ctrl-C.
#
# Knobs: DEMO_PORT (8080), DEMO_EVENTS (150000 history events), DEMO_RATE (200 live events/s),
# DEMO_EXIT=1 to stop after printing instead of waiting for Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(infra/stack.sh env)"
STATE=${TRIBUTARY_STATE_DIR:-$PWD/.stack}
DEMO=$STATE/demo
PORT=${DEMO_PORT:-8080}
EVENTS=${DEMO_EVENTS:-150000}
RATE=${DEMO_RATE:-200}
BIN=$PWD/target/release
mkdir -p "$DEMO/store"

say() { printf '\n\033[1m[demo] %s\033[0m\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }

say "building the release binaries (reused when nothing changed)"
cargo build --release --bins -q

# The shipped example config, pointed at the demo's topic, store and ports.
export TRIBUTARY_CONFIG=$PWD/infra/tributary.toml
export TRIBUTARY__SOURCE__BROKERS=$TRIBUTARY_TEST_BROKERS
export TRIBUTARY__SOURCE__TOPIC=demo-events
export TRIBUTARY__SOURCE__GROUP_PREFIX=tributary-demo
export TRIBUTARY__REDIS__URL=$TRIBUTARY_TEST_REDIS
export TRIBUTARY__REDIS__KEY_PREFIX=tributary-demo
export TRIBUTARY__STORE__URL=file://$DEMO/store
export TRIBUTARY__SERVING__LISTEN=127.0.0.1:$PORT
export TRIBUTARY__BATCH__SCHEDULE="0 */5 * * * *"
export TRIBUTARY__BATCH__IDLE_TIMEOUT=20s
export TRIBUTARY__BATCH__ARCHIVE_FLUSH_INTERVAL=5s
export RUST_LOG=${RUST_LOG:-info}

PIDS=()
cleanup() {
  say "stopping the layers"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "logs: $DEMO/*.log; the stack keeps running (make down stops it)"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

say "producing $EVENTS events over the last 3 hours (2% late, 1% malformed, 1% duplicates)"
# A new seed per run: a second demo adds new events instead of resending the same ids.
SEED=$(date +%s)
"$BIN/tributary-gen" --brokers "$TRIBUTARY_TEST_BROKERS" --topic demo-events --create-partitions 4 \
  --count "$EVENTS" --seed "$SEED" --span-secs 10800 --late 0.02 --malformed 0.01 --duplicates 0.01

start() {
  local name=$1; shift
  "$@" >"$DEMO/$name.log" 2>&1 &
  PIDS+=($!)
  echo "  $name (pid $!, log $DEMO/$name.log)"
}
say "starting the layers"
start speed "$BIN/speed-layer" run
start archive "$BIN/batch-layer" archive
start serving "$BIN/serving-layer" serve
start live "$BIN/tributary-gen" --brokers "$TRIBUTARY_TEST_BROKERS" --topic demo-events \
  --count 100000000 --seed "$((SEED + 1))" --rate "$RATE" --span-secs 0 --late 0.02 --malformed 0.01

api() { curl -fsS "http://127.0.0.1:$PORT$1"; }
for _ in $(seq 1 60); do api /healthz >/dev/null 2>&1 && break; sleep 0.5; done
api /healthz >/dev/null || die "the serving layer did not come up (log: $DEMO/serving.log)"

say "waiting for the archive to catch up with the history"
PY=${TRIBUTARY_VENV:-$STATE/venv}/bin/python
for _ in $(seq 1 120); do
  lag=$(api /v1/status | "$PY" -c 'import json,sys; s=json.load(sys.stdin); p=s["archive"]["partitions"]; print(sum((x["lag_offsets"] or 0) for x in p) if len(p)==4 else -1)')
  [ "$lag" != "-1" ] && [ "$lag" -lt 2000 ] && break
  sleep 1
done
sleep 6  # one archive flush interval, so the newest history is committed

say "running the batch once (the schedule then runs every 5 minutes)"
"$BIN/batch-layer" run
# Its own metrics port: the archiver already serves batch.metrics_listen.
start schedule env TRIBUTARY__BATCH__METRICS_LISTEN=127.0.0.1:9103 "$BIN/batch-layer" schedule

FROM=$(date -u -d '-3 hours' +%Y-%m-%dT%H:00:00Z)
TO=$(date -u -d '+1 hour' +%Y-%m-%dT%H:00:00Z)
QUERY="/v1/views/checkouts/series?measures=events,revenue,buyers,p95_latency&granularity=hour&from=$FROM&to=$TO"
say "merged query: GET $QUERY"
api "$QUERY" | "$PY" -c "$(cat <<'PYEOF'
import json, sys
r = json.load(sys.stdin)
print("view %s, granularity %s, batch horizon %s, speed watermark %s" % (r["view"], r["granularity"], r["batch_horizon"], r["speed_watermark"]))
print("%-22s %-8s %-6s %8s %12s %8s %12s" % ("bucket", "source", "exact", "events", "revenue", "buyers", "p95_latency"))
def f(v, k, fmt):
    return fmt % v[k] if v.get(k) is not None else "-"
for s in r["series"]:
    for p in s["points"]:
        v = p["values"]
        print("%-22s %-8s %-6s %8s %12s %8s %12s" % (p["t"], p["source"], str(p["exact"]).lower(),
              f(v, "events", "%.0f"), f(v, "revenue", "%.2f"), f(v, "buyers", "%.0f"), f(v, "p95_latency", "%.1f")))
print("buckets: %s" % r["buckets"])
PYEOF
)"
say "top countries by revenue, last 3 hours"
api "/v1/views/checkouts/top?dimension=country&measure=revenue&k=5&from=$FROM&to=$TO" | "$PY" -c "$(cat <<'PYEOF'
import json, sys
for row in json.load(sys.stdin)["rows"]:
    print("  %-6s %12.2f  %s%s" % (row["value"], row["measure_value"] or 0, row["source"], "" if row["exact"] else " (approx)"))
PYEOF
)"
say "dashboard: http://127.0.0.1:$PORT/   status: http://127.0.0.1:$PORT/v1/status   API: http://127.0.0.1:$PORT/openapi.json"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
say "live events keep flowing; Ctrl-C stops the layers"
while true; do sleep 3600; done
