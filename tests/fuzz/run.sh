#!/usr/bin/env bash
# Builds the libFuzzer targets in build-fuzz/ and runs each one for N seconds
# (default 30) on a scratch copy of its seed corpus; the committed corpus under
# tests/fuzz/corpus/ is never written. Crashing inputs are saved under
# tests/fuzz/artifacts/ (git-ignored). Exits non-zero if any target fails.
#
# Usage: tests/fuzz/run.sh [seconds_per_target]
set -euo pipefail

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: $0 [seconds_per_target]" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$root/build-fuzz"
corpus="$root/tests/fuzz/corpus"
artifacts="$root/tests/fuzz/artifacts"
targets=(fuzz_startup fuzz_frontend fuzz_backend fuzz_analysis)

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
# The compiler is fixed on the first configure of a build tree; a build-fuzz
# left over from another compiler would fail the Clang check in
# tests/fuzz/CMakeLists.txt with a clear message.
CC=clang CXX=clang++ cmake -S "$root" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGCLOAK_FUZZ=ON -DPGCLOAK_TESTS=OFF >/dev/null
cmake --build "$build" --target "${targets[@]}"

mkdir -p "$artifacts"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in "${targets[@]}"; do
  work="$scratch/$target"
  mkdir -p "$work"
  cp "$corpus/$target/"* "$work/"
  log="$scratch/$target.log"
  echo "== $target: ${seconds}s on $(ls "$work" | wc -l) seeds"
  # -timeout: a single input taking over 10 s is a hang, reported as a failure.
  # fuzz_analysis: longer inputs and a dictionary of deeply nesting
  # constructs, since nesting depth is what crashed the analysis.
  extra=()
  if [[ $target == fuzz_analysis ]]; then
    extra=(-dict="$root/tests/fuzz/analysis.dict" -max_len=16384 -len_control=0)
  fi
  if "$build/tests/fuzz/$target" "$work" "${extra[@]}" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts/$target-" >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added)' \
      "$log" || true
    grep -E '^#[0-9]+.*(DONE|pulse)' "$log" | tail -n 1 || true
  else
    echo "!! $target failed; log tail:"
    tail -n 60 "$log"
    failed+=("$target")
  fi
done

if ((${#failed[@]} > 0)); then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $artifacts)" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a crash"
