// softmax and log_softmax along any axis on Vars: fused row kernels (max subtraction, one
// exponential per element) over the axis moved last; the last axis of a contiguous input is read
// in place.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../../expr/vector_math.hpp"
#include "reduce.hpp"

namespace flsl {

namespace detail {

/// e^x in the compute type: the vectorised exp_f32 for f32, std::exp for f64 (the gradient checks
/// run in f64 and compare to the library's exp).
template <class C>
FLSL_INLINE C exp_c(C x) {
  if constexpr (std::is_same_v<C, float>)
    return exp_f32(x);
  else
    return std::exp(x);
}

/// Rows [r0, r1) of y = softmax(x) (Log: log_softmax) over rows of length n > 0. The row maximum
/// m is subtracted before exponentiating, so large logits stay finite:
///   softmax = exp(x - m) / s,  log_softmax = (x - m) - log s,  s = sum_j exp(x_j - m) (in double).
/// Three vectorised passes over the row (in cache): max, exponentials into y, then scale (or
/// rewrite y as the log).
template <bool Log, class T>
void softmax_forward_rows(const T* x, T* y, index_t r0, index_t r1, index_t n) {
  using C = compute_t<T>;
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * n;
    T* __restrict yr = y + r * n;
    const C m = row_max<C>(xr, n);
    for (index_t j = 0; j < n; ++j) yr[j] = convert<T>(exp_c(convert<C>(xr[j]) - m));
    const double s = row_sum<double>(n, [&](index_t j) { return double(convert<C>(yr[j])); });
    if constexpr (Log) {
      const C ls = C(std::log(s));
      for (index_t j = 0; j < n; ++j) yr[j] = convert<T>((convert<C>(xr[j]) - m) - ls);
    } else {
      const C inv = C(1.0 / s);
      for (index_t j = 0; j < n; ++j) yr[j] = convert<T>(convert<C>(yr[j]) * inv);
    }
  }
}

/// Rows [r0, r1) of the backward from the output y and its gradient g:
///   softmax:     dx = y * (g - sum_j g_j y_j)
///   log_softmax: dx = g - exp(y) * sum_j g_j
/// written into dx, or added when `add`.
template <bool Log, class T>
void softmax_backward_rows(const T* y, const T* g, T* dx, bool add, index_t r0, index_t r1,
                           index_t n) {
  using C = compute_t<T>;
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict yr = y + r * n;
    const T* __restrict gr = g + r * n;
    T* __restrict dxr = dx + r * n;
    const auto yv = [&](index_t j) { return convert<C>(yr[j]); };
    const auto gv = [&](index_t j) { return convert<C>(gr[j]); };
    const C dot = Log ? row_sum<C>(n, gv) : row_sum<C>(n, [&](index_t j) { return gv(j) * yv(j); });
    const auto d = [&](index_t j) {
      if constexpr (Log)
        return gv(j) - exp_c(yv(j)) * dot;
      else
        return yv(j) * (gv(j) - dot);
    };
    if (add) {
      for (index_t j = 0; j < n; ++j) dxr[j] = convert<T>(convert<C>(dxr[j]) + d(j));
    } else {
      for (index_t j = 0; j < n; ++j) dxr[j] = convert<T>(d(j));
    }
  }
}

}  // namespace detail

// The CUDA kernels of softmax's cuda path, defined in flsl/backend/cuda/kernels/softmax.cuh
// (included by <flsl/backend/cuda.cuh>, nvcc only): the implementations behind
// cuda_ops::softmax_forward / log_softmax_forward / softmax_backward / log_softmax_backward,
// declared here (those public forms have default arguments, which a declaration must not
// repeat) so that this header stays free of CUDA headers.
namespace cuda_ops::detail {
template <bool Log, class T>
void softmax_forward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& y, const char* op);
template <bool Log, class T>
void softmax_backward(const Tensor<T, cuda>& y, const Tensor<T, cuda>& g, const Tensor<T, cuda>& dx,
                      bool add, const char* op);
}  // namespace cuda_ops::detail

