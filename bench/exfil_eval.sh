#!/usr/bin/env bash
# Builds and runs the exfiltration-detection evaluation (bench/exfil_eval.cc,
# docs/detection.md "Evaluation"): a simulated training week, then a
# simulated evaluation week of normal traffic alone and with each attack
# scenario injected, through the real detectors and bench/exfil_eval.yaml.
# Prints the table and exits non-zero when a goal is missed. No database,
# no network; about 10 s after the build on the development VM.
#
# Knobs (environment):
#   EXFIL_BUILD_DIR  build directory (default build-exfil/ in the repository; reuses build/ if it has the target)
#   EXFIL_JOBS       parallel build jobs (default 1: the VM's 2 cores are shared)
#
# Arguments are passed to exfil_eval: --seed N, --days N, --train-days N,
# --scenario "slow drip", --verbose, --no-cost.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EXFIL_BUILD_DIR:-}
if [[ -z $build ]]; then
  if [[ -f $ROOT/build/build.ninja ]] && grep -q exfil_eval "$ROOT/build/build.ninja"; then
    build=$ROOT/build
  else
    build=$ROOT/build-exfil
  fi
fi
if [[ ! -f $build/build.ninja && ! -f $build/Makefile ]]; then
  cmake -S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPGCLOAK_TESTS=OFF >/dev/null
fi
cmake --build "$build" -j "${EXFIL_JOBS:-1}" --target exfil_eval >/dev/null
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$build/bench/exfil_eval" --config "$ROOT/bench/exfil_eval.yaml" "$@"
