// The CUDA backend: device memory, transfers, expression and reduction kernels, Philox random
// fills and cuBLASLt GEMM for Tensor<T, cuda>. Include it (or <flsl/flsl.hpp>) from files compiled
// by nvcc, and link flsl::cuda. What exists and what does not yet: docs/cuda.md.
#pragma once

#if !defined(__CUDACC__)
#error "flsl/backend/cuda.cuh needs nvcc (compile this file as CUDA)"
#endif

#include "cuda/allocator.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/gemm.cuh"
#include "cuda/reduce.cuh"
#include "cuda/runtime.cuh"
#include "cuda/transfer.cuh"

namespace flsl {

/// The entry points that the device-generic code of core/ and expr/ calls for cuda tensors.
template <>
struct device_backend<cuda> {
  template <class T, class E>
  static void evaluate(const Tensor<T, cuda>& out, const E& e) {
    cuda_detail::evaluate(out, e);
  }
  template <class T, class E, class Op>
  static void reduce(const Tensor<T, cuda>& out, const E& e, const std::vector<int>& axes,
                     const Op& op) {
    cuda_detail::reduce(out, e, axes, op);
  }
  template <class T, class Gen>
  static void generate(const Tensor<T, cuda>& t, const Gen& gen) {
    cuda_detail::generate(t, gen);
  }
  template <class U, class T>
  static void convert(const Tensor<U, cuda>& out, const Tensor<T, cuda>& in) {
    out.assign(cast<U>(in));
  }
  /// A copy of t on device To (cpu -> cuda or cuda -> cpu).
  template <class To, class T, class From>
  static Tensor<T, To> transfer(const Tensor<T, From>& t) {
    if constexpr (std::is_same_v<To, cuda>)
      return cuda_detail::to_device(t);
    else
      return cuda_detail::to_host(t);
  }
};

}  // namespace flsl

#include "cuda/kernels/kernels.cuh"  // cuda_ops: LayerNorm, softmax, GELU, attention kernels
