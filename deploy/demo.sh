#!/usr/bin/env bash
# pgcloak demo: a PostgreSQL 15 cluster with the `shop` fixture (fake customer
# data, group roles; see deploy/fixture/README.md), and pgcloak in front of it
# with TLS required.
#
#   deploy/demo.sh [start]   install packages, build, (re)create and start it all
#   deploy/demo.sh stop      stop pgcloak, then the demo cluster
#   deploy/demo.sh status    say what is running
#
# Everything lives in .demo/ at the repository root (git-ignored). `start` is
# idempotent: it stops a previous demo, recreates the cluster and the
# certificate from scratch, and starts again.
#
# Environment:
#   DEMO_PG_PORT=55432       port of the demo PostgreSQL (127.0.0.1 + socket)
#   DEMO_PGCLOAK_PORT=6432   port pgcloak listens on (127.0.0.1)
#   DEMO_SCALE=1             fixture scale: 10,000 x N customers
#   DEMO_SKIP_DEPS=1         do not run deploy/install-deps.sh
#   DEMO_SKIP_BUILD=1        do not build; use PGCLOAK_BIN or build/proxy/pgcloak
#   PGCLOAK_BIN=PATH         pgcloak binary to run (implies no build)
#
# Works as root (the cluster then runs as the `postgres` OS user) and as a
# normal user (packages are installed through sudo when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib/pgcluster.sh
source "$ROOT/deploy/lib/pgcluster.sh"

DEMO_DIR="$ROOT/.demo"
PG_DIR="$DEMO_DIR/pg"
TLS_DIR="$DEMO_DIR/tls"
CONFIG="$DEMO_DIR/pgcloak.yaml"
PID_FILE="$DEMO_DIR/pgcloak.pid"
LOG_FILE="$DEMO_DIR/pgcloak.log"
PG_PORT=${DEMO_PG_PORT:-55432}
PROXY_PORT=${DEMO_PGCLOAK_PORT:-6432}
SCALE=${DEMO_SCALE:-1}
# The fixture's logins (deploy/fixture/shop.sql); `pgcloak` is the gateway's
# own catalog login and is not listed.
ROLES=(admin app support analyst)

# Demo passwords, set by deploy/fixture/shop.sql. Everything listens on
# loopback only; do not reuse these.
password_for() { echo "$1-demo"; }

if [[ -t 1 ]]; then
  say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
else
  say() { printf 'demo: %s\n' "$*"; }
fi
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

check_port_number() {
  [[ $2 =~ ^[0-9]+$ ]] && (($2 > 0 && $2 < 65536)) || die "$1=$2 is not a valid port"
}

# The PID in the pid file, if that process is alive and is a pgcloak.
pgcloak_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  ps -p "$pid" -o args= 2>/dev/null | grep -q pgcloak || return 1
  echo "$pid"
}

