#!/usr/bin/env bash
# Read-only pgbench throughput: PostgreSQL direct vs. through pgcloak vs.
# through PgBouncer (session mode), all in one run on this machine.
#
# It starts its own PostgreSQL 15 cluster, loads `pgbench -i`, starts pgcloak
# and PgBouncer in front of it, runs `pgbench -S` in simple and prepared
# protocol modes against each target (interleaved, BENCH_ROUNDS times, median
# taken), prints a table and writes JSON to bench/results/. Everything it
# started is stopped and deleted on exit.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [20]     duration of each pgbench run
#   BENCH_ROUNDS [1]       rounds; each round runs every mode x target once
#   BENCH_SCALE [10]       pgbench -i scale factor
#   BENCH_CLIENTS [16]     pgbench -c
#   BENCH_JOBS [2]         pgbench -j
#   BENCH_WARMUP [5]       seconds of untimed direct warm-up (0 = none)
#   BENCH_TLS [0]          1 = clients use TLS to every target (sslmode=require)
#   BENCH_UPSTREAM [unix]  unix | tcp: how pgcloak and PgBouncer reach PostgreSQL
#   BENCH_MODES ["simple prepared"]
#   BENCH_PGCLOAK_AUTH [scram]  scram | passthrough: auth.mode of every pgcloak
#                          target. scram is what the PgBouncer target does
#                          (it terminates SCRAM with its userlist); with
#                          passthrough PostgreSQL authenticates every client
#                          through pgcloak and there is no pool
#   BENCH_PGCLOAK_POOL [1] 1 = upstream.pool on for every pgcloak target (needs
#                          BENCH_PGCLOAK_AUTH=scram), as PgBouncer's session
#                          pool keeps its server connections between clients
#   BENCH_TARGETS ["direct pgcloak pgbouncer"]; also pgcloak-nopool (pgcloak
#                          with upstream.pool off), audit-batched and
#                          audit-strict: pgcloak with the audit trail on
#                          (docs/audit.md), each its own process, so
#                          "direct pgcloak audit-batched audit-strict" measures
#                          what auditing costs in one run
#                          metrics-off, metrics-scraped: pgcloak with
#                          metrics.enabled false, and with /metrics fetched
#                          once a second during the run; "pgcloak" itself
#                          runs the default config (metrics on, not scraped)
#   BENCH_AB [""]          in-process A/B measurements, after the targets'
#                          runs: "scrape" (one pgcloak; /metrics fetched once
#                          a second in "on" blocks, not at all in "off"
#                          blocks) and/or "detection" (one pgcloak that
#                          protects pgbench_accounts.abalance, with the
#                          detection rules of bench/masking_compare.sh; SIGHUP
#                          switches them between "on" and `enabled: false`).
#                          One pgbench run per mode, the feature switched
#                          every BENCH_AB_BLOCK seconds; bench/ab_blocks.py
#                          compares the blocks. BENCH_TARGETS may be empty
#   BENCH_AB_SECONDS [240] length of each A/B run
#   BENCH_AB_BLOCK [5]     seconds per block (the first second of each is not
#                          counted: the switch settles)
#   BENCH_AUDIT_DIR        where audit targets write [the work directory];
#                          put it on the disk you would use in production:
#                          strict durability is an fsync per group commit
#   BENCH_PGCLOAK_THREADS [0]  pgcloak io threads (0 = cores)
#   BENCH_RESULTS_FILE     JSON output [bench/results/pgbench-<UTC time>.json]
#   BENCH_KEEP [0]         1 = keep the work directory (logs) after exit
#   BENCH_HOLD [0]         1 = measure nothing: start the targets, print how
#                          to reach each (port, pid) and wait until
#                          interrupted, for profiling with perf or strace
#   PGCLOAK_BIN            use this binary instead of building build/proxy/pgcloak
#   BENCH_SKIP_BUILD [0]   1 = do not build; use build/proxy/pgcloak as is
#
# Exit status: 0 when every run produced a tps figure, 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib/pgcluster.sh
source "$ROOT/deploy/lib/pgcluster.sh"

DURATION=${BENCH_SECONDS:-20}
ROUNDS=${BENCH_ROUNDS:-1}
SCALE=${BENCH_SCALE:-10}
CLIENTS=${BENCH_CLIENTS:-16}
JOBS=${BENCH_JOBS:-2}
WARMUP=${BENCH_WARMUP:-5}
TLS=${BENCH_TLS:-0}
UPSTREAM=${BENCH_UPSTREAM:-unix}
read -r -a MODES <<<"${BENCH_MODES:-simple prepared}"
read -r -a TARGETS <<<"${BENCH_TARGETS-direct pgcloak pgbouncer}"
read -r -a AB_KINDS <<<"${BENCH_AB:-}"
AB_SECONDS=${BENCH_AB_SECONDS:-240}
AB_BLOCK=${BENCH_AB_BLOCK:-5}
PGCLOAK_AUTH=${BENCH_PGCLOAK_AUTH:-scram}
PGCLOAK_POOL=${BENCH_PGCLOAK_POOL:-1}
PGCLOAK_THREADS=${BENCH_PGCLOAK_THREADS:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_FILE=${BENCH_RESULTS_FILE:-$ROOT/bench/results/pgbench-$STAMP.json}

BENCH_USER=bench
BENCH_DB=bench
BENCH_PASSWORD=bench-pw

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

for v in DURATION ROUNDS SCALE CLIENTS JOBS WARMUP PGCLOAK_THREADS AB_SECONDS AB_BLOCK; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v} must be a non-negative integer"
done
((DURATION > 0 && ROUNDS > 0 && SCALE > 0 && CLIENTS > 0 && JOBS > 0)) ||
  die "BENCH_SECONDS, BENCH_ROUNDS, BENCH_SCALE, BENCH_CLIENTS and BENCH_JOBS must be positive"
[[ $TLS == 0 || $TLS == 1 ]] || die "BENCH_TLS must be 0 or 1"
[[ $UPSTREAM == unix || $UPSTREAM == tcp ]] || die "BENCH_UPSTREAM must be unix or tcp"
[[ $PGCLOAK_AUTH == scram || $PGCLOAK_AUTH == passthrough ]] || die "BENCH_PGCLOAK_AUTH must be scram or passthrough"
[[ $PGCLOAK_POOL == 0 || $PGCLOAK_POOL == 1 ]] || die "BENCH_PGCLOAK_POOL must be 0 or 1"
[[ $PGCLOAK_POOL == 0 || $PGCLOAK_AUTH == scram ]] || die "BENCH_PGCLOAK_POOL=1 needs BENCH_PGCLOAK_AUTH=scram"
for m in "${MODES[@]}"; do
  [[ $m == simple || $m == extended || $m == prepared ]] || die "unknown mode $m"
