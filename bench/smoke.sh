#!/usr/bin/env bash
# CI smoke test for bench/pgbench_compare.sh: a ~30 s run (scale 1, 3 s per
# pgbench run, no warm-up) that only checks the script works end to end and
# that every target (direct, pgcloak, PgBouncer) in every mode produced
# tps > 0. The numbers themselves mean nothing at this size.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out_dir=$(mktemp -d)
trap 'rm -rf "$out_dir"' EXIT
results=$out_dir/smoke.json

BENCH_SECONDS=3 BENCH_SCALE=1 BENCH_ROUNDS=1 BENCH_WARMUP=0 BENCH_CLIENTS=16 BENCH_JOBS=2 \
  BENCH_MODES="simple prepared" BENCH_TARGETS="direct pgcloak pgbouncer" \
  BENCH_RESULTS_FILE=$results "$ROOT/bench/pgbench_compare.sh"

python3 - "$results" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
expected = {(m, t) for m in ("simple", "prepared") for t in ("direct", "pgcloak", "pgbouncer")}
seen = {(r["mode"], r["target"]) for r in data["runs"] if r["ok"] and r["tps"] > 0}
bad = sorted(expected - seen)
if bad:
    print("bench smoke: FAILED, no tps for: " + ", ".join(f"{m}/{t}" for m, t in bad))
    sys.exit(1)
print(f"bench smoke: OK, {len(seen)} mode/target pairs produced tps > 0")
PY
