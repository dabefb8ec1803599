#!/usr/bin/env bash
# The local stack: real services on loopback for `make test`, `make demo` and `make bench`.
#   Tansu (Kafka API, SQLite storage), Redis, moto (S3 API).
#   With --secure (`make up-secure`, `make test`) also the secured services of infra/secure.sh:
#   Tansu with SASL behind TLS proxies, Redis with TLS and ACLs, a Redis Cluster.
# Usage: infra/stack.sh up [--secure]|down|status|env|install [--secure]
# Idempotent: `up` starts only what is not running, `down` stops only what `up` started
# (pid files under the state dir). A service already answering on its port (another
# checkout's stack) is reused, never stopped.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TRIBUTARY_STATE_DIR:-$ROOT/.stack}
CACHE=${TRIBUTARY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary}
KAFKA_PORT=${TRIBUTARY_KAFKA_PORT:-19092}
REDIS_PORT=${TRIBUTARY_REDIS_PORT:-16379}
S3_PORT=${TRIBUTARY_S3_PORT:-19000}
S3_BUCKET=${TRIBUTARY_S3_BUCKET:-tributary}
TANSU_VERSION=0.6.0
MOTO_VERSION=5.2.5
DUCKDB_VERSION=2.0.0
SCHEMATHESIS_VERSION=4.32.5
TANSU_ROOT=$CACHE/tansu-$TANSU_VERSION
TANSU_BIN=$TANSU_ROOT/bin/tansu
VENV=$STATE/venv

# shellcheck source=SCRIPTDIR/secure.sh
source "$ROOT/infra/secure.sh"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# running PID: the process exists and has not exited (a daemon's exited process can stay a zombie
# for a while until init reaps it).
running() { kill -0 "$1" 2>/dev/null && ! grep -qs '^[0-9]* (.*) Z' "/proc/$1/stat"; }

pid_alive() { [ -f "$1" ] && running "$(cat "$1")"; }

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds or the time is up.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
  log "$name is healthy"
}