stop_pgcloak() {
  local pid
  if pid=$(pgcloak_pid); then
    say "stopping pgcloak (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # The demo config sets shutdown_grace to 5s, and pgcloak then allows 5s
    # for forced closes; wait a little longer than both.
    local i
    for ((i = 0; i < 150; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pgcloak did not exit within 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -f "$PID_FILE"
}

stop_cluster() {
  if pgc_running "$PG_DIR"; then
    say "stopping the demo PostgreSQL"
    pgc_stop "$PG_DIR" 30
  fi
}

cmd_stop() {
  stop_pgcloak
  stop_cluster
  say "stopped"
}

cmd_status() {
  local pid rc=0
  if pid=$(pgcloak_pid); then
    say "pgcloak running (pid $pid), log $LOG_FILE"
  else
    say "pgcloak not running"; rc=1
  fi
  if pgc_running "$PG_DIR"; then
    say "demo PostgreSQL running on port $(pgc_port "$PG_DIR") (data in $PG_DIR)"
  else
    say "demo PostgreSQL not running"; rc=1
  fi
  return $rc
}

port_taken_message() {
  local what=$1 var=$2 port=$3 who=""
  if command -v ss >/dev/null; then
    who=$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*users:((\("[^"]*"\).*/\1/p' | head -n 1)
  fi
  die "port $port for $what is already in use${who:+ by $who}; free it or pick another with $var=PORT"
}

build_pgcloak() {
  if [[ -n ${PGCLOAK_BIN:-} ]]; then
    [[ -x $PGCLOAK_BIN ]] || die "PGCLOAK_BIN=$PGCLOAK_BIN is not executable"
    return
  fi
  PGCLOAK_BIN="$ROOT/build/proxy/pgcloak"
  if [[ ${DEMO_SKIP_BUILD:-0} == 1 ]]; then
    [[ -x $PGCLOAK_BIN ]] || die "$PGCLOAK_BIN missing and DEMO_SKIP_BUILD=1"
    return
  fi
  if [[ -f $ROOT/build/CMakeCache.txt ]] &&
    ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$ROOT/build/CMakeCache.txt"; then
    die "build/ was configured with another CMake generator; remove build/ or set PGCLOAK_BIN"
  fi
  say "building pgcloak (Release, build/)"
  cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null ||
    die "cmake configure failed"
  cmake --build "$ROOT/build" --target pgcloak || die "build failed"
  [[ -x $PGCLOAK_BIN ]] || die "build finished but $PGCLOAK_BIN is missing"
}

write_config() {
  cat >"$CONFIG" <<EOF
# Written by deploy/demo.sh; regenerated on every start.
listen: ["127.0.0.1:$PROXY_PORT"]
unix_socket_dir: ""
threads: 0
max_connections: 200
tls:
  cert_file: "$TLS_DIR/server.crt"
  key_file: "$TLS_DIR/server.key"
  require: true
  client_ca_file: ""
  min_version: "1.2"
upstream:
  # Loopback TCP, plaintext. Not the cluster's Unix socket: pg_hba.conf trusts
  # local connections (for the scripts' superuser access), and pgcloak relays
  # authentication, so over the socket any client would get in without a
  # password. Over 127.0.0.1 PostgreSQL demands SCRAM. Plaintext keeps
  # clients' default channel_binding=prefer working (see README.md).
  host: 127.0.0.1
  port: $PG_PORT
  sslmode: disable
  sslrootcert: ""
  connect_timeout: 5s
timeouts:
  handshake: 10s
  client_idle: 0s
  shutdown_grace: 5s
log:
  level: info
EOF
}

cmd_start() {
  check_port_number DEMO_PG_PORT "$PG_PORT"
  check_port_number DEMO_PGCLOAK_PORT "$PROXY_PORT"
  [[ $PG_PORT != "$PROXY_PORT" ]] || die "DEMO_PG_PORT and DEMO_PGCLOAK_PORT must differ"
  [[ $SCALE =~ ^[1-9][0-9]{0,3}$ ]] || die "DEMO_SCALE=$SCALE is not an integer from 1 to 9999"

  if [[ ${DEMO_SKIP_DEPS:-0} != 1 ]]; then
    say "checking packages (deploy/install-deps.sh)"
    "$ROOT/deploy/install-deps.sh"
  fi
  build_pgcloak

  # Restart cleanly: stop whatever a previous run left behind.
  stop_pgcloak
  stop_cluster
  pgc_port_free "$PG_PORT" || port_taken_message "the demo PostgreSQL" DEMO_PG_PORT "$PG_PORT"
  pgc_port_free "$PROXY_PORT" || port_taken_message pgcloak DEMO_PGCLOAK_PORT "$PROXY_PORT"

  mkdir -p "$DEMO_DIR"
  rm -rf "$PG_DIR" "$TLS_DIR"

  say "generating a self-signed CA and server certificate in $TLS_DIR"
  pgc_gen_certs "$TLS_DIR"

  say "creating the demo PostgreSQL 15 cluster in $PG_DIR (port $PG_PORT)"
  pgc_init "$PG_DIR" "$PG_PORT" --conf "shared_buffers = 64MB" --conf "max_connections = 100"
  pgc_start "$PG_DIR" 60

  say "loading the shop fixture (scale $SCALE)"
  local loaded
  loaded=$("$ROOT/deploy/fixture/load.sh" --host "$PG_DIR" --port "$PG_PORT" \
    --os-user "$PGC_OS_USER" --superuser "$PGC_SUPERUSER" --dbname shop --scale "$SCALE") ||
    die "loading the shop fixture failed"
  say "$loaded"

  write_config
  "$PGCLOAK_BIN" --check-config "$CONFIG" >/dev/null || die "pgcloak rejected $CONFIG"

  say "starting pgcloak on 127.0.0.1:$PROXY_PORT"
  if [[ -f $LOG_FILE ]]; then mv -f "$LOG_FILE" "$LOG_FILE.1"; fi
  nohup "$PGCLOAK_BIN" --config "$CONFIG" >"$LOG_FILE" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PID_FILE"

  local i up=0
  for ((i = 0; i < 150; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      die "pgcloak exited during startup; see $LOG_FILE"
    fi
    if pgc_wait_tcp 127.0.0.1 "$PROXY_PORT" 0; then up=1; break; fi
    sleep 0.1
  done
  ((up)) || { stop_pgcloak; die "pgcloak did not accept connections within 15s; see $LOG_FILE"; }

  local out
  if ! out=$(PGPASSWORD=$(password_for analyst) PGCONNECT_TIMEOUT=10 psql -X -At \
      "host=127.0.0.1 port=$PROXY_PORT dbname=shop user=analyst sslmode=verify-full sslrootcert=$TLS_DIR/ca.crt" \
      -c "SELECT count(*) FROM customers" 2>&1) || [[ $out != $((SCALE * 10000)) ]]; then
    echo "$out" >&2
    die "a test query through pgcloak failed; see $LOG_FILE"
  fi
  say "verified: a TLS query through pgcloak returned $out customers"

  local r
  cat <<EOF

pgcloak is running in front of the demo database.

  pgcloak     127.0.0.1:$PROXY_PORT  (TLS required)   pid $pid
  PostgreSQL  127.0.0.1:$PG_PORT (direct, for comparison), data in $PG_DIR
  pgcloak log $LOG_FILE
  config      $CONFIG

Connect through pgcloak as each login (demo passwords, loopback only):

EOF
  for r in "${ROLES[@]}"; do
    printf '  %-8s psql "postgresql://%s:%s@127.0.0.1:%s/shop?sslmode=require"\n' \
      "$r" "$r" "$(password_for "$r")" "$PROXY_PORT"
  done
  cat <<EOF

Groups: admin -> data_admins, app -> app_services, support -> support_team,
analyst -> bi_readers -> analytics_team. The login pgcloak (password
$(password_for pgcloak)) is for pgcloak's own catalog connection and may call
pgcloak.get_auth(); see deploy/fixture/README.md.
EOF
  cat <<EOF

To also verify pgcloak's certificate (self-signed demo CA):

  psql "postgresql://analyst:$(password_for analyst)@localhost:$PROXY_PORT/shop?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.crt"

Try:  SELECT full_name, email, ssn, card_number, notes FROM customers LIMIT 5;
      (masking is planned; today pgcloak forwards results unchanged)

Stop everything:  deploy/demo.sh stop
EOF
}

case ${1:-start} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
