#!/usr/bin/env bash
# pgcloak demo: a PostgreSQL 15 cluster with the `shop` fixture (fake customer
# data, group roles; see deploy/fixture/README.md), and pgcloak in front of it
# with TLS required and per-role column masking on (docs/masking.md).
#
#   deploy/demo.sh [start]   install packages, build, (re)create and start it all
#   deploy/demo.sh stop      stop pgcloak, then the demo cluster
#   deploy/demo.sh status    say what is running
#
# Everything lives in .demo/ at the repository root (git-ignored). `start` is
# idempotent: it stops a previous demo, recreates the cluster, the
# certificate and the mask key from scratch, and starts again.
#
# Environment:
#   DEMO_PG_PORT=55432       port of the demo PostgreSQL (127.0.0.1 + socket)
#   DEMO_PGCLOAK_PORT=6432   port pgcloak listens on (127.0.0.1)
#   DEMO_METRICS_PORT=9930   port of pgcloak's metrics and console (127.0.0.1)
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
# Secrets, mode 600: the key of the hash and pseudonym masks (random, new on
# every start) and the password of pgcloak's catalog login.
MASK_KEY_FILE="$DEMO_DIR/mask.key"
CATALOG_PASSWORD_FILE="$DEMO_DIR/catalog.password"
# The audit trail (docs/audit.md): pgcloak ratchets audit.key forward at each
# rotation; audit-initial.key is the copy that verifies the whole trail.
AUDIT_DIR="$DEMO_DIR/audit"
AUDIT_KEY_FILE="$DEMO_DIR/audit.key"
AUDIT_INITIAL_KEY_FILE="$DEMO_DIR/audit-initial.key"
PG_PORT=${DEMO_PG_PORT:-55432}
PROXY_PORT=${DEMO_PGCLOAK_PORT:-6432}
METRICS_PORT=${DEMO_METRICS_PORT:-9930}
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
    local loaded
    loaded=$(grep -o 'masking catalog generation [0-9]* loaded.*' "$LOG_FILE" 2>/dev/null | tail -n 1 || true)
    if [[ -n $loaded ]]; then
      say "masking on: ${loaded%% from *} (${loaded##*: })"
    else
      say "masking on, but its catalog has not loaded: masked sessions are refused (see the log)"
    fi
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
# pgcloak's own connection to PostgreSQL: it reads shop's catalog (tables,
# views, partitions, functions, role memberships) to resolve the masking
# rules. The pgcloak login has no table privileges.
catalog:
  user: pgcloak
  password_file: "$CATALOG_PASSWORD_FILE"
  dbname: shop
  # Re-read this often, and at once after DDL that pgcloak analysed for a
  # masked session. Objects created directly on PostgreSQL, or by admin and
  # app (whose statements pass unanalysed), are seen at the next refresh.
  refresh_interval: 10s
# Per-role column masking (docs/masking.md). Policies name the fixture's
# group roles, never the logins; the first policy naming a group the login
# belongs to (nested groups included) applies.
masking:
  hash_key_file: "$MASK_KEY_FILE"
  protected_columns:
    - {column: public.customers.full_name,   category: person_name}
    - {column: public.customers.email,       category: email}
    - {column: public.customers.phone,       category: phone}
    - {column: public.customers.ssn,         category: national_id}
    - {column: public.customers.card_number, category: card_number}
    - {column: public.customers.birth_date,  category: birth_date}
    - {column: public.customers.address,     category: address}
    - {column: public.customers.notes,       category: free_text}
    - {column: public.payments.card_number,  category: card_number}
  policies:
    # admin: sees everything.
    - name: admins
      roles: [data_admins]
      default: allow
    # app: the application's service account, unmasked. Its statements pass
    # through byte for byte.
    - name: application
      roles: [app_services]
      default: allow
    # support: enough to recognise a customer on the phone.
    - name: support
      roles: [support_team]
      default: redact                    # address and anything not listed
      rules:
        person_name: allow
        email: email                     # j***@example.com
        phone: {mask: partial, keep_first: 0, keep_last: 4, fill: "*"}
        card_number: last4               # ****-****-****-4242
        birth_date: {mask: generalize, to: year}   # 1987-01-01
        national_id: redact              # ***
        free_text: redact_patterns       # emails, cards, SSNs, phones in notes
    # analyst (via bi_readers): everything personal masked; the email is a
    # keyed hash, so joins and GROUP BY on it still work.
    - name: analytics
      roles: [analytics_team]
      default: redact
      rules:
        email: {mask: hash, length: 16}
  # Logins no policy names (none in the fixture): everything redacted.
  default_policy: {default: redact, rules: {}}
