# shellcheck shell=bash
# The secured local stack, sourced by infra/stack.sh: `infra/stack.sh up --secure` starts the
# plain stack plus
#   - certificates (a CA, a server and a client certificate, an untrusted pair), made once;
#   - a second Tansu broker requiring SASL (SCRAM-SHA-512 user `tributary`), reachable only
#     through two TLS-terminating socat proxies: one server-TLS, one mutual TLS;
#   - Redis on a TLS port with ACLs (the default user off, user `tributary` with a password);
#   - a Redis Cluster of 6 plaintext nodes (3 masters, 1 replica each).
# Everything lives under $STATE/secure; pid files there name what `down` may stop.
# Secrets are random, made once, kept in files of mode 600 (`infra/stack.sh env` prints them).

SECURE=$STATE/secure
SECURE_KAFKA_INTERNAL_PORT=${TRIBUTARY_SECURE_KAFKA_INTERNAL_PORT:-19093}
SECURE_KAFKA_PORT=${TRIBUTARY_SECURE_KAFKA_PORT:-19094}
SECURE_KAFKA_MTLS_PORT=${TRIBUTARY_SECURE_KAFKA_MTLS_PORT:-19095}
SECURE_REDIS_PORT=${TRIBUTARY_SECURE_REDIS_PORT:-16380}
CLUSTER_PORT=${TRIBUTARY_CLUSTER_REDIS_PORT:-17001}
CLUSTER_PORTS=$(seq -s ' ' "$CLUSTER_PORT" $((CLUSTER_PORT + 5)))
SECURE_USER=tributary
CERT_DAYS=825

install_secure() {
  apt_install openssl socat redis-server redis-tools
  command -v python3 >/dev/null || apt_install python3
}

# secret FILE: prints the secret kept in FILE, making it (random, mode 600) the first time.
secret() {
  if [ ! -s "$1" ]; then
    (umask 077 && openssl rand -hex 24 >"$1") || die "cannot write $1"
  fi
  cat "$1"
}

# ---- certificates -------------------------------------------------------------------------

# sign_cert NAME SUBJECT EXTENSIONS ISSUER: an EC P-256 key NAME-key.pem and a SHA-256
# certificate NAME.pem; ISSUER is the basename of the signing CA (`self`: self-signed).
sign_cert() {
  local name=$1 subject=$2 ext=$3 issuer=$4 days=$CERT_DAYS
  local serial; serial=0x1$(openssl rand -hex 15)
  printf '[ext]\n%s\n' "$ext" >"$name.ext"
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name-key.pem") ||
    die "openssl genpkey failed for $name"
  openssl req -new -key "$name-key.pem" -subj "$subject" -out "$name.csr" ||
    die "openssl req failed for $name"
  if [ "$issuer" = self ]; then
    days=3650
    openssl x509 -req -in "$name.csr" -key "$name-key.pem" -sha256 -days "$days" \
      -set_serial "$serial" -extfile "$name.ext" -extensions ext -out "$name.pem" 2>/dev/null
  else
    openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer-key.pem" -sha256 \
      -days "$days" -set_serial "$serial" -extfile "$name.ext" -extensions ext -out "$name.pem" 2>/dev/null
  fi || die "openssl x509 failed for $name"
  rm -f "$name.csr" "$name.ext"
}

certs_valid() {
  local f
  for f in ca ca-key server server-key client client-key untrusted-ca untrusted-ca-key \
    untrusted-server untrusted-server-key; do
    [ -s "$SECURE/$f.pem" ] || return 1
  done
  for f in ca server client untrusted-ca untrusted-server; do
    openssl x509 -checkend 604800 -noout -in "$SECURE/$f.pem" >/dev/null || return 1
  done
  openssl verify -CAfile "$SECURE/ca.pem" "$SECURE/server.pem" "$SECURE/client.pem" >/dev/null 2>&1 &&
    openssl verify -CAfile "$SECURE/untrusted-ca.pem" "$SECURE/untrusted-server.pem" >/dev/null 2>&1
}

