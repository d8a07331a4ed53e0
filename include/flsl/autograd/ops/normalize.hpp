// L2 normalisation and cosine similarity along an axis on Vars, with torch's eps conventions;
// fused row kernels over the axis moved last.
#pragma once

#include <algorithm>
#include <cmath>

#include "reduce.hpp"

namespace flsl {

namespace detail {

/// Rows [r0, r1) of y = x / max(||x||_2, eps) over rows of length n; saves ||x||_2 per row.
template <class T, class C>
void l2_normalize_forward_rows(const T* x, T* y, C* norm, index_t r0, index_t r1, index_t n,
                               double eps) {
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * n;
    T* __restrict yr = y + r * n;
    const C nrm = std::sqrt(row_sum<C>(n, [&](index_t j) {
      const C v = convert<C>(xr[j]);
      return v * v;
    }));
    const C den = std::max(nrm, C(eps));
    for (index_t j = 0; j < n; ++j) yr[j] = convert<T>(convert<C>(xr[j]) / den);
    norm[r] = nrm;
  }
}

/// Rows [r0, r1) of the backward. With d = max(||x||, eps): when ||x|| >= eps (the norm is not
/// clamped) dx = (g - y (y . g)) / d, else the denominator is the constant eps and dx = g / eps.
/// Written into dx, or added when `add`.
template <class T, class C>
void l2_normalize_backward_rows(const T* y, const T* g, const C* norm, T* dx, bool add, index_t r0,
                                index_t r1, index_t n, double eps) {
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict yr = y + r * n;
    const T* __restrict gr = g + r * n;
    T* __restrict dxr = dx + r * n;
    const bool clamped = norm[r] < C(eps);
    const C inv = C(1) / std::max(norm[r], C(eps));
    const C dot =
        clamped ? C(0)
                : row_sum<C>(n, [&](index_t j) { return convert<C>(yr[j]) * convert<C>(gr[j]); });
    const auto d = [&](index_t j) { return (convert<C>(gr[j]) - convert<C>(yr[j]) * dot) * inv; };
    if (add) {
      for (index_t j = 0; j < n; ++j) dxr[j] = convert<T>(convert<C>(dxr[j]) + d(j));
    } else {
      for (index_t j = 0; j < n; ++j) dxr[j] = convert<T>(d(j));
    }
  }
}

/// Rows [r0, r1) of s = a.b / (max(||a||, eps) * max(||b||, eps)) over rows of length n; saves
/// both norms per row.
template <class T, class C>
void cosine_similarity_forward_rows(const T* a, const T* b, T* s, C* norm_a, C* norm_b, index_t r0,
                                    index_t r1, index_t n, double eps) {
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict ar = a + r * n;
    const T* __restrict br = b + r * n;
    const auto av = [&](index_t j) { return convert<C>(ar[j]); };
    const auto bv = [&](index_t j) { return convert<C>(br[j]); };
    const C dot = row_sum<C>(n, [&](index_t j) { return av(j) * bv(j); });
    const C na = std::sqrt(row_sum<C>(n, [&](index_t j) { return av(j) * av(j); }));
    const C nb = std::sqrt(row_sum<C>(n, [&](index_t j) { return bv(j) * bv(j); }));
    s[r] = convert<T>(dot / (std::max(na, C(eps)) * std::max(nb, C(eps))));
    norm_a[r] = na;
    norm_b[r] = nb;
  }
}

/// Rows [r0, r1) of the gradient with respect to `x` (a, or b with the roles swapped; `y` is the
/// other operand), with s the forward's output and g its gradient per row:
///   dx = g * (y / (Dx Dy) - s * x / (|x| Dx)),  Dx = max(|x|, eps), Dy = max(|y|, eps)
/// where the second term is dropped when |x| < eps (the clamped norm is a constant).
template <class T, class C>
void cosine_similarity_backward_rows(const T* x, const T* y, const T* s, const T* g,
                                     const C* norm_x, const C* norm_y, T* dx, bool add, index_t r0,
                                     index_t r1, index_t n, double eps) {
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * n;
    const T* __restrict yr = y + r * n;
    T* __restrict dxr = dx + r * n;
    const C gs = convert<C>(g[r]), nx = norm_x[r];
    const C dx_den = std::max(nx, C(eps)), dy_den = std::max(norm_y[r], C(eps));
    const C ky = gs / (dx_den * dy_den);
    const C kx = nx < C(eps) ? C(0) : gs * convert<C>(s[r]) / (nx * dx_den);
    const auto d = [&](index_t j) { return ky * convert<C>(yr[j]) - kx * convert<C>(xr[j]); };
    if (add) {
      for (index_t j = 0; j < n; ++j) dxr[j] = convert<T>(convert<C>(dxr[j]) + d(j));
    } else {
      for (index_t j = 0; j < n; ++j) dxr[j] = convert<T>(d(j));
    }
  }
}

// ---- the cuda paths: the same formulas as device-generic expressions and reductions ----------

