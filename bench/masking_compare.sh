#!/usr/bin/env bash
# What masking costs: a masked role (analyst) through pgcloak against an
# unmasked one (admin) through pgcloak and directly to PostgreSQL, on the
# shop fixture, all in one run on this machine.
#
# It starts its own PostgreSQL 15 cluster, loads the shop fixture
# (deploy/fixture/load.sh, BENCH_SHOP_SCALE) and `pgbench -i` into the same
# `shop` database, grants the fixture's groups SELECT on the pgbench tables,
# and starts pgcloak with the masking policies of
# tests/integration/test_masking.py (analyst -> analytics: email hashed,
# everything else redacted; admin -> admins: unmasked). A second pgcloak
# process, pgcloak-detect, has the same configuration plus a `detection:`
# section (docs/detection.md) whose rules all apply to the analyst's reads;
# target analyst-detect is the analyst through it. Then, interleaved over
# BENCH_ROUNDS rounds (median reported), it measures:
#
#   1. pgbench -S on the unprotected pgbench tables, analyst vs admin, both
#      through pgcloak: what the statement check costs when there is nothing
#      to mask. Goal: analyst/admin >= 0.95. Also analyst-detect vs analyst.
#   2. A custom pgbench script, `SELECT * FROM customers WHERE id = :id` with
#      a random id, as analyst through pgcloak vs admin direct (and admin
#      through pgcloak for reference): the cost of masked point reads.
#      analyst-detect vs analyst is what exfiltration detection costs them.
#      Goal: analyst-detect/analyst >= 0.98.
#   3. `SELECT * FROM customers` (every row) with psql, output to /dev/null,
#      FETCH_COUNT unset, unaligned tuples-only output: wall time, analyst
#      through pgcloak vs admin direct (and admin through pgcloak).
#      Goal: analyst/admin-direct <= 1.3.
#
# pgbench runs use BENCH_MODES (simple and prepared protocol); for the runs
# through pgcloak it also records the CPU time (utime + stime) of the pgcloak
# process serving them per transaction. It prints one table per measurement,
# the detection ratios, how many detection alerts pgcloak logged, and writes
# JSON to bench/results/. Everything it
# started is stopped and deleted on exit. It never builds pgcloak.
#
# Environment (defaults in brackets):
#   BENCH_SHOP_SCALE [100]     shop fixture scale: 10,000 x N customers
#   BENCH_PGBENCH_SCALE [10]   pgbench -i scale factor
#   BENCH_SECONDS [15]         duration of each pgbench run
#   BENCH_ROUNDS [3]           rounds; each runs every measurement x target once
#   BENCH_CLIENTS [16]         pgbench -c
#   BENCH_JOBS [2]             pgbench -j
#   BENCH_WARMUP [5]           seconds of untimed direct warm-up per pgbench
#                              workload (0 = none)
#   BENCH_MODES ["simple prepared"]
#   BENCH_SCAN [1]             0 = skip measurement 3 (full scans)
#   BENCH_SCAN_TIMEOUT [600]   seconds allowed for one full scan
#   BENCH_UPSTREAM [unix]      unix | tcp: how pgcloak reaches PostgreSQL
#   BENCH_PGCLOAK_THREADS [0]  pgcloak io threads (0 = cores)
#   BENCH_SHARED_BUFFERS [1GB] PostgreSQL shared_buffers
#   BENCH_RESULTS_FILE         JSON output [bench/results/masking-<UTC time>.json]
#   BENCH_KEEP [0]             1 = keep the work directory (logs) after exit
#   PGCLOAK_BIN                pgcloak binary [build/proxy/pgcloak]; it is
#                              copied into the work directory first, so a
#                              rebuild during the run does not affect it
#
# Fast smoke run (under 2 minutes):
#   BENCH_SHOP_SCALE=1 BENCH_SECONDS=3 BENCH_ROUNDS=1 bench/masking_compare.sh
#
# Exit status: 0 when every run produced a figure and pgcloak masked as
# expected, 1 otherwise. Goals that are not met do not change it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib/pgcluster.sh
source "$ROOT/deploy/lib/pgcluster.sh"

SHOP_SCALE=${BENCH_SHOP_SCALE:-100}
PGBENCH_SCALE=${BENCH_PGBENCH_SCALE:-10}
DURATION=${BENCH_SECONDS:-15}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENTS=${BENCH_CLIENTS:-16}
JOBS=${BENCH_JOBS:-2}
WARMUP=${BENCH_WARMUP:-5}
SCAN=${BENCH_SCAN:-1}
SCAN_TIMEOUT=${BENCH_SCAN_TIMEOUT:-600}
UPSTREAM=${BENCH_UPSTREAM:-unix}
read -r -a MODES <<<"${BENCH_MODES:-simple prepared}"
PGCLOAK_THREADS=${BENCH_PGCLOAK_THREADS:-0}
SHARED_BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_FILE=${BENCH_RESULTS_FILE:-$ROOT/bench/results/masking-$STAMP.json}

DB=shop
MASKED_USER=analyst
UNMASKED_USER="admin"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

for v in SHOP_SCALE PGBENCH_SCALE DURATION ROUNDS CLIENTS JOBS WARMUP SCAN_TIMEOUT PGCLOAK_THREADS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v} must be a non-negative integer"
done
((SHOP_SCALE > 0 && SHOP_SCALE <= 9999)) || die "BENCH_SHOP_SCALE must be 1..9999"
((PGBENCH_SCALE > 0 && DURATION > 0 && ROUNDS > 0 && CLIENTS > 0 && JOBS > 0 && SCAN_TIMEOUT > 0)) ||
  die "BENCH_PGBENCH_SCALE, BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS, BENCH_JOBS and BENCH_SCAN_TIMEOUT must be positive"
