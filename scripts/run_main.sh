#!/usr/bin/env bash
# The main job: installs the Debian packages, builds the main program in build/ (Release) and runs
# it with this script's arguments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

main=examples/flsl_pretrain # the main program (build-tree path): the FLSL trainer

build_dir=${FLSL_BUILD_DIR:-build}
bash scripts/install_deps.sh
generator=()
[[ -f "$build_dir/CMakeCache.txt" ]] || generator=(-G Ninja)
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build_dir" -j "${FLSL_JOBS:-2}" --target "${main##*/}"
exec "$build_dir/$main" "$@"
