# shellcheck shell=bash
# Throwaway PostgreSQL 15 clusters and TLS material for the demo, the
# benchmarks and the tests. Source this file; it defines functions only and
# never changes the caller's shell options.
#
#   pgc_free_port                      print a free TCP port on 127.0.0.1
#   pgc_port_free PORT                 succeed when nothing listens on PORT
#   pgc_gen_certs DIR                  CA + server cert/key (localhost, 127.0.0.1)
#   pgc_gen_client_cert DIR NAME       client cert/key signed by DIR's CA (mTLS)
#   pgc_init DIR PORT [options]        initdb a cluster whose data dir is DIR
#   pgc_start DIR [TIMEOUT]            pg_ctl start, waits at most TIMEOUT s
#   pgc_stop DIR [TIMEOUT]             pg_ctl stop (fast, then immediate)
#   pgc_running DIR                    succeed when the cluster is up
#   pgc_psql DIR [psql args...]        psql as superuser over DIR's socket
#   pgc_as_owner CMD...                run CMD as the cluster's OS user
#
# Layout: DIR is the data directory and also the Unix socket directory, so the
# socket is DIR/.s.PGSQL.PORT. The server log is DIR/postgres.log. PostgreSQL
# refuses to run as root: when root, DIR belongs to the `postgres` OS user (or
# $PGC_OS_USER) and every server command runs through runuser; otherwise it all
# runs as the caller. The database superuser is always named `postgres`.
# Clusters listen on 127.0.0.1 only.

: "${PGC_BINDIR:=/usr/lib/postgresql/15/bin}"
: "${PGC_OS_USER:=postgres}"
: "${PGC_SUPERUSER:=postgres}"

_pgc_err() { echo "pgcluster: $*" >&2; }

_pgc_abspath() {
  # realpath -m works for paths that do not exist yet.
  realpath -m -- "$1"
}

# Runs "$@" as the OS user that owns clusters. From / so that an unreadable
# working directory (e.g. /root) does not upset postgres.
pgc_as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd / && runuser -u "$PGC_OS_USER" -- "$@")
  else
    "$@"
  fi
}

# The distribution's python3 when there is one: a pyenv/asdf shim first in
# PATH can take seconds to start.
_pgc_python() {
  if [[ -x /usr/bin/python3 ]]; then /usr/bin/python3 "$@"; else python3 "$@"; fi
}

