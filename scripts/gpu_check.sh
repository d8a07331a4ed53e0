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
#                                        # a summary and an archive of the logs under $OUT
#                                        # (or devbin/out)
#
# `run` builds nothing; each test runs with a timeout and its doctest output goes to its own log,
# so one crash does not hide the others' results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=devbin
tests=(test_cuda_headers test_cuda test_cuda_kernels test_cuda_vit test_cuda_optim test_cuda_flsl
  test_cuda_step test_cuda_golden)
bench=bench_flsl_step_cuda

case "${1:-}" in
  pack)
    build_dir=${FLSL_BUILD_DIR:-build}
    [[ -f "$build_dir/CMakeCache.txt" ]] || cmake -S . -B "$build_dir" -G Ninja \
      -DCMAKE_BUILD_TYPE=Release -DFLSL_BUILD_TESTS=ON -DFLSL_BUILD_BENCHMARKS=ON -DFLSL_WITH_CUDA=ON
    # an existing build folder may have been configured without them
    cmake -S . -B "$build_dir" -DFLSL_BUILD_TESTS=ON -DFLSL_BUILD_BENCHMARKS=ON \
      -DFLSL_BUILD_EXAMPLES=ON > /dev/null
    cmake --build "$build_dir" -j "${FLSL_JOBS:-2}" --target "${tests[@]}" "$bench" flsl_pretrain
    rm -rf "$bin"
    mkdir -p "$bin"
    for t in "${tests[@]}"; do cp "$build_dir/tests/cuda/$t" "$bin/"; done
    cp "$build_dir/benchmarks/$bench" "$build_dir/examples/flsl_pretrain" "$bin/"
    # the non-CUDA shared libraries the binaries link (the GPU machine has the CUDA toolkit)
    ldd "$bin"/test_cuda* "$bin/$bench" "$bin/flsl_pretrain" | awk '/=> \// { print $3 }' | sort -u |
      grep -E 'libtbb|libpng|libturbojpeg|libjpeg|libhwloc|libbenchmark' |
      xargs -r -I{} cp -L {} "$bin/"
    cp scripts/gpu_check.sh "$bin/"
    # the PyTorch anchor of the benchmark, when the shared folder has it
    if [[ -f ../shared/bench/torch_flsl_step.py ]]; then cp ../shared/bench/torch_flsl_step.py "$bin/"; fi
    du -sh "$bin"
    ;;
  run)
    # FLSL_GPU_DEADLINE (s, default 420): steps that would start past it are skipped, so that the
    # whole command ends inside the device call's limit
    # the logs go to a scratch folder and come back as one archive (the device call returns at
    # most 8 files): $OUT/gpu_check.tgz and $OUT/summary.txt
    dest=${OUT:-$bin/out}
    out=$(mktemp -d)
    mkdir -p "$dest"
    trap 'tar czf "$dest/gpu_check.tgz" -C "$out" . && cp "$out/summary.txt" "$dest/"' EXIT
    export LD_LIBRARY_PATH="$PWD/$bin:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export FLSL_FIXTURE_DIR="$PWD/tests/fixtures"  # test_cuda_golden's, in this copy of the tree
    t0=$(date +%s)
    deadline=${FLSL_GPU_DEADLINE:-420}
    left() { echo $((deadline - ($(date +%s) - t0))); }
    # step NAME LIMIT CMD...: runs CMD with at most LIMIT s (less when the deadline is nearer),
    # output to $out/NAME.log, one line in summary.txt
    step() {
      local name=$1 limit=$2
      shift 2
      local l
      l=$(left)
      if ((l < 10)); then
        echo "$name: skipped (deadline)" | tee -a "$out/summary.txt"
        return 1
      fi
      ((limit > l)) && limit=$l
      local s rc
      s=$(date +%s)
      set +e
      timeout "$limit" "$@" > "$out/$name.log" 2>&1
      rc=$?
      set -e
      echo "$name: exit $rc in $(($(date +%s) - s)) s $(grep -E '^\[doctest\] (test cases|assertions)' "$out/$name.log" | tr '\n' ' ')" |
        tee -a "$out/summary.txt"
      return $rc
    }
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1 || true
    : > "$out/summary.txt"
    sanitized=0
    for t in "${tests[@]}"; do
      rc=0
      step "$t" 60 "$bin/$t" --duration=true || rc=$?
      if ((rc != 0 && rc != 77)); then
        # a failing test once more under compute-sanitizer (at most two), for the first bad access
        if ((sanitized < 2)) && command -v compute-sanitizer > /dev/null; then
          sanitized=$((sanitized + 1))
          step "$t.memcheck" 60 compute-sanitizer --print-limit 20 "$bin/$t" || true
        fi
      fi
    done
    # a short end-to-end run of the trainer on the device
    step flsl_pretrain_cuda 90 "$bin/flsl_pretrain" --device cuda --epochs 1 --eval false \
      --pictures 0 --progress plain --out "$out/run" || true
    rm -rf "$out/run/checkpoints" || true
    # the FLSL step on cuda (vit_small/16 f32; exact, tf32 and bf16 GEMMs; autocast bf16 with bf16
    # GEMMs, the trainer's cuda defaults): images/s, peak memory
    # FLSL_CUDA_TIMELINE: each case also writes where one step's time goes (per op and kernel)
    mkdir -p "$out/timeline"
    export FLSL_CUDA_TIMELINE="$out/timeline"
    step "$bench" 150 "$bin/$bench" --benchmark_format=json --benchmark_out="$out/$bench.json" \
      --benchmark_out_format=json || true
    unset FLSL_CUDA_TIMELINE
    for csv in "$out"/timeline/*autocast*.csv; do
      if [[ -f "$csv" ]]; then
        echo "timeline of one step, $(basename "$csv" .csv), the 15 largest (op, kernel, launches, ms, share):" >> "$out/summary.txt"
        sed -n 2,16p "$csv" >> "$out/summary.txt"
      fi
    done
    grep -E '"name"|images_per_s|TFLOP_per_s|peak_device_MiB|"error_message"' "$out/$bench.json" >> "$out/summary.txt" 2> /dev/null || true
    if grep -q images_per_s "$out/$bench.json" 2> /dev/null; then
      # the PyTorch anchor at the same shapes (bf16 autocast, SDPA attention), eager and compiled
      if [[ -f "$bin/torch_flsl_step.py" ]] && python3 -c 'import torch' 2> /dev/null; then
        step torch_flsl_step_eager 90 python3 "$bin/torch_flsl_step.py" --device cuda --arch small \
          --batch 128 --bf16 --sdpa || true
        step torch_flsl_step_compile 180 python3 "$bin/torch_flsl_step.py" --device cuda \
          --arch small --batch 128 --bf16 --sdpa --compile || true
      else
        echo "torch_flsl_step: not run (no $bin/torch_flsl_step.py or no torch)" | tee -a "$out/summary.txt"
      fi
    fi
    echo "total: $(($(date +%s) - t0)) s" | tee -a "$out/summary.txt"
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh pack|run" >&2
    exit 2
    ;;
esac
