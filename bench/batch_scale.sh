#!/usr/bin/env bash
# The batch layer at scale (issue 14's figures), run by bench/run.sh or alone:
#   bench/batch_scale.sh OUT.json          (BENCH_SCALE_EVENTS, BENCH_RUNS override the sizes)
# One UTC day of BENCH_SCALE_EVENTS generated events (default 50M) written straight into the
# master layout by `bench-master`, then per run, on the very same Parquet files:
#   1. `batch-layer run` with `batch.memory_limit = 2GiB` (wall time, peak RSS, spill),
#   2. DuckDB computing the same view with `SET memory_limit = '2GB'` (its peer),
#   3. `batch-layer run` with `batch.engine = ballista://…`: a scheduler and two executors
#      (`batch-layer scheduler` / `batch-layer executor`, one task slot each) on this machine,
#      with each executor's peak RSS (VmHWM) — on 2 cores it shows the cost of distribution.
# Needs the release binaries (bench/run.sh builds them) and the stack's venv (DuckDB).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/batch_scale.sh OUT.json}
events=${BENCH_SCALE_EVENTS:-50000000}
runs=${BENCH_RUNS:-3}
limit=${BENCH_SCALE_MEMORY:-2GiB}
duck_limit=${BENCH_SCALE_DUCK_MEMORY:-2GB}
scheduler_port=${BENCH_SCHEDULER_PORT:-18550}
executor_ports=(${BENCH_EXECUTOR_PORTS:-18552 18554})
py=${TRIBUTARY_VENV:-.stack/venv}/bin/python
bin=target/release

work=$(mktemp -d "${BENCH_SCALE_DIR:-${TMPDIR:-/tmp}}/tributary-scale.XXXXXX")
pids=()
cleanup() {
  # Executors before the scheduler (they would log its absence).
  for ((j = ${#pids[@]} - 1; j >= 0; j--)); do kill "${pids[j]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

master=$work/master
echo "[scale] writing one day of $events events into $master" >&2
started=$SECONDS
date=$($bin/bench-master --events "$events" --dir "$master")
echo "[scale]   written in $((SECONDS - started)) s ($(du -sh "$master" | cut -f1) of Parquet)" >&2

# Every batch-layer process of this script: the shipped config on this store.
common=(TRIBUTARY__STORE__URL="file://$master" TRIBUTARY__BATCH__MEMORY_LIMIT="$limit"
  TRIBUTARY__BATCH__SPILL_DIR="$work/spill" TRIBUTARY__BATCH__METRICS_LISTEN=127.0.0.1:0
  TRIBUTARY__BALLISTA__SCHEDULER_BIND="127.0.0.1:$scheduler_port"
  TRIBUTARY__BALLISTA__SCHEDULER_URL="127.0.0.1:$scheduler_port"
  TRIBUTARY__BALLISTA__EXECUTOR_SLOTS=1 TRIBUTARY__BALLISTA__WORK_DIR="$work/ballista"
  RUST_LOG=warn)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 300); do port_open "$1" && return 0; sleep 0.1; done
  echo "[scale] nothing listens on $1" >&2; return 1
}
peak_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# The Ballista cluster: up once, used by every Ballista run (its executors' VmHWM is the peak
# over all runs, reported once).
env "${common[@]}" $bin/batch-layer --config infra/tributary.toml scheduler 2>"$work/scheduler.log" &
pids+=($!)
wait_port "$scheduler_port"
executors=()
for port in "${executor_ports[@]}"; do
  env "${common[@]}" $bin/batch-layer --config infra/tributary.toml executor --bind "127.0.0.1:$port" \
    2>"$work/executor-$port.log" &
  pids+=($!)
  executors+=($!)
  wait_port "$port"
done
sleep 6 # registration follows the first heartbeat (5 s)

for i in $(seq "$runs"); do
  rm -rf "$master/views" "$master/_batch" "$work/spill"
  env "${common[@]}" /usr/bin/time -f '%e %M' -o "$work/local-$i" \
    $bin/batch-layer --config infra/tributary.toml run >/dev/null
  rm -rf "$work/duck-tmp"
  # DuckDB can run out of its own limit near it (seen at 2GB on the 50M day): counted as a
  # failed peer run, not an end of the benchmark.
  /usr/bin/time -f '%e %M' -o "$work/duck-$i" \
    "$py" bench/duckdb_views.py "$master" events "$date" "$duck_limit" "$work/duck-tmp" \
    >/dev/null 2>"$work/duck-err-$i" || { touch "$work/duck-$i.failed"; tail -3 "$work/duck-err-$i" >&2; }
  rm -rf "$master/views" "$master/_batch"
  env "${common[@]}" TRIBUTARY__BATCH__ENGINE="ballista://127.0.0.1:$scheduler_port" \
    /usr/bin/time -f '%e %M' -o "$work/ballista-$i" \
    $bin/batch-layer --config infra/tributary.toml run >/dev/null
  echo "[scale]   run $i: local $(cat "$work/local-$i") / duckdb $(cat "$work/duck-$i") / ballista $(cat "$work/ballista-$i") (s, peak KiB)" >&2
done
for e in "${executors[@]}"; do peak_kib "$e"; done >"$work/executor-peaks"

python3 - "$work" "$runs" "$events" "$limit" "$duck_limit" >"$out" <<'PY'
import json, statistics, sys
work, runs, events, limit, duck_limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def read(name):
    return [tuple(float(x) for x in open(f"{work}/{name}-{i}").read().split()[-2:]) for i in range(1, runs + 1)]
def stats(v):
    s = sorted(v)
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "runs": v}
import os
local, ballista = read("local"), read("ballista")
duck = [None if os.path.exists(f"{work}/duck-{i}.failed") else d for i, d in enumerate(read("duck"), 1)]
pairs = [(l, d) for l, d in zip(local, duck) if d is not None]
peaks = [int(l) / 1024 for l in open(f"{work}/executor-peaks").read().split()]
print(json.dumps({
    "events": events,
    "memory_limit": limit,
    "duckdb_memory_limit": duck_limit,
    "local_seconds": stats([l[0] for l in local]),
    "local_peak_mib": stats([l[1] / 1024 for l in local]),
    "duckdb_seconds": stats([d[0] for _, d in pairs]) if pairs else None,
    "duckdb_peak_mib": stats([d[1] / 1024 for _, d in pairs]) if pairs else None,
    "duckdb_out_of_memory_runs": sum(d is None for d in duck),
    "ratio_local_to_duckdb": stats([l[0] / d[0] for l, d in pairs]) if pairs else None,
    "ballista_seconds": stats([b[0] for b in ballista]),
    "ballista_driver_peak_mib": stats([b[1] / 1024 for b in ballista]),
    "ratio_ballista_to_local": stats([b[0] / l[0] for b, l in zip(ballista, local)]),
    "ballista_executor_peak_mib": peaks,
}, indent=2))
PY
