#!/usr/bin/env bash
# `make demo`: the whole platform on generated events. Expects the stack up (`make up` runs
# first). Builds the release binaries (a second run reuses them), creates the demo topic,
# produces three hours of history (with late, malformed and duplicate events) and then a live
# trickle, starts the speed layer, the archiver, the batch schedule and the serving layer,
# runs one batch, prints a merged query and the dashboard URL, and stops everything on Ctrl-C.
#
# Knobs: DEMO_PORT (8080), DEMO_EVENTS (150000 history events), DEMO_RATE (200 live events/s),
# DEMO_EXIT=1 to stop after printing instead of waiting for Ctrl-C.
# SECURE=1 (`make demo SECURE=1`, after `make up-secure`): the same demo through the secured
# services of infra/secure.sh: Kafka over TLS with SASL SCRAM-SHA-512, Redis over TLS with an
# ACL user, and the API over HTTPS behind an API key (kept in .stack/secure/demo-api-key).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(infra/stack.sh env)"
STATE=${TRIBUTARY_STATE_DIR:-$PWD/.stack}
DEMO=$STATE/demo
PORT=${DEMO_PORT:-8080}
EVENTS=${DEMO_EVENTS:-150000}
RATE=${DEMO_RATE:-200}
BIN=$PWD/target/release
SECURE=${SECURE:-0}
mkdir -p "$DEMO/store"

say() { printf '\n\033[1m[demo] %s\033[0m\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }

if [ "$SECURE" = 1 ]; then
  if [ -z "${TRIBUTARY_SECURE_BROKERS:-}" ] || [ -z "${TRIBUTARY_SECURE_REDIS_URL:-}" ]; then
    die "SECURE=1 needs the secured stack: make up-secure (or make demo SECURE=1)"
  fi
  BROKERS=$TRIBUTARY_SECURE_BROKERS
  REDIS_URL=$TRIBUTARY_SECURE_REDIS_URL
  SCHEME=https
  KEY_FILE=$STATE/secure/demo-api-key
  [ -s "$KEY_FILE" ] || (umask 077 && openssl rand -hex 24 >"$KEY_FILE") || die "cannot write $KEY_FILE"
  API_KEY=$(cat "$KEY_FILE")
  # Every client of the API (the checks below) trusts the stack's CA and sends the key.
  CURL_OPTS=(--cacert "$TRIBUTARY_SECURE_CA" -H "Authorization: Bearer $API_KEY")
else
  BROKERS=$TRIBUTARY_TEST_BROKERS
  REDIS_URL=$TRIBUTARY_TEST_REDIS
  SCHEME=http
  CURL_OPTS=()
fi
BASE=$SCHEME://127.0.0.1:$PORT

say "building the release binaries (reused when nothing changed)"
cargo build --release --bins -q

# The shipped example config, pointed at the demo's topic, store and ports.
export TRIBUTARY_CONFIG=$PWD/infra/tributary.toml
export TRIBUTARY__SOURCE__BROKERS=$BROKERS
export TRIBUTARY__SOURCE__TOPIC=demo-events
export TRIBUTARY__SOURCE__GROUP_PREFIX=tributary-demo
export TRIBUTARY__REDIS__URL=$REDIS_URL
export TRIBUTARY__REDIS__KEY_PREFIX=tributary-demo
export TRIBUTARY__STORE__URL=file://$DEMO/store
export TRIBUTARY__SERVING__LISTEN=127.0.0.1:$PORT
export TRIBUTARY__BATCH__SCHEDULE="0 */5 * * * *"
export TRIBUTARY__BATCH__IDLE_TIMEOUT=20s
export TRIBUTARY__BATCH__ARCHIVE_FLUSH_INTERVAL=5s
export RUST_LOG=${RUST_LOG:-info}
if [ "$SECURE" = 1 ]; then
  # Read by every binary below (tributary-gen too) through the same config keys.
  export TRIBUTARY__SOURCE__SECURITY_PROTOCOL=sasl_ssl
  export TRIBUTARY__SOURCE__SASL_MECHANISM=SCRAM-SHA-512
  export TRIBUTARY__SOURCE__SASL_USERNAME=$TRIBUTARY_SECURE_SASL_USERNAME
  export TRIBUTARY__SOURCE__SASL_PASSWORD=$TRIBUTARY_SECURE_SASL_PASSWORD
  export TRIBUTARY__SOURCE__SSL_CA_LOCATION=$TRIBUTARY_SECURE_CA
  export TRIBUTARY__REDIS__USERNAME=$TRIBUTARY_SECURE_REDIS_USERNAME
  export TRIBUTARY__REDIS__PASSWORD=$TRIBUTARY_SECURE_REDIS_PASSWORD
  export TRIBUTARY__REDIS__CA_FILE=$TRIBUTARY_SECURE_CA
  export TRIBUTARY__SERVING__TLS_CERT=$TRIBUTARY_SECURE_CERT
  export TRIBUTARY__SERVING__TLS_KEY=$TRIBUTARY_SECURE_KEY
  export TRIBUTARY__SERVING__API_KEYS="[\"$API_KEY\"]"
fi

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
"$BIN/tributary-gen" --brokers "$BROKERS" --topic demo-events --create-partitions 4 \
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
start live "$BIN/tributary-gen" --brokers "$BROKERS" --topic demo-events \
  --count 100000000 --seed "$((SEED + 1))" --rate "$RATE" --span-secs 0 --late 0.02 --malformed 0.01

api() { curl -fsS "${CURL_OPTS[@]}" "$BASE$1"; }
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
say "speed accuracy ledger of the hours the batch settled: GET /v1/views/checkouts/accuracy"
api "/v1/views/checkouts/accuracy?granularity=hour&from=$FROM&to=$TO" | "$PY" -c "$(cat <<'PYEOF'
import json, sys
r = json.load(sys.stdin)
print("  %-12s %7s %14s %14s %14s %s" % ("measure", "buckets", "mean rel err", "p99 rel err", "max rel err", "within sketch bound"))
pct = lambda v: "-" if v is None else "%.4f %%" % (100 * v)
for m, s in r["summary"].items():
    print("  %-12s %7d %14s %14s %14s %s" % (m, s["buckets"], pct(s["mean_rel_error"]), pct(s["p99_rel_error"]),
          pct(s["max_rel_error"]), "-" if s["within_bound_share"] is None else "%.0f %%" % (100 * s["within_bound_share"])))
if not r["summary"]:
    print("  (no settled bucket compared yet: the speed layer had not sealed them)")
PYEOF
)"
say "dashboard: $BASE/   status: $BASE/v1/status   API: $BASE/openapi.json"
if [ "$SECURE" = 1 ]; then
  echo "  API key (the dashboard asks for it; curl: -H 'Authorization: Bearer $API_KEY'): $API_KEY"
  echo "  the certificate is signed by the stack's own CA: $TRIBUTARY_SECURE_CA"
  echo "  (curl --cacert it; a browser warns unless that CA is imported)"
fi
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
say "live events keep flowing; Ctrl-C stops the layers"
while true; do sleep 3600; done
