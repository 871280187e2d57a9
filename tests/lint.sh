#!/usr/bin/env bash
# Static checks, as CI runs them: clang-format must leave every C++ file
# unchanged, and clang-tidy (.clang-tidy) must report nothing for the
# product code. Needs a configured build dir for compile_commands.json.
#   usage: tests/lint.sh [BUILD_DIR]     (default: build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${1:-build}

mapfile -t cxx < <(git ls-files '*.cc' '*.h')
echo "lint: clang-format on ${#cxx[@]} files"
clang-format --dry-run --Werror "${cxx[@]}"

[[ -f $BUILD_DIR/compile_commands.json ]] || { echo "lint: $BUILD_DIR/compile_commands.json missing"; exit 1; }
root=$(pwd)
echo "lint: clang-tidy on protocol/, rules/, proxy/"
run-clang-tidy-14 -p "$BUILD_DIR" -j "$(nproc)" -quiet "^$root/(protocol|rules|proxy)/.*\.cc\$" > "$BUILD_DIR/clang-tidy.log" 2>&1 || {
  grep -E "(error|warning):" "$BUILD_DIR/clang-tidy.log" | sort -u | head -50
  echo "lint: clang-tidy found problems (full log: $BUILD_DIR/clang-tidy.log)"
  exit 1
}
echo "lint: clean"