[[ $SCAN == 0 || $SCAN == 1 ]] || die "BENCH_SCAN must be 0 or 1"
[[ $UPSTREAM == unix || $UPSTREAM == tcp ]] || die "BENCH_UPSTREAM must be unix or tcp"
((${#MODES[@]} > 0)) || die "BENCH_MODES is empty"
for m in "${MODES[@]}"; do
  [[ $m == simple || $m == extended || $m == prepared ]] || die "unknown mode $m"
done
for tool in pgbench psql openssl python3 runuser sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found; run deploy/install-deps.sh"
done

PGCLOAK_SRC=${PGCLOAK_BIN:-$ROOT/build/proxy/pgcloak}
[[ -x $PGCLOAK_SRC ]] ||
  die "$PGCLOAK_SRC is missing or not executable; build it (cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build) or set PGCLOAK_BIN"

# --- work directory and cleanup ----------------------------------------------

WORK=$(mktemp -d /tmp/pgcloak-mbench.XXXXXX)
chmod 755 "$WORK" # the cluster's OS user must reach its subdirectories
PG_DIR=$WORK/pg
PGCLOAK_PID=""
DETECT_PID="" # pgcloak-detect
CHILD_PID="" # the pgbench or psql being waited for

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
  stop_pid "$CHILD_PID" client
  stop_pid "$PGCLOAK_PID" pgcloak
  stop_pid "$DETECT_PID" pgcloak-detect
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

die_with_log() { # die_with_log FILE MESSAGE: tail of FILE to stderr, then die
  local file=$1
  shift
  [[ -f $file ]] && tail -n 20 "$file" >&2
  die "$*"
}

# A private copy of the binary: others may rebuild build/ during the run.
PGCLOAK_BIN=$WORK/pgcloak
cp "$PGCLOAK_SRC" "$PGCLOAK_BIN"
PGCLOAK_SHA=$(sha256sum "$PGCLOAK_BIN" | cut -c1-16)
PGCLOAK_MTIME=$(date -u -r "$PGCLOAK_SRC" +%Y-%m-%dT%H:%M:%SZ)
if grep -qs '^CMAKE_BUILD_TYPE:STRING=Release$' "$(dirname "$PGCLOAK_SRC")/../CMakeCache.txt"; then
  BUILD_TYPE=Release
else
  BUILD_TYPE=unknown
  log "warning: $PGCLOAK_SRC may not be a Release build"
fi

# --- PostgreSQL, shop fixture, pgbench tables --------------------------------

# alloc_port VAR: a free port on 127.0.0.1, none handed out twice.
TAKEN_PORTS=" "
alloc_port() {
  local p
  p=$(pgc_free_port)
  while [[ $TAKEN_PORTS == *" $p "* ]]; do p=$(pgc_free_port); done
  TAKEN_PORTS+="$p "
  printf -v "$1" '%s' "$p"
}
alloc_port PG_PORT
alloc_port PGCLOAK_PORT
alloc_port DETECT_PORT
# Every pgcloak serves metrics, by default on 127.0.0.1:9930: each gets its
# own port, or the second one (or anything else on 9930) fails to bind.
alloc_port PGCLOAK_METRICS_PORT
alloc_port DETECT_METRICS_PORT

log "initialising PostgreSQL 15 in $PG_DIR (port $PG_PORT)"
# Durability is irrelevant for a read-only benchmark; keep background work
# (checkpoints, autovacuum) from adding noise.
pgc_init "$PG_DIR" "$PG_PORT" \
  --conf "shared_buffers = $SHARED_BUFFERS" \
  --conf "max_connections = 200" \
  --conf "fsync = off" \
  --conf "synchronous_commit = off" \
  --conf "full_page_writes = off" \
  --conf "checkpoint_timeout = 1h" \
  --conf "max_wal_size = 8GB" \
  --conf "autovacuum = off" \
  --conf "jit = off" \
  --conf "log_min_messages = warning"
# pgcloak reaches PostgreSQL like the direct clients do, with SCRAM: only the
# superuser keeps trust on the socket (for the loader). With trust, pgcloak
# would warn about it on every session.
printf '%s\n' \
  "# TYPE  DATABASE  USER           ADDRESS       METHOD" \
  "local   all       $PGC_SUPERUSER                trust" \
  "local   all       all                          scram-sha-256" \
  "host    all       all            127.0.0.1/32  scram-sha-256" >"$PG_DIR/pg_hba.conf"
pgc_start "$PG_DIR" 60

log "loading the shop fixture at scale $SHOP_SCALE ($((SHOP_SCALE * 10000)) customers)"
LOAD_START_US=${EPOCHREALTIME/[.,]/}
"$ROOT/deploy/fixture/load.sh" --host "$PG_DIR" --port "$PG_PORT" --dbname "$DB" \
  --scale "$SHOP_SCALE" >"$WORK/load.log" 2>&1 || die_with_log "$WORK/load.log" "loading the shop fixture failed"
log "$(tail -n 1 "$WORK/load.log")"

log "pgbench -i -s $PGBENCH_SCALE into $DB"
pgc_as_owner pgbench -i -q -s "$PGBENCH_SCALE" -h "$PG_DIR" -p "$PG_PORT" -U "$PGC_SUPERUSER" "$DB" \
  >"$WORK/pgbench-init.log" 2>&1 || die_with_log "$WORK/pgbench-init.log" "pgbench -i failed"
# The fixture grants to its groups; the pgbench tables came later. VACUUM
# sets hint bits and the visibility map, so that the first timed scan does not
# pay for them.
pgc_psql "$PG_DIR" -d "$DB" \
  -c "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history
        TO data_admins, app_services, support_team, analytics_team" \
  -c "VACUUM (ANALYZE) customers" >/dev/null || die "granting on pgbench tables or VACUUM failed"
LOAD_END_US=${EPOCHREALTIME/[.,]/}
SETUP_SECONDS=$(((LOAD_END_US - LOAD_START_US) / 1000000))

CUSTOMERS=$(pgc_psql "$PG_DIR" -d "$DB" -At -c "SELECT count(*) FROM customers")
max_id=$(pgc_psql "$PG_DIR" -d "$DB" -At -c "SELECT max(id) FROM customers")
[[ $CUSTOMERS == "$((SHOP_SCALE * 10000))" && $max_id == "$CUSTOMERS" ]] ||
  die "expected customers with ids 1..$((SHOP_SCALE * 10000)), found $CUSTOMERS rows up to id $max_id"
CUSTOMERS_SIZE=$(pgc_psql "$PG_DIR" -d "$DB" -At -c "SELECT pg_size_pretty(pg_total_relation_size('customers'))")

if [[ $UPSTREAM == unix ]]; then UP_HOST=$PG_DIR; else UP_HOST=127.0.0.1; fi

# --- pgcloak with masking, and pgcloak-detect ---------------------------------

# write_pgcloak_conf FILE PORT METRICS_PORT: the masking configuration, with
# the policies of tests/integration/test_masking.py. Both processes get it.
write_pgcloak_conf() {
  cat >"$1" <<EOC
listen: ["127.0.0.1:$2"]
unix_socket_dir: ""
threads: $PGCLOAK_THREADS
max_connections: 1000
upstream:
  host: "$UP_HOST"
  port: $PG_PORT
  sslmode: disable
  sslrootcert: ""
  connect_timeout: 5s
timeouts:
  handshake: 10s
  client_idle: 0s
  shutdown_grace: 5s
log:
  level: warn
metrics:
  listen: "127.0.0.1:$3"
catalog:
  user: pgcloak
  password: pgcloak-demo
  dbname: $DB
  refresh_interval: 60s
masking:
  hash_key_env: PGCLOAK_MASK_KEY
  protected_columns:
    - {column: public.customers.full_name, category: person_name}
    - {column: public.customers.email, category: email}
    - {column: public.customers.phone, category: phone}
    - {column: public.customers.ssn, category: national_id}
    - {column: public.customers.card_number, category: card_number}
    - {column: public.customers.birth_date, category: birth_date}
    - {column: public.customers.address, category: address}
    - {column: public.customers.notes, category: free_text}
    - {column: public.payments.card_number, category: card_number}
  policies:
    - name: admins
      roles: [data_admins, app_services]
      default: allow
    - name: support
      roles: [support_team]
      default: redact
      rules:
        email: email
        phone: {mask: partial, keep_first: 0, keep_last: 2, fill: "*"}
        card_number: last4
        birth_date: {mask: generalize, to: year}
        national_id: redact
        person_name: allow
        free_text: redact_patterns
    - name: analytics
      roles: [analytics_team]
      default: redact
      rules:
        email: hash
EOC
}
write_pgcloak_conf "$WORK/pgcloak.yaml" "$PGCLOAK_PORT" "$PGCLOAK_METRICS_PORT"
write_pgcloak_conf "$WORK/pgcloak-detect.yaml" "$DETECT_PORT" "$DETECT_METRICS_PORT"

# The detection of pgcloak-detect: a realistic policy in the spirit of
# bench/exfil_eval.yaml, one rule per detector, every rule but
# service_account in scope for the analyst (analyst -> bi_readers ->
# analytics_team) and for `SELECT * FROM customers WHERE id = :id`. What is
# measured is the cost of evaluating them on every statement, not alerts:
# the limits are set so that the benchmark's own traffic raises none
# (window_volume and first_access only learn during their warm-up,
# off_hours allows the whole week, slow_drip's max_distinct is above the
# number of distinct point reads this run can make: a key per id and
# protocol). Any alert that fires anyway is counted and reported at the end
# (grep "alert:" in pgcloak-detect.log).
DRIP_MAX=$((SHOP_SCALE * 10000 * 2 + 1000))
((DRIP_MAX >= 1000000)) || DRIP_MAX=1000000
cat >"$WORK/detection.yaml" <<EOF
detection:
  state_file: "$WORK/detection-state.json"
  save_interval: 60s
  time_zone: UTC
  rules:
    # One statement, while it streams: people never need 1,000 customers at once.
    - {name: people-bulk, detector: statement_volume, roles: [support_team, analytics_team], max_rows: 1000, action: cancel}
    # Rows per user and table per minute against that user's learned normal.
    - {name: volume-1m, detector: window_volume, window: 1m, sensitivity: 6, floor_rows: 2000, warmup: 1d}
    # A table walked one key at a time (the application does that legitimately).
    - {name: drip, detector: slow_drip, exclude_roles: [app_services], window: 10m, max_distinct: $DRIP_MAX}
    - {name: new-table, detector: first_access, warmup: 1d}
    # Every hour of the week is allowed, so the rule evaluates every read and
    # never fires.
    - name: night
      detector: off_hours
      roles: [support_team, analytics_team]
      cooldown: 1h
      allowed:
        - {days: [mon, tue, wed, thu, fri, sat, sun], from: "00:00", to: "24:00"}
    - {name: export, detector: bulk_export, copy_to: true, full_scan: true, min_rows: 1000}
    - {name: probe, detector: probing, roles: [support_team, analytics_team], window: 5m, max_denials: 5, max_predicates: 30}
    # The application's login; the analyst is not in app_services.
    - name: app-misuse
      detector: service_account
      roles: [app_services]
      clients: [127.0.0.1/32, 10.0.1.0/24]
      application_names: [shop-web, shop-worker]
EOF
cat "$WORK/detection.yaml" >>"$WORK/pgcloak-detect.yaml"
MASK_KEY=$(openssl rand -hex 32)

# start_pgcloak NAME PORT: check NAME.yaml, start pgcloak with it (log in
# NAME.log), wait until it listens; the pid is in STARTED_PID.
STARTED_PID=""
start_pgcloak() {
  local name=$1 port=$2
  PGCLOAK_MASK_KEY=$MASK_KEY "$PGCLOAK_BIN" --check-config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 ||
    die_with_log "$WORK/$name.log" "$name rejected its configuration"
  PGCLOAK_MASK_KEY=$MASK_KEY "$PGCLOAK_BIN" --config "$WORK/$name.yaml" >>"$WORK/$name.log" 2>&1 </dev/null &
  STARTED_PID=$!
  pgc_wait_tcp 127.0.0.1 "$port" 15 ||
    die_with_log "$WORK/$name.log" "$name did not listen on $port within 15s"
}
start_pgcloak pgcloak "$PGCLOAK_PORT"
PGCLOAK_PID=$STARTED_PID
start_pgcloak pgcloak-detect "$DETECT_PORT"
DETECT_PID=$STARTED_PID
kill -0 "$PGCLOAK_PID" 2>/dev/null || die_with_log "$WORK/pgcloak.log" "pgcloak exited at start"
kill -0 "$DETECT_PID" 2>/dev/null || die_with_log "$WORK/pgcloak-detect.log" "pgcloak-detect exited at start"

export PGSSLMODE=disable PGCONNECT_TIMEOUT=10
unset PGPASSWORD PGOPTIONS

# Targets: analyst@pgcloak, analyst@pgcloak-detect (printed as
# analyst-detect), admin@pgcloak, admin@direct.
target_user() { echo "${1%@*}"; }
target_port() {
  case ${1#*@} in
    direct) echo "$PG_PORT" ;;
    pgcloak) echo "$PGCLOAK_PORT" ;;
    pgcloak-detect) echo "$DETECT_PORT" ;;
  esac
}
target_pid() { # the pgcloak process serving TARGET; empty for direct
  case ${1#*@} in
    pgcloak) echo "$PGCLOAK_PID" ;;
    pgcloak-detect) echo "$DETECT_PID" ;;
  esac
}
# tpsql TARGET [psql args...]: psql as TARGET's login over TCP (30 s limit).
tpsql() {
  local t=$1
  shift
  PGPASSWORD="$(target_user "$t")-demo" timeout 30 psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 \
    -p "$(target_port "$t")" -U "$(target_user "$t")" -d "$DB" "$@"
}

