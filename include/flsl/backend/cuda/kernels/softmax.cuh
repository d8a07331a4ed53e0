// softmax and log_softmax over the last axis on the GPU, forward and backward, with the CPU op's
// arithmetic (include/flsl/autograd/ops/softmax.hpp): the row maximum m subtracted first, the sum
// of exponentials s in double, then
//   softmax      y = exp(x - m) * (1 / s)         dx = y * (g - sum_j g_j y_j)
//   log_softmax  y = (x - m) - log s               dx = g - exp(y) * sum_j g_j
//
//   cuda_ops::softmax_forward(x, y)        cuda_ops::log_softmax_forward(x, y)
//   cuda_ops::softmax_backward(y, grad_y, dx, accumulate)
//   cuda_ops::log_softmax_backward(y, grad_y, dx, accumulate)
// All tensors contiguous, of one shape [..., n] with n > 0; the backward reads the forward's
// output y; dx is written (accumulate = false) or added to (true). Other axes: move the axis last
// first (the CPU op's rows_along does the same).
//
// Kernels (256 threads per block): one warp per row when n <= 1024 (8 rows per block), else one
// block per row; lanes stride over the row. Forward: three passes (max; exp written to y and
// summed in double; scale or log), the backward two (dot; write). Sums and maxima by a shuffle
// butterfly, then across warps in warp order (kernels/common.cuh): deterministic, no atomics.
// exp and log are CUDA's expf (2 ulp) and f64 log (the CPU: its 1-ulp expf and glibc's log).
// Compiled only by nvcc.
#pragma once

#include "common.cuh"

namespace flsl {

namespace cuda_ops::detail {

template <int G, bool Log, class T>
__global__ void __launch_bounds__(threads)
    softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y, index_t rows, index_t n) {
  using C = compute_t<T>;
  __shared__ C scratch_c[threads / 32];
  __shared__ double scratch_d[threads / 32];
  const index_t row = index_t(blockIdx.x) * (threads / G) + int(threadIdx.x) / G;
  const int lane = int(threadIdx.x) % G;
  if (row >= rows) return;
  const T* xr = x + row * n;
  T* yr = y + row * n;
  C m = convert<C>(xr[0]);
  for (index_t j = lane; j < n; j += G) {
    const C v = convert<C>(xr[j]);
    m = m < v ? v : m;
  }
  m = group_reduce<G, true>(m, scratch_c);
  double s = 0.0;
  for (index_t j = lane; j < n; j += G) {
    const T e = convert<T>(dev_exp(convert<C>(xr[j]) - m));
    yr[j] = e;
    s += double(convert<C>(e));
  }
  s = group_reduce<G, false>(s, scratch_d);
  if constexpr (Log) {
    const C ls = C(::log(s));
    for (index_t j = lane; j < n; j += G) yr[j] = convert<T>((convert<C>(xr[j]) - m) - ls);
  } else {
    const C inv = C(1.0 / s);
    for (index_t j = lane; j < n; j += G) yr[j] = convert<T>(convert<C>(yr[j]) * inv);
  }
}

template <int G, bool Log, class T>
__global__ void __launch_bounds__(threads)
    softmax_backward_kernel(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ dx,
                            bool add, index_t rows, index_t n) {
  using C = compute_t<T>;
  __shared__ C scratch[threads / 32];
  const index_t row = index_t(blockIdx.x) * (threads / G) + int(threadIdx.x) / G;
  const int lane = int(threadIdx.x) % G;
  if (row >= rows) return;
  const T* yr = y + row * n;
  const T* gr = g + row * n;
  T* dxr = dx + row * n;
  C dot = C(0);
  for (index_t j = lane; j < n; j += G)
    dot += Log ? convert<C>(gr[j]) : convert<C>(gr[j]) * convert<C>(yr[j]);
  dot = group_reduce<G, false>(dot, scratch);
  for (index_t j = lane; j < n; j += G) {
    const C gv = convert<C>(gr[j]), yv = convert<C>(yr[j]);
    const C v = Log ? gv - dev_exp(yv) * dot : yv * (gv - dot);
    dxr[j] = convert<T>(add ? convert<C>(dxr[j]) + v : v);
  }
}

template <bool Log, class T>
void softmax_forward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& y, const char* op) {
  FLSL_CHECK(x.defined() && x.rank() >= 1 && x.size(-1) > 0, op, ": input of shape ",
             x.defined() ? x.shape() : Shape{}, " has no non-empty last axis");
  check_tensor(x, x.shape(), op, "x");
  check_tensor(y, x.shape(), op, "y");
  const index_t n = x.size(-1), rows = x.numel() / n;
  if (rows == 0) return;
  const auto lp = plan_rows(rows, n);
  if (lp.group == 32)
    softmax_forward_kernel<32, Log, T>
        <<<lp.blocks, threads, 0, current_stream()>>>(x.data(), y.data(), rows, n);
  else
    softmax_forward_kernel<threads, Log, T>
        <<<lp.blocks, threads, 0, current_stream()>>>(x.data(), y.data(), rows, n);
  cuda_detail::check_launch("softmax_forward_kernel");
}

template <bool Log, class T>
void softmax_backward(const Tensor<T, cuda>& y, const Tensor<T, cuda>& g, const Tensor<T, cuda>& dx,
                      bool add, const char* op) {
  FLSL_CHECK(y.defined() && y.rank() >= 1 && y.size(-1) > 0, op, ": output of shape ",
             y.defined() ? y.shape() : Shape{}, " has no non-empty last axis");
  check_tensor(y, y.shape(), op, "y");
  check_tensor(g, y.shape(), op, "grad_y");
  check_tensor(dx, y.shape(), op, "dx");
  const index_t n = y.size(-1), rows = y.numel() / n;
  if (rows == 0) return;
  const auto lp = plan_rows(rows, n);
  if (lp.group == 32)
    softmax_backward_kernel<32, Log, T>
        <<<lp.blocks, threads, 0, current_stream()>>>(y.data(), g.data(), dx.data(), add, rows, n);
  else
    softmax_backward_kernel<threads, Log, T>
        <<<lp.blocks, threads, 0, current_stream()>>>(y.data(), g.data(), dx.data(), add, rows, n);
  cuda_detail::check_launch("softmax_backward_kernel");
}

}  // namespace cuda_ops::detail

namespace cuda_ops {

/// y = softmax(x) over the last axis.
template <class T>
void softmax_forward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& y) {
  detail::softmax_forward<false>(x, y, "cuda_ops::softmax_forward");
}
/// y = log_softmax(x) over the last axis.
template <class T>
void log_softmax_forward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& y) {
  detail::softmax_forward<true>(x, y, "cuda_ops::log_softmax_forward");
}
/// dx (=, or += when accumulate) y * (g - sum_j g_j y_j), from softmax's output y.
template <class T>
void softmax_backward(const Tensor<T, cuda>& y, const Tensor<T, cuda>& grad_y,
                      const Tensor<T, cuda>& dx, bool accumulate = false) {
  detail::softmax_backward<false>(y, grad_y, dx, accumulate, "cuda_ops::softmax_backward");
}
/// dx (=, or += when accumulate) g - exp(y) * sum_j g_j, from log_softmax's output y.
template <class T>
void log_softmax_backward(const Tensor<T, cuda>& y, const Tensor<T, cuda>& grad_y,
                          const Tensor<T, cuda>& dx, bool accumulate = false) {
  detail::softmax_backward<true>(y, grad_y, dx, accumulate, "cuda_ops::log_softmax_backward");
}

}  // namespace cuda_ops

}  // namespace flsl
