#!/usr/bin/env bash
# Runs bench_core (it builds nothing: build the bench_core target first) and then times numpy's
# float32 matmul (OpenBLAS SGEMM) on the same products with the same thread counts, in this same
# invocation, and prints one line per benchmark with the ratio flsl / numpy.
#   bash benchmarks/run_bench_core.sh [BUILD_DIR] [bench_core options, e.g. --benchmark_filter=B:8]
# numpy comes with Debian's python3-numpy (bash scripts/install_deps.sh --bench-reference); without
# it the numpy columns are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=${FLSL_BUILD_DIR:-build}
if [[ $# -gt 0 && $1 != -* ]]; then
  build_dir=$1
  shift
fi
bench=$build_dir/benchmarks/bench_core
if [[ ! -x $bench ]]; then
  echo "run_bench_core.sh: $bench not found; build it first: cmake --build $build_dir --target bench_core" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== bench_core (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
"$bench" --benchmark_out="$work/flsl.json" --benchmark_out_format=json "$@"

# The machine's environment may pin OpenBLAS to a slower kernel (ANCHORS.md): unset it.
python=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3)
have_numpy=1
if ! "${python[@]}" -c 'import numpy' 2>/dev/null; then
  echo "run_bench_core.sh: numpy not found: no reference column (install: bash scripts/install_deps.sh --bench-reference)"
  have_numpy=0
fi

# numpy at each thread count (OpenBLAS reads its thread count at import: one process each). It
# times every matmul that bench_core ran, from the labels "nt M=.. K=.. N=..".
if ((have_numpy)); then
  for threads in 1 2; do
    OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads "${python[@]}" - "$work/flsl.json" \
      "$threads" >"$work/numpy$threads.json" <<'PY'
import json, re, sys, time
import numpy as np

runs = json.load(open(sys.argv[1]))["benchmarks"]
threads = sys.argv[2]
rng = np.random.default_rng(0)
out = {}
for r in runs:
    m = re.match(r"([nt])([nt]) M=(\d+) K=(\d+) N=(\d+)", r.get("label", ""))
    if not m or "/threads:%s/" % threads not in r["name"] + "/":
        continue
    ta, tb, M, K, N = m.group(1), m.group(2), *map(int, m.group(3, 4, 5))
    a = rng.standard_normal((K, M) if ta == "t" else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if tb == "t" else (K, N), dtype=np.float32)
    a, b = (a.T if ta == "t" else a), (b.T if tb == "t" else b)  # views, as in flsl
    c = np.empty((M, N), np.float32)
    np.matmul(a, b, out=c)  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < 0.5:
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    out[r["name"].replace("/real_time", "")] = 2.0 * M * K * N / sorted(times)[len(times) // 2] / 1e9
json.dump(out, sys.stdout)
PY
  done
fi

echo
echo "== flsl vs numpy/OpenBLAS SGEMM, same run (reference ~340 GFLOP/s on 2 cores, ANCHORS.md)"
/usr/bin/python3 - "$work" "$have_numpy" <<'PY'
import json, math, os, sys

work, have_numpy = sys.argv[1], sys.argv[2] == "1"
runs = json.load(open(os.path.join(work, "flsl.json")))["benchmarks"]
for r in runs:
    r["name"] = r["name"].replace("/real_time", "")
numpy = {}
for threads in ("1", "2"):
    path = os.path.join(work, "numpy%s.json" % threads)
    if have_numpy and os.path.exists(path):
        numpy.update(json.load(open(path)))
bytes_s = {r["name"]: r["bytes_per_second"] for r in runs if "bytes_per_second" in r}
ratios = {}
for r in runs:
    name = r["name"]
    if "GFLOP/s" in r:
        ours = r["GFLOP/s"]
        line = "%-34s flsl %6.1f GFLOP/s" % (name, ours)
        if name in numpy:
            line += "   numpy %6.1f GFLOP/s   flsl/numpy %5.2f" % (numpy[name], ours / numpy[name])
            ratios.setdefault(name.rsplit("/", 1)[1], []).append(ours / numpy[name])
        print(line)
    elif "/separate" in name:
        fused = bytes_s.get(name.replace(name.split("/")[2], "fused"))
        if fused:
            print("%-34s fused is %4.2fx faster (%.1f vs %.1f GB/s)"
                  % (name, fused / r["bytes_per_second"], fused / 1e9, r["bytes_per_second"] / 1e9))
    elif "bytes_per_second" in r:
        print("%-34s %6.1f GB/s" % (name, r["bytes_per_second"] / 1e9))
for threads, rs in sorted(ratios.items()):
    print("%-34s flsl/numpy geometric mean %.2f over %d products"
          % ("matmul " + threads, math.exp(sum(map(math.log, rs)) / len(rs)), len(rs)))
PY