# rustls is strict: CAs are v3 with CA:TRUE and keyCertSign, leaves carry SANs and an EKU and
# are not CAs. The untrusted pair has the same names as the server but another CA, for tests of
# "untrusted certificate" failures.
make_certs() {
  mkdir -p "$SECURE"
  if certs_valid; then log "certificates: reusing $SECURE/*.pem"; return 0; fi
  log "making certificates under $SECURE (EC P-256, SHA-256)"
  # The TLS services read them at start: new certificates need new processes.
  stop_proxy secure_kafka_mtls "$SECURE/kafka-mtls-proxy.pid"
  stop_proxy secure_kafka "$SECURE/kafka-proxy.pid"
  stop_pid "secure redis" "$SECURE/redis.pid"
  local ca_ext='basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash'
  local server_ext='basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid'
  local client_ext='basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:tributary-client
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid'
  (
    cd "$SECURE" || exit 1
    rm -f ./*.pem
    sign_cert ca "/O=Tributary local stack/CN=Tributary local CA" "$ca_ext" self
    sign_cert server "/O=Tributary local stack/CN=localhost" "$server_ext" ca
    sign_cert client "/O=Tributary local stack/CN=tributary-client" "$client_ext" ca
    sign_cert untrusted-ca "/O=Untrusted/CN=Untrusted CA" "$ca_ext" self
    sign_cert untrusted-server "/O=Untrusted/CN=localhost" "$server_ext" untrusted-ca
  )
  certs_valid || die "the certificates under $SECURE do not verify (openssl verify)"
}

# ---- Kafka: Tansu with SASL behind TLS proxies ---------------------------------------------

# tls_ok PORT [openssl s_client options]: a TLS handshake with the port verifies against our CA.
tls_ok() {
  local port=$1; shift
  openssl s_client -connect "127.0.0.1:$port" -servername localhost -verify_return_error \
    -verify_ip 127.0.0.1 -CAfile "$SECURE/ca.pem" "$@" </dev/null >/dev/null 2>&1
}
secure_kafka_internal_healthy() { port_open "$SECURE_KAFKA_INTERNAL_PORT"; }
secure_kafka_healthy() { tls_ok "$SECURE_KAFKA_PORT"; }
secure_kafka_mtls_healthy() {
  tls_ok "$SECURE_KAFKA_MTLS_PORT" -cert "$SECURE/client.pem" -key "$SECURE/client-key.pem"
}

# kafka_sasl_check PORT [kafka-check.py options]: SCRAM-SHA-512 login through a proxy.
kafka_sasl_check() {
  local port=$1; shift
  python3 "$ROOT/infra/kafka-check.py" --bootstrap "127.0.0.1:$port" --ca "$SECURE/ca.pem" \
    --username "$SECURE_USER" --password-file "$SECURE/kafka-password" "$@"
}

# secure_tansu NAME PIDFILE [FLAGS]: the SASL broker (own SQLite store under $SECURE/tansu;
# Tansu takes the path relative to its working directory), advertising the TLS proxy's port.
secure_tansu() {
  local name=$1 pidfile=$2; shift 2
  (cd "$SECURE/tansu" && START_LOG_DIR=$SECURE start "$name" "$pidfile" secure_kafka_internal_healthy \
    "$SECURE_KAFKA_INTERNAL_PORT" "$TANSU_BIN" broker --storage-engine sqlite://tansu.db \
    --listener-url "tcp://127.0.0.1:$SECURE_KAFKA_INTERNAL_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$SECURE_KAFKA_PORT" "$@")
}

# SCRAM users are created through the Kafka API (AlterUserScramCredentials), which Tansu only
# accepts while it runs WITHOUT --authentication: a one-off broker creates (upserts) the user
# in the store, then the real one starts with it. The marker holds a hash of the credential, so
# a new password file provisions again. (`tansu user create` takes the password as an argument:
# it shows in `ps` for that moment.)
#
# Tansu 0.6's SASL, as observed (tests should know):
#   - SCRAM-SHA-512/256 only; a SaslHandshake for PLAIN or GSSAPI closes the connection (no
#     UNSUPPORTED_SASL_MECHANISM answer).
#   - a wrong password or unknown user is reported only inside the SCRAM server-final message
#     (`e=invalid-proof`, `e=unknown-user`) with error code 0; librdkafka checks it and fails,
#     but the broker itself then treats the connection as authenticated.
#   - a request other than ApiVersions/SaslHandshake/SaslAuthenticate before login closes the
#     connection (a client without SASL sees disconnects, not an auth error).
#   - SaslAuthenticate v1 answers session_lifetime_ms=60000 and re-authentication on the same
#     connection fails (UNSUPPORTED_SASL_MECHANISM): librdkafka >= 2.2 re-authenticates at 90%
#     of the lifetime, so each connection fails with _AUTHENTICATION after ~54 s and reconnects.
#     `python3 infra/kafka-check.py ... --reauth` shows it.
provision_scram_user() {
  local pass=$1 marker=$SECURE/tansu/scram-user want
  want=$(printf '%s:%s' "$SECURE_USER" "$pass" | sha256sum | cut -d' ' -f1)
  [ -f "$SECURE/tansu/tansu.db" ] && [ "$(cat "$marker" 2>/dev/null)" = "$want" ] && return 0
  stop_pid secure_kafka_internal "$SECURE/kafka-internal.pid"
  port_open "$SECURE_KAFKA_INTERNAL_PORT" &&
    die "port $SECURE_KAFKA_INTERNAL_PORT is taken by a process this stack did not start; set TRIBUTARY_SECURE_KAFKA_INTERNAL_PORT"
  log "creating the SCRAM-SHA-512 user $SECURE_USER (a one-off broker without --authentication)"
  secure_tansu secure_kafka_setup "$SECURE/kafka-setup.pid"
  local ok=1
  "$TANSU_BIN" user create --broker "tcp://127.0.0.1:$SECURE_KAFKA_INTERNAL_PORT" \
    --mechanism scram512 "$SECURE_USER" "$pass" >"$SECURE/kafka-user.log" 2>&1 || ok=0
  stop_pid secure_kafka_setup "$SECURE/kafka-setup.pid"
  [ "$ok" = 1 ] || { cat "$SECURE/kafka-user.log" >&2; die "tansu user create failed (log: $SECURE/kafka-user.log)"; }
  echo "$want" >"$marker"
}

# The proxy's children (one per connection, socat `fork`) are stopped with it.
stop_proxy() {
  if pid_alive "$2"; then pkill -TERM -P "$(cat "$2")" 2>/dev/null || true; fi
  stop_pid "$1" "$2"
}

secure_kafka_up() {
  [ -x "$TANSU_BIN" ] || die "tansu is not installed at $TANSU_BIN"
  mkdir -p "$SECURE/tansu"
  local pass; pass=$(secret "$SECURE/kafka-password")
  provision_scram_user "$pass"
  secure_tansu secure_kafka_internal "$SECURE/kafka-internal.pid" --authentication
  index_tansu "$SECURE/tansu/tansu.db"
  # Server TLS: Tansu advertises this port, so every client connection goes through it.
  START_LOG_DIR=$SECURE start secure_kafka "$SECURE/kafka-proxy.pid" secure_kafka_healthy \
    "$SECURE_KAFKA_PORT" socat \
    "OPENSSL-LISTEN:$SECURE_KAFKA_PORT,bind=127.0.0.1,reuseaddr,fork,cert=$SECURE/server.pem,key=$SECURE/server-key.pem,verify=0" \
    "TCP:127.0.0.1:$SECURE_KAFKA_INTERNAL_PORT"
  # Mutual TLS: a client certificate signed by our CA is required. It forwards to the same
  # broker, whose metadata advertises the server-TLS port above (Tansu 0.6 has one advertised
  # listener): a client bootstrapping here is checked here, then reconnects to that port.
  START_LOG_DIR=$SECURE start secure_kafka_mtls "$SECURE/kafka-mtls-proxy.pid" secure_kafka_mtls_healthy \
    "$SECURE_KAFKA_MTLS_PORT" socat \
    "OPENSSL-LISTEN:$SECURE_KAFKA_MTLS_PORT,bind=127.0.0.1,reuseaddr,fork,cert=$SECURE/server.pem,key=$SECURE/server-key.pem,cafile=$SECURE/ca.pem,verify=1" \
    "TCP:127.0.0.1:$SECURE_KAFKA_INTERNAL_PORT"
  wait_for "kafka SASL login (SCRAM-SHA-512 through 127.0.0.1:$SECURE_KAFKA_PORT)" 30 kafka_sasl_check "$SECURE_KAFKA_PORT" ||
    { kafka_sasl_check "$SECURE_KAFKA_PORT" || true; die "SCRAM-SHA-512 login through the TLS proxy failed (logs: $SECURE/secure_kafka*.log)"; }
  wait_for "kafka SASL login (mutual TLS through 127.0.0.1:$SECURE_KAFKA_MTLS_PORT)" 30 kafka_sasl_check "$SECURE_KAFKA_MTLS_PORT" \
    --cert "$SECURE/client.pem" --key "$SECURE/client-key.pem" ||
    die "SCRAM-SHA-512 login through the mutual-TLS proxy failed (log: $SECURE/secure_kafka_mtls.log)"
}

# ---- Redis with TLS and ACLs ---------------------------------------------------------------

secure_redis_cli() {
  REDISCLI_AUTH=$(cat "$SECURE/redis-password") redis-cli --tls --cacert "$SECURE/ca.pem" \
    -h 127.0.0.1 -p "$SECURE_REDIS_PORT" --user "$SECURE_USER" --no-auth-warning "$@"
}
secure_redis_healthy() { [ "$(secure_redis_cli ping 2>/dev/null)" = PONG ]; }

secure_redis_up() {
  local pass; pass=$(secret "$SECURE/redis-password")
  mkdir -p "$SECURE/redis"
  # A config file (mode 600) rather than arguments keeps the password out of `ps`.
  (umask 077 && cat >"$SECURE/redis.conf" <<EOF
bind 127.0.0.1
port 0
tls-port $SECURE_REDIS_PORT
tls-cert-file $SECURE/server.pem
tls-key-file $SECURE/server-key.pem
tls-ca-cert-file $SECURE/ca.pem
tls-auth-clients optional
save ""
appendonly no
maxmemory-policy noeviction
daemonize yes
pidfile $SECURE/redis.pid
logfile $SECURE/redis.log
dir $SECURE/redis
user default off
user $SECURE_USER on >$pass ~* &* +@all
EOF
  ) || die "cannot write $SECURE/redis.conf"
  if pid_alive "$SECURE/redis.pid" && ! secure_redis_healthy; then
    log "secure redis does not accept the current password file: restarting it"
    stop_pid "secure redis" "$SECURE/redis.pid"
  fi
  if pid_alive "$SECURE/redis.pid"; then
    log "secure redis already running (pid $(cat "$SECURE/redis.pid"), TLS port $SECURE_REDIS_PORT)"
  elif port_open "$SECURE_REDIS_PORT"; then
    wait_for "secure redis" 5 secure_redis_healthy ||
      die "port $SECURE_REDIS_PORT is taken by something that is not this stack's TLS redis; set TRIBUTARY_SECURE_REDIS_PORT"
    log "secure redis: reusing the server already on port $SECURE_REDIS_PORT"
  else
    log "starting secure redis (TLS, ACL user $SECURE_USER) on 127.0.0.1:$SECURE_REDIS_PORT"
    redis-server "$SECURE/redis.conf" || die "redis-server failed to start (log: $SECURE/redis.log)"
    wait_for "secure redis" 30 secure_redis_healthy ||
      { tail -20 "$SECURE/redis.log" >&2 || true; die "secure redis did not answer PING over TLS on port $SECURE_REDIS_PORT (log: $SECURE/redis.log)"; }
  fi
}

# ---- Redis Cluster -------------------------------------------------------------------------

node_cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

# Healthy: every node says cluster_state:ok and knows all 6, no node is flagged failed, there
# are 3 masters and 3 replicas, and every replica is in sync (so a failover a test provokes
# right after `up` has a candidate).
cluster_healthy() {
  local port nodes
  for port in $CLUSTER_PORTS; do
    node_cli "$port" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' || return 1
    node_cli "$port" cluster info | tr -d '\r' | grep -qx 'cluster_known_nodes:6' || return 1
    node_cli "$port" info replication | tr -d '\r' | grep -q '^master_link_status:down' && return 1
  done
  nodes=$(node_cli "$CLUSTER_PORT" cluster nodes) || return 1
  grep -q 'fail' <<<"$nodes" && return 1
  [ "$(awk '$3 ~ /master/' <<<"$nodes" | wc -l)" = 3 ] && [ "$(awk '$3 ~ /slave/' <<<"$nodes" | wc -l)" = 3 ]
}

# Plaintext, no auth. DEBUG is allowed from loopback (tests crash a master with DEBUG SEGFAULT);
# replicas sync at once (no diskless delay) so `up` after a failover is quick.
cluster_node_start() {
  local port=$1 dir=$SECURE/cluster/$1
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 --save "" --appendonly no \
    --maxmemory-policy noeviction --repl-diskless-sync-delay 0 --enable-debug-command local \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" ||
    die "redis-server failed to start cluster node $port (log: $dir/redis.log)"
}

cluster_stop() {
  local port
  for port in $CLUSTER_PORTS; do stop_pid "cluster node $port" "$SECURE/cluster/$port/redis.pid"; done
}

cluster_nodes_answer() {
  local port
  for port in $CLUSTER_PORTS; do [ "$(node_cli "$port" ping 2>/dev/null)" = PONG ] || return 1; done
}

cluster_create() {
  local port addrs=() span="$CLUSTER_PORT-$((CLUSTER_PORT + 5))"
  cluster_stop
  rm -rf "$SECURE/cluster"
  for port in $CLUSTER_PORTS; do
    port_open "$port" && die "port $port is taken by a process this stack did not start; set TRIBUTARY_CLUSTER_REDIS_PORT"
    cluster_node_start "$port"
    addrs+=("127.0.0.1:$port")
  done
  wait_for "redis cluster nodes $span (PING)" 30 cluster_nodes_answer || die "the redis cluster nodes did not all answer PING (logs: $SECURE/cluster/*/redis.log)"
  log "creating the redis cluster ${addrs[*]} (3 masters, 1 replica each)"
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$SECURE/cluster-create.log" 2>&1 ||
    { tail -20 "$SECURE/cluster-create.log" >&2; die "redis-cli --cluster create failed (log: $SECURE/cluster-create.log)"; }
  touch "$SECURE/cluster/created"
}

