#!/usr/bin/env bash
# Runs the FLSL step benchmark and the PyTorch anchor (../shared/bench/torch_flsl_step.py, same
# config: vit_tiny/16, batch 8, 2 threads) in one invocation and prints the ratio of images/s.
# Usage: benchmarks/run_bench_flsl_step.sh [build-dir]   (build with -DFLSL_BUILD_BENCHMARKS=ON)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
anchor=${FLSL_TORCH_STEP:-$here/../shared/bench/torch_flsl_step.py}
out=$(mktemp)
"$build/benchmarks/bench_flsl_step" --benchmark_format=json >"$out"
ours=$(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["benchmarks"][0]; print(b["images_per_s"])' "$out")
echo "flsl   vit_tiny/16 batch 8, 2 threads: $(printf '%.2f' "$ours") images/s"
if [ -f "$anchor" ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  # OpenBLAS picks its AVX-512 kernel only with these unset (see ../shared/docs/ANCHORS.md).
  line=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 "$anchor" --arch tiny --batch 8 --threads 2 | tail -n 1)
  theirs=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["img_per_s"])' "$line")
  echo "torch  vit_tiny/16 batch 8, 2 threads: $theirs images/s"
  python3 -c 'import sys; print(f"ratio flsl/torch: {float(sys.argv[1])/float(sys.argv[2]):.2f}x")' "$ours" "$theirs"
else
  echo "PyTorch anchor not available (needs python3-torch and $anchor): no ratio"
fi
rm -f "$out"
