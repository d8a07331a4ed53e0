// Reductions (sum, mean, max, min, argmax, var) along axes, consuming an expression directly:
// the reduced operand is never materialised.
#pragma once

#include <limits>
#include <vector>

#include "assign.hpp"

namespace flsl {

namespace detail {

/// Accumulator type: double for float inputs (sums of many f32 values stay exact to f32), the
/// compute type otherwise; integers and bools sum as int64.
template <class V>
using acc_t = std::conditional_t<std::is_floating_point_v<V>, double, std::int64_t>;

// Each reduction is an operator object: init, step (fold one value in), finish. Those that a
// device reduction supports also have combine (merge two partial folds: a tree over threads).
template <class V>
struct sum_op {
  using acc = acc_t<V>;
  FLSL_HD acc init() const { return acc(0); }
  FLSL_HD FLSL_INLINE void step(acc& a, V v, index_t) const { a += acc(v); }
  FLSL_HD void combine(acc& a, acc b) const { a += b; }
  FLSL_HD acc finish(acc a, index_t) const { return a; }
};
template <class V>
struct mean_op {
  using acc = double;
  FLSL_HD double init() const { return 0; }
  FLSL_HD FLSL_INLINE void step(double& a, V v, index_t) const { a += double(v); }
  FLSL_HD void combine(double& a, double b) const { a += b; }
  FLSL_HD double finish(double a, index_t n) const {
    return n ? a / double(n) : std::numeric_limits<double>::quiet_NaN();
  }
};
template <class V, bool Max>
struct extreme_op {
  using acc = V;
  FLSL_HD V init() const {
    if constexpr (std::is_floating_point_v<V>)
      return Max ? -std::numeric_limits<V>::infinity() : std::numeric_limits<V>::infinity();
    else
      return Max ? std::numeric_limits<V>::lowest() : std::numeric_limits<V>::max();
  }
  FLSL_HD FLSL_INLINE void step(V& a, V v, index_t) const {
    // NaN propagates (as in PyTorch): once a is NaN it stays NaN.
    if (v != v || (Max ? v > a : v < a)) a = (a != a) ? a : v;
  }
  FLSL_HD void combine(V& a, V b) const { step(a, b, 0); }
  FLSL_HD V finish(V a, index_t) const { return a; }
};
template <class V>
struct argmax_op {
  struct acc {
    V best;
    index_t index;
  };
  acc init() const { return {std::numeric_limits<V>::lowest(), -1}; }
  FLSL_INLINE void step(acc& a, V v, index_t i) const {
    if (a.index < 0 || v > a.best || (v != v && a.best == a.best)) a = {v, i};
  }
  std::int64_t finish(acc a, index_t) const { return a.index; }
};
/// Welford's one-pass variance with `correction` (1: unbiased, as torch.var's default).
template <class V>
struct var_op {
  struct acc {
    double mean = 0, m2 = 0;
    index_t n = 0;
  };
  int correction = 1;
  acc init() const { return {}; }
  FLSL_INLINE void step(acc& a, V v, index_t) const {
    ++a.n;
    const double d = double(v) - a.mean;
    a.mean += d / double(a.n);
    a.m2 += d * (double(v) - a.mean);
  }
  double finish(acc a, index_t) const {
    return a.m2 / double(std::max<index_t>(a.n - correction, 0));
  }
};

/// Sorted, de-duplicated, normalised axes; empty `axes` means all.
inline std::vector<int> reduce_axes(const Shape& s, std::vector<int> axes) {
  if (axes.empty())
    for (int i = 0; i < s.rank(); ++i) axes.push_back(i);
  for (int& a : axes) a = s.normalize_axis(a);
  std::sort(axes.begin(), axes.end());
  axes.erase(std::unique(axes.begin(), axes.end()), axes.end());
  return axes;
}
inline Shape reduced_shape(const Shape& s, const std::vector<int>& axes, bool keepdim) {
  Shape out;
  for (int i = 0; i < s.rank(); ++i) {
    const bool r = std::find(axes.begin(), axes.end(), i) != axes.end();
    if (!r)
      out.push_back(s[i]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

/// The loop structure of `out = reduce(e)` (every device uses it): iteration axes [0, kept) walk
/// the output, axes [kept, rank) are folded; both groups are coalesced, and the leaves of `e` hold
/// their strides on these axes. The folded axes are never empty (an extent-1 axis stands in).
struct reduce_plan {
  Shape extent;      // [kept axes..., reduced axes...]
  Shape out_stride;  // output strides on the kept axes (0 on the reduced ones)
  int kept = 0, rank = 0;
  index_t n_out = 1;  // output elements
  index_t count = 1;  // values folded into each
};
template <class T, class Device, class E>
reduce_plan plan_reduction(const Tensor<T, Device>& out, E& e, const std::vector<int>& axes) {
  const Shape in_shape = e.shape();
  const int rank = in_shape.rank();
  // Iteration axes: kept axes first (in order), then reduced axes.
  std::vector<int> order;
  for (int i = 0; i < rank; ++i)
    if (std::find(axes.begin(), axes.end(), i) == axes.end()) order.push_back(i);
  const int kept = int(order.size());
  for (int a : axes) order.push_back(a);

  e.bind(in_shape);
  // Output strides on the iteration axes: kept axes walk out's memory, reduced axes stay (0).
  Shape ostr = Shape::filled(rank, 0);
  const bool keepdim_layout = out.rank() == rank;
  for (int i = 0; i < kept; ++i)
    ostr[i] = keepdim_layout ? out.strides()[order[std::size_t(i)]] : out.strides()[i];
  Shape ext = Shape::filled(rank, 1);
  for (int i = 0; i < rank; ++i) ext[i] = in_shape[order[std::size_t(i)]];
  iteration_space sp{ext, {&ostr}};
  e.for_each_leaf([&](Shape& s, const void*, std::size_t, const Shape&) {
    Shape p = s;
    for (int i = 0; i < rank; ++i) p[i] = s[order[std::size_t(i)]];
    s = p;
    sp.strides.push_back(&s);
  });
  const int ko = sp.coalesce(0, kept);
  const int kr = sp.coalesce(ko, sp.extent.rank()) - ko;
  if (kr == 0) {  // nothing left to reduce: a reduced axis of extent 1 (or none)
    sp.extent.push_back(1);
    for (Shape* s : sp.strides) s->push_back(0);
  }
  reduce_plan p{sp.extent, ostr, ko, ko + std::max(kr, 1)};
  for (int d = 0; d < ko; ++d) p.n_out *= sp.extent[d];
  for (int d = ko; d < p.rank; ++d) p.count *= sp.extent[d];
  return p;
}

/// out[o] = finish(fold over the reduced axes of e). `out` has the kept axes in order (keepdim
/// or not: extent-1 axes do not matter to the iteration).
template <class T, class E, class Op>
void reduce_cpu(const Tensor<T, cpu>& out, E e, const std::vector<int>& axes, const Op& op) {
  const reduce_plan plan = plan_reduction(out, e, axes);
  const Shape& ext = plan.extent;
  const Shape& ostr = plan.out_stride;
  const int ko = plan.kept, r = plan.rank;
  bool unit = true;
  e.for_each_leaf(
      [&](Shape& s, const void*, std::size_t, const Shape&) { unit = unit && s[r - 1] == 1; });
  const index_t inner = ext[r - 1];
  const index_t outer_r = plan.count / std::max<index_t>(inner, 1);
  const index_t n_out = plan.n_out, count = plan.count;
  T* const base = out.data();

  parallel_rows(n_out, count, [&](index_t o0, index_t o1) {
    E local = e;
    row_counter oc(ext, ko, o0);
    std::array<index_t, max_rank> idx{};
    for (index_t o = o0; o < o1; ++o, oc.next()) {
      index_t off = 0;
      for (int d = 0; d < ko; ++d) {
        idx[std::size_t(d)] = oc.idx[std::size_t(d)];
        off += idx[std::size_t(d)] * ostr[d];
      }
      auto acc = op.init();
      index_t linear = 0;
      for (index_t rr = 0; rr < outer_r; ++rr) {
        index_t rem = rr;
        for (int d = r - 2; d >= ko; --d) {
          idx[std::size_t(d)] = rem % ext[d];
          rem /= ext[d];
        }
        local.start_row(idx.data(), r - 1);
        if (unit) {
          for (index_t j = 0; j < inner; ++j)
            op.step(acc, local.template get<true>(j, r - 1), linear++);
        } else {
          for (index_t j = 0; j < inner; ++j)
            op.step(acc, local.template get<false>(j, r - 1), linear++);
        }
      }
      base[off] = convert<T>(op.finish(acc, count));
    }
  });
}

template <class T, class Src, class Op>
auto reduce(const Src& x, std::vector<int> axes, bool keepdim, const Op& op) {
  const auto e = as_expr(x);
  using expr_device = typename std::remove_cvref_t<decltype(e)>::device_type;
  using D = std::conditional_t<std::is_void_v<expr_device>, cpu, expr_device>;
  axes = reduce_axes(e.shape(), std::move(axes));
  auto out = Tensor<T, D>::empty(reduced_shape(e.shape(), axes, keepdim));
  if constexpr (std::is_same_v<D, cpu>)
    reduce_cpu(out, e, axes, op);
  else
    device_backend<D>::reduce(out, e, axes, op);
  return out;
}
template <class X>
using reduce_value_t = typename node_t<X>::value_type;
template <class X>
using sum_t = std::conditional_t<std::is_floating_point_v<reduce_value_t<X>>, reduce_value_t<X>,
                                 std::int64_t>;
}  // namespace detail

using axes_t = std::vector<int>;

/// Sum over `axes` (all when empty). Accumulates in double for floating types.
template <tensor_like X>
auto sum(const X& x, axes_t axes = {}, bool keepdim = false) {
  return detail::reduce<detail::sum_t<X>>(x, std::move(axes), keepdim,
                                          detail::sum_op<detail::reduce_value_t<X>>{});
}
template <tensor_like X>
auto mean(const X& x, axes_t axes = {}, bool keepdim = false) {
  using V = detail::reduce_value_t<X>;
  static_assert(std::is_floating_point_v<V>, "flsl::mean needs a floating-point operand");
  return detail::reduce<V>(x, std::move(axes), keepdim, detail::mean_op<V>{});
}
template <tensor_like X>
auto max(const X& x, axes_t axes = {}, bool keepdim = false) {
  using V = detail::reduce_value_t<X>;
  return detail::reduce<V>(x, std::move(axes), keepdim, detail::extreme_op<V, true>{});
}
template <tensor_like X>
auto min(const X& x, axes_t axes = {}, bool keepdim = false) {
  using V = detail::reduce_value_t<X>;
  return detail::reduce<V>(x, std::move(axes), keepdim, detail::extreme_op<V, false>{});
}
/// Index of the largest element along one axis (the first one on ties; NaN wins).
template <tensor_like X>
auto argmax(const X& x, int axis, bool keepdim = false) {
  using V = detail::reduce_value_t<X>;
  return detail::reduce<std::int64_t>(x, {axis}, keepdim, detail::argmax_op<V>{});
}
/// Variance over `axes` with Bessel's `correction` (1 = unbiased, torch.var's default).
template <tensor_like X>
auto var(const X& x, axes_t axes = {}, bool keepdim = false, int correction = 1) {
  using V = detail::reduce_value_t<X>;
  static_assert(std::is_floating_point_v<V>, "flsl::var needs a floating-point operand");
  return detail::reduce<V>(x, std::move(axes), keepdim, detail::var_op<V>{correction});
}

}  // namespace flsl