# The catalog loads asynchronously; until then masked sessions get 57P03.
# wait_masked TARGET LOG: sets MASKED to what TARGET sees of customer 1.
MASKED=""
wait_masked() {
  local t=$1 logf=$2 pid i
  pid=$(target_pid "$t")
  MASKED=""
  for ((i = 0; i < 150; i++)); do
    if MASKED=$(tpsql "$t" -At -F '|' -c "SELECT email, ssn, full_name FROM customers WHERE id = 1" 2>&1); then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die_with_log "$logf" "pgcloak ($t) exited"
    sleep 0.2
  done
}
log "waiting for the masking catalog of both pgcloak processes"
wait_masked "$MASKED_USER@pgcloak" "$WORK/pgcloak.log"
masked=$MASKED
wait_masked "$MASKED_USER@pgcloak-detect" "$WORK/pgcloak-detect.log"
masked_detect=$MASKED
direct=$(tpsql "$UNMASKED_USER@direct" -At -F '|' \
  -c "SELECT email, ssn, full_name FROM customers WHERE id = 1") || die "admin direct query failed"
via=$(tpsql "$UNMASKED_USER@pgcloak" -At -F '|' \
  -c "SELECT email, ssn, full_name FROM customers WHERE id = 1") || die "admin query through pgcloak failed"
