// sum and mean of a Var over axes, and the contiguous-row helpers (lane sums, moving an axis last,
// writing a row-layout gradient) that the row-wise ops (layer_norm, softmax, normalize) share.
#pragma once

#include <initializer_list>
#include <limits>
#include <utility>
#include <vector>

#include "../elementwise.hpp"
#include "../gradcheck.hpp"

namespace flsl {

namespace detail {

// ---- row kernels' building blocks -------------------------------------------------------------

/// Independent partial sums of a row kernel: 128 bytes of them (two AVX-512 or four AVX2
/// registers). A plain `s += f(j)` loop cannot vectorise without -ffast-math (that would reorder
/// the additions); a fixed set of lanes is a fixed order, so the result does not depend on the
/// machine or the thread count.
template <class C>
inline constexpr int row_lanes = int(128 / sizeof(C));

/// Sum over j in [0, n) of f(j), in lanes of C (f is inlined and the lane loop vectorised).
template <class C, class F>
FLSL_INLINE C row_sum(index_t n, F&& f) {
  constexpr int L = row_lanes<C>;
  C acc[L] = {};
  const index_t full = n - n % L;
  for (index_t j = 0; j < full; j += L)
    for (int k = 0; k < L; ++k) acc[k] += f(j + k);
  C tail = C(0);
  for (index_t j = full; j < n; ++j) tail += f(j);
  for (int w = L / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0] + tail;
}

/// Largest of x[0..n) in C (n > 0); a NaN anywhere gives NaN (as torch.max).
template <class C, class T>
FLSL_INLINE C row_max(const T* x, index_t n) {
  constexpr int L = row_lanes<C>;
  const auto pick = [](C a, C v) { return (a < v || v != v) ? v : a; };
  C acc[L];
  for (int k = 0; k < L; ++k) acc[k] = convert<C>(x[0]);
  const index_t full = n - n % L;
  for (index_t j = 0; j < full; j += L)
    for (int k = 0; k < L; ++k) acc[k] = pick(acc[k], convert<C>(x[j + k]));
  for (index_t j = full; j < n; ++j) acc[0] = pick(acc[0], convert<C>(x[j]));
  for (int w = L / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] = pick(acc[k], acc[k + w]);
  return acc[0];
}

// ---- axis moves for the row kernels -----------------------------------------------------------

/// x viewed with `axis` moved to the end (no copy): its rows along `axis` become the last axis.
template <class T, class D>
Tensor<T, D> move_axis_last(const Tensor<T, D>& x, int axis) {
  const int a = x.shape().normalize_axis(axis);
  std::vector<int> perm;
  for (int i = 0; i < x.rank(); ++i)
    if (i != a) perm.push_back(i);
  perm.push_back(a);
  return x.permute(perm);
}
/// The inverse of move_axis_last: y's last axis viewed back at position `axis` (no copy).
template <class T, class D>
Tensor<T, D> move_last_axis_to(const Tensor<T, D>& y, int axis) {
  std::vector<int> perm;
  const int last = y.rank() - 1;
  for (int i = 0; i < y.rank(); ++i) perm.push_back(i < axis ? i : i == axis ? last : i - 1);
  return y.permute(perm);
}
/// `s` with axis `a` moved to the end.
inline Shape axis_last_shape(const Shape& s, int a) {
  Shape out;
  for (int i = 0; i < s.rank(); ++i)
    if (i != a) out.push_back(s[i]);
  out.push_back(s[a]);
  return out;
}
/// x's values along `axis` as contiguous rows: [..., n] with the other axes in order (a view when
/// `axis` is already last and x is contiguous, else one copy).
template <class T, class D>
Tensor<T, D> rows_along(const Tensor<T, D>& x, int axis) {
  return move_axis_last(x, axis).contiguous();
}

/// Hands a row kernel the memory of an input's gradient in the row layout of `full` (the op's
/// shape, with `axis` moved last): `kernel(T* dx, bool add)` writes (add = false) or adds (add =
/// true) rows of dx. The kernel writes straight into the node's gradient when `axis` is last and
/// the input has the op's shape; otherwise into a temporary that is then accumulated (summing
/// over broadcast axes, as node::accumulate does).
template <class T, class D, class Kernel>
void accumulate_rows_grad(autograd::node<T, D>& in, const Shape& full, int axis, Kernel&& kernel) {
  const int a = full.normalize_axis(axis);
  if (a == full.rank() - 1 && in.value.shape() == full) {
    if (!in.grad.defined()) {
      in.grad = Tensor<T, D>::empty(full);
      kernel(in.grad.data(), false);
      return;
    }
    if (in.grad.is_contiguous()) {
      kernel(in.grad.data(), true);
      return;
    }
  }
  auto dx = Tensor<T, D>::empty(axis_last_shape(full, a));  // [..., n]
  kernel(dx.data(), false);
  in.accumulate(move_last_axis_to(dx, a));
}

/// The gradient of a reduction (shape with or without the reduced axes) seen as the input's shape:
/// the reduced axes come back with extent 1 and are expanded with stride 0 (no copy).
template <class T, class D>
Tensor<T, D> expand_reduced_grad(const Tensor<T, D>& g, const Shape& in,
                                 const std::vector<int>& axes) {
  return g.reshape_or_copy(reduced_shape(in, axes, true)).expand(in);
}

template <class T, class D>
Var<T, D> sum_or_mean(const Var<T, D>& x, axes_t axes, bool keepdim, bool is_mean) {
  using C = compute_t<T>;
  axes = reduce_axes(x.shape(), std::move(axes));
  index_t n = 1;
  for (int a : axes) n *= x.shape()[a];
  Tensor<T, D> y = is_mean ? reduce<T>(x.value(), axes, keepdim, mean_op<C>{})
                           : reduce<T>(x.value(), axes, keepdim, sum_op<C>{});
  // d sum / dx = 1 and d mean / dx = 1/n: the gradient broadcasts back over the reduced axes.
  auto backward = [axes, is_mean, n](autograd::node<T, D>& out) {
    auto& in = *out.inputs[0];
    const Tensor<T, D> g = expand_reduced_grad(out.grad, in.value.shape(), axes);
    if (is_mean)
      in.accumulate(g * C(1.0 / double(n)));
    else
      in.accumulate(g);
  };
  return Var<T, D>::make_result(std::move(y), is_mean ? "mean" : "sum", std::move(backward), x);
}

}  // namespace detail

/// Sum of a Var over `axes` (all when empty), keeping them as extent 1 when `keepdim`. Floating
/// inputs accumulate in double. The tensor `flsl::sum(tensor_like)` is a separate overload.
template <class T, class D>
Var<T, D> sum(const Var<T, D>& x, axes_t axes = {}, bool keepdim = false) {
  return detail::sum_or_mean(x, std::move(axes), keepdim, false);
}
/// Mean of a Var over `axes` (all when empty).
template <class T, class D>
Var<T, D> mean(const Var<T, D>& x, axes_t axes = {}, bool keepdim = false) {
  static_assert(is_floating<T>, "flsl::mean(Var) needs a floating-point Var");
  return detail::sum_or_mean(x, std::move(axes), keepdim, true);
}
/// sum/mean of an elementwise Var expression: the expression becomes one node first.
template <class E>
requires std::is_base_of_v<autograd::var_expr_base, E>
auto sum(const E& e, axes_t axes = {}, bool keepdim = false) {
  return sum(eval(e), std::move(axes), keepdim);
}
template <class E>
requires std::is_base_of_v<autograd::var_expr_base, E>
auto mean(const E& e, axes_t axes = {}, bool keepdim = false) {
  return mean(eval(e), std::move(axes), keepdim);
}

#ifdef FLSL_GRADCHECK_ROWS
namespace autograd {
/// A reproducible random shape for a gradcheck row: extent i uniform in ranges[i] = {lo, hi}.
inline Shape random_row_shape(std::uint64_t seed,
                              std::initializer_list<std::pair<index_t, index_t>> ranges) {
  Shape s;
  std::uint64_t i = 0;
  for (auto [lo, hi] : ranges)
    s.push_back(lo + index_t(uniform_at(seed, 99, i++) * double(hi - lo + 1)));
  return s;
}
}  // namespace autograd

FLSL_GRADCHECK_ROW(sum_axes) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) {
        return sum(in[0], {0, 2});
      },
      {random_input(random_row_shape(1, {{2, 4}, {2, 5}, {3, 5}}), 1)});
}
FLSL_GRADCHECK_ROW(sum_all_of_expression) {
  using namespace autograd;
  return gradcheck([](auto& in) { return sum(in[0] * in[1]); },
                   {random_input(random_row_shape(2, {{2, 5}, {2, 5}}), 2),
                    random_input(random_row_shape(2, {{2, 5}, {2, 5}}), 3)});
}
FLSL_GRADCHECK_ROW(mean_keepdim) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) {
        return mean(in[0], {1, -1}, true);
      },
      {random_input(random_row_shape(3, {{2, 4}, {2, 4}, {2, 3}, {3, 5}}), 4)});
}
FLSL_GRADCHECK_ROW(mean_all) {
  using namespace autograd;
  return gradcheck([](auto& in) { return mean(in[0]); },
                   {random_input(random_row_shape(4, {{2, 6}, {3, 6}}), 5)});
}
#endif

}  // namespace flsl
