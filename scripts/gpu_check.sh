#!/usr/bin/env bash
# The GPU checks of the CUDA backend, for a session that is lent a GPU machine for a few minutes.
# The machine that builds has nvcc but no GPU; the GPU machine runs what was built here:
#
#   bash scripts/gpu_check.sh pack       # here: build the CUDA test binaries, copy them and the
#                                        # shared libraries they need (oneTBB, libpng, TurboJPEG)
#                                        # into devbin/ (git-ignored)
#   bash scripts/gpu_check.sh run        # there, with devbin/ carried: run every CUDA test and
#                                        # write the logs and a summary under $OUT (or devbin/out)
#
# `run` builds nothing; each test runs with a timeout and its doctest output goes to its own log,
# so one crash does not hide the others' results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=devbin
tests=(test_cuda_headers test_cuda test_cuda_kernels test_cuda_vit)

case "${1:-}" in
  pack)
    build_dir=${FLSL_BUILD_DIR:-build}
    [[ -f "$build_dir/CMakeCache.txt" ]] || cmake -S . -B "$build_dir" -G Ninja \
      -DCMAKE_BUILD_TYPE=Release -DFLSL_BUILD_TESTS=ON -DFLSL_WITH_CUDA=ON
    cmake --build "$build_dir" -j "${FLSL_JOBS:-2}" --target "${tests[@]}"
    rm -rf "$bin"
    mkdir -p "$bin"
    for t in "${tests[@]}"; do cp "$build_dir/tests/cuda/$t" "$bin/"; done
    # the non-CUDA shared libraries the binaries link (the GPU machine has the CUDA toolkit)
    ldd "$bin"/test_cuda* | awk '/=> \// { print $3 }' | sort -u |
      grep -E 'libtbb|libpng|libturbojpeg|libjpeg|libhwloc' | xargs -r -I{} cp -L {} "$bin/"
    cp scripts/gpu_check.sh "$bin/"
    du -sh "$bin"
    ;;
  run)
    out=${OUT:-$bin/out}
    mkdir -p "$out"
    export LD_LIBRARY_PATH="$PWD/$bin:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
    : > "$out/summary.txt"
    for t in "${tests[@]}"; do
      set +e
      timeout 240 "$bin/$t" --duration=true > "$out/$t.log" 2>&1
      rc=$?
      set -e
      echo "$t: exit $rc ($(grep -E '^\[doctest\] (test cases|assertions)' "$out/$t.log" | tr '\n' ' '))" |
        tee -a "$out/summary.txt"
    done
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh pack|run" >&2
    exit 2
    ;;
esac