# analyst: email hashed (16 hex digits), everything else redacted; the same
# key, so the same hash through both processes.
[[ $masked =~ ^[0-9a-f]{16}\|\*\*\*\|\*\*\*$ ]] ||
  die_with_log "$WORK/pgcloak.log" "analyst through pgcloak is not masked as expected: '$masked' (direct: '$direct')"
[[ $masked_detect == "$masked" ]] ||
  die_with_log "$WORK/pgcloak-detect.log" "analyst through pgcloak-detect sees '$masked_detect', through pgcloak '$masked'"
[[ $via == "$direct" ]] || die "admin through pgcloak sees '$via', direct '$direct'"
for t in "$MASKED_USER@pgcloak" "$MASKED_USER@pgcloak-detect" "$UNMASKED_USER@pgcloak" "$UNMASKED_USER@direct"; do
  out=$(tpsql "$t" -At -c "SELECT count(*) FROM pgbench_branches" 2>&1) || true
  [[ $out == "$PGBENCH_SCALE" ]] || die "pgbench tables as $t: $out"
done
PGCLOAK_LOG_START=$(wc -l <"$WORK/pgcloak.log")
DETECT_LOG_START=$(wc -l <"$WORK/pgcloak-detect.log")
log "masking works: analyst sees '$masked' (also through pgcloak-detect), admin '$direct'"

# --- runs --------------------------------------------------------------------