/// l2_normalize on a device other than the CPU (arguments checked, `a` normalised): the norm
/// ||x|| by a keepdim reduction (summed in double), y = x / max(||x||, eps) as one expression;
/// backward dx = (g - y [||x|| >= eps] sum(y g)) / max(||x||, eps), the CPU row kernel's formula.
template <class T, class D>
Var<T, D> l2_normalize_device(const Var<T, D>& x, int a, double eps) {
  const Tensor<T, D> xv = x.value();
  const Tensor<T, D> norm = sqrt(sum(square(xv), {a}, true));  // [.., 1, ..]
  const T e = T(eps);
  Tensor<T, D> y = xv / maximum(norm, e);
  auto backward = [norm, a, e](autograd::node<T, D>& out) {
    auto& in = *out.inputs[0];
    if (!in.requires_grad) return;
    const Tensor<T, D>& yv = out.value;
    const Tensor<T, D> dot = sum(yv * out.grad, {a}, true);  // [.., 1, ..]
    in.accumulate((out.grad - yv * where(norm >= e, dot, T(0))) / maximum(norm, e));
  };
  return Var<T, D>::make_result(std::move(y), "l2_normalize", backward, x);
}

/// cosine_similarity on a device other than the CPU (shapes checked): keepdim reductions for
/// a.b, ||a||, ||b|| over the broadcast shape `full`, then the CPU row kernels' formulas as
/// expressions; node::accumulate sums each gradient over the axes its operand was broadcast on.
template <class T, class D>
Var<T, D> cosine_similarity_device(const Var<T, D>& a, const Var<T, D>& b, const Shape& full,
                                   int ax, double eps) {
  const Tensor<T, D> av = a.value().expand(full), bv = b.value().expand(full);
  const T e = T(eps);
  const Tensor<T, D> na = sqrt(sum(square(av), {ax}, true));  // [.., 1, ..]
  const Tensor<T, D> nb = sqrt(sum(square(bv), {ax}, true));
  const Tensor<T, D> s = sum(av * bv, {ax}, true) / (maximum(na, e) * maximum(nb, e));
  auto backward = [av, bv, na, nb, s, ax, e](autograd::node<T, D>& out) {
    const Tensor<T, D> g = out.grad.unsqueeze(ax);  // [.., 1, ..]
    const auto grad_of = [&](autograd::node<T, D>& in, const Tensor<T, D>& xv,
                             const Tensor<T, D>& yv, const Tensor<T, D>& nx,
                             const Tensor<T, D>& ny) {
      if (!in.requires_grad) return;
      const Tensor<T, D> dx_den = maximum(nx, e);
      const Tensor<T, D> ky = g / (dx_den * maximum(ny, e));
      const Tensor<T, D> kx = where(nx < e, T(0), g * s / (nx * dx_den));
      in.accumulate(ky * yv - kx * xv);
    };
    grad_of(*out.inputs[0], av, bv, na, nb);
    grad_of(*out.inputs[1], bv, av, nb, na);
  };
  return Var<T, D>::make_result(s.squeeze(ax), "cosine_similarity", backward, a, b);
}

}  // namespace detail

/// x / max(||x||_2, eps) along `axis`, exactly as torch.nn.functional.normalize(x, 2, axis, eps)
/// (no gradient flows through a clamped norm).
template <class T, class D>
Var<T, D> l2_normalize(const Var<T, D>& x, int axis = -1, double eps = 1e-12) {
  FLSL_CHECK(x.rank() >= 1, "l2_normalize: needs rank >= 1, got shape ", x.shape());
  const int a = x.shape().normalize_axis(axis);
  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::l2_normalize_device(x, a, eps);
  } else {
    using C = compute_t<T>;
    const index_t n = x.size(a), rows = n ? x.numel() / n : 0;
    const Tensor<T, D> xr = detail::rows_along(x.value(), a);  // [..., n]
    auto yr = Tensor<T, D>::empty(xr.shape());                 // [..., n]
    auto norm = Tensor<C, D>::empty({rows});                   // [rows]
    detail::parallel_rows(rows, n, [&](index_t r0, index_t r1) {
      detail::l2_normalize_forward_rows(xr.data(), yr.data(), norm.data(), r0, r1, n, eps);
    });
    auto backward = [a, n, rows, norm, eps](autograd::node<T, D>& out) {
      const Tensor<T, D> y = detail::rows_along(out.value, a);  // the forward's rows: no copy
      const Tensor<T, D> g = detail::rows_along(out.grad, a);
      detail::accumulate_rows_grad(*out.inputs[0], out.value.shape(), a, [&](T* dx, bool add) {
        detail::parallel_rows(rows, n, [&](index_t r0, index_t r1) {
          detail::l2_normalize_backward_rows(y.data(), g.data(), norm.data(), dx, add, r0, r1, n,
                                             eps);
        });
      });
    };
    return Var<T, D>::make_result(detail::move_last_axis_to(yr, a), "l2_normalize", backward, x);
  }
}