namespace detail {

/// accumulate_rows_grad for kernels that take tensors: `kernel(dx, add)` writes (add = false) or
/// adds (add = true) the gradient rows into dx, a contiguous tensor of the row layout of `full`
/// (`axis` moved last): the input's own gradient when possible, else a temporary that is then
/// accumulated.
template <class T, class D, class Kernel>
void accumulate_rows_grad_tensor(autograd::node<T, D>& in, const Shape& full, int axis,
                                 Kernel&& kernel) {
  const int a = full.normalize_axis(axis);
  if (a == full.rank() - 1 && in.value.shape() == full) {
    if (!in.grad.defined()) {
      in.grad = Tensor<T, D>::empty(full);
      kernel(in.grad, false);
      return;
    }
    if (in.grad.is_contiguous()) {
      kernel(in.grad, true);
      return;
    }
  }
  auto dx = Tensor<T, D>::empty(axis_last_shape(full, a));  // [..., n]
  kernel(dx, false);
  in.accumulate(move_last_axis_to(dx, a));
}

/// The cuda path of softmax / log_softmax (rank checked, `a` normalised): the rows along `a`
/// made contiguous (a view when `a` is last and x contiguous), cuda_ops' row kernels forward and
/// backward (the same arithmetic as the CPU rows: max subtracted, sum in double).
template <bool Log, class T>
Var<T, cuda> softmax_cuda(const Var<T, cuda>& x, int a, const char* op) {
  using Dev = cuda;
  const Tensor<T, Dev> xr = rows_along(x.value(), a);  // [..., n]
  auto yr = Tensor<T, Dev>::empty(xr.shape());         // [..., n]
  if (xr.numel() > 0) cuda_ops::detail::softmax_forward<Log>(xr, yr, op);
  auto backward = [a, op](autograd::node<T, Dev>& out) {
    auto& in = *out.inputs[0];
    if (!in.requires_grad) return;
    const Tensor<T, Dev> y = rows_along(out.value, a);  // the forward's rows again: no copy
    const Tensor<T, Dev> g = rows_along(out.grad, a);
    accumulate_rows_grad_tensor(in, out.value.shape(), a, [&](const Tensor<T, Dev>& dx, bool add) {
      if (y.numel() > 0) cuda_ops::detail::softmax_backward<Log>(y, g, dx, add, op);
    });
  };
  return Var<T, Dev>::make_result(move_last_axis_to(yr, a), op, backward, x);
}

template <bool Log, class T, class D>
Var<T, D> softmax_along(const Var<T, D>& x, int axis, const char* op) {
  FLSL_CHECK(x.rank() >= 1, op, ": needs rank >= 1, got shape ", x.shape());
  const int a = x.shape().normalize_axis(axis);
  if constexpr (!std::is_same_v<D, cpu>) {
    return softmax_cuda<Log>(x, a, op);
  } else {
    const index_t n = x.size(a), rows = n ? x.numel() / n : 0;
    const Tensor<T, D> xr = rows_along(x.value(), a);  // [..., n]
    auto yr = Tensor<T, D>::empty(xr.shape());         // [..., n]
    parallel_rows(rows, n, [&](index_t r0, index_t r1) {
      softmax_forward_rows<Log>(xr.data(), yr.data(), r0, r1, n);
    });
    auto backward = [a, n, rows](autograd::node<T, D>& out) {
      const Tensor<T, D> y = rows_along(out.value, a);  // the forward's rows again: no copy
      const Tensor<T, D> g = rows_along(out.grad, a);
      accumulate_rows_grad(*out.inputs[0], out.value.shape(), a, [&](T* dx, bool add) {
        parallel_rows(rows, n, [&](index_t r0, index_t r1) {
          softmax_backward_rows<Log>(y.data(), g.data(), dx, add, r0, r1, n);
        });
      });
    };
    return Var<T, D>::make_result(move_last_axis_to(yr, a), op, backward, x);
  }
}

}  // namespace detail

/// exp(x_i) / sum_j exp(x_j) along `axis` (computed with the maximum subtracted).
template <class T, class D>
Var<T, D> softmax(const Var<T, D>& x, int axis = -1) {
  return detail::softmax_along<false>(x, axis, "softmax");
}
/// x_i - log sum_j exp(x_j) along `axis`: exact where log(softmax) would underflow.
template <class T, class D>
Var<T, D> log_softmax(const Var<T, D>& x, int axis = -1) {
  return detail::softmax_along<true>(x, axis, "log_softmax");
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(softmax_last_axis) {
  using namespace autograd;
  return gradcheck([](auto& in) { return softmax(in[0], -1); },
                   {random_input(random_row_shape(41, {{2, 4}, {2, 3}, {3, 8}}), 41, true, 2.0)});
}
FLSL_GRADCHECK_ROW(softmax_middle_axis) {
  using namespace autograd;
  return gradcheck([](auto& in) { return softmax(in[0], 1); },
                   {random_input(random_row_shape(42, {{2, 4}, {3, 6}, {2, 4}}), 42, true, 2.0)});
}
FLSL_GRADCHECK_ROW(log_softmax_last_axis_input_reused) {
  using namespace autograd;
  return gradcheck([](auto& in) { return Var(log_softmax(in[0]) * in[0]); },
                   {random_input(random_row_shape(43, {{3, 6}, {3, 9}}), 43, true, 3.0)});
}
FLSL_GRADCHECK_ROW(log_softmax_first_axis) {
  using namespace autograd;
  return gradcheck([](auto& in) { return log_softmax(in[0], 0); },
                   {random_input(random_row_shape(44, {{3, 6}, {2, 4}, {2, 3}}), 44, true, 3.0)});
}
#endif

}  // namespace flsl