cluster_up() {
  local port ours=0 foreign=0 broken=0 span="$CLUSTER_PORT-$((CLUSTER_PORT + 5))"
  [ -f "$SECURE/cluster/created" ] || broken=1
  for port in $CLUSTER_PORTS; do
    [ -s "$SECURE/cluster/$port/nodes.conf" ] || broken=1
    if pid_alive "$SECURE/cluster/$port/redis.pid"; then ours=$((ours + 1))
    elif port_open "$port"; then foreign=$((foreign + 1)); fi
  done
  if [ "$foreign" -gt 0 ]; then
    [ "$ours" = 0 ] && wait_for "redis cluster" 5 cluster_healthy &&
      { log "redis cluster: reusing the cluster already on ports $span (not started by this stack)"; return 0; }
    die "ports $span are taken by something that is not this stack's redis cluster; set TRIBUTARY_CLUSTER_REDIS_PORT"
  fi
  if [ "$broken" = 1 ]; then
    [ -d "$SECURE/cluster" ] && log "redis cluster state is missing or incomplete: recreating it"
    cluster_create
  else
    # nodes.conf remembers the cluster: a node restarted after `down` or a crash rejoins it
    # (a master that was failed over comes back as a replica of its successor).
    for port in $CLUSTER_PORTS; do
      if pid_alive "$SECURE/cluster/$port/redis.pid"; then continue; fi
      log "starting redis cluster node 127.0.0.1:$port"
      cluster_node_start "$port"
    done
  fi
  if ! wait_for "redis cluster ($span, 3 masters + 3 replicas)" 60 cluster_healthy; then
    [ "$broken" = 1 ] && { node_cli "$CLUSTER_PORT" cluster nodes >&2 || true; die "the new redis cluster did not reach cluster_state:ok"; }
    log "the redis cluster did not recover within 60 s: recreating it (its data is lost)"
    cluster_create
    wait_for "redis cluster" 60 cluster_healthy || die "the recreated redis cluster did not reach cluster_state:ok"
  fi
}

