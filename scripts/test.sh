#!/usr/bin/env bash
# Sets up and runs every test: installs the Debian packages, configures build/ (Release, Ninja,
# benchmarks and examples on so that they compile too, CUDA targets when nvcc is found), builds
# with 2 jobs and runs ctest over all labels. Extra arguments go to the CMake configure step.
#   FLSL_BUILD_DIR=build-x bash scripts/test.sh    # another build directory
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=${FLSL_BUILD_DIR:-build}
jobs=${FLSL_JOBS:-2}

bash scripts/install_deps.sh

generator=()
[[ -f "$build_dir/CMakeCache.txt" ]] || generator=(-G Ninja)  # keep an existing tree's generator
start=$(date +%s)
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DFLSL_BUILD_TESTS=ON -DFLSL_BUILD_EXAMPLES=ON -DFLSL_BUILD_BENCHMARKS=ON "$@"
cmake --build "$build_dir" -j "$jobs"
echo "test.sh: configure + build: $(($(date +%s) - start)) s"
if [[ -f "$build_dir/.ninja_log" ]]; then  # compile time is a feature: show the slowest units
  echo "test.sh: slowest build steps (s):"
  awk '!/^#/ { printf "  %6.1f  %s\n", ($2 - $1) / 1000, $4 }' "$build_dir/.ninja_log" |
    sort -rn | sed -n 1,5p  # sed reads all: head would SIGPIPE sort (pipefail)
fi

start=$(date +%s)
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 900
echo "test.sh: tests: $(($(date +%s) - start)) s"
