#!/usr/bin/env bash
# The leak-oracle fuzzer's long pass (issue 17): tests/integration/leak_oracle.py
# against a throwaway PostgreSQL 15 cluster and pgcloak, as `support` and
# `analyst` at once, in rounds of up to --round minutes with a new seed each
# round, until --minutes have passed. Prints statements/s per round and
# every distinct finding (with the seed and program to replay it).
#
#   bench/leak_oracle_long.sh --minutes 240 [--round 30] [--seed S] [--out DIR]
#
# Environment: PGCLOAK_BIN (default build/proxy/pgcloak), PGBIN. Exit status
# 1 when any round had a finding. Replay one program:
#   /usr/bin/python3 tests/integration/leak_oracle.py --seed S --replay ROLE:INDEX
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
minutes=60 round=30 seed="" out=""
while (($#)); do
  case $1 in
    --minutes) minutes=${2:?}; shift 2 ;;
    --round) round=${2:?}; shift 2 ;;
    --seed) seed=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ && $round =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "--minutes/--round: numbers" >&2; exit 2; }
export PGCLOAK_BIN=${PGCLOAK_BIN:-$REPO/build/proxy/pgcloak}
[[ -x $PGCLOAK_BIN ]] || { echo "pgcloak not found at $PGCLOAK_BIN (build it or set PGCLOAK_BIN)" >&2; exit 2; }
out=${out:-$(mktemp -d /tmp/leak-oracle-long.XXXXXX)}
mkdir -p "$out"
# A copy, so a rebuild during the pass does not swap the binary under it.
cp "$PGCLOAK_BIN" "$out/pgcloak"
export PGCLOAK_BIN=$out/pgcloak

start=$(date +%s)
deadline=$((start + ${minutes%.*} * 60))
n=0 rc=0 total_statements=0
while :; do
  now=$(date +%s)
  left=$(( (deadline - now) / 60 ))
  ((left >= 1)) || break
  this=$(( left < ${round%.*} ? left : ${round%.*} ))
  n=$((n + 1))
  s=${seed:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
  [[ -n $seed ]] && s=$((seed + n - 1))
  echo "== round $n: seed $s, $this minutes"
  set +e
  /usr/bin/python3 "$REPO/tests/integration/leak_oracle.py" --minutes "$this" --seed "$s" \
    --json "$out/round-$n.json" >"$out/round-$n.log" 2>&1
  r=$?
  set -e
  grep -E '^seed |^  (support|analyst):|distinct findings$' "$out/round-$n.log" || tail -20 "$out/round-$n.log"
  ((r == 0)) || rc=1
done

/usr/bin/python3 - "$out" <<'PY'
import glob, json, sys
stmts, secs, found = 0, 0.0, {}
for path in sorted(glob.glob(sys.argv[1] + "/round-*.json")):
    d = json.load(open(path))
    stmts += sum(d["statements"].values())
    secs += d["seconds"]
    for f in d["findings"]:
        key = (f["kind"], f["role"], f["family"].split(">")[0], f["where"])
        old = found.get(key)
        if old is None or len(f["program"]) < len(old["program"]):
            found[key] = f
print(f"\n{stmts} statements in {secs:.0f} s: {stmts / max(secs, 1):.1f} statements/s")
print(f"{len(found)} distinct findings")
for (kind, role, channel, where), f in sorted(found.items()):
    print(f"[{kind}] {role} {channel} -> {where}: {f['what'][:160]} (seed {f['seed']}, program {role}:{f['index']})")
    print("    " + f["program"].replace("\n", "\n    ")[:1500])
PY
echo "logs: $out"
exit $rc