/// Cosine similarity of a and b along `axis` (of their broadcast shape; the axis is removed), as
/// torch.nn.functional.cosine_similarity in torch 1.13:
///   s = a.b / (max(||a||, eps) * max(||b||, eps))
/// i.e. each norm is clamped on its own. (torch 1.13's docstring writes max(||a|| ||b||, eps),
/// but its code divides each operand by its own clamped norm: for ||a|| = 1e-5, ||b|| = 1.4e-5,
/// eps = 1e-8 it returns 0.707, not the docstring's 0.01.) The gradient is the exact derivative
/// of this s; torch's differs only where a norm is below eps (it lets the gradient of the
/// clamped norm through).
template <class T, class D>
Var<T, D> cosine_similarity(const Var<T, D>& a, const Var<T, D>& b, int axis = -1,
                            double eps = 1e-8) {
  const Shape full = broadcast_shapes(a.shape(), b.shape(), "cosine_similarity");
  FLSL_CHECK(full.rank() >= 1, "cosine_similarity: needs rank >= 1, got shapes ", a.shape(),
             " and ", b.shape());
  const int ax = full.normalize_axis(axis);
  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::cosine_similarity_device(a, b, full, ax, eps);
  } else {
    using C = compute_t<T>;
    const index_t n = full[ax], rows = n ? full.numel() / n : 0;
    const Tensor<T, D> ar = detail::rows_along(a.value().expand(full), ax);  // [..., n]
    const Tensor<T, D> br = detail::rows_along(b.value().expand(full), ax);  // [..., n]
    Shape out_shape = full;
    out_shape.erase(ax);
    auto s = Tensor<T, D>::empty(out_shape);  // [rows] in row order
    auto norm_a = Tensor<C, D>::empty({rows}), norm_b = Tensor<C, D>::empty({rows});
    if (n == 0)
      s.fill(convert<T>(0));  // empty rows: a.b = 0
    else
      detail::parallel_rows(rows, n, [&](index_t r0, index_t r1) {
        detail::cosine_similarity_forward_rows(ar.data(), br.data(), s.data(), norm_a.data(),
                                               norm_b.data(), r0, r1, n, eps);
      });
    auto backward = [ar, br, norm_a, norm_b, full, ax, n, rows, eps](autograd::node<T, D>& out) {
      const Tensor<T, D> g = out.grad.contiguous();  // [rows]
      const Tensor<T, D>& sv = out.value;            // [rows], contiguous
      const auto grad_of = [&](autograd::node<T, D>& in, const Tensor<T, D>& x,
                               const Tensor<T, D>& y, const Tensor<C, D>& nx,
                               const Tensor<C, D>& ny) {
        if (!in.requires_grad) return;
        detail::accumulate_rows_grad(in, full, ax, [&](T* dx, bool add) {
          detail::parallel_rows(rows, n, [&](index_t r0, index_t r1) {
            detail::cosine_similarity_backward_rows(x.data(), y.data(), sv.data(), g.data(),
                                                    nx.data(), ny.data(), dx, add, r0, r1, n, eps);
          });
        });
      };
      grad_of(*out.inputs[0], ar, br, norm_a, norm_b);
      grad_of(*out.inputs[1], br, ar, norm_b, norm_a);
    };
    return Var<T, D>::make_result(std::move(s), "cosine_similarity", backward, a, b);
  }
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(l2_normalize_last_axis_input_reused) {
  using namespace autograd;
  return gradcheck([](auto& in) { return Var(l2_normalize(in[0]) * in[0]); },
                   {random_input(random_row_shape(51, {{2, 4}, {2, 3}, {3, 8}}), 51)});
}
FLSL_GRADCHECK_ROW(l2_normalize_middle_axis) {
  using namespace autograd;
  return gradcheck([](auto& in) { return l2_normalize(in[0], 1); },
                   {random_input(random_row_shape(52, {{2, 4}, {3, 6}, {2, 4}}), 52)});
}
FLSL_GRADCHECK_ROW(cosine_similarity_broadcast) {
  using namespace autograd;
  return gradcheck([](auto& in) { return cosine_similarity(in[0], in[1], -1); },
                   {random_input({3, 1, 6}, 53), random_input({4, 6}, 54)});
}
FLSL_GRADCHECK_ROW(cosine_similarity_input_reused) {
  using namespace autograd;
  const Shape s = random_row_shape(57, {{2, 5}, {3, 8}});
  return gradcheck([](auto& in) { return Var(cosine_similarity(in[0], in[1]) * sum(in[0], {-1})); },
                   {random_input(s, 57), random_input(s, 58)});
}
FLSL_GRADCHECK_ROW(cosine_similarity_first_axis) {
  using namespace autograd;
  const Shape s = random_row_shape(55, {{3, 7}, {2, 4}, {2, 3}});
  return gradcheck([](auto& in) { return cosine_similarity(in[0], in[1], 0); },
                   {random_input(s, 55), random_input(s, 56)});
}
#endif

}  // namespace flsl
