#!/usr/bin/env bash
# The whole test pipeline, as CI runs it (.ci/run execs this script):
#   1. system packages          deploy/install-deps.sh
#   2. Release build            build/ (Ninja, -DPGCLOAK_TESTS=ON)
#   3. unit tests               ctest, then tests/lint.sh (clang-format, clang-tidy),
#                               then tests/promtool.sh (alert rules and dashboard PromQL)
#   4. fuzz smoke               tests/fuzz/run.sh (when present)
#   5. node-postgres deps       npm ci in tests/integration/node
#   6. integration tests        pytest tests/integration (+ bench/smoke.sh when present)
# Works from a clean clone, as root or not, with nothing running. Fails fast.
#
# Knobs: PGCLOAK_FUZZ_SECONDS (default 20), PYTEST_ARGS (extra pytest args),
#        BUILD_DIR (default build), SKIP_DEPS=1 (skip step 1).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
STEP="start"
T0=$SECONDS

banner() {
  STEP="$1"
  printf '\n==================== [%s] %s (t+%ss) ====================\n' "$(date -u +%H:%M:%S)" "$1" "$((SECONDS - T0))"
}

on_exit() {
  local rc=$?
  if ((rc != 0)); then
    printf '\nrun.sh: FAILED in step "%s" (exit %s) after %ss\n' "$STEP" "$rc" "$((SECONDS - T0))"
  fi
}
trap on_exit EXIT

banner "1/6 dependencies"
if [[ ${SKIP_DEPS:-0} != 1 ]]; then
  bash deploy/install-deps.sh
else
  echo "SKIP_DEPS=1: not installing packages"
fi

banner "2/6 build (Release, Ninja)"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPGCLOAK_TESTS=ON
cmake --build "$BUILD_DIR" -j "$(nproc)"
test -x "$BUILD_DIR/proxy/pgcloak" || { echo "run.sh: $BUILD_DIR/proxy/pgcloak was not built"; exit 1; }

banner "3/6 unit tests (ctest)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 --output-junit "$ROOT/$BUILD_DIR/ctest-junit.xml"

banner "3b/6 static checks (clang-format, clang-tidy)"
bash tests/lint.sh "$BUILD_DIR"

banner "3c/6 alert rules and dashboard (promtool)"
bash tests/promtool.sh

banner "4/6 fuzz smoke"
if [[ -f tests/fuzz/run.sh ]]; then
  bash tests/fuzz/run.sh "${PGCLOAK_FUZZ_SECONDS:-20}"
else
  echo "tests/fuzz/run.sh not present: skipped"
fi

banner "5/6 node-postgres dependencies"
(
  cd tests/integration/node
  if [[ -f package-lock.json ]]; then
    npm ci --no-audit --no-fund
  else
    npm install --no-audit --no-fund
  fi
)

banner "6/6 integration tests (pytest)"
# Exit code 5 ("no tests collected") must not pass as success.
set +e
PGCLOAK_BIN="$ROOT/$BUILD_DIR/proxy/pgcloak" /usr/bin/python3 -m pytest -v \
  --junitxml="$ROOT/$BUILD_DIR/integration-junit.xml" ${PYTEST_ARGS:-} tests/integration
rc=$?
set -e
if ((rc == 5)); then
  echo "run.sh: pytest collected no tests"
  exit 1
elif ((rc != 0)); then
  exit "$rc"
fi

if [[ -f bench/smoke.sh ]]; then
  banner "bench smoke"
  bash bench/smoke.sh
fi

STEP="summary"
# One closing line with the combined counts of ctest and pytest.
/usr/bin/python3 - "$ROOT/$BUILD_DIR/ctest-junit.xml" "$ROOT/$BUILD_DIR/integration-junit.xml" "$((SECONDS - T0))" <<'PY'
import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
for path in sys.argv[1:3]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        continue
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    for s in suites:
        tests = int(s.get("tests", 0))
        f = int(s.get("failures", 0)) + int(s.get("errors", 0))
        sk = int(s.get("skipped", 0) or s.get("disabled", 0) or 0)
        passed += tests - f - sk
        failed += f
        skipped += sk
print(f"\nrun.sh: all steps passed in {sys.argv[3]}s")
print(f"summary: {passed} passed, {failed} failed, {skipped} skipped")
PY
