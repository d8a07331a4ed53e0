// `--device cuda` for a trainer binary: the trainer of an experiment with its models, teacher and
// optimizer on the GPU, compiled by nvcc in a translation unit of its own, so that the CPU trainer
// stays compiled by the C++ compiler (its numbers do not change) and nvcc compiles only the cuda
// instantiations. A binary's .cu file defines the runner and main passes it to run_experiment:
//
//   // my_pretrain_cuda.cu
//   #include "experiments/mine.hpp"
//   #include <flsl/train/trainer_cuda.cuh>
//   int my_run_cuda(const flsl::train::resolved_run& r) {
//     return flsl::train::run_on_cuda<my_experiment>(r);
//   }
//   // my_pretrain.cpp
//   int my_run_cuda(const flsl::train::resolved_run& r);
//   int main(int argc, char** argv) {
//     return flsl::train::run_experiment<my_experiment>(argc, argv, &my_run_cuda);
//   }
//
// An experiment may list the architectures it offers on cuda (`using cuda_archs =
// train::arch_list<...>`, a subset of `archs`, to bound nvcc's compile time); without it every
// architecture is built for cuda too.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "../backend/cuda.cuh"
#include "trainer.hpp"

namespace flsl::train {

namespace detail {
template <class E>
struct cuda_archs_of {
  using type = typename E::archs;
};
template <class E>
requires requires { typename E::cuda_archs; }
struct cuda_archs_of<E> {
  using type = typename E::cuda_archs;
};

template <class... A>
bool has_arch(const run_config& c, std::string& choices, arch_list<A...>) {
  bool found = false;
  (
      [&] {
        found = found || (A::name == c.arch && A::config::patch == c.patch);
        choices += (choices.empty() ? "" : ", ") + std::string(A::name) + "/" +
                   std::to_string(A::config::patch);
      }(),
      ...);
  return found;
}
}  // namespace detail

/// An experiment with its models on the GPU (the same name, element type, head and defaults, so
/// that its checkpoints and a CPU run's are interchangeable).
template <experiment Exp>
struct on_cuda : Exp {
  using device = cuda;
  using archs = typename detail::cuda_archs_of<Exp>::type;
};

/// Throws, before any work, when the CUDA runtime reports no usable device; otherwise returns a
/// description of device 0 ("NVIDIA H200, 139.8 GiB, compute capability 9.0").
inline std::string require_cuda_device() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    fail("--device cuda: no CUDA device: cudaGetDeviceCount returned ", cudaGetErrorName(e), " (",
         cudaGetErrorString(e), "); use --device cpu");
  }
  if (n == 0) fail("--device cuda: no CUDA device: cudaGetDeviceCount returned 0 devices");
  cudaDeviceProp p{};
  FLSL_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s, %.1f GiB, compute capability %d.%d", p.name,
                double(p.totalGlobalMem) / double(1ull << 30), p.major, p.minor);
  return buf;
}

/// Trains `run` (parsed and validated by run_experiment<Exp>) on the GPU. Refuses, before any
/// work, a machine without a device and an architecture not built for cuda.
template <experiment Exp>
int run_on_cuda(const resolved_run& run) {
  using E = on_cuda<Exp>;
  const std::string device = require_cuda_device();
  std::string choices;
  if (!detail::has_arch(run.config, choices, typename E::archs{}))
    fail("--device cuda: ", run.config.arch, "/", run.config.patch, " is built into ", Exp::name,
         " for the CPU only (on cuda it has ", choices, ")");
  std::printf("%s: --device cuda: %s\n", Exp::name, device.c_str());
  std::fflush(stdout);
  return detail::dispatch_arch<E>(run, run_hooks<typename Exp::value_type, cuda>{},
                                  typename E::archs{});
}

}  // namespace flsl::train
