// Row gathers on the GPU, forward and adjoint: the CUDA version of the CPU helpers behind
// index_select, gather_tokens and mask_select_tokens (include/flsl/autograd/ops/gather.hpp).
// x is seen as [outer, n, inner], the gathered rows as [outer, q, inner], idx as int64 with
// idx[o * idx_stride + k] the row of x that row k of block o reads (idx_stride 0: one index list
// for every o). Indices are checked by the caller (on the host), not here.
//
//   cuda_ops::gather_rows_forward(x, idx, idx_stride, outer, n, q, inner, out)
//     out[o, k, :] = x[o, idx[o * idx_stride + k], :]
//   cuda_ops::gather_rows_backward(grad_out, idx, idx_stride, outer, n, q, inner, grad_x)
//     grad_x[o, idx[o * idx_stride + k], :] += grad_out[o, k, :]   (adds into grad_x)
// All tensors contiguous with the element counts above.
//
// Kernels (256 threads per block, grid-stride loops): the forward is one thread per output
// element (consecutive threads copy consecutive elements of a row: coalesced). The backward is
// one thread per (o, column c) that runs k = 0 .. q-1 in order and adds grad_out[o, k, c] into
// its row of grad_x: repeated indices add up without atomics and in the CPU's order (k
// ascending), so the result is deterministic and equal to the CPU's. Compiled only by nvcc.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flsl {

namespace cuda_ops::detail {

template <class T>
__global__ void __launch_bounds__(threads)
    gather_rows_forward_kernel(const T* __restrict__ x, const std::int64_t* __restrict__ idx,
                               T* __restrict__ out, index_t idx_stride, index_t n, index_t q,
                               index_t inner, index_t total) {
  for (index_t e = index_t(blockIdx.x) * threads + threadIdx.x; e < total;
       e += index_t(gridDim.x) * threads) {
    const index_t r = e / inner, c = e % inner;
    const index_t o = r / q, k = r % q;
    out[e] = x[(o * n + index_t(idx[o * idx_stride + k])) * inner + c];
  }
}

template <class T>
__global__ void __launch_bounds__(threads)
    gather_rows_backward_kernel(const T* __restrict__ g, const std::int64_t* __restrict__ idx,
                                T* __restrict__ gx, index_t idx_stride, index_t n, index_t q,
                                index_t inner, index_t total) {
  using C = compute_t<T>;
  for (index_t e = index_t(blockIdx.x) * threads + threadIdx.x; e < total;
       e += index_t(gridDim.x) * threads) {
    const index_t o = e / inner, c = e % inner;
    for (index_t k = 0; k < q; ++k) {
      T* dst = gx + (o * n + index_t(idx[o * idx_stride + k])) * inner + c;
      *dst = convert<T>(convert<C>(*dst) + convert<C>(g[(o * q + k) * inner + c]));
    }
  }
}

template <class T>
void check_gather_args(const Tensor<T, cuda>& x, const Tensor<std::int64_t, cuda>& idx,
                       index_t idx_stride, index_t outer, index_t n, index_t q, index_t inner,
                       const Tensor<T, cuda>& out, const char* op, const char* xname,
                       const char* outname) {
  check_tensor(x, x.defined() ? x.shape() : Shape{}, op, xname);
  check_tensor(out, out.defined() ? out.shape() : Shape{}, op, outname);
  check_tensor(idx, idx.defined() ? idx.shape() : Shape{}, op, "idx");
  FLSL_CHECK(x.numel() == outer * n * inner && out.numel() == outer * q * inner, op, ": ", xname,
             " ", x.shape(), " and ", outname, " ", out.shape(), " are not [", outer, ", ", n, ", ",
             inner, "] and [", outer, ", ", q, ", ", inner, "]");
  FLSL_CHECK((idx_stride == 0 && idx.numel() == q) || (idx_stride == q && idx.numel() == outer * q),
             op, ": idx of shape ", idx.shape(), " with stride ", idx_stride, " for ", outer, " x ",
             q, " rows");
}

}  // namespace cuda_ops::detail

namespace cuda_ops {

/// out[o, k, :] = x[o, idx[o * idx_stride + k], :] (x [outer, n, inner], out [outer, q, inner]).
template <class T>
void gather_rows_forward(const Tensor<T, cuda>& x, const Tensor<std::int64_t, cuda>& idx,
                         index_t idx_stride, index_t outer, index_t n, index_t q, index_t inner,
                         const Tensor<T, cuda>& out) {
  constexpr const char* op = "cuda_ops::gather_rows_forward";
  detail::check_gather_args(x, idx, idx_stride, outer, n, q, inner, out, op, "x", "out");
  const index_t total = outer * q * inner;
  if (total == 0) return;
  detail::gather_rows_forward_kernel<T>
      <<<cuda_detail::grid_for(total), detail::threads, 0, current_stream()>>>(
          x.data(), idx.data(), out.data(), idx_stride, n, q, inner, total);
  cuda_detail::check_launch("gather_rows_forward_kernel");
}

/// grad_x[o, idx[o * idx_stride + k], :] += grad_out[o, k, :], k in order (deterministic).
template <class T>
void gather_rows_backward(const Tensor<T, cuda>& grad_out, const Tensor<std::int64_t, cuda>& idx,
                          index_t idx_stride, index_t outer, index_t n, index_t q, index_t inner,
                          const Tensor<T, cuda>& grad_x) {
  constexpr const char* op = "cuda_ops::gather_rows_backward";
  detail::check_gather_args(grad_x, idx, idx_stride, outer, n, q, inner, grad_out, op, "grad_x",
                            "grad_out");
  const index_t total = outer * inner;
  if (total == 0 || q == 0) return;
  detail::gather_rows_backward_kernel<T>
      <<<cuda_detail::grid_for(total), detail::threads, 0, current_stream()>>>(
          grad_out.data(), idx.data(), grad_x.data(), idx_stride, n, q, inner, total);
  cuda_detail::check_launch("gather_rows_backward_kernel");
}

}  // namespace cuda_ops

}  // namespace flsl
