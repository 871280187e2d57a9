#!/usr/bin/env bash
# Installs the Debian 12 packages pgcloak needs to build, test, benchmark and
# run the demo. Idempotent: only missing packages are installed, so a second
# run costs one dpkg query. Runs as root (CI) or through sudo.
set -euo pipefail

PKGS=(
  # build
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  clang-format clang-tidy
  # libraries (Boost 1.81: 1.74 lacks asio::as_tuple)
  libboost1.81-dev libssl-dev libpq-dev libpg-query-dev libprotobuf-c-dev prometheus-cpp-dev
  libyaml-cpp-dev nlohmann-json3-dev zlib1g-dev libzstd-dev liburing-dev googletest libgtest-dev libgmock-dev libbenchmark-dev
  # runtime peers for tests, demo and benchmarks
  postgresql-15 postgresql-client-15 pgbouncer openssl procps iproute2 curl
  python3 python3-psycopg python3-pytest python3-pytest-timeout python3-yaml
  util-linux
  # audit: an independent zstd decoder reads compressed rotated files in tests
  zstd
  # audit: syslog end-to-end tests receive records with a real rsyslog;
  # rsyslog-openssl adds the ossl netstream driver for the TLS (RFC 5425) run
  rsyslog rsyslog-openssl
  # metrics: promtool checks and unit-tests the alert rules in deploy/prometheus/
  prometheus
  # metrics console: headless browser test
  chromium chromium-driver
)
# node-postgres tests need node and npm; a NodeSource nodejs bundles npm and
# conflicts with Debian's npm package, so only ask for what is missing.
command -v node >/dev/null || PKGS+=(nodejs)
command -v npm >/dev/null || PKGS+=(npm)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

# The Debian package starts a 15/main cluster on 5432; pgcloak's tests and demo
# make their own clusters and never use it, so keep it from holding the port.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main .* online'; then
  $SUDO pg_ctlcluster 15 main stop || true
fi
