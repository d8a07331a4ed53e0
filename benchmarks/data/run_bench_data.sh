#!/usr/bin/env bash
# Runs bench_data and the PyTorch anchor (../shared/bench/torch_flsl_aug.py, PIL + torchvision) in
# the same invocation on the same images and prints the per-core ratio (target >= 4) and the
# loader's scaling from 1 to 2 threads.
#   usage: benchmarks/data/run_bench_data.sh [build-dir]      (default: build-data, then build)
#   env:   FLSL_DATA  image folder (default ../shared/data/caltech101_sub40, relative to the repo)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
build="${1:-}"
if [ -z "$build" ]; then
  for b in build-data build; do [ -d "$b" ] && { build="$b"; break; }; done
fi
bench="$(find "${build:-build}" -name bench_data -type f -perm -u+x 2>/dev/null | head -n 1)"
if [ -z "$bench" ]; then
  echo "bench_data not found under '${build:-build}': cmake --build <build-dir> --target bench_data" >&2
  exit 1
fi
export FLSL_DATA="${FLSL_DATA:-../shared/data/caltech101_sub40}"
if [ ! -d "$FLSL_DATA" ]; then
  echo "skipped: data folder '$FLSL_DATA' not found (set FLSL_DATA to a folder of JPEG/PNG images)"
  exit 0
fi
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
echo "== bench_data ($bench) on $FLSL_DATA"
"$bench" --benchmark_out="$json" --benchmark_out_format=json
echo "== PyTorch anchor: /usr/bin/python3 ../shared/bench/torch_flsl_aug.py $FLSL_DATA 400"
anchor="$(/usr/bin/python3 ../shared/bench/torch_flsl_aug.py "$FLSL_DATA" 400 | tail -n 1)" || {
  echo "the anchor failed (it needs python3-torch and python3-torchvision)" >&2
  exit 1
}
echo "$anchor"
/usr/bin/python3 - "$json" "$anchor" <<'PY'
import json, sys
runs = {b["name"]: b for b in json.load(open(sys.argv[1]))["benchmarks"]}
anchor = json.loads(sys.argv[2])["img_per_s_one_core"]
one = next(b for n, b in runs.items() if n.startswith("BM_multicrop_one_core"))
ours = one["images_per_s_per_core"]
print(f"\nmulti-crop, one core: flsl {ours:.1f} images/s, PyTorch {anchor:.1f} images/s, "
      f"ratio {ours / anchor:.2f}x (target >= 4x); flsl {one['images_per_cpu_s']:.1f} images "
      f"per CPU-second")
loader = {int(b["threads"]): b for n, b in runs.items() if n.startswith("BM_loader")}
if 1 in loader and 2 in loader:
    r1, r2 = loader[1]["images_per_s"], loader[2]["images_per_s"]
    print(f"loader: 1 thread {r1:.1f} images/s, 2 threads {r2:.1f} images/s, scaling "
          f"{r2 / r1:.2f}x; CPUs busy {loader[1]['cpu_s_per_wall_s']:.2f} and "
          f"{loader[2]['cpu_s_per_wall_s']:.2f}, images per CPU-second "
          f"{loader[1]['images_per_cpu_s']:.1f} and {loader[2]['images_per_cpu_s']:.1f}")
PY