install_tansu() {
  [ -x "$TANSU_BIN" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to install tansu"
  mkdir -p "$TANSU_ROOT"
  log "installing tansu $TANSU_VERSION into $TANSU_ROOT (one time, about 7 minutes on 2 cores)"
  # Its own target dir, so it never contends with the workspace's target/ lock.
  CARGO_TARGET_DIR=$CACHE/tansu-build cargo install --locked "tansu@$TANSU_VERSION" \
    --features libsql --root "$TANSU_ROOT" >"$CACHE/tansu-install.log" 2>&1 ||
    { tail -20 "$CACHE/tansu-install.log" >&2; die "tansu install failed (log: $CACHE/tansu-install.log)"; }
  rm -rf "$CACHE/tansu-build"
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

install_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV" || { apt_install python3-venv; python3 -m venv "$VENV"; }
  fi
  # schemathesis: the OpenAPI fuzzing of the serving layer in the e2e tests.
  if ! "$VENV/bin/python" -c 'import moto, duckdb' 2>/dev/null ||
    [ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    log "pip install moto[server]==$MOTO_VERSION duckdb==$DUCKDB_VERSION schemathesis==$SCHEMATHESIS_VERSION"
    "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
      "duckdb==$DUCKDB_VERSION" "schemathesis==$SCHEMATHESIS_VERSION" || die "pip install into $VENV failed"
  fi
}

install_all() {
  install_tansu
  # chromium: the dashboard's headless browser test; sqlite3: the fault suite grows a topic's
  # partitions in the broker's store (Tansu 0.6 has no CreatePartitions); strace: the fault
  # suite checks the archive's fsync order; wrk: the serving benchmark's HTTP load generator
  # (C, like its redis-benchmark peer).
  apt_install redis-server redis-tools chromium sqlite3 strace wrk
  install_python
}

# index_tansu DB: adds the header index Tansu 0.6 lacks (see infra/tansu-index.sql). Tansu
# creates its tables as it starts, so this waits for them; a broker that is not ours (no
# store under the state dir) is left alone.
index_tansu() {
  local db=$1 deadline=$((SECONDS + 30))
  [ -f "$db" ] || return 0
  until sqlite3 "$db" <"$ROOT/infra/tansu-index.sql" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "could not index the broker's store $db (sqlite3 <infra/tansu-index.sql)"
    sleep 0.5
  done
}

kafka_healthy() { port_open "$KAFKA_PORT"; }
redis_healthy() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
s3_healthy() { curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/"; }

# start NAME PIDFILE HEALTHFN PORT CMD...: runs CMD in the background unless the service is
# already up (ours, or someone else's healthy one on the port). Its log goes to
# $START_LOG_DIR/NAME.log ($STATE by default).
start() {
  local name=$1 pidfile=$2 health=$3 port=$4; shift 4
  if pid_alive "$pidfile"; then
    log "$name already running (pid $(cat "$pidfile"), port $port)"; return 0
  fi
  if port_open "$port"; then
    if wait_for "$name" 5 "$health"; then
      log "$name: reusing the service already on port $port (not started by this stack)"; return 0
    fi
    die "port $port is taken by something that is not $name; set TRIBUTARY_${name^^}_PORT"
  fi
  local logfile=${START_LOG_DIR:-$STATE}/$name.log
  log "starting $name on 127.0.0.1:$port"
  nohup "$@" >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  if ! wait_for "$name" 60 "$health"; then
    tail -20 "$logfile" >&2 || true
    die "$name did not become healthy on port $port within 60 s (log: $logfile)"
  fi
}

up() {
  local secure=0
  case "${1:-}" in --secure) secure=1 ;; "") ;; *) die "up: unknown option $1 (up [--secure])" ;; esac
  install_all
  mkdir -p "$STATE/tansu"
  # Tansu takes the SQLite path relative to its working directory.
  (cd "$STATE/tansu" && start kafka "$STATE/kafka.pid" kafka_healthy "$KAFKA_PORT" \
    "$TANSU_BIN" broker --storage-engine sqlite://tansu.db \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT")
  index_tansu "$STATE/tansu/tansu.db"
  if pid_alive "$STATE/redis.pid"; then
    log "redis already running (pid $(cat "$STATE/redis.pid"), port $REDIS_PORT)"
  elif port_open "$REDIS_PORT"; then
    wait_for redis 5 redis_healthy || die "port $REDIS_PORT is taken by something that is not redis; set TRIBUTARY_REDIS_PORT"
    log "redis: reusing the server already on port $REDIS_PORT"
  else
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" --dir "$STATE" \
      || die "redis-server failed to start (log: $STATE/redis.log)"
    wait_for redis 30 redis_healthy || die "redis did not answer PING on port $REDIS_PORT"
  fi
  start s3 "$STATE/s3.pid" s3_healthy "$S3_PORT" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
  # The demo's bucket; tests make their own.
  curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$S3_PORT/$S3_BUCKET" || die "cannot create bucket $S3_BUCKET"
  [ "$secure" = 0 ] || secure_up
  status
}

stop_pid() {
  local name=$1 pidfile=$2
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

down() {
  stop_pid kafka "$STATE/kafka.pid"
  stop_pid redis "$STATE/redis.pid"
  stop_pid s3 "$STATE/s3.pid"
  secure_down
}

# svc_line HEALTHFN PIDFILE: "up (pid N)", "up (not started by this stack)" or "down".
svc_line() {
  if "$1" >/dev/null 2>&1; then
    if pid_alive "$2"; then echo "up (pid $(cat "$2"))"; else echo "up (not started by this stack)"; fi
  else
    echo down
  fi
}

status() {
  local line
  for svc in "kafka:$KAFKA_PORT:kafka_healthy" "redis:$REDIS_PORT:redis_healthy" "s3:$S3_PORT:s3_healthy"; do
    IFS=: read -r name port health <<<"$svc"
    line=$(svc_line "$health" "$STATE/$name.pid")
    printf '%-11s 127.0.0.1:%-6s %s\n' "$name" "$port" "$line"
  done
  secure_status
  printf 'state dir: %s\n' "$STATE"
  printf 'ports: TRIBUTARY_KAFKA_PORT=%s TRIBUTARY_REDIS_PORT=%s TRIBUTARY_S3_PORT=%s (defaults 19092, 16379, 19000)\n' \
    "$KAFKA_PORT" "$REDIS_PORT" "$S3_PORT"
  secure_status_ports
}

# Variables the tests and the demo read to find the stack.
print_env() {
  cat <<EOF
export TRIBUTARY_TEST_BROKERS=127.0.0.1:$KAFKA_PORT
export TRIBUTARY_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT/0
export TRIBUTARY_TEST_S3=http://127.0.0.1:$S3_PORT
export TRIBUTARY_VENV=$VENV
export TRIBUTARY_TEST_CHROMIUM=$(command -v chromium || echo /usr/bin/chromium)
export TRIBUTARY_TANSU_BIN=$TANSU_BIN
EOF
  print_secure_env
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  env) print_env ;;
  install) install_all; [ "${2:-}" != --secure ] || install_secure ;;
  *) echo "usage: $0 up [--secure]|down|status|env|install [--secure]" >&2; exit 2 ;;
esac
