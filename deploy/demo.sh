#!/usr/bin/env bash
# pgcloak demo: a PostgreSQL 15 cluster with a small `shop` database full of
# fake customer data, and pgcloak in front of it with TLS required.
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
ROLES=(app analyst support admin)

# Demo passwords. Everything listens on loopback only; do not reuse these.
password_for() { echo "$1-demo-pw"; }

if [[ -t 1 ]]; then
  say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
else
  say() { printf 'demo: %s\n' "$*"; }
fi
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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

# Deterministic fake data: names, emails, phones, IDs and card numbers are
# derived from the row number with modular arithmetic, so every run produces
# exactly the same rows. Card numbers pass the Luhn check; phone numbers use
# the fictional 555 exchange, national IDs the never-issued 9xx SSN area, and
# emails the reserved example.* domains.
demo_sql() {
  local r
  for r in "${ROLES[@]}"; do
    printf "CREATE ROLE %s LOGIN PASSWORD '%s';\n" "$r" "$(password_for "$r")"
  done
  cat <<'SQL'
CREATE DATABASE shop OWNER app;
REVOKE CONNECT ON DATABASE shop FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO app, analyst, support, admin;
\connect shop
SET ROLE app;

CREATE FUNCTION pg_temp.luhn(payload text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT payload || ((10 - sum(d) % 10) % 10)::text
  FROM (SELECT CASE WHEN (length(payload) - i) % 2 = 0
                    THEN (2 * substr(payload, i, 1)::int) / 10 + (2 * substr(payload, i, 1)::int) % 10
                    ELSE substr(payload, i, 1)::int END AS d
        FROM generate_series(1, length(payload)) AS i) AS digits
$$;

CREATE TABLE customers (
  id          integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  full_name   text        NOT NULL,
  email       text        NOT NULL UNIQUE,
  phone       text,
  national_id text,
  card_number text,
  birth_date  date,
  address     text,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
  id          integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  customer_id integer       NOT NULL REFERENCES customers (id),
  amount      numeric(10,2) NOT NULL CHECK (amount >= 0),
  created_at  timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);

CREATE TABLE support_notes (
  id          integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  customer_id integer     NOT NULL REFERENCES customers (id),
  author      text        NOT NULL,
  body        text        NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX support_notes_customer_id_idx ON support_notes (customer_id);

WITH
  first_names(a) AS (VALUES (ARRAY[
    'Olivia','Liam','Emma','Noah','Amelia','Oliver','Sophia','Elijah','Charlotte','James',
    'Ava','Lucas','Mia','Mateo','Isabella','Ethan','Harper','Levi','Evelyn','Leo',
    'Hannah','Jonas','Sofia','Luca','Chloe','Mohammed','Aisha','Hiroshi','Yuki','Priya',
    'Arjun','Fatima','Omar','Elena','Mikhail','Ingrid','Lars','Camila','Diego','Zoe'])),
  last_names(a) AS (VALUES (ARRAY[
    'Smith','Johnson','Williams','Brown','Garcia','Miller','Davis','Rodriguez','Martinez','Hernandez',
    'Lopez','Wilson','Anderson','Thomas','Taylor','Moore','Jackson','Martin','Lee','Thompson',
    'White','Harris','Clark','Lewis','Walker','Young','King','Wright','Nguyen','Patel',
    'Kim','Schmidt','Muller','Rossi','Dubois','Novak','Kowalski','Silva','Tanaka','Okafor'])),
  streets(a) AS (VALUES (ARRAY[
    'Maple Street','Oak Avenue','Pine Road','Cedar Lane','Elm Street','Birch Way',
    'Lakeview Drive','Hillcrest Road','Sunset Boulevard','River Road','Park Avenue','Mill Lane'])),
  cities(a) AS (VALUES (ARRAY[
    'Springfield, IL 627','Riverton, WY 825','Fairview, OR 970','Georgetown, TX 786',
    'Madison, WI 537','Franklin, TN 370','Salem, MA 019','Clinton, NY 133'])),
  area_codes(a) AS (VALUES (ARRAY['212','312','415','503','617','702','805','919'])),
  domains(a) AS (VALUES (ARRAY['example.com','example.net','example.org','mail.example.com','shop.example'])),
  n AS (SELECT i, i - 1 AS z FROM generate_series(1, 1000) AS i)
INSERT INTO customers (id, full_name, email, phone, national_id, card_number, birth_date, address, created_at)
SELECT
  n.i,
  f.a[1 + (7 * n.z) % 40] || ' ' || l.a[1 + ((n.z / 40) * 11 + n.z) % 40],
  lower(f.a[1 + (7 * n.z) % 40] || '.' || l.a[1 + ((n.z / 40) * 11 + n.z) % 40])
    || '@' || d.a[1 + n.z % 5],
  '+1 (' || ac.a[1 + (n.z * 3) % 8] || ') 555-' || lpad(((n.i * 7919) % 10000)::text, 4, '0'),
  (900 + (n.i * 17) % 100)::text || '-' || lpad((1 + (n.i * 29) % 99)::text, 2, '0')
    || '-' || lpad((1 + (n.i * 7877 + 1234) % 9999)::text, 4, '0'),
  CASE n.i % 3
    WHEN 0 THEN pg_temp.luhn('4' || lpad(((n.i::bigint * 982451653 + 31415926535897) % 100000000000000)::text, 14, '0'))
    WHEN 1 THEN pg_temp.luhn('5' || (1 + n.i % 5)::text || lpad(((n.i::bigint * 472882049 + 2718281828459) % 10000000000000)::text, 13, '0'))
    ELSE pg_temp.luhn('37' || lpad(((n.i::bigint * 15485863 + 161803398874) % 1000000000000)::text, 12, '0'))
  END,
  date '1945-01-01' + (n.i * 7919) % 21000,
  (1 + (n.i * 37) % 9899)::text || ' ' || s.a[1 + (n.i * 5) % 12] || ', '
    || c.a[1 + (n.i * 3) % 8] || lpad(((n.i * 13) % 100)::text, 2, '0'),
  timestamptz '2021-01-04 09:00:00+00' + n.z * interval '1 day 2 hours 13 minutes'
FROM n, first_names f, last_names l, streets s, cities c, area_codes ac, domains d;
SELECT setval(pg_get_serial_sequence('customers', 'id'), 1000);

INSERT INTO orders (id, customer_id, amount, created_at)
SELECT i,
       1 + (i * 7919) % 1000,
       round(4.99 + ((i::bigint * 104729) % 49500) / 100.0, 2),
       timestamptz '2021-02-01 00:00:00+00' + i * interval '5 hours 11 minutes'
FROM generate_series(1, 5000) AS i;
SELECT setval(pg_get_serial_sequence('orders', 'id'), 5000);

INSERT INTO support_notes (id, customer_id, author, body, created_at)
SELECT n.i, c.id,
       (ARRAY['Dana (support)','Miguel (support)','Keiko (support)','Sam (billing)'])[1 + n.i % 4],
       CASE n.i % 6
         WHEN 0 THEN 'Customer called from ' || c.phone || ' asking to update the shipping address. '
                     || 'Confirmed identity via ' || c.email || '.'
         WHEN 1 THEN 'Refund requested for order #' || (1 + (n.i * 131) % 5000) || '. Reply sent to '
                     || c.email || '; prefers a call back on ' || c.phone || ' after 5pm.'
         WHEN 2 THEN 'Card ending ' || right(c.card_number, 4) || ' charged twice. Escalated to '
                     || 'billing@shop.example (ext. 4410). Customer reachable at ' || c.phone || '.'
         WHEN 3 THEN 'Password reset mail bounced. Customer gave an alternate address '
                     || split_part(c.email, '@', 1) || '.home@example.net and mobile '
                     || '+1 (555) 010-' || lpad((n.i % 100)::text, 4, '0') || '.'
         WHEN 4 THEN 'Data deletion request (GDPR art. 17) received from ' || c.email
                     || '. Verified with date of birth ' || to_char(c.birth_date, 'YYYY-MM-DD') || '.'
         ELSE 'Customer asked why we need SSN ' || c.national_id || ' on file; explained KYC policy. '
              || 'Follow-up by phone ' || c.phone || '.'
       END,
       c.created_at + (n.i % 90) * interval '1 day' + interval '3 hours'
FROM generate_series(1, 300) AS n(i)
JOIN customers c ON c.id = 1 + (n.i * 337) % 1000;
SELECT setval(pg_get_serial_sequence('support_notes', 'id'), 300);

RESET ROLE;
ANALYZE;

-- analyst: reporting over customers and orders, no support notes.
GRANT USAGE ON SCHEMA public TO analyst, support, admin;
GRANT SELECT ON customers, orders TO analyst;
-- support: reads customers, reads and writes support notes.
GRANT SELECT ON customers TO support;
GRANT SELECT, INSERT, UPDATE ON support_notes TO support;
GRANT USAGE ON SEQUENCE support_notes_id_seq TO support;
-- admin: full data access, no DDL (app owns the schema).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO admin;
SQL
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

  say "loading the shop database"
  demo_sql | pgc_psql "$PG_DIR" >/dev/null
  local counts
  counts=$(pgc_psql "$PG_DIR" -d shop -Atc \
    "SELECT (SELECT count(*) FROM customers) || ' customers, ' || (SELECT count(*) FROM orders)
            || ' orders, ' || (SELECT count(*) FROM support_notes) || ' support notes'")
  say "loaded $counts"

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
      -c "SELECT count(*) FROM customers" 2>&1) || [[ $out != 1000 ]]; then
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

Connect through pgcloak as each role:

EOF
  for r in "${ROLES[@]}"; do
    printf '  %-8s psql "postgresql://%s:%s@127.0.0.1:%s/shop?sslmode=require"\n' \
      "$r" "$r" "$(password_for "$r")" "$PROXY_PORT"
  done
  cat <<EOF

To also verify pgcloak's certificate (self-signed demo CA):

  psql "postgresql://analyst:$(password_for analyst)@localhost:$PROXY_PORT/shop?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.crt"

Try:  SELECT full_name, email, card_number FROM customers LIMIT 5;
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