# ---- up / down / status / env --------------------------------------------------------------

secure_up() {
  install_secure
  make_certs
  secure_kafka_up
  secure_redis_up
  cluster_up
}

secure_down() {
  stop_proxy secure_kafka_mtls "$SECURE/kafka-mtls-proxy.pid"
  stop_proxy secure_kafka "$SECURE/kafka-proxy.pid"
  stop_pid secure_kafka_internal "$SECURE/kafka-internal.pid"
  stop_pid secure_kafka_setup "$SECURE/kafka-setup.pid"
  stop_pid "secure redis" "$SECURE/redis.pid"
  cluster_stop
}

secure_status() {
  [ -d "$SECURE" ] || return 0
  local line svc name port health pidfile
  for svc in "kafka-sasl:$SECURE_KAFKA_INTERNAL_PORT:secure_kafka_internal_healthy:kafka-internal" \
    "kafka-tls:$SECURE_KAFKA_PORT:secure_kafka_healthy:kafka-proxy" \
    "kafka-mtls:$SECURE_KAFKA_MTLS_PORT:secure_kafka_mtls_healthy:kafka-mtls-proxy" \
    "redis-tls:$SECURE_REDIS_PORT:secure_redis_healthy:redis"; do
    IFS=: read -r name port health pidfile <<<"$svc"
    line=$(svc_line "$health" "$SECURE/$pidfile.pid")
    printf '%-11s 127.0.0.1:%-6s %s\n' "$name" "$port" "$line"
  done
  for port in $CLUSTER_PORTS; do
    if node_cli "$port" ping >/dev/null 2>&1; then
      line="$(node_cli "$port" role 2>/dev/null | head -1), $(node_cli "$port" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:')"
      if pid_alive "$SECURE/cluster/$port/redis.pid"; then line="up (pid $(cat "$SECURE/cluster/$port/redis.pid")) $line"; else line="up (not started by this stack) $line"; fi
    else
      line=down
    fi
    printf '%-11s 127.0.0.1:%-6s %s\n' cluster "$port" "$line"
  done
}