# Who read what, when: one HMAC-chained JSON record per event, literals
# never written (docs/audit.md). Verify with:
#   pgcloak audit verify --key-file $AUDIT_INITIAL_KEY_FILE $AUDIT_DIR/audit.jsonl*
audit:
  durability: batched
  flush_interval: 200ms
  on_failure: fail_closed
  key_file: "$AUDIT_KEY_FILE"
  file:
    path: "$AUDIT_DIR/audit.jsonl"
    rotate_size: 64MiB
    rotate_age: 24h
    compress: zstd
    retention_days: 30
# Prometheus metrics, health checks and the security console, on loopback
# (docs/metrics.md). Off loopback, set token_file.
metrics:
  listen: "127.0.0.1:$METRICS_PORT"
EOF
}

# The mask key (32 random bytes, hex) and the catalog login's password, both
# readable by their owner only.
write_secrets() {
  (
    umask 077
    rm -f "$MASK_KEY_FILE" "$CATALOG_PASSWORD_FILE"
    openssl rand -hex 32 >"$MASK_KEY_FILE"
    password_for pgcloak >"$CATALOG_PASSWORD_FILE"
    # A fresh trail per demo start, with a fresh chain key.
    rm -rf "$AUDIT_DIR" "$AUDIT_KEY_FILE" "$AUDIT_INITIAL_KEY_FILE"
    mkdir -p "$AUDIT_DIR"
    openssl rand -hex 32 >"$AUDIT_INITIAL_KEY_FILE"
    cp "$AUDIT_INITIAL_KEY_FILE" "$AUDIT_KEY_FILE"
  ) || die "cannot write the demo secrets into $DEMO_DIR"
  chmod 600 "$MASK_KEY_FILE" "$CATALOG_PASSWORD_FILE" "$AUDIT_KEY_FILE" "$AUDIT_INITIAL_KEY_FILE"
}

# psql through pgcloak as a demo login, verifying pgcloak's certificate.
# Prints the unaligned result (fields separated by |) or psql's error.
via_pgcloak() {
  local user=$1 sql=$2
  PGPASSWORD=$(password_for "$user") PGCONNECT_TIMEOUT=10 psql -X -At -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PROXY_PORT dbname=shop user=$user sslmode=verify-full sslrootcert=$TLS_DIR/ca.crt" \
    -c "$sql" 2>&1
}

# The same, directly on the demo PostgreSQL (for comparison).
direct() {
  local user=$1 sql=$2
  PGPASSWORD=$(password_for "$user") PGCONNECT_TIMEOUT=10 psql -X -At -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PG_PORT dbname=shop user=$user sslmode=disable" -c "$sql" 2>&1
}

# pgcloak reads the catalog right after it starts; until the first read
# succeeds it refuses every statement of every session with 57P03 (fail
# closed).
wait_for_masking() {
  local i out
  for ((i = 0; i < 150; i++)); do
    if out=$(via_pgcloak analyst "SELECT 1 FROM customers LIMIT 1"); then return 0; fi
    [[ $out == *"catalog has not loaded"* ]] || { echo "$out" >&2; return 1; }
    sleep 0.1
  done
  echo "$out" >&2
  return 1
}

