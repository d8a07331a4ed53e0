// Device tags: where a tensor's memory lives and where its expressions are evaluated.
#pragma once

#include <string_view>
#include <type_traits>

namespace flsl {

/// Host memory; expressions evaluate in oneTBB-parallel loops.
struct cpu {
  static constexpr std::string_view name = "cpu";
};
/// NVIDIA GPU memory (the CUDA backend, compiled by nvcc).
struct cuda {
  static constexpr std::string_view name = "cuda";
};

template <class D>
concept device = std::is_same_v<D, cpu> || std::is_same_v<D, cuda>;

/// What a device other than the CPU provides to the device-generic code of core/ and expr/
/// (evaluation of expressions, reductions, random fills, conversions, transfers). The CUDA backend
/// specialises it in flsl/backend/cuda.cuh; using a cuda tensor without that header is this error.
template <class D>
struct device_backend {
  static_assert(sizeof(D) == 0,
                "flsl: this operation on a cuda tensor needs the CUDA backend: include "
                "<flsl/backend/cuda.cuh> (or <flsl/flsl.hpp>) in a file compiled by nvcc");
};

}  // namespace flsl