done
for t in "${TARGETS[@]}"; do
  [[ $t == direct || $t == pgcloak || $t == pgcloak-nopool || $t == pgbouncer || $t == audit-batched ||
    $t == audit-strict ||
    $t == metrics-off || $t == metrics-scraped ]] || die "unknown target $t"
done
for k in "${AB_KINDS[@]}"; do
  [[ $k == scrape || $k == detection ]] || die "unknown BENCH_AB measurement $k (scrape, detection)"
done
((${#TARGETS[@]} > 0 || ${#AB_KINDS[@]} > 0)) || die "BENCH_TARGETS is empty and BENCH_AB is not set: nothing to measure"
((AB_BLOCK >= 3 && AB_SECONDS >= 6 * AB_BLOCK)) ||
  die "BENCH_AB_BLOCK must be at least 3 and BENCH_AB_SECONDS at least 6 blocks"
for tool in pgbench psql pgbouncer openssl python3 setpriv curl; do
  command -v "$tool" >/dev/null || die "$tool not found; run deploy/install-deps.sh"
done

# --- work directory and cleanup ----------------------------------------------

WORK=$(mktemp -d /tmp/pgcloak-bench.XXXXXX)
chmod 755 "$WORK" # the cluster's OS user must reach its subdirectories
PG_DIR=$WORK/pg
TLS_DIR=$WORK/tls
BOUNCER_DIR=$WORK/pgbouncer
PGCLOAK_PIDS=()
declare -A PROXY_PID # target -> pid, for CPU accounting
BOUNCER_PID=""
PGBENCH_PID=""

stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 10s, then SIGKILL
  local pid=$1 name=$2 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$name (pid $pid) ignored SIGTERM for 10s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$PGBENCH_PID" pgbench
  for p in "${SCRAPER_PIDS[@]}"; do stop_pid "$p" scraper; done
  for p in "${PGCLOAK_PIDS[@]}"; do stop_pid "$p" pgcloak; done
  stop_pid "$BOUNCER_PID" pgbouncer
  # Belt and braces: whatever PgBouncer's own pid file names, if it is ours.
  local bpid
  bpid=$(cat "$BOUNCER_DIR/pgbouncer.pid" 2>/dev/null || true)
  if [[ $bpid =~ ^[0-9]+$ ]] && ps -p "$bpid" -o args= 2>/dev/null | grep -qF "$BOUNCER_DIR/"; then
    stop_pid "$bpid" pgbouncer
  fi
  pgc_stop "$PG_DIR" 30 || true
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the last lines of a log file to stderr, then dies.
die_with_log() {
  local file=$1
  shift
  [[ -f $file ]] && tail -n 20 "$file" >&2
  die "$*"
}

# Prefix that runs a command as the cluster's OS user. setpriv execs, so $!
# of a backgrounded "${AS_OWNER[@]}" cmd & is the command's own PID (a shell
# function run with & would add a subshell in between).
AS_OWNER=()
if [[ $(id -u) -eq 0 ]]; then
  AS_OWNER=(setpriv --reuid="$PGC_OS_USER" --regid="$PGC_OS_USER" --init-groups --)
fi

# --- pgcloak binary ----------------------------------------------------------

if [[ -n ${PGCLOAK_BIN:-} ]]; then
  [[ -x $PGCLOAK_BIN ]] || die "PGCLOAK_BIN=$PGCLOAK_BIN is not executable"
elif [[ ${BENCH_SKIP_BUILD:-0} == 1 ]]; then
  PGCLOAK_BIN=$ROOT/build/proxy/pgcloak
  [[ -x $PGCLOAK_BIN ]] || die "$PGCLOAK_BIN missing and BENCH_SKIP_BUILD=1"
else
  PGCLOAK_BIN=$ROOT/build/proxy/pgcloak
  log "building pgcloak (Release, build/)"
  cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null ||
    die "cmake configure failed"
  cmake --build "$ROOT/build" --target pgcloak >/dev/null || die "building pgcloak failed"
fi
# build/proxy/pgcloak -> build/CMakeCache.txt
if grep -qs '^CMAKE_BUILD_TYPE:STRING=Release$' "$(dirname "$PGCLOAK_BIN")/../CMakeCache.txt"; then
  BUILD_TYPE=Release
else
  BUILD_TYPE=unknown
  log "warning: $PGCLOAK_BIN may not be a Release build"
fi

# --- PostgreSQL --------------------------------------------------------------

PG_PORT=$(pgc_free_port)
PGCLOAK_PORT=$(pgc_free_port)
BOUNCER_PORT=$(pgc_free_port)
while [[ $PGCLOAK_PORT == "$PG_PORT" ]]; do PGCLOAK_PORT=$(pgc_free_port); done
while [[ $BOUNCER_PORT == "$PG_PORT" || $BOUNCER_PORT == "$PGCLOAK_PORT" ]]; do
  BOUNCER_PORT=$(pgc_free_port)
done
# Distinct from the ports above (pgc_free_port asks the kernel, which may
# hand out the same free port twice before anything binds it).
taken=" $PG_PORT $PGCLOAK_PORT $BOUNCER_PORT "
next_port() {
  local p
  p=$(pgc_free_port)
  while [[ $taken == *" $p "* ]]; do p=$(pgc_free_port); done
  echo "$p"
}
AUDIT_BATCHED_PORT=$(next_port)
taken+="$AUDIT_BATCHED_PORT "
AUDIT_STRICT_PORT=$(next_port)
taken+="$AUDIT_STRICT_PORT "
METRICS_OFF_PORT=$(next_port)
taken+="$METRICS_OFF_PORT "
METRICS_SCRAPED_PORT=$(next_port)
taken+="$METRICS_SCRAPED_PORT "
NOPOOL_PORT=$(next_port)
taken+="$NOPOOL_PORT "
AB_SCRAPE_PORT=$(next_port)
taken+="$AB_SCRAPE_PORT "
AB_DETECTION_PORT=$(next_port)
taken+="$AB_DETECTION_PORT "
# Every pgcloak serves metrics on its own port (the default 9930 would be
# shared by all of them).
declare -A METRICS_PORT
for t in pgcloak pgcloak-nopool audit-batched audit-strict metrics-scraped ab-scrape ab-detection; do
  METRICS_PORT[$t]=$(next_port)
  taken+="${METRICS_PORT[$t]} "
done
SCRAPER_PIDS=()

pgc_gen_certs "$TLS_DIR"
ssl_opt=()
((TLS)) && ssl_opt=(--ssl "$TLS_DIR")
log "initialising PostgreSQL 15 in $PG_DIR (port $PG_PORT)"
# Durability is irrelevant for a read-only benchmark; keep background work
# (checkpoints, autovacuum) from adding noise.
pgc_init "$PG_DIR" "$PG_PORT" "${ssl_opt[@]}" \
  --conf "shared_buffers = 256MB" \
  --conf "max_connections = 200" \
  --conf "fsync = off" \
  --conf "synchronous_commit = off" \
  --conf "full_page_writes = off" \
  --conf "checkpoint_timeout = 1h" \
  --conf "max_wal_size = 4GB" \
  --conf "autovacuum = off" \
  --conf "jit = off" \
  --conf "log_min_messages = warning"
pgc_start "$PG_DIR" 60
pgc_psql "$PG_DIR" -c "CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PASSWORD'" \
  -c "CREATE DATABASE $BENCH_DB OWNER $BENCH_USER" >/dev/null
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -h "$PG_DIR" -p "$PG_PORT" -U "$BENCH_USER" "$BENCH_DB" \
  >"$WORK/pgbench-init.log" 2>&1 || die_with_log "$WORK/pgbench-init.log" "pgbench -i failed"

if [[ $UPSTREAM == unix ]]; then UP_HOST=$PG_DIR; else UP_HOST=127.0.0.1; fi

# auth.mode scram: pgcloak looks SCRAM verifiers up over its catalog login
# with the shop fixture's get_auth (deploy/fixture/shop.sql), as PgBouncer
# does with auth_query.
LOOKUP_USER=pgcloak_lookup
LOOKUP_PASSWORD=lookup-pw
if [[ $PGCLOAK_AUTH == scram ]]; then
  pgc_psql "$PG_DIR" -d "$BENCH_DB" >/dev/null <<SQL || die "cannot create pgcloak's verifier lookup"
CREATE ROLE $LOOKUP_USER LOGIN PASSWORD '$LOOKUP_PASSWORD';
CREATE SCHEMA pgcloak;
REVOKE ALL ON SCHEMA pgcloak FROM PUBLIC;
GRANT USAGE ON SCHEMA pgcloak TO $LOOKUP_USER;
CREATE FUNCTION pgcloak.get_auth(p_usename text) RETURNS TABLE (usename name, passwd text)
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS \$\$ SELECT a.rolname, a.rolpassword FROM pg_catalog.pg_authid AS a
        WHERE a.rolname = p_usename AND a.rolcanlogin AND NOT a.rolsuper \$\$;
REVOKE ALL ON FUNCTION pgcloak.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgcloak.get_auth(text) TO $LOOKUP_USER;
SQL
fi

# --- pgcloak -----------------------------------------------------------------

# start_pgcloak NAME PORT [DURABILITY]: one pgcloak; with DURABILITY
# (batched | strict) its audit trail is on. Metrics are on unless NAME is
# metrics-off.
start_pgcloak() {
  local name=$1 port=$2 durability=${3:-}
  local tls_cert="" tls_key="" conf=$WORK/$name.yaml pool=false level=warn
  # The detection A/B counts pgcloak's reload messages (info).
  [[ $name == ab-detection ]] && level=info
  [[ $PGCLOAK_POOL == 1 && $name != pgcloak-nopool ]] && pool=true
  if ((TLS)); then tls_cert=$TLS_DIR/server.crt; tls_key=$TLS_DIR/server.key; fi
  cat >"$conf" <<EOF
listen: ["127.0.0.1:$port"]
unix_socket_dir: ""
threads: $PGCLOAK_THREADS
max_connections: 1000
tls:
  cert_file: "$tls_cert"
  key_file: "$tls_key"
  require: false
  client_ca_file: ""
  min_version: "1.2"
upstream:
  host: "$UP_HOST"
  port: $PG_PORT
  sslmode: disable
  sslrootcert: ""
  connect_timeout: 5s
  pool:
    enabled: $pool
auth:
  mode: $PGCLOAK_AUTH
timeouts:
  handshake: 10s
  client_idle: 0s
  shutdown_grace: 5s
log:
  level: $level
EOF
  if [[ $PGCLOAK_AUTH == scram ]]; then
    printf 'catalog:\n  user: %s\n  password: %s\n  dbname: %s\n' "$LOOKUP_USER" "$LOOKUP_PASSWORD" \
      "$BENCH_DB" >>"$conf"
  fi
  if [[ $name == ab-detection ]]; then detection_config >>"$conf"; fi
  if [[ $name == metrics-off ]]; then
    printf 'metrics:\n  enabled: false\n' >>"$conf"
  else
    printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "${METRICS_PORT[$name]}" >>"$conf"
  fi
  if [[ -n $durability ]]; then
    local dir=${BENCH_AUDIT_DIR:-$WORK}/audit-$name
    rm -rf "$dir" && mkdir -p "$dir"
    openssl rand -hex 32 >"$dir/audit.key"
    cat >>"$conf" <<EOF
audit:
  durability: $durability
  key_file: "$dir/audit.key"
  file:
    path: "$dir/audit.jsonl"
EOF
  fi
  "$PGCLOAK_BIN" --check-config "$conf" >"$WORK/$name.log" 2>&1 ||
    die_with_log "$WORK/$name.log" "pgcloak ($name) rejected its configuration"
  "$PGCLOAK_BIN" --config "$conf" >>"$WORK/$name.log" 2>&1 </dev/null &
  PGCLOAK_PIDS+=($!)
  PROXY_PID[$name]=$!
  pgc_wait_tcp 127.0.0.1 "$port" 15 ||
    die_with_log "$WORK/$name.log" "pgcloak ($name) did not listen on $port within 15s"
}

# The detection A/B's pgcloak: pgbench_accounts.abalance is protected data
# (the bench login sees it unmasked), so every `pgbench -S` statement reads
# protected data and goes through every detector. The rules are those of
# bench/masking_compare.sh's pgcloak-detect, scoped to the bench login, with
# limits its own traffic never reaches: window_volume and first_access only
# learn (warm-up 1 day), off_hours allows the whole week, slow_drip's limit
# is above the number of distinct keys a run can make (one per account and
# protocol), probing sees no denials, and service_account watches another
# login. The file the process starts with has detection on; the A/B
# switches `enabled`.
detection_config() {
  local drip_max=$((2 * 100000 * SCALE + 1000))
  cat <<EOF
masking:
  categories: [account_balance]
  protected_columns:
    - {column: public.pgbench_accounts.abalance, category: account_balance}
  policies:
    - {name: bench, roles: [$BENCH_USER], default: allow}
detection:
  enabled: true
  state_file: "$WORK/ab-detection-state.json"
  save_interval: 60s
  time_zone: UTC
  rules:
    - {name: bulk, detector: statement_volume, roles: [$BENCH_USER], max_rows: 1000, action: cancel}
    - {name: volume-1m, detector: window_volume, window: 1m, sensitivity: 6, floor_rows: 2000, warmup: 1d}
    - {name: drip, detector: slow_drip, window: 10m, max_distinct: $drip_max}
    - {name: new-table, detector: first_access, warmup: 1d}
    - name: night
      detector: off_hours
      roles: [$BENCH_USER]
      cooldown: 1h
      allowed:
        - {days: [mon, tue, wed, thu, fri, sat, sun], from: "00:00", to: "24:00"}
    - {name: export, detector: bulk_export, copy_to: true, full_scan: true, min_rows: 1000}
    - {name: probe, detector: probing, roles: [$BENCH_USER], window: 5m, max_denials: 5, max_predicates: 30}
    - name: app-misuse
      detector: service_account
      roles: [$LOOKUP_USER]
      clients: [10.0.1.0/24]
      application_names: [shop-web]
EOF
}

# --- PgBouncer ---------------------------------------------------------------

start_pgbouncer() {
  mkdir -p "$BOUNCER_DIR"
  local tls_lines="client_tls_sslmode = disable"
  if ((TLS)); then
    cp "$TLS_DIR/server.crt" "$TLS_DIR/server.key" "$BOUNCER_DIR/"
    tls_lines="client_tls_sslmode = require
client_tls_cert_file = $BOUNCER_DIR/server.crt
client_tls_key_file = $BOUNCER_DIR/server.key"
  fi
  # A plaintext password in the userlist lets PgBouncer do SCRAM both with
  # the client and, over TCP, with PostgreSQL.
  printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PASSWORD" >"$BOUNCER_DIR/userlist.txt"
  cat >"$BOUNCER_DIR/pgbouncer.ini" <<EOF
[databases]
$BENCH_DB = host=$UP_HOST port=$PG_PORT dbname=$BENCH_DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $BOUNCER_DIR/userlist.txt
pool_mode = session
max_client_conn = 1000
default_pool_size = $((CLIENTS + 8))
max_db_connections = 0
server_tls_sslmode = disable
$tls_lines
logfile = $BOUNCER_DIR/pgbouncer.log
pidfile = $BOUNCER_DIR/pgbouncer.pid
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
EOF
  chmod 600 "$BOUNCER_DIR/userlist.txt" "$BOUNCER_DIR"/*.key 2>/dev/null || true
  if [[ $(id -u) -eq 0 ]]; then chown -R "$PGC_OS_USER:" "$BOUNCER_DIR"; fi
  # PgBouncer refuses to run as root.
  "${AS_OWNER[@]}" pgbouncer "$BOUNCER_DIR/pgbouncer.ini" >"$BOUNCER_DIR/stderr.log" 2>&1 </dev/null &
  BOUNCER_PID=$!
  PROXY_PID[pgbouncer]=$BOUNCER_PID
  pgc_wait_tcp 127.0.0.1 "$BOUNCER_PORT" 15 || {
    cat "$BOUNCER_DIR/stderr.log" >&2
    die_with_log "$BOUNCER_DIR/pgbouncer.log" "pgbouncer did not listen on $BOUNCER_PORT within 15s"
  }
}

target_port() {
  case $1 in
    direct) echo "$PG_PORT" ;;
    pgcloak) echo "$PGCLOAK_PORT" ;;
    pgcloak-nopool) echo "$NOPOOL_PORT" ;;
    pgbouncer) echo "$BOUNCER_PORT" ;;
    audit-batched) echo "$AUDIT_BATCHED_PORT" ;;
    audit-strict) echo "$AUDIT_STRICT_PORT" ;;
    metrics-off) echo "$METRICS_OFF_PORT" ;;
    metrics-scraped) echo "$METRICS_SCRAPED_PORT" ;;
    ab-scrape) echo "$AB_SCRAPE_PORT" ;;
    ab-detection) echo "$AB_DETECTION_PORT" ;;
  esac
}

# What Prometheus does to a target, once a second for as long as the
# benchmark runs: fetch the whole exposition over a kept-alive connection
# and check it is one (bench/scraper.py). With FLAG, only while that file
# exists (the scrape A/B). Its count of scrapes goes to LOG when it stops.
start_scraper() {
  local url=$1 flag=${2:-} out=${3:-/dev/stderr}
  python3 "$ROOT/bench/scraper.py" "$url" ${flag:+"$flag"} 2>"$out" &
  SCRAPER_PIDS+=($!)
}

SSLMODE=disable
((TLS)) && SSLMODE=require
export PGPASSWORD=$BENCH_PASSWORD PGSSLMODE=$SSLMODE PGCONNECT_TIMEOUT=10

for t in "${TARGETS[@]}"; do
  case $t in
    pgcloak) start_pgcloak pgcloak "$PGCLOAK_PORT" ;;
    pgcloak-nopool) start_pgcloak pgcloak-nopool "$NOPOOL_PORT" ;;
    pgbouncer) start_pgbouncer ;;
    audit-batched) start_pgcloak audit-batched "$AUDIT_BATCHED_PORT" batched ;;
    audit-strict) start_pgcloak audit-strict "$AUDIT_STRICT_PORT" strict ;;
    metrics-off) start_pgcloak metrics-off "$METRICS_OFF_PORT" ;;
    metrics-scraped)
      start_pgcloak metrics-scraped "$METRICS_SCRAPED_PORT"
      start_scraper "http://127.0.0.1:${METRICS_PORT[metrics-scraped]}/metrics"
      ;;
  esac
  out=$(timeout --foreground 30 psql -X -At -h 127.0.0.1 -p "$(target_port "$t")" -U "$BENCH_USER" \
    -d "$BENCH_DB" -c "SELECT count(*) FROM pgbench_branches" 2>&1) && [[ $out == "$SCALE" ]] ||
    die "a test query through $t failed: $out"
done

for k in "${AB_KINDS[@]}"; do
  case $k in
    scrape)
      start_pgcloak ab-scrape "$AB_SCRAPE_PORT"
      start_scraper "http://127.0.0.1:${METRICS_PORT[ab-scrape]}/metrics" "$WORK/ab-scrape.flag" \
        "$WORK/ab-scraper.log"
      AB_SCRAPER_PID=$!
      ;;
    detection)
      [[ $PGCLOAK_AUTH == scram ]] || die "BENCH_AB=detection needs BENCH_PGCLOAK_AUTH=scram (masking loads the catalog)"
      start_pgcloak ab-detection "$AB_DETECTION_PORT"
      cp "$WORK/ab-detection.yaml" "$WORK/ab-detection.on.yaml"
      sed 's/^  enabled: true$/  enabled: false/' "$WORK/ab-detection.yaml" >"$WORK/ab-detection.off.yaml"
      grep -q '^  enabled: false$' "$WORK/ab-detection.off.yaml" || die "cannot write the detection-off configuration"
      "$PGCLOAK_BIN" --check-config "$WORK/ab-detection.off.yaml" >/dev/null 2>&1 ||
        die "pgcloak rejects the detection-off configuration"
      # Masking must be in force before measuring (the catalog loads in the
      # background): the protected column read unmasked, as policy bench says.
      for ((i = 0; i < 100; i++)); do
        grep -q 'masking catalog generation .*(1 protected)' "$WORK/ab-detection.log" && break
        sleep 0.1
      done
      grep -q 'masking catalog generation .*(1 protected)' "$WORK/ab-detection.log" ||
        die_with_log "$WORK/ab-detection.log" "ab-detection did not load its masking catalog (with pgbench_accounts protected) within 10s"
      ;;
  esac
  out=$(timeout --foreground 30 psql -X -At -h 127.0.0.1 -p "$(target_port "ab-$k")" -U "$BENCH_USER" \
    -d "$BENCH_DB" -c "SELECT abalance FROM pgbench_accounts WHERE aid = 1" 2>&1) && [[ $out == 0 ]] ||
    die "a test query through ab-$k failed: $out"
done

if [[ ${BENCH_HOLD:-0} == 1 ]]; then
  export PGPASSWORD
  log "holding (BENCH_HOLD=1); Ctrl-C or SIGTERM stops and cleans up"
  for t in "${TARGETS[@]}" "${AB_KINDS[@]/#/ab-}"; do
    [[ -n $t ]] || continue
    printf '%-16s port %-6s pid %s\n' "$t" "$(target_port "$t")" "${PROXY_PID[$t]:-postgres}"
  done
  printf 'e.g. PGPASSWORD=%s pgbench -S -n -c %s -j %s -T 20 -h 127.0.0.1 -p PORT -U %s %s\n' \
    "$BENCH_PASSWORD" "$CLIENTS" "$JOBS" "$BENCH_USER" "$BENCH_DB"
  while :; do sleep 3600 & wait $! || true; done
fi

# --- runs --------------------------------------------------------------------

CORES=$(nproc)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
PG_VERSION=$("$PGC_BINDIR/postgres" --version | sed 's/^postgres (PostgreSQL) //')
BOUNCER_VERSION=$(pgbouncer --version | head -n 1 | sed 's/^PgBouncer //')
PGCLOAK_VERSION=$("$PGCLOAK_BIN" --version 2>&1 | head -n 1 | sed "s/^pgcloak //" || true)
GIT_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
LOADAVG=$(cut -d' ' -f1 /proc/loadavg)

cat <<EOF
pgbench -S (read-only, scale $SCALE): $CLIENTS clients, $JOBS threads, ${DURATION}s per run, $ROUNDS round(s), median reported
client TLS: $( ((TLS)) && echo "on (sslmode=require) for every target" || echo off); pgcloak/PgBouncer -> PostgreSQL over $UPSTREAM$( [[ $UPSTREAM == unix ]] && echo " socket" || echo " 127.0.0.1"), plaintext
PostgreSQL $PG_VERSION, PgBouncer $BOUNCER_VERSION (session mode, auth_type scram-sha-256), pgcloak ${PGCLOAK_VERSION:-?} ($BUILD_TYPE, threads=$PGCLOAK_THREADS, auth.mode $PGCLOAK_AUTH, upstream.pool $( ((PGCLOAK_POOL)) && echo on || echo off))
host: $CORES cores ($CPU_MODEL), load average $LOADAVG before the runs
$( ((${#AB_KINDS[@]} > 0)) && echo "in-process A/B: ${AB_KINDS[*]}; ${AB_SECONDS}s per mode, the feature switched every ${AB_BLOCK}s")
NOTE: pgbench, PostgreSQL and the proxy all share these $CORES cores. pgbench
itself burns much of the CPU, and a proxy adds a process that competes with
PostgreSQL for it, so the ratios are a pessimistic bound for a deployment
where clients, proxy and database run on separate hosts.

EOF
if awk -v l="$LOADAVG" -v c="$CORES" 'BEGIN {exit !(l > c / 2)}'; then
  echo "WARNING: the machine is already busy (load $LOADAVG on $CORES cores); numbers will be noisy."
  echo
fi

RUNS_TSV=$WORK/runs.tsv # round mode target tps latency_ms failed ok proxy_cpu_us_per_tx pg_cpu_us_per_tx
CLK_TCK=$(getconf CLK_TCK)
# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU time all of PostgreSQL has used so far: the postmaster, its children
# that have exited (cutime/cstime, so backends of finished runs count) and
# those still running (a pooled backend lives across runs).
PG_POSTMASTER=$(head -n 1 "$PG_DIR/postmaster.pid")
pg_cpu_ticks() {
  local total child i
  # Backends of a run that just ended count once the postmaster has reaped
  # them (a zombie's own figures are gone); give it a moment.
  for ((i = 0; i < 40; i++)); do
    ps --ppid "$PG_POSTMASTER" -o stat= 2>/dev/null | grep -q '^Z' || break
    sleep 0.05
  done
  total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$PG_POSTMASTER/stat" 2>/dev/null || echo 0)
  for child in $(pgrep -P "$PG_POSTMASTER"); do
    total=$((total + $(cpu_ticks "$child")))
  done
  echo "$total"
}
: >"$RUNS_TSV"
RUN_TIMEOUT=$((DURATION + 60))
ANY_FAILED=0

# run_pgbench MODE TARGET SECONDS OUTFILE. pgbench runs in the background and
# we wait for it, because `wait` returns at once when SIGTERM/SIGINT arrive,
# so cleanup does not have to sit out the rest of a run.
run_pgbench() {
  timeout "$RUN_TIMEOUT" pgbench -n -S -M "$1" -c "$CLIENTS" -j "$JOBS" -T "$3" \
    -h 127.0.0.1 -p "$(target_port "$2")" -U "$BENCH_USER" "$BENCH_DB" >"$4" 2>&1 &
  PGBENCH_PID=$!
  local rc=0
  wait "$PGBENCH_PID" || rc=$?
  PGBENCH_PID=""
  return "$rc"
}

if ((WARMUP > 0)); then
  log "warm-up: ${WARMUP}s direct"
  run_pgbench simple direct "$WARMUP" "$WORK/pgbench-warmup.log" || true
fi

for ((round = 1; round <= ROUNDS; round++)); do
  for mode in "${MODES[@]}"; do
    for target in "${TARGETS[@]}"; do
      log "round $round/$ROUNDS: $mode -> $target"
      ok=1
      run_log=$WORK/pgbench-$round-$mode-$target.log
      ppid=${PROXY_PID[$target]:-}
      cpu0=0
      [[ -n $ppid ]] && cpu0=$(cpu_ticks "$ppid")
      pg0=$(pg_cpu_ticks)
      run_pgbench "$mode" "$target" "$DURATION" "$run_log" || ok=0
      cpu1=0
      [[ -n $ppid ]] && cpu1=$(cpu_ticks "$ppid")
      pg1=$(pg_cpu_ticks)
      out=$(<"$run_log")
      tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -n 1)
      lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out" | tail -n 1)
      failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | tail -n 1)
      [[ -n $tps ]] || ok=0
      [[ -z $failed || $failed == 0 ]] || ok=0
      if ((!ok)); then
        ANY_FAILED=1
        log "run failed: $mode -> $target; pgbench said:"
        tail -n 15 <<<"$out" >&2
      fi
      # The proxy's CPU per transaction: what it costs beyond throughput
      # (pgbench, PostgreSQL and the proxy share the cores).
      cpu_tx=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$CLK_TCK" -v t="${tps:-0}" -v d="$DURATION" -v p="$ppid" \
        'BEGIN {if (p == "" || t <= 0) print "null"; else printf "%.1f", (b - a) / hz * 1e6 / (t * d)}')
      # PostgreSQL's: a fresh backend per client (direct, or a proxy that
      # does not pool) costs more per transaction than a warm one.
      pg_tx=$(awk -v a="$pg0" -v b="$pg1" -v hz="$CLK_TCK" -v t="${tps:-0}" -v d="$DURATION" \
        'BEGIN {if (t <= 0) print "null"; else printf "%.1f", (b - a) / hz * 1e6 / (t * d)}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$target" \
        "${tps:-0}" "${lat:-0}" "${failed:-0}" "$ok" "$cpu_tx" "$pg_tx" >>"$RUNS_TSV"
    done
  done
done

# --- in-process A/B (BENCH_AB) -------------------------------------------------
#
# One pgbench run per mode against one pgcloak, the feature switched every
# AB_BLOCK seconds: same clients, same backends, same process, so the only
# difference between the blocks is the feature (bench/ab_blocks.py).

AB_TSV=$WORK/ab.tsv # kind mode json
: >"$AB_TSV"

# ab_set KIND on|off: switch the feature.
ab_set() {
  case $1 in
    scrape)
      if [[ $2 == on ]]; then : >"$WORK/ab-scrape.flag"; else rm -f "$WORK/ab-scrape.flag"; fi
      ;;
    detection)
      # Replace the file atomically, then SIGHUP (Server::reload_config).
      cp "$WORK/ab-detection.$2.yaml" "$WORK/ab-detection.yaml.tmp"
      mv -f "$WORK/ab-detection.yaml.tmp" "$WORK/ab-detection.yaml"
      kill -HUP "${PROXY_PID[ab-detection]}"
      ;;
  esac
}

# CPU time the whole machine has been busy (every core, every process:
# /proc/stat's first line less idle and iowait), in clock ticks.
machine_busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# ab_toggler KIND LOG BLOCKS: off, on, off, ... one block each; a line per
# block start with the time, the proxy's CPU ticks and the machine's busy
# ticks, and an end line.
ab_toggler() {
  local kind=$1 out=$2 blocks=$3 k state t0 next
  local pid=${PROXY_PID[ab-$kind]}
  t0=$EPOCHREALTIME
  for ((k = 0; k < blocks; k++)); do
    state=off
    ((k % 2)) && state=on
    ab_set "$kind" "$state"
    printf '%s %s %s %s\n' "$EPOCHREALTIME" "$state" "$(cpu_ticks "$pid")" "$(machine_busy_ticks)" >>"$out"
    next=$(awk -v t0="$t0" -v k="$k" -v b="$AB_BLOCK" -v now="$EPOCHREALTIME" \
      'BEGIN {d = t0 + (k + 1) * b - now; printf "%.3f", (d > 0 ? d : 0)}')
    sleep "$next"
  done
  printf '%s end %s %s\n' "$EPOCHREALTIME" "$(cpu_ticks "$pid")" "$(machine_busy_ticks)" >>"$out"
}

if ((${#AB_KINDS[@]} > 0)); then
  AB_BLOCKS=$((AB_SECONDS / AB_BLOCK))
  for kind in "${AB_KINDS[@]}"; do
    for mode in "${MODES[@]}"; do
      log "A/B $kind, $mode: ${AB_BLOCKS} blocks of ${AB_BLOCK}s (off, on, off, ...)"
      run_log=$WORK/ab-$kind-$mode.log
      toggle_log=$WORK/ab-$kind-$mode.toggles
      : >"$toggle_log"
      ab_set "$kind" off
      # 3 s of lead: every client connected and warm before the first block.
      timeout $((AB_SECONDS + 60)) pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$JOBS" -T $((AB_SECONDS + 5)) \
        -P 1 --progress-timestamp -h 127.0.0.1 -p "$(target_port "ab-$kind")" -U "$BENCH_USER" "$BENCH_DB" \
        >"$run_log" 2>&1 &
      PGBENCH_PID=$!
      sleep 3
      ab_toggler "$kind" "$toggle_log" "$AB_BLOCKS"
      rc=0
      wait "$PGBENCH_PID" || rc=$?
      PGBENCH_PID=""
      ab_set "$kind" on
      failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$run_log" | tail -n 1)
      if ((rc != 0)) || [[ -n $failed && $failed != 0 ]]; then
        ANY_FAILED=1
        log "A/B run failed: $kind $mode; pgbench said:"
        grep -v '^progress:' "$run_log" | tail -n 15 >&2
        continue
      fi
      json=$(python3 "$ROOT/bench/ab_blocks.py" "$run_log" "$toggle_log" 1 "$CLK_TCK") || {
        ANY_FAILED=1
        log "A/B $kind $mode: no usable blocks in $run_log"
        continue
      }
      printf '%s\t%s\t%s\n' "$kind" "$mode" "$json" >>"$AB_TSV"
    done
  done
  # The scraper really scraped: about one scrape per second of "on" blocks.
  if [[ -n ${AB_SCRAPER_PID:-} ]]; then
    stop_pid "$AB_SCRAPER_PID" scraper
    AB_SCRAPES=$(sed -n 's/.*: \([0-9]*\) scrapes, \([0-9]*\) failed$/\1 scrapes, \2 failed/p' "$WORK/ab-scraper.log")
    log "A/B scrape: the scraper made ${AB_SCRAPES:-no report} (about $((${#MODES[@]} * AB_BLOCKS / 2 * AB_BLOCK)) seconds switched on)"
    grep -q ' 0 failed$' "$WORK/ab-scraper.log" || { ANY_FAILED=1; tail -n 5 "$WORK/ab-scraper.log" >&2; }
  fi
  # The detection switch must really have happened every time: pgcloak logs
  # each reload it applied (info).
  if [[ " ${AB_KINDS[*]} " == *" detection "* ]]; then
    offs=$(grep -c 'detection switched off' "$WORK/ab-detection.log" || true)
    ons=$(grep -c 'detection: [0-9]* rules' "$WORK/ab-detection.log" || true)
    rejected=$(grep -c 'keeping the running configuration\|SIGHUP: detection was off' "$WORK/ab-detection.log" || true)
    want=$((${#MODES[@]} * (AB_BLOCKS + 1) / 2))
    if ((offs < want || ons < want - ${#MODES[@]} || rejected > 0)); then
      ANY_FAILED=1
      log "detection A/B: pgcloak applied $offs switches off and $ons on (expected about $want each, $rejected rejected); see $WORK/ab-detection.log"
    fi
    AB_ALERTS=$(grep -c 'alert:' "$WORK/ab-detection.log" || true)
    ((AB_ALERTS == 0)) || log "detection A/B: pgcloak raised $AB_ALERTS alerts (expected none; the limits are above the benchmark's traffic)"
  fi
fi

# --- report ------------------------------------------------------------------

median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

SUMMARY_TSV=$WORK/summary.tsv # mode target tps latency ratio proxy_cpu_us_per_tx pg_cpu_us_per_tx
: >"$SUMMARY_TSV"
for mode in "${MODES[@]}"; do
  direct_tps=$(awk -F'\t' -v m="$mode" '$2 == m && $3 == "direct" && $7 == 1 {print $4}' "$RUNS_TSV" | median)
  for target in "${TARGETS[@]}"; do
    tps=$(awk -F'\t' -v m="$mode" -v t="$target" '$2 == m && $3 == t && $7 == 1 {print $4}' "$RUNS_TSV" | median)
    lat=$(awk -F'\t' -v m="$mode" -v t="$target" '$2 == m && $3 == t && $7 == 1 {print $5}' "$RUNS_TSV" | median)
    ratio=$(awk -v a="$tps" -v b="$direct_tps" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "null"}')
    cpu=$(awk -F'\t' -v m="$mode" -v t="$target" '$2 == m && $3 == t && $7 == 1 && $8 != "null" {print $8}' "$RUNS_TSV" | median)
    [[ $target == direct ]] && cpu=null
    pgcpu=$(awk -F'\t' -v m="$mode" -v t="$target" '$2 == m && $3 == t && $7 == 1 && $9 != "null" {print $9}' "$RUNS_TSV" | median)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$target" "$tps" "$lat" "$ratio" "$cpu" "$pgcpu" >>"$SUMMARY_TSV"
  done
done

printf '%-9s %-15s %12s %12s %10s %10s %15s %12s\n' mode target tps latency_ms vs_direct vs_bouncer proxy_cpu_us/tx pg_cpu_us/tx
printf '%-9s %-15s %12s %12s %10s %10s %15s %12s\n' --------- --------------- ------------ ------------ ---------- ---------- --------------- ------------
while IFS=$'\t' read -r mode target tps lat ratio cpu pgcpu; do
  bouncer=$(awk -F'\t' -v m="$mode" '$1 == m && $2 == "pgbouncer" {print $3}' "$SUMMARY_TSV")
  vs_bouncer=$(awk -v a="$tps" -v b="${bouncer:-0}" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "-"}')
  printf '%-9s %-15s %12.1f %12.3f %10s %10s %15s %12s\n' "$mode" "$target" "$tps" "$lat" "$ratio" "$vs_bouncer" "$cpu" "$pgcpu"
done <"$SUMMARY_TSV"
# Audit cost: each audit target against plain pgcloak in the same run.
if grep -q $'\tpgcloak\t' "$SUMMARY_TSV" && grep -q $'\taudit-' "$SUMMARY_TSV"; then
  echo
  while IFS=$'\t' read -r mode target tps _; do
    [[ $target == audit-* ]] || continue
    base=$(awk -F'\t' -v m="$mode" '$1 == m && $2 == "pgcloak" {print $3}' "$SUMMARY_TSV")
    awk -v m="$mode" -v t="$target" -v a="$tps" -v b="$base" \
      'BEGIN {goal = (t == "audit-strict") ? 0.85 : 0.95; r = (b > 0) ? a / b : 0;
              printf "%-9s %-14s %.3f of pgcloak without audit (goal >= %.2f: %s)\n", m, t, r, goal, (r >= goal ? "met" : "not met")}'
  done <"$SUMMARY_TSV"
fi

# Metrics cost: pgcloak with metrics on (scraped every second, or not
# scraped) against pgcloak with metrics off, in the same run.
if grep -q $'\tmetrics-off\t' "$SUMMARY_TSV"; then
  echo
  while IFS=$'\t' read -r mode target tps _; do
    [[ $target == metrics-scraped || $target == pgcloak ]] || continue
    base=$(awk -F'\t' -v m="$mode" '$1 == m && $2 == "metrics-off" {print $3}' "$SUMMARY_TSV")
    awk -v m="$mode" -v t="$target" -v a="$tps" -v b="$base" \
      'BEGIN {r = (b > 0) ? a / b : 0;
              printf "%-9s %-15s %.3f of pgcloak with metrics off%s\n", m, t, r,
                     (t == "metrics-scraped") ? sprintf(" (goal >= 0.98: %s)", (r >= 0.98 ? "met" : "not met")) : ""}'
  done <"$SUMMARY_TSV"
fi

# In-process A/B: the feature on vs off in alternating blocks of one run.
if [[ -s $AB_TSV ]]; then
  echo
  echo "In-process A/B (one pgbench run per line, the feature switched every ${AB_BLOCK}s; ratio = on/off):"
  while IFS=$'\t' read -r kind mode json; do
    python3 - "$kind" "$mode" "$json" <<'PY'
import json, sys
kind, mode, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
what = {"scrape": "/metrics scraped once a second",
        "detection": "detection rules on (8 rules, every statement reads protected data)"}[kind]
goal = 0.98

def series(name, point, p):
    ci = p.get("mean_ci95")
    verdict = "met" if point is not None and point >= goal else "not met"
    return (f"          {name}: {point} (goal >= {goal}: {verdict}); paired blocks n={p.get('n')}, "
            f"median {p.get('median')}, mean {p.get('mean')}" + (f", 95% interval {ci[0]}-{ci[1]}" if ci else ""))

print(f"{mode:<9} {kind:<10} {what}")
print(f"          tps on {r['on']['mean_tps']} / off {r['off']['mean_tps']}")
print(series("throughput ratio on/off", r.get("ratio"), r["paired"]))
print(series("capacity ratio (machine CPU/tx off/on)", r.get("capacity_ratio"), r["paired_capacity"]))
print(f"          CPU us/tx on/off: pgcloak {r['on']['proxy_cpu_us_per_tx']}/{r['off']['proxy_cpu_us_per_tx']}, "
      f"machine {r['on']['machine_cpu_us_per_tx']}/{r['off']['machine_cpu_us_per_tx']} "
      f"(cores busy {r['on']['machine_busy']}/{r['off']['machine_busy']})")
PY
  done <"$AB_TSV"
fi

mkdir -p "$(dirname "$RESULTS_FILE")"
json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
{
  printf '{\n'
  printf '  "timestamp": "%s",\n' "$STAMP"
  printf '  "git_commit": %s,\n' "$(json_str "$GIT_COMMIT")"
  printf '  "host": {"cores": %s, "cpu": %s, "kernel": %s, "loadavg_before": %s},\n' "$CORES" \
    "$(json_str "$CPU_MODEL")" "$(json_str "$(uname -r)")" "$LOADAVG"
  printf '  "versions": {"pgcloak": %s, "pgcloak_build": "%s", "postgresql": %s, "pgbouncer": %s},\n' \
    "$(json_str "$PGCLOAK_VERSION")" "$BUILD_TYPE" "$(json_str "$PG_VERSION")" "$(json_str "$BOUNCER_VERSION")"
  printf '  "params": {"scale": %s, "clients": %s, "jobs": %s, "seconds": %s, "rounds": %s, "warmup_seconds": %s, "client_tls": %s, "upstream": "%s", "pgcloak_threads": %s, "pgcloak_auth": "%s", "pgcloak_pool": %s, "pgbouncer_pool_mode": "session"},\n' \
    "$SCALE" "$CLIENTS" "$JOBS" "$DURATION" "$ROUNDS" "$WARMUP" \
    "$( ((TLS)) && echo true || echo false)" "$UPSTREAM" "$PGCLOAK_THREADS" "$PGCLOAK_AUTH" \
    "$( ((PGCLOAK_POOL)) && echo true || echo false)"
  printf '  "runs": [\n'
  awk -F'\t' '{printf "%s    {\"round\": %s, \"mode\": \"%s\", \"target\": \"%s\", \"tps\": %s, \"latency_ms\": %s, \"failed_transactions\": %s, \"ok\": %s, \"proxy_cpu_us_per_tx\": %s, \"postgres_cpu_us_per_tx\": %s}", (NR > 1 ? ",\n" : ""), $1, $2, $3, $4, $5, $6, ($7 == 1 ? "true" : "false"), $8, $9} END {print ""}' "$RUNS_TSV"
  printf '  ],\n'
  printf '  "summary": [\n'
  awk -F'\t' '{printf "%s    {\"mode\": \"%s\", \"target\": \"%s\", \"tps_median\": %s, \"latency_ms_median\": %s, \"ratio_to_direct\": %s, \"proxy_cpu_us_per_tx\": %s, \"postgres_cpu_us_per_tx\": %s}", (NR > 1 ? ",\n" : ""), $1, $2, $3, $4, $5, ($6 == "" ? "null" : $6), ($7 == "" ? "null" : $7)} END {print ""}' "$SUMMARY_TSV"
  printf '  ],\n'
  printf '  "ab": {"seconds": %s, "block_seconds": %s, "runs": [\n' "$AB_SECONDS" "$AB_BLOCK"
  awk -F'\t' '{printf "%s    {\"kind\": \"%s\", \"mode\": \"%s\", \"result\": %s}", (NR > 1 ? ",\n" : ""), $1, $2, $3} END {print ""}' "$AB_TSV"
  printf '  ]}\n'
  printf '}\n'
} >"$RESULTS_FILE"
python3 -m json.tool "$RESULTS_FILE" >/dev/null || die "wrote invalid JSON to $RESULTS_FILE"
echo
echo "results: $RESULTS_FILE"

if ((ANY_FAILED)); then
  log "some runs failed; logs are in $WORK (kept)"
  BENCH_KEEP=1
  exit 1
fi