pgc_free_port() {
  _pgc_python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Succeeds when no TCP listener holds PORT (on any address, so a server on
# 0.0.0.0 or ::: counts as taken).
pgc_port_free() {
  local port=$1
  if command -v ss >/dev/null; then
    [[ -z $(ss -Hltn "sport = :$port" 2>/dev/null) ]]
    return
  fi
  # SO_REUSEADDR, as servers use, so that TIME_WAIT leftovers do not count.
  _pgc_python - "$port" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# Succeeds once HOST:PORT accepts a TCP connection; gives up after TIMEOUT
# seconds (default 10; 0 = try once).
pgc_wait_tcp() {
  local host=$1 port=$2 limit=${3:-10}
  local now_us=${EPOCHREALTIME/[.,]/}
  local deadline_us=$((now_us + limit * 1000000))
  while :; do
    # shellcheck disable=SC2016 # $1/$2 expand in the child shell
    if timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
      return 0
    fi
    now_us=${EPOCHREALTIME/[.,]/}
    ((now_us < deadline_us)) || return 1
    sleep 0.1
  done
}

# pgc_gen_certs DIR: writes DIR/ca.crt, DIR/ca.key, DIR/server.crt and
# DIR/server.key. The server certificate has CN=localhost and the SANs
# DNS:localhost and IP:127.0.0.1, so libpq's verify-full accepts it for both
# host=localhost and host=127.0.0.1. Keys are EC P-256 (cheap handshakes) and
# mode 0600. Existing files are replaced.
pgc_gen_certs() {
  local dir
  dir=$(_pgc_abspath "$1")
  local days=${PGC_CERT_DAYS:-825}
  mkdir -p "$dir" || return 1
  (
    set -e
    umask 077
    cd "$dir"
    openssl req -x509 -new -nodes -sha256 -days "$days" \
      -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout ca.key -out ca.crt -subj "/CN=pgcloak test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -nodes -sha256 \
      -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
    openssl x509 -req -sha256 -days "$days" -in server.csr \
      -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out server.crt -extfile server.ext 2>/dev/null
    rm -f server.csr server.ext ca.srl
    chmod 644 ca.crt server.crt
  ) || { _pgc_err "certificate generation in $dir failed"; return 1; }
}

# pgc_gen_client_cert DIR NAME: DIR/NAME.crt and DIR/NAME.key with CN=NAME,
# signed by DIR/ca.key (run pgc_gen_certs DIR first). For mTLS tests.
pgc_gen_client_cert() {
  local dir name=$2
  dir=$(_pgc_abspath "$1")
  [[ -f $dir/ca.key ]] || { _pgc_err "$dir/ca.key missing; run pgc_gen_certs first"; return 1; }
  (
    set -e
    umask 077
    cd "$dir"
    openssl req -new -nodes -sha256 \
      -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth" >"$name.ext"
    openssl x509 -req -sha256 -days "${PGC_CERT_DAYS:-825}" -in "$name.csr" \
      -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
      -extfile "$name.ext" 2>/dev/null
    rm -f "$name.csr" "$name.ext" ca.srl
    chmod 644 "$name.crt"
  ) || { _pgc_err "client certificate $name in $dir failed"; return 1; }
}

# pgc_init DIR PORT [--ssl CERTDIR] [--conf 'name = value']...
#
# Creates a fresh cluster in DIR (which must not exist or be empty) with:
#   port PORT, listen_addresses 127.0.0.1, unix_socket_directories DIR,
#   password_encryption scram-sha-256, and a pg_hba.conf of exactly
#     local all all trust
#     host  all all 127.0.0.1/32 scram-sha-256
# --ssl CERTDIR copies CERTDIR/server.{crt,key} (and ca.crt) into DIR and
# turns ssl on. Each --conf line is appended to postgresql.conf verbatim.
pgc_init() {
  local dir port ssl_dir="" conf=()
  dir=$(_pgc_abspath "$1")
  port=$2
  shift 2 || { _pgc_err "usage: pgc_init DIR PORT [--ssl CERTDIR] [--conf LINE]..."; return 2; }
  while (($#)); do
    case $1 in
      --ssl) ssl_dir=$(_pgc_abspath "$2"); shift 2 ;;
      --conf) conf+=("$2"); shift 2 ;;
      *) _pgc_err "pgc_init: unknown option $1"; return 2 ;;
    esac
  done
  # sun_path is 108 bytes including the terminating NUL.
  local sock="$dir/.s.PGSQL.$port"
  if ((${#sock} > 107)); then
    _pgc_err "socket path $sock is longer than 107 bytes; use a shorter directory"
    return 1
  fi
  if [[ -e $dir && -n $(ls -A "$dir" 2>/dev/null) ]]; then
    _pgc_err "$dir exists and is not empty"
    return 1
  fi
  mkdir -p "$dir" || return 1
  chmod 700 "$dir"
  if [[ $(id -u) -eq 0 ]]; then
    chown "$PGC_OS_USER:" "$dir" || return 1
    if ! runuser -u "$PGC_OS_USER" -- test -w "$dir"; then
      _pgc_err "OS user $PGC_OS_USER cannot reach $dir (a parent directory is not searchable by it); use a directory under /tmp or make the parents world-searchable"
      return 1
    fi
  fi

  local out
  if ! out=$(pgc_as_owner "$PGC_BINDIR/initdb" -D "$dir" -U "$PGC_SUPERUSER" \
      --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C --no-instructions 2>&1); then
    _pgc_err "initdb failed:"
    echo "$out" >&2
    return 1
  fi

  # Appending to and truncating existing files keeps their owner, so this
  # works as root too.
  {
    echo
    echo "# --- added by deploy/lib/pgcluster.sh ---"
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "password_encryption = 'scram-sha-256'"
    echo "logging_collector = off"
    echo "log_line_prefix = '%m [%p] %q%u@%d '"
    if [[ -n $ssl_dir ]]; then
      echo "ssl = on"
      echo "ssl_cert_file = 'server.crt'"
      echo "ssl_key_file = 'server.key'"
      if [[ -f $ssl_dir/ca.crt ]]; then echo "ssl_ca_file = 'ca.crt'"; fi
    fi
    local line
    for line in "${conf[@]}"; do echo "$line"; done
  } >>"$dir/postgresql.conf" || return 1
  printf '%s\n' \
    "# TYPE  DATABASE  USER  ADDRESS       METHOD" \
    "local   all       all                 trust" \
    "host    all       all   127.0.0.1/32  scram-sha-256" >"$dir/pg_hba.conf" || return 1

  if [[ -n $ssl_dir ]]; then
    local f
    for f in server.crt server.key ca.crt; do
      [[ -f $ssl_dir/$f ]] || continue
      install -m 600 "$ssl_dir/$f" "$dir/$f" || return 1
      if [[ $(id -u) -eq 0 ]]; then chown "$PGC_OS_USER:" "$dir/$f" || return 1; fi
    done
  fi
}

pgc_running() {
  local dir
  dir=$(_pgc_abspath "$1")
  [[ -f $dir/PG_VERSION ]] || return 1
  pgc_as_owner "$PGC_BINDIR/pg_ctl" -D "$dir" status >/dev/null 2>&1
}

# pgc_start DIR [TIMEOUT]: starts the cluster and waits until it accepts
# connections, at most TIMEOUT seconds (default 60). On failure the tail of
# the server log goes to stderr.
pgc_start() {
  local dir timeout=${2:-60}
  dir=$(_pgc_abspath "$1")
  if ! pgc_as_owner "$PGC_BINDIR/pg_ctl" -D "$dir" -l "$dir/postgres.log" \
      -w -t "$timeout" start >/dev/null; then
    _pgc_err "PostgreSQL in $dir did not start within ${timeout}s; log tail:"
    tail -n 20 "$dir/postgres.log" >&2 2>/dev/null
    return 1
  fi
}

# pgc_stop DIR [TIMEOUT]: fast shutdown (disconnects sessions), falling back
# to immediate. Succeeds when the cluster is not running or does not exist.
pgc_stop() {
  local dir timeout=${2:-30}
  dir=$(_pgc_abspath "$1")
  [[ -f $dir/PG_VERSION ]] || return 0
  pgc_running "$dir" || return 0
  pgc_as_owner "$PGC_BINDIR/pg_ctl" -D "$dir" -m fast -w -t "$timeout" stop >/dev/null 2>&1 && return 0
  _pgc_err "fast shutdown of $dir timed out; using immediate"
  pgc_as_owner "$PGC_BINDIR/pg_ctl" -D "$dir" -m immediate -w -t "$timeout" stop >/dev/null 2>&1
}

# Port the cluster in DIR was configured with (last `port =` line wins).
pgc_port() {
  local dir
  dir=$(_pgc_abspath "$1")
  sed -n "s/^[[:space:]]*port[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p" \
    "$dir/postgresql.conf" | tail -n 1
}

# pgc_psql DIR [psql args...]: psql as the superuser over DIR's Unix socket,
# quiet, stopping at the first error. Defaults to the `postgres` database;
# a later -d overrides it.
pgc_psql() {
  local dir port
  dir=$(_pgc_abspath "$1")
  shift
  port=$(pgc_port "$dir")
  PGCONNECT_TIMEOUT=10 psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" \
    -U "$PGC_SUPERUSER" -d postgres "$@"
}
