#!/usr/bin/env bash
# Installs the Debian 12 packages that flsl's build, tests, examples and benchmarks need.
# Idempotent and silent when everything is installed (dpkg-query first; apt-get runs only when
# something is missing). Works as root, or through sudo otherwise. Non-interactive.
#   bash scripts/install_deps.sh                     # build + test dependencies
#   bash scripts/install_deps.sh --bench-reference   # also numpy + OpenBLAS for run_bench_core.sh
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config # toolchain
  libeigen3-dev                    # CPU GEMM kernels
  xtensor-dev xtl-dev              # host interop, .npy
  libtbb-dev                       # parallel loops, task arenas
  libturbojpeg0-dev libpng-dev     # image decode (data layer)
  nlohmann-json3-dev               # safetensors headers (io layer)
  doctest-dev                      # tests
  libbenchmark-dev                 # benchmarks
)
for arg in "$@"; do
  case "$arg" in
    --bench-reference) packages+=(python3-numpy libopenblas0-pthread) ;;
    *) echo "install_deps.sh: unknown option '$arg'" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]]; then
    missing+=("$p")
  fi
done
((${#missing[@]} == 0)) && exit 0

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
  [[ -t 0 ]] || as_root+=(-n)  # no terminal to ask for a password: fail instead of hanging
else
  echo "install_deps.sh: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi
echo "install_deps.sh: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends "${missing[@]}" </dev/null