# Checks that each login sees what its policy says, on customer 1 (which has
# every column set), and keeps what each saw in SEEN_* for the summary.
SAMPLE_SQL="SELECT full_name, email, phone, ssn, card_number, birth_date FROM customers WHERE id = 1"
verify_masking() {
  local raw admin support analyst refused
  raw=$(direct admin "$SAMPLE_SQL") || { echo "$raw" >&2; return 1; }
  admin=$(via_pgcloak admin "$SAMPLE_SQL") || { echo "$admin" >&2; return 1; }
  support=$(via_pgcloak support "$SAMPLE_SQL") || { echo "$support" >&2; return 1; }
  analyst=$(via_pgcloak analyst "$SAMPLE_SQL") || { echo "$analyst" >&2; return 1; }
  local r_name r_email r_phone r_ssn r_card r_birth
  IFS='|' read -r r_name r_email r_phone r_ssn r_card r_birth <<<"$raw"
  local s_name s_email s_phone s_ssn s_card s_birth
  IFS='|' read -r s_name s_email s_phone s_ssn s_card s_birth <<<"$support"
  local a_name a_email a_phone a_ssn a_card a_birth
  IFS='|' read -r a_name a_email a_phone a_ssn a_card a_birth <<<"$analyst"
  local bad=()
  [[ -n $r_email && -n $r_phone && -n $r_ssn && -n $r_card && -n $r_birth ]] ||
    bad+=("customer 1 has NULLs; the checks below need every column set")
  [[ $admin == "$raw" ]] || bad+=("admin does not see the stored values: '$admin'")
  [[ $s_name == "$r_name" ]] || bad+=("support: full_name should be unmasked, is '$s_name'")
  [[ $s_email == "${r_email:0:1}***@${r_email##*@}" ]] || bad+=("support: email is '$s_email'")
  [[ $s_phone =~ ^\*+[0-9]{4}$ && ${s_phone: -4} == "${r_phone: -4}" ]] ||
    bad+=("support: phone is '$s_phone'")
  [[ $s_ssn == '***' ]] || bad+=("support: ssn is '$s_ssn'")
  [[ $s_card =~ ^\*{4}-\*{4}-\*{4}-[0-9]{4}$ && ${s_card: -4} == "${r_card: -4}" ]] ||
    bad+=("support: card_number is '$s_card'")
  [[ $s_birth == "${r_birth:0:4}-01-01" ]] || bad+=("support: birth_date is '$s_birth'")
  [[ $a_email =~ ^[0-9a-f]{16}$ ]] || bad+=("analyst: email is '$a_email'")
  [[ $a_name == '***' && $a_phone == '***' && $a_ssn == '***' && $a_card == '***' ]] ||
    bad+=("analyst: full_name/phone/ssn/card_number are '$a_name' '$a_phone' '$a_ssn' '$a_card'")
  [[ $a_birth == 1900-01-01 ]] || bad+=("analyst: birth_date is '$a_birth'")
  # A refusal: a masked login cannot switch to an unmasked role.
  if refused=$(via_pgcloak support "SET ROLE data_admins"); then
    bad+=("support: SET ROLE data_admins was not refused")
  elif [[ $refused != *"rule deny:set-role"* ]]; then
    bad+=("support: SET ROLE data_admins failed in an unexpected way: $refused")
  fi
  if ((${#bad[@]})); then
    printf '  %s\n' "${bad[@]}" >&2
    return 1
  fi
  SEEN_ADMIN="$r_email | $r_ssn | $r_card | $r_birth"
  SEEN_SUPPORT="$s_email | $s_ssn | $s_card | $s_birth"
  SEEN_ANALYST="$a_email | $a_ssn | $a_card | $a_birth"
}

# The checks above must be in the audit trail, attributed and verifiable,
# and no stored value of customer 1 may appear in it.
verify_audit() {
  local i out
  for ((i = 0; i < 50; i++)); do
    if grep -qs '"user":"analyst"' "$AUDIT_DIR"/audit.jsonl &&
      grep -qs '"rule":"deny:set-role"' "$AUDIT_DIR"/audit.jsonl; then
      break
    fi
    sleep 0.1
  done
  grep -qs '"user":"analyst".*"decision":"masked"' "$AUDIT_DIR"/audit.jsonl ||
    { echo "  the analyst's masked statements are not in $AUDIT_DIR/audit.jsonl" >&2; return 1; }
  grep -qs '"decision":"denied".*"rule":"deny:set-role"' "$AUDIT_DIR"/audit.jsonl ||
    { echo "  support's refused SET ROLE is not in $AUDIT_DIR/audit.jsonl" >&2; return 1; }
  local v
  for v in ${SEEN_ADMIN//|/ }; do
    if [[ ${#v} -ge 6 ]] && grep -qsF -- "$v" "$AUDIT_DIR"/audit.jsonl*; then
      echo "  the stored value '$v' appears in the audit trail" >&2
      return 1
    fi
  done
  out=$("$PGCLOAK_BIN" audit verify --key-file "$AUDIT_INITIAL_KEY_FILE" "$AUDIT_DIR"/audit.jsonl* 2>&1) ||
    { echo "  $out" >&2; return 1; }
  AUDIT_SUMMARY=${out%%$'\n'*}
}

# The metrics endpoint answers, is ready, counts the checks' masked and
# denied statements, and the console lists the denial.
verify_metrics() {
  local base="http://127.0.0.1:$METRICS_PORT" out
  out=$(curl -sf --max-time 5 "$base/readyz") || { echo "  $base/readyz: ${out:-no answer}" >&2; return 1; }
  out=$(curl -sf --max-time 5 "$base/metrics") || { echo "  $base/metrics did not answer" >&2; return 1; }
  grep -q '^pgcloak_statements_total{.*decision="masked".*user="analyst"' <<<"$out" ||
    { echo "  /metrics does not count the analyst's masked statements" >&2; return 1; }
  grep -q '^pgcloak_denials_total{rule="deny:set-role"} [1-9]' <<<"$out" ||
    { echo "  /metrics does not count the refused SET ROLE" >&2; return 1; }
  out=$(curl -sf --max-time 5 "$base/api/console") || { echo "  $base/api/console did not answer" >&2; return 1; }
  grep -q '"rule":"deny:set-role"' <<<"$out" ||
    { echo "  the console does not list the refused SET ROLE" >&2; return 1; }
}

cmd_start() {
  check_port_number DEMO_PG_PORT "$PG_PORT"
  check_port_number DEMO_PGCLOAK_PORT "$PROXY_PORT"
  check_port_number DEMO_METRICS_PORT "$METRICS_PORT"
  [[ $PG_PORT != "$PROXY_PORT" ]] || die "DEMO_PG_PORT and DEMO_PGCLOAK_PORT must differ"
  [[ $METRICS_PORT != "$PROXY_PORT" && $METRICS_PORT != "$PG_PORT" ]] ||
    die "DEMO_METRICS_PORT must differ from the other ports"
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

  say "generating a random mask key in $MASK_KEY_FILE (mode 600)"
  write_secrets
  write_config
  "$PGCLOAK_BIN" --check-config "$CONFIG" >/dev/null || die "pgcloak rejected $CONFIG"

  say "starting pgcloak on 127.0.0.1:$PROXY_PORT with masking on"
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

  wait_for_masking || {
    stop_pgcloak
    die "pgcloak did not load the masking catalog within 15s; see $LOG_FILE"
  }
  local out
  if ! out=$(via_pgcloak analyst "SELECT count(*) FROM customers") || [[ $out != $((SCALE * 10000)) ]]; then
    echo "$out" >&2
    stop_pgcloak
    die "a test query through pgcloak failed; see $LOG_FILE"
  fi
  say "verified: a TLS query through pgcloak returned $out customers"
  # Do not leave a gateway running that masks wrongly.
  verify_masking || { stop_pgcloak; die "masking does not work as configured; see $LOG_FILE"; }
  say "verified: admin sees stored values, support partial masks, analyst hashes and redactions," \
    "SET ROLE is refused"
  verify_audit || { stop_pgcloak; die "the audit trail is not as expected; see $LOG_FILE"; }
  say "verified: the audit trail has these checks, no customer values, and its chain verifies" \
    "($AUDIT_SUMMARY)"
  verify_metrics || { stop_pgcloak; die "the metrics endpoint is not as expected; see $LOG_FILE"; }
  say "verified: /readyz is ready, /metrics counts the masked and denied checks, the console lists the denial"

  local r
  cat <<EOF

pgcloak is running in front of the demo database, masking by role.

  pgcloak     127.0.0.1:$PROXY_PORT  (TLS required)   pid $pid
  PostgreSQL  127.0.0.1:$PG_PORT (direct, for comparison), data in $PG_DIR
  pgcloak log $LOG_FILE
  config      $CONFIG (masking policies: docs/masking.md)
  mask key    $MASK_KEY_FILE (random, mode 600, new on every start)
  audit trail $AUDIT_DIR/audit.jsonl (docs/audit.md)
  console     http://127.0.0.1:$METRICS_PORT/console  (live sessions, top readers, denials)
  metrics     http://127.0.0.1:$METRICS_PORT/metrics  (Prometheus; docs/metrics.md)

Connect through pgcloak as each login (demo passwords, loopback only):

EOF
  for r in "${ROLES[@]}"; do
    printf '  %-8s psql "postgresql://%s:%s@127.0.0.1:%s/shop?sslmode=require"\n' \
      "$r" "$r" "$(password_for "$r")" "$PROXY_PORT"
  done
  cat <<EOF

Groups: admin -> data_admins, app -> app_services, support -> support_team,
analyst -> bi_readers -> analytics_team. The policies name the groups:
data_admins and app_services see everything; support_team sees names,
partial emails/phones/cards and birth years; analytics_team sees a keyed hash
of the email and nothing else personal. The login pgcloak (password
$(password_for pgcloak)) is pgcloak's own catalog connection and may call
pgcloak.get_auth(); see deploy/fixture/README.md.

Customer 1 (email | ssn | card_number | birth_date) as seen through pgcloak:

  admin    $SEEN_ADMIN
  support  $SEEN_SUPPORT
  analyst  $SEEN_ANALYST
EOF
  local url_admin url_support url_analyst
  url_admin="postgresql://admin:$(password_for admin)@127.0.0.1:$PROXY_PORT/shop?sslmode=require"
  url_support="postgresql://support:$(password_for support)@127.0.0.1:$PROXY_PORT/shop?sslmode=require"
  url_analyst="postgresql://analyst:$(password_for analyst)@127.0.0.1:$PROXY_PORT/shop?sslmode=require"
  cat <<EOF

Try the same query as each login, and see the difference:

  Q='SELECT id, full_name, email, phone, ssn, card_number, birth_date, notes FROM customers ORDER BY id LIMIT 5'
  psql "$url_admin" -c "\$Q"
  psql "$url_support" -c "\$Q"
  psql "$url_analyst" -c "\$Q"

The analyst's hashed email still joins and groups (orders per customer):

  psql "$url_analyst" -c "SELECT c.email, count(*) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.email ORDER BY 2 DESC, 1 LIMIT 3"

Predicates only ever see the masked value, and what cannot be masked is
refused with SQLSTATE 42501 and the rule's name:

  psql "$url_support" -c "SELECT count(*) FROM customers WHERE ssn LIKE '1%'"
  psql "$url_support" -c "SET ROLE data_admins"

The first returns 0, because support's ssn is '***'. The second is refused
with rule deny:set-role.

To also verify pgcloak's certificate (self-signed demo CA):

  psql "postgresql://analyst:$(password_for analyst)@localhost:$PROXY_PORT/shop?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.crt"

Every statement above is in the audit trail, with the decision and the rule,
but without literals. Watch it, and check that nobody has altered it:

  tail -f $AUDIT_DIR/audit.jsonl
  $PGCLOAK_BIN audit verify --key-file $AUDIT_INITIAL_KEY_FILE $AUDIT_DIR/audit.jsonl*

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
