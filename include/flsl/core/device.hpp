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

}  // namespace flsl