CORES=$(nproc)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
PG_VERSION=$("$PGC_BINDIR/postgres" --version | sed 's/^postgres (PostgreSQL) //')
PGCLOAK_VERSION=$("$PGCLOAK_BIN" --version 2>&1 | head -n 1 | sed "s/^pgcloak //" || true)
GIT_COMMIT=unknown # read from the files, without running git
if [[ -f $ROOT/.git/HEAD ]]; then
  head_ref=$(<"$ROOT/.git/HEAD")
  if [[ $head_ref == ref:\ * ]]; then
    ref=${head_ref#ref: }
    if [[ -f $ROOT/.git/$ref ]]; then
      GIT_COMMIT=$(cut -c1-12 "$ROOT/.git/$ref")
    else
      GIT_COMMIT=$(awk -v r="$ref" '$2 == r {print substr($1, 1, 12)}' "$ROOT/.git/packed-refs" 2>/dev/null || true)
    fi
  else
    GIT_COMMIT=${head_ref:0:12}
  fi
  GIT_COMMIT=${GIT_COMMIT:-unknown}
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

printf '%s\n' '\set id random(1, :customers)' 'SELECT * FROM customers WHERE id = :id;' \
  >"$WORK/customer_by_id.sql"

cat <<EOF
pgcloak masking cost on the shop fixture (scale $SHOP_SCALE: $CUSTOMERS customers, $CUSTOMERS_SIZE) + pgbench scale $PGBENCH_SCALE
pgbench: $CLIENTS clients, $JOBS threads, ${DURATION}s per run, modes: ${MODES[*]}; $ROUNDS round(s), interleaved, median reported
analyst = masked (policy analytics: email hash, rest redact); admin = unmasked (policy admins)
analyst-detect = analyst through a second pgcloak with the same masking plus detection
  (8 rules: statement_volume, window_volume, slow_drip, first_access, off_hours, bulk_export, probing, service_account)
PostgreSQL $PG_VERSION, pgcloak ${PGCLOAK_VERSION:-?} ($BUILD_TYPE, sha256 $PGCLOAK_SHA, built $PGCLOAK_MTIME, threads=$PGCLOAK_THREADS), upstream over $UPSTREAM, no client TLS
host: $CORES cores ($CPU_MODEL), load average $LOAD_BEFORE before the runs
NOTE: pgbench/psql, PostgreSQL and pgcloak all share these $CORES cores (and
other users may too), so proxy ratios are a pessimistic bound.

EOF
if awk -v l="${LOAD_BEFORE%% *}" -v c="$CORES" 'BEGIN {exit !(l > c / 2)}'; then
  echo "WARNING: the machine is already busy (load ${LOAD_BEFORE%% *} on $CORES cores); numbers will be noisy."
  echo
fi

RUNS_TSV=$WORK/runs.tsv # round test mode target value latency_ms failed ok proxy_cpu_us_per_tx loadavg
: >"$RUNS_TSV"
CLK_TCK=$(getconf CLK_TCK)
# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
RUN_TIMEOUT=$((DURATION + 60))
ANY_FAILED=0

# run_pgbench WORKLOAD MODE TARGET SECONDS OUTFILE. WORKLOAD is select_only
# (pgbench -S) or customer_by_id. pgbench runs in the background and we wait
# for it, because `wait` returns at once when SIGTERM/SIGINT arrive.
run_pgbench() {
  local workload=$1 mode=$2 target=$3 secs=$4 out=$5 script=(-S)
  [[ $workload == customer_by_id ]] && script=(-f "$WORK/customer_by_id.sql" -D "customers=$CUSTOMERS")
  PGPASSWORD="$(target_user "$target")-demo" timeout "$RUN_TIMEOUT" \
    pgbench -n "${script[@]}" -M "$mode" -c "$CLIENTS" -j "$JOBS" -T "$secs" \
    -h 127.0.0.1 -p "$(target_port "$target")" -U "$(target_user "$target")" "$DB" >"$out" 2>&1 &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# run_scan TARGET OUTFILE: SELECT * FROM customers as TARGET; sets SCAN_SECS
# to its wall time (psql start to exit, connection included).
SCAN_SECS=""
run_scan() {
  local target=$1 out=$2 t0 t1 rc=0
  SCAN_SECS=""
  t0=${EPOCHREALTIME/[.,]/}
  PGPASSWORD="$(target_user "$target")-demo" timeout "$SCAN_TIMEOUT" \
    psql -X -q -v ON_ERROR_STOP=1 -A -t -o /dev/null -h 127.0.0.1 -p "$(target_port "$target")" \
    -U "$(target_user "$target")" -d "$DB" -c "SELECT * FROM customers" >"$out" 2>&1 &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  t1=${EPOCHREALTIME/[.,]/}
  ((rc == 0)) || return "$rc"
  SCAN_SECS=$(awk -v d="$((t1 - t0))" 'BEGIN {printf "%.3f", d / 1e6}')
}

record() { # record ROUND TEST MODE TARGET VALUE LATENCY FAILED OK PROXY_CPU_US_PER_TX
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RUNS_TSV"
}

pgbench_once() { # pgbench_once ROUND WORKLOAD MODE TARGET
  local round=$1 workload=$2 mode=$3 target=$4 ok=1 out tps lat failed txs pid cpu0=0 cpu1=0 cpu_tx
  local run_log=$WORK/pgbench-$round-$workload-$mode-$target.log
  log "round $round/$ROUNDS: $workload $mode as $target"
  pid=$(target_pid "$target")
  [[ -n $pid ]] && cpu0=$(cpu_ticks "$pid")
  run_pgbench "$workload" "$mode" "$target" "$DURATION" "$run_log" || ok=0
  [[ -n $pid ]] && cpu1=$(cpu_ticks "$pid")
  out=$(<"$run_log")
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | tail -n 1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out" | tail -n 1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | tail -n 1)
  txs=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out" | tail -n 1)
  # The CPU time of the pgcloak process serving the run (the whole run,
  # connections included) per transaction: what the proxy costs beyond
  # throughput, which the shared cores blur.
  cpu_tx=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$CLK_TCK" -v n="${txs:-0}" -v p="$pid" \
    'BEGIN {if (p == "" || n <= 0) print "null"; else printf "%.2f", (b - a) / hz * 1e6 / n}')
  [[ -n $tps ]] || ok=0
  [[ -z $failed || $failed == 0 ]] || ok=0
  if ((!ok)); then
    ANY_FAILED=1
    log "run failed: $workload $mode as $target; pgbench said:"
    tail -n 15 <<<"$out" >&2
  fi
  record "$round" "$workload" "$mode" "$target" "${tps:-0}" "${lat:-0}" "${failed:-0}" "$ok" "$cpu_tx"
}

scan_once() { # scan_once ROUND TARGET
  local round=$1 target=$2 ok=1
  local run_log=$WORK/scan-$round-$target.log
  log "round $round/$ROUNDS: full scan as $target"
  run_scan "$target" "$run_log" || {
    ok=0
    ANY_FAILED=1
    log "scan failed as $target:"
    tail -n 15 "$run_log" >&2
  }
  record "$round" full_scan - "$target" "${SCAN_SECS:-0}" 0 0 "$ok" null
}

# Warm-up: caches, and a check that every target returns every row.
if ((WARMUP > 0)); then
  log "warm-up: ${WARMUP}s pgbench -S and ${WARMUP}s customers by id, admin direct"
  run_pgbench select_only simple "$UNMASKED_USER@direct" "$WARMUP" "$WORK/warmup-S.log" || true
  run_pgbench customer_by_id simple "$UNMASKED_USER@direct" "$WARMUP" "$WORK/warmup-id.log" || true
fi
if ((SCAN)); then
  for t in "$UNMASKED_USER@direct" "$MASKED_USER@pgcloak" "$UNMASKED_USER@pgcloak"; do
    n=$(PGPASSWORD="$(target_user "$t")-demo" timeout "$SCAN_TIMEOUT" psql -X -q -A -t -h 127.0.0.1 \
      -p "$(target_port "$t")" -U "$(target_user "$t")" -d "$DB" -c "SELECT * FROM customers" | wc -l) || true
    [[ $n == "$CUSTOMERS" ]] || die "SELECT * FROM customers as $t returned $n lines, expected $CUSTOMERS"
  done
fi

# analyst@pgcloak and analyst@pgcloak-detect run back to back (in both
# orders), so that their ratio sees the same machine as far as possible.
S_TARGETS=("$MASKED_USER@pgcloak" "$MASKED_USER@pgcloak-detect" "$UNMASKED_USER@pgcloak")
ID_TARGETS=("$MASKED_USER@pgcloak" "$MASKED_USER@pgcloak-detect" "$UNMASKED_USER@direct" "$UNMASKED_USER@pgcloak")
# Full scans (measurement 3) without pgcloak-detect: its people-bulk rule
# cancels any statement past 1,000 rows.
SCAN_TARGETS=("$MASKED_USER@pgcloak" "$UNMASKED_USER@direct" "$UNMASKED_USER@pgcloak")
reversed() { local i; for ((i = $# ; i > 0; i--)); do printf '%s\n' "${!i}"; done; }

for ((round = 1; round <= ROUNDS; round++)); do
  # Even rounds run the targets in the opposite order, so that no target is
  # always first (or always right after the other).
  if ((round % 2)); then s=("${S_TARGETS[@]}") id=("${ID_TARGETS[@]}") sc=("${SCAN_TARGETS[@]}")
  else
    mapfile -t s < <(reversed "${S_TARGETS[@]}")
    mapfile -t id < <(reversed "${ID_TARGETS[@]}")
    mapfile -t sc < <(reversed "${SCAN_TARGETS[@]}")
  fi
  for mode in "${MODES[@]}"; do
    for t in "${s[@]}"; do pgbench_once "$round" select_only "$mode" "$t"; done
  done
  for mode in "${MODES[@]}"; do
    for t in "${id[@]}"; do pgbench_once "$round" customer_by_id "$mode" "$t"; done
  done
  if ((SCAN)); then
    for t in "${sc[@]}"; do scan_once "$round" "$t"; done
  fi
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- logs --------------------------------------------------------------------

kill -0 "$PGCLOAK_PID" 2>/dev/null || { ANY_FAILED=1; log "pgcloak exited during the runs"; }
kill -0 "$DETECT_PID" 2>/dev/null || { ANY_FAILED=1; log "pgcloak-detect exited during the runs"; }
# log.level is warn: every line pgcloak wrote during the runs is worth a look.
tail -n +"$((PGCLOAK_LOG_START + 1))" "$WORK/pgcloak.log" >"$WORK/pgcloak-runs.log"
tail -n +"$((DETECT_LOG_START + 1))" "$WORK/pgcloak-detect.log" >"$WORK/pgcloak-detect-runs.log"
PGCLOAK_LOG_LINES=$(wc -l <"$WORK/pgcloak-runs.log")
DETECT_LOG_LINES=$(wc -l <"$WORK/pgcloak-detect-runs.log")
PG_ERRORS=$(grep -cE '(ERROR|FATAL|PANIC):' "$PG_DIR/postgres.log" || true)

# Alerts are not what is measured (the rules are set not to fire on this
# traffic), but one that fires anyway must be seen: every alert is logged at
# warn as "alert: ...". The whole log, from pgcloak-detect's start.
grep -F 'alert:' "$WORK/pgcloak-detect.log" >"$WORK/alerts.log" || true
DETECT_ALERTS=$(wc -l <"$WORK/alerts.log")

# Stop pgcloak-detect (it saves its detection state at shutdown), then check
# in that state that detection really saw the analyst's reads.
stop_pid "$DETECT_PID" pgcloak-detect
DETECT_PID=""
DETECT_SEEN=$(python3 - "$WORK/detection-state.json" "$MASKED_USER" <<'PY' || true
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    print(f"no detection state ({e})")
    sys.exit(0)
users = {u["user"]: u for u in doc.get("users", [])}
u = users.get(sys.argv[2])
if u is None:
    print(f"no entry for {sys.argv[2]} in the detection state")
    sys.exit(0)
parts = []
for rel, r in sorted(u.get("relations", {}).items()):
    vols = ", ".join(f"{v['rule']} window of {v['total']} rows" for v in r.get("volume", []))
    parts.append(rel + (f" ({vols})" if vols else ""))
print("ok: read " + "; ".join(parts) + "; categories " + ", ".join(sorted(u.get("categories", {}))))
PY
)
if [[ $DETECT_SEEN == ok:* ]]; then
  DETECT_SEEN=${DETECT_SEEN#ok: }
else
  ANY_FAILED=1
  log "pgcloak-detect's detection did not record the analyst's reads: $DETECT_SEEN"
fi

# --- report ------------------------------------------------------------------

mkdir -p "$(dirname "$RESULTS_FILE")"
python3 - "$RUNS_TSV" "$RESULTS_FILE" "$WORK/detection.yaml" "$WORK/alerts.log" "$DETECT_SEEN" <<PY || die "writing the report failed"
import json, statistics, sys

runs_tsv, results_file, detection_yaml, alerts_log, detect_seen = sys.argv[1:6]
runs = []
for line in open(runs_tsv):
    rnd, test, mode, target, value, lat, failed, ok, cpu, load = line.rstrip("\n").split("\t")
    runs.append({"round": int(rnd), "test": test, "mode": None if mode == "-" else mode,
                 "target": target, "value": float(value), "latency_ms": float(lat),
                 "failed_transactions": int(failed), "ok": ok == "1",
                 "proxy_cpu_us_per_tx": None if cpu == "null" else float(cpu), "loadavg_1m": float(load)})

def med(test, mode, target, key="value"):
    v = [r[key] for r in runs if r["test"] == test and r["mode"] == mode and r["target"] == target
         and r["ok"] and r[key] is not None]
    return statistics.median(v) if v else None

def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None

def fmt(v, spec):
    return "-" if v is None else format(v, spec)

def goal(r, ok):
    return "n/a" if r is None else ("met" if ok(r) else "NOT met")

A, AX, AP, AD = "$MASKED_USER@pgcloak", "$MASKED_USER@pgcloak-detect", "$UNMASKED_USER@pgcloak", "$UNMASKED_USER@direct"
modes = "${MODES[*]}".split()
summary = {"select_only": [], "customer_by_id": [], "full_scan": None}
out = []

def detection(test, m):
    """analyst-detect vs analyst: median ratio, per-round ratios, CPU per tx."""
    a, x = med(test, m, A), med(test, m, AX)
    r = ratio(x, a)
    per_round = []
    for rnd in sorted({q["round"] for q in runs}):
        va = [q["value"] for q in runs if q["test"] == test and q["mode"] == m and q["target"] == A and q["round"] == rnd and q["ok"]]
        vx = [q["value"] for q in runs if q["test"] == test and q["mode"] == m and q["target"] == AX and q["round"] == rnd and q["ok"]]
        if va and vx and va[0]:
            per_round.append(round(vx[0] / va[0], 3))
    ca, cx = med(test, m, A, "proxy_cpu_us_per_tx"), med(test, m, AX, "proxy_cpu_us_per_tx")
    d = {"ratio_detect_to_analyst": r, "ratio_per_round": per_round, "goal": ">= 0.98",
         "goal_met": None if r is None else r >= 0.98,
         "pgcloak_cpu_us_per_tx": {A: ca, AX: cx},
         "pgcloak_cpu_us_per_tx_added": None if ca is None or cx is None else round(cx - ca, 2)}
    cpu = (f"pgcloak CPU us/tx: analyst {fmt(ca, '.1f')}, analyst-detect {fmt(cx, '.1f')}"
           + ("" if d["pgcloak_cpu_us_per_tx_added"] is None else f" ({d['pgcloak_cpu_us_per_tx_added']:+.1f})"))
    out.append(f"{m:<9} detection: analyst-detect/analyst = {fmt(r, '.3f')} (goal >= 0.98) "
               f"{goal(r, lambda v: v >= 0.98)}; per round {' '.join(f'{v:.3f}' for v in per_round) or '-'}; {cpu}")
    return d

out.append("1. pgbench -S on the unprotected pgbench tables (tps, median; goal analyst/admin >= 0.95)")
out.append(f"{'mode':<9} {'analyst@pgcloak':>16} {'analyst-detect':>15} {'admin@pgcloak':>14} {'analyst/admin':>14}  goal")
rows = []
for m in modes:
    a, x, b = med("select_only", m, A), med("select_only", m, AX), med("select_only", m, AP)
    r = ratio(a, b)
    g = goal(r, lambda v: v >= 0.95)
    out.append(f"{m:<9} {fmt(a, '16.1f')} {fmt(x, '15.1f')} {fmt(b, '14.1f')} {fmt(r, '14.3f')}  {g}")
    rows.append({"mode": m, "tps": {A: a, AX: x, AP: b},
        "latency_ms": {t: med("select_only", m, t, "latency_ms") for t in (A, AX, AP)},
        "pgcloak_cpu_us_per_tx": {t: med("select_only", m, t, "proxy_cpu_us_per_tx") for t in (A, AX, AP)},
        "ratio_analyst_to_admin_pgcloak": r, "goal": ">= 0.95", "goal_met": None if r is None else r >= 0.95})
for row in rows:
    row["detection"] = detection("select_only", row["mode"])
summary["select_only"] = rows

out.append("")
out.append("2. SELECT * FROM customers WHERE id = random (tps, median; goal analyst-detect/analyst >= 0.98)")
out.append(f"{'mode':<9} {'analyst@pgcloak':>16} {'analyst-detect':>15} {'admin@direct':>13} {'admin@pgcloak':>14} "
           f"{'analyst/direct':>15} {'analyst/admin@pgc':>18} {'admin@pgc/direct':>17}")
rows = []
for m in modes:
    a, x, d, p = (med("customer_by_id", m, t) for t in (A, AX, AD, AP))
    r1, r2, r3 = ratio(a, d), ratio(a, p), ratio(p, d)
    out.append(f"{m:<9} {fmt(a, '16.1f')} {fmt(x, '15.1f')} {fmt(d, '13.1f')} {fmt(p, '14.1f')} "
               f"{fmt(r1, '15.3f')} {fmt(r2, '18.3f')} {fmt(r3, '17.3f')}")
    rows.append({"mode": m, "tps": {A: a, AX: x, AD: d, AP: p},
        "latency_ms": {t: med("customer_by_id", m, t, "latency_ms") for t in (A, AX, AD, AP)},
        "pgcloak_cpu_us_per_tx": {t: med("customer_by_id", m, t, "proxy_cpu_us_per_tx") for t in (A, AX, AP)},
        "ratio_analyst_pgcloak_to_admin_direct": r1, "ratio_analyst_to_admin_pgcloak": r2,
        "ratio_admin_pgcloak_to_admin_direct": r3})
for row in rows:
    row["detection"] = detection("customer_by_id", row["mode"])
summary["customer_by_id"] = rows

if any(r["test"] == "full_scan" for r in runs):
    a, d, p = med("full_scan", None, A), med("full_scan", None, AD), med("full_scan", None, AP)
    r1, r2, r3 = ratio(a, d), ratio(a, p), ratio(p, d)
    g = goal(r1, lambda x: x <= 1.3)
    out.append("")
    out.append(f"3. SELECT * FROM customers, all ${CUSTOMERS} rows, psql -At to /dev/null "
               "(wall seconds, median; goal analyst/admin-direct <= 1.3)")
    out.append(f"{'analyst@pgcloak':>16} {'admin@direct':>13} {'admin@pgcloak':>14} "
               f"{'analyst/direct':>15} {'analyst/admin@pgc':>18} {'admin@pgc/direct':>17}  goal")
    out.append(f"{fmt(a, '16.3f')} {fmt(d, '13.3f')} {fmt(p, '14.3f')} "
               f"{fmt(r1, '15.3f')} {fmt(r2, '18.3f')} {fmt(r3, '17.3f')}  {g}")
    summary["full_scan"] = {"rows": ${CUSTOMERS}, "seconds": {A: a, AD: d, AP: p},
        "time_ratio_analyst_pgcloak_to_admin_direct": r1, "time_ratio_analyst_to_admin_pgcloak": r2,
        "time_ratio_admin_pgcloak_to_admin_direct": r3, "goal": "<= 1.3",
        "goal_met": None if r1 is None else r1 <= 1.3}

alerts = [l.rstrip("\n") for l in open(alerts_log)]
summary["detection"] = {"config": open(detection_yaml).read(), "alerts": len(alerts),
                        "alert_lines": alerts[:50], "analyst_state_after_runs": detect_seen}

loads = [r["loadavg_1m"] for r in runs]
out.append("")
out.append(f"load average (1 min; includes this benchmark's own clients and backends) after each run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
           f"max {max(loads):.2f}; before ${LOAD_BEFORE%% *}, after ${LOAD_AFTER%% *}")
print("\n".join(out))

doc = {
    "timestamp": "$STAMP",
    "benchmark": "masking_compare",
    "git_commit": "$GIT_COMMIT",
    "host": {"cores": $CORES, "cpu": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$CPU_MODEL"),
             "kernel": "$(uname -r)", "loadavg_before": "$LOAD_BEFORE", "loadavg_after": "$LOAD_AFTER"},
    "versions": {"pgcloak": "$PGCLOAK_VERSION", "pgcloak_build": "$BUILD_TYPE",
                 "pgcloak_sha256_prefix": "$PGCLOAK_SHA", "pgcloak_mtime": "$PGCLOAK_MTIME",
                 "postgresql": "$PG_VERSION"},
    "params": {"shop_scale": $SHOP_SCALE, "customers": $CUSTOMERS, "customers_size": "$CUSTOMERS_SIZE",
               "pgbench_scale": $PGBENCH_SCALE, "clients": $CLIENTS, "jobs": $JOBS, "seconds": $DURATION,
               "rounds": $ROUNDS, "warmup_seconds": $WARMUP, "modes": modes, "scan": bool($SCAN),
               "upstream": "$UPSTREAM", "pgcloak_threads": $PGCLOAK_THREADS,
               "shared_buffers": "$SHARED_BUFFERS", "setup_seconds": $SETUP_SECONDS,
               "masked_user": "$MASKED_USER", "unmasked_user": "$UNMASKED_USER",
               "detect_target": AX},
    "checks": {"pgcloak_log_lines_during_runs": $PGCLOAK_LOG_LINES,
               "pgcloak_detect_log_lines_during_runs": $DETECT_LOG_LINES,
               "detection_alerts": len(alerts), "postgres_log_errors": $PG_ERRORS},
    "runs": runs,
    "summary": summary,
}
with open(results_file, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
PY

echo
for name in pgcloak pgcloak-detect; do
  if [[ $name == pgcloak ]]; then n=$PGCLOAK_LOG_LINES; else n=$DETECT_LOG_LINES; fi
  if ((n > 0)); then
    echo "$name logged $n line(s) at warn or above during the runs; distinct messages:"
    sed -E 's/^[^ ]+ //; s/\[s[0-9]+\] //' "$WORK/$name-runs.log" | sort | uniq -c | sort -rn | head -n 10
  else
    echo "$name logged nothing at warn or above during the runs."
  fi
done
echo "detection evaluated the analyst's reads: $DETECT_SEEN"
if ((DETECT_ALERTS > 0)); then
  echo "WARNING: $DETECT_ALERTS detection alert(s) (\"alert:\" in pgcloak-detect's log) fired during the benchmark;"
  echo "the analyst-detect figures include raising them (first 10):"
  head -n 10 "$WORK/alerts.log"
else
  echo "detection alerts (\"alert:\" in pgcloak-detect's log): 0"
fi
if ((PG_ERRORS > 0)); then
  echo "PostgreSQL logged $PG_ERRORS ERROR/FATAL/PANIC line(s) (first 10):"
  grep -E '(ERROR|FATAL|PANIC):' "$PG_DIR/postgres.log" | head -n 10
fi
echo "results: $RESULTS_FILE"

if ((ANY_FAILED)); then
  log "some runs failed; logs are in $WORK (kept)"
  BENCH_KEEP=1
  exit 1
fi
