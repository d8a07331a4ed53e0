#!/usr/bin/env bash
# The GPU checks of the CUDA backend, for a session that is lent a GPU machine for a few minutes.
# The machine that builds has nvcc but no GPU; the GPU machine runs what was built here:
#
#   bash scripts/gpu_check.sh pack       # here: build the CUDA test binaries and the cuda FLSL
#                                        # step benchmark, copy them, the shared libraries they
#                                        # need (oneTBB, libpng, TurboJPEG) and, when it exists,
#                                        # ../shared/bench/torch_flsl_step.py into devbin/
#                                        # (git-ignored)
#   bash scripts/gpu_check.sh run        # there, with devbin/ carried: run every CUDA test, then
#                                        # the benchmark and the PyTorch anchor (eager and
#                                        # --compile, when devbin has it and python3 has torch);
#                                        # logs and a summary under $OUT (or devbin/out)
#
# `run` builds nothing; each test runs with a timeout and its doctest output goes to its own log,
# so one crash does not hide the others' results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=devbin
tests=(test_cuda_headers test_cuda test_cuda_kernels test_cuda_vit test_cuda_optim test_cuda_flsl
  test_cuda_step)
bench=bench_flsl_step_cuda

case "${1:-}" in
  pack)
    build_dir=${FLSL_BUILD_DIR:-build}
    [[ -f "$build_dir/CMakeCache.txt" ]] || cmake -S . -B "$build_dir" -G Ninja \
      -DCMAKE_BUILD_TYPE=Release -DFLSL_BUILD_TESTS=ON -DFLSL_BUILD_BENCHMARKS=ON -DFLSL_WITH_CUDA=ON
    # an existing build folder may have been configured without them
    cmake -S . -B "$build_dir" -DFLSL_BUILD_TESTS=ON -DFLSL_BUILD_BENCHMARKS=ON > /dev/null
    cmake --build "$build_dir" -j "${FLSL_JOBS:-2}" --target "${tests[@]}" "$bench"
    rm -rf "$bin"
    mkdir -p "$bin"
    for t in "${tests[@]}"; do cp "$build_dir/tests/cuda/$t" "$bin/"; done
    cp "$build_dir/benchmarks/$bench" "$bin/"
    # the non-CUDA shared libraries the binaries link (the GPU machine has the CUDA toolkit)
    ldd "$bin"/test_cuda* "$bin/$bench" | awk '/=> \// { print $3 }' | sort -u |
      grep -E 'libtbb|libpng|libturbojpeg|libjpeg|libhwloc|libbenchmark' |
      xargs -r -I{} cp -L {} "$bin/"
    cp scripts/gpu_check.sh "$bin/"
    # the PyTorch anchor of the benchmark, when the shared folder has it
    if [[ -f ../shared/bench/torch_flsl_step.py ]]; then cp ../shared/bench/torch_flsl_step.py "$bin/"; fi
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
    # the FLSL step on cuda (vit_small/16 f32, batch 32 and 128): images/s and peak device memory
    set +e
    timeout 300 "$bin/$bench" --benchmark_format=json --benchmark_out="$out/$bench.json" \
      --benchmark_out_format=json > "$out/$bench.log" 2>&1
    rc=$?
    set -e
    echo "$bench: exit $rc" | tee -a "$out/summary.txt"
    # the PyTorch anchor at the same shapes (bf16 autocast, SDPA attention), eager and compiled
    if [[ -f "$bin/torch_flsl_step.py" ]] && python3 -c 'import torch' 2>/dev/null; then
      for mode in eager compile; do
        extra=()
        [[ $mode == compile ]] && extra=(--compile)
        set +e
        timeout 300 python3 "$bin/torch_flsl_step.py" --device cuda --arch small --batch 128 \
          --bf16 --sdpa "${extra[@]}" > "$out/torch_flsl_step_$mode.log" 2>&1
        rc=$?
        set -e
        echo "torch_flsl_step ($mode): exit $rc: $(tail -n 1 "$out/torch_flsl_step_$mode.log")" |
          tee -a "$out/summary.txt"
      done
    else
      echo "torch_flsl_step: not run (no $bin/torch_flsl_step.py or no torch)" | tee -a "$out/summary.txt"
    fi
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh pack|run" >&2
    exit 2
    ;;
esac