secure_status_ports() {
  [ -d "$SECURE" ] || return 0
  printf 'secure ports: TRIBUTARY_SECURE_KAFKA_INTERNAL_PORT=%s TRIBUTARY_SECURE_KAFKA_PORT=%s TRIBUTARY_SECURE_KAFKA_MTLS_PORT=%s\n' \
    "$SECURE_KAFKA_INTERNAL_PORT" "$SECURE_KAFKA_PORT" "$SECURE_KAFKA_MTLS_PORT"
  printf '              TRIBUTARY_SECURE_REDIS_PORT=%s TRIBUTARY_CLUSTER_REDIS_PORT=%s (defaults 19093, 19094, 19095, 16380, 17001)\n' \
    "$SECURE_REDIS_PORT" "$CLUSTER_PORT"
}

# Printed by `infra/stack.sh env` once `up --secure` has made the state.
print_secure_env() {
  if [ -s "$SECURE/ca.pem" ]; then
    cat <<EOF
export TRIBUTARY_SECURE_CA=$SECURE/ca.pem
export TRIBUTARY_SECURE_CERT=$SECURE/server.pem
export TRIBUTARY_SECURE_KEY=$SECURE/server-key.pem
export TRIBUTARY_SECURE_CLIENT_CERT=$SECURE/client.pem
export TRIBUTARY_SECURE_CLIENT_KEY=$SECURE/client-key.pem
export TRIBUTARY_SECURE_UNTRUSTED_CA=$SECURE/untrusted-ca.pem
export TRIBUTARY_SECURE_UNTRUSTED_CERT=$SECURE/untrusted-server.pem
export TRIBUTARY_SECURE_UNTRUSTED_KEY=$SECURE/untrusted-server-key.pem
EOF
  fi
  if [ -s "$SECURE/kafka-password" ]; then
    cat <<EOF
export TRIBUTARY_SECURE_BROKERS=127.0.0.1:$SECURE_KAFKA_PORT
export TRIBUTARY_SECURE_MTLS_BROKERS=127.0.0.1:$SECURE_KAFKA_MTLS_PORT
export TRIBUTARY_SECURE_KAFKA_INTERNAL=127.0.0.1:$SECURE_KAFKA_INTERNAL_PORT
export TRIBUTARY_SECURE_SASL_USERNAME=$SECURE_USER
export TRIBUTARY_SECURE_SASL_PASSWORD=$(cat "$SECURE/kafka-password")
EOF
  fi
  if [ -s "$SECURE/redis-password" ]; then
    cat <<EOF
export TRIBUTARY_SECURE_REDIS_URL=rediss://127.0.0.1:$SECURE_REDIS_PORT/0
export TRIBUTARY_SECURE_REDIS_USERNAME=$SECURE_USER
export TRIBUTARY_SECURE_REDIS_PASSWORD=$(cat "$SECURE/redis-password")
EOF
  fi
  if [ -f "$SECURE/cluster/created" ]; then
    cat <<EOF
export TRIBUTARY_CLUSTER_REDIS_URL=redis://127.0.0.1:$CLUSTER_PORT
export TRIBUTARY_CLUSTER_REDIS_PORTS="$CLUSTER_PORTS"
EOF
  fi
}
