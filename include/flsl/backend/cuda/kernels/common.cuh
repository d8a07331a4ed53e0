// Shared pieces of the CUDA kernels of the model's non-GEMM ops (LayerNorm, softmax, attention):
// argument checks on Tensor<T, cuda> and deterministic warp / block reductions. Every reduction
// here combines values in an order fixed by the launch shape alone (a butterfly of warp shuffles,
// then the warps' partials in warp order), never with atomics, so results repeat bit-exactly from
// run to run. Compiled only by nvcc.
#pragma once

#include <cmath>
#include <type_traits>

#include "../../../core/tensor.hpp"
#include "../allocator.cuh"
#include "../runtime.cuh"

namespace flsl {

namespace cuda_ops::detail {

/// Threads per block of the row kernels (LayerNorm, softmax) and of the attention kernels.
inline constexpr int threads = 256;

/// Rows up to this length get one warp each (8 rows per block); longer rows get a whole block.
inline constexpr index_t warp_row_limit = 1024;

/// Refuses a tensor that is undefined, not contiguous, or not of the expected shape.
template <class T>
void check_tensor(const Tensor<T, cuda>& t, const Shape& want, const char* op, const char* what) {
  FLSL_CHECK(t.defined(), op, ": ", what, " is undefined");
  FLSL_CHECK(t.shape() == want, op, ": ", what, " has shape ", t.shape(), ", expected ", want);
  FLSL_CHECK(t.is_contiguous(), op, ": ", what, " of shape ", t.shape(),
             " must be contiguous (call .contiguous() first)");
}
/// The same for an optional tensor: an undefined one is accepted and reads as nullptr.
template <class T>
T* optional_data(const Tensor<T, cuda>& t, const Shape& want, const char* op, const char* what) {
  if (!t.defined()) return nullptr;
  check_tensor(t, want, op, what);
  return t.data();
}

/// e^x and log x in the compute type through CUDA's math library by its global names (inside
/// namespace flsl an unqualified exp would find the expression-template flsl::exp).
template <class V>
__device__ __forceinline__ V dev_exp(V x) {
  if constexpr (std::is_same_v<V, float>)
    return ::expf(x);
  else
    return ::exp(x);
}
template <class V>
__device__ __forceinline__ V dev_log(V x) {
  if constexpr (std::is_same_v<V, float>)
    return ::logf(x);
  else
    return ::log(x);
}

/// Sum over the 32 lanes of a warp by a butterfly of shuffles. Float addition is commutative, so
/// lane l and lane l ^ k compute the same pair sum at every step: all lanes end with the same
/// bits, and the order depends on nothing but the lane numbers.
template <class V>
__device__ __forceinline__ V warp_sum(V v) {
  FLSL_UNROLL
  for (int k = 16; k > 0; k >>= 1) v += __shfl_xor_sync(0xffffffffu, v, k);
  return v;
}
/// Maximum over the 32 lanes (as the CPU's row_max: `a < b ? b : a`).
template <class V>
__device__ __forceinline__ V warp_max(V v) {
  FLSL_UNROLL
  for (int k = 16; k > 0; k >>= 1) {
    const V o = __shfl_xor_sync(0xffffffffu, v, k);
    v = v < o ? o : v;
  }
  return v;
}
/// Sum / maximum over the 16 lanes of a half warp (lanes l and l ^ k for k < 16): the attention
/// kernels' rows are spread over 16 consecutive lanes.
template <class V>
__device__ __forceinline__ V half_warp_sum(V v) {
  FLSL_UNROLL
  for (int k = 8; k > 0; k >>= 1) v += __shfl_xor_sync(0xffffffffu, v, k);
  return v;
}
template <class V>
__device__ __forceinline__ V half_warp_max(V v) {
  FLSL_UNROLL
  for (int k = 8; k > 0; k >>= 1) {
    const V o = __shfl_xor_sync(0xffffffffu, v, k);
    v = v < o ? o : v;
  }
  return v;
}

/// A row's sum or maximum over the G threads that share the row (G = 32: one warp; G = threads:
/// the whole block, one row per block). Every thread of the group gets the result. For G =
/// threads, `scratch` is shared memory for threads / 32 values, and every thread of the block must
/// call (it synchronises twice); the warps' partials are folded in warp order by every thread.
template <int G, bool Max, class V>
__device__ __forceinline__ V group_reduce(V v, V* scratch) {
  v = Max ? warp_max(v) : warp_sum(v);
  if constexpr (G == 32) {
    return v;
  } else {
    static_assert(G == threads, "group_reduce: a warp or the whole block");
    constexpr int warps = G / 32;
    const int warp = int(threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) scratch[warp] = v;
    __syncthreads();
    V r = scratch[0];
    FLSL_UNROLL
    for (int w = 1; w < warps; ++w) {
      if constexpr (Max)
        r = r < scratch[w] ? scratch[w] : r;
      else
        r += scratch[w];
    }
    __syncthreads();  // scratch may be rewritten by the next call
    return r;
  }
}

/// Launch shape of a row kernel over `rows` rows of length n: G threads per row.
struct row_launch {
  int group;  // 32 or threads
  unsigned blocks;
};
inline row_launch plan_rows(index_t rows, index_t n) {
  const int g = n <= warp_row_limit ? 32 : threads;
  const index_t per_block = threads / g;
  const index_t blocks = (rows + per_block - 1) / per_block;
  FLSL_CHECK(blocks < index_t(1) << 31, "cuda row kernel: ", rows, " rows is too many");
  return {g, unsigned(std::max<index_t>(blocks, 1))};
}

}  // namespace cuda_ops::detail

}  // namespace flsl
