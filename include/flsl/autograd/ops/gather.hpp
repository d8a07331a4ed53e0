// Gathers on Vars: index_select along an axis, and the FLSL token gathers by per-image index
// [B, Q] or boolean mask [B, N]. The backwards scatter-add, so repeated indices add up.
#pragma once

#include <algorithm>
#include <cstdint>

#include "shape.hpp"

namespace flsl {

namespace detail {

/// out[o, k, :] = x[o, idx[o * idx_stride + k], :] for x [outer, n, inner] and out [outer, q,
/// inner], both contiguous (idx_stride 0: one index list for every o). Indices already checked.
template <class T>
void gather_rows_forward(const T* x, T* out, const std::int64_t* idx, index_t idx_stride,
                         index_t outer, index_t n, index_t q, index_t inner) {
  if (q == 0) return;
  parallel_rows(outer * q, inner, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const index_t o = r / q, k = r % q;
      const T* src = x + (o * n + idx[o * idx_stride + k]) * inner;
      std::copy(src, src + inner, out + r * inner);
    }
  });
}

/// gx[o, idx[o, k], :] += g[o, k, :], the adjoint of gather_rows_forward. Tasks are (o, block of
/// `inner`); inside a task k runs in order, so repeated indices add up without races and in the
/// same order on any thread count.
template <class T>
void gather_rows_backward(T* gx, const T* g, const std::int64_t* idx, index_t idx_stride,
                          index_t outer, index_t n, index_t q, index_t inner) {
  using C = compute_t<T>;
  constexpr index_t block = 512;
  const index_t nblocks = (inner + block - 1) / block;
  if (q == 0 || nblocks == 0) return;
  parallel_rows(outer * nblocks, q * std::min(inner, block), [&](index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; ++t) {
      const index_t o = t / nblocks, c0 = (t % nblocks) * block;
      const index_t c1 = std::min(inner, c0 + block);
      for (index_t k = 0; k < q; ++k) {
        T* __restrict dst = gx + (o * n + idx[o * idx_stride + k]) * inner;
        const T* __restrict src = g + (o * q + k) * inner;
        for (index_t c = c0; c < c1; ++c)
          dst[c] = convert<T>(convert<C>(dst[c]) + convert<C>(src[c]));
      }
    }
  });
}

/// Throws naming the op, the bad index and where it sits, the axis and the shape.
inline void check_gather_indices(const char* op, const std::int64_t* idx, index_t outer, index_t q,
                                 index_t n, int axis, const Shape& shape) {
  for (index_t o = 0; o < outer; ++o)
    for (index_t k = 0; k < q; ++k) {
      const std::int64_t v = idx[o * q + k];
      if (v >= 0 && v < n) continue;
      if (outer == 1)
        fail(op, ": index ", v, " at position ", k, " is out of range for axis ", axis,
             " of shape ", shape, " (valid: 0 to ", n - 1, ")");
      fail(op, ": index ", v, " at [", o, ", ", k, "] is out of range for axis ", axis,
           " of shape ", shape, " (valid: 0 to ", n - 1, ")");
    }
}

}  // namespace detail

// The CUDA kernels of the gathers' cuda path, defined in flsl/backend/cuda/kernels/gather.cuh
// (included by <flsl/backend/cuda.cuh>, nvcc only); declared here so that this header stays free
// of CUDA headers.
namespace cuda_ops {
template <class T>
void gather_rows_forward(const Tensor<T, cuda>& x, const Tensor<std::int64_t, cuda>& idx,
                         index_t idx_stride, index_t outer, index_t n, index_t q, index_t inner,
                         const Tensor<T, cuda>& out);
template <class T>
void gather_rows_backward(const Tensor<T, cuda>& grad_out, const Tensor<std::int64_t, cuda>& idx,
                          index_t idx_stride, index_t outer, index_t n, index_t q, index_t inner,
                          const Tensor<T, cuda>& grad_x);
}  // namespace cuda_ops

namespace detail {

/// The cuda path of gather_along: the indices are checked on a host copy (the same messages as
/// on the CPU; one device-to-host copy of idx per call), then cuda_ops::gather_rows_forward; the
/// backward adds into the input's gradient with cuda_ops::gather_rows_backward (no atomics:
/// repeated indices add up in index order).
template <class T>
Var<T, cuda> gather_along_cuda(const Var<T, cuda>& x, int a, const Tensor<std::int64_t, cuda>& idx,
                               index_t outer, index_t n, index_t q, index_t inner,
                               index_t idx_stride, const char* op) {
  using Dev = cuda;
  {
    const Tensor<std::int64_t, cpu> host = idx.template to<cpu>();
    check_gather_indices(op, host.data(), idx.rank() == 2 ? outer : 1, q, n, a, x.shape());
  }
  Shape ys = x.shape();
  ys[a] = q;
  auto y = Tensor<T, Dev>::empty(ys);
  const Tensor<T, Dev> xc = x.value().contiguous();
  cuda_ops::gather_rows_forward(xc, idx, idx_stride, outer, n, q, inner, y);
  auto backward = [idx, idx_stride, outer, n, q, inner](autograd::node<T, Dev>& out) {
    const Tensor<T, Dev> g = out.grad.contiguous();
    const Tensor<T, Dev>& gx = autograd::grad_to_add_into(*out.inputs[0]);
    cuda_ops::gather_rows_backward(g, idx, idx_stride, outer, n, q, inner, gx);
  };
  return Var<T, Dev>::make_result(std::move(y), op, backward, x);
}

/// The op behind index_select, gather_tokens and mask_select_tokens: x seen as [outer, n, inner]
/// around `axis`, idx [idx_outer, q] contiguous (idx_outer 1 or outer).
template <class T, class D>
Var<T, D> gather_along(const Var<T, D>& x, int axis, Tensor<std::int64_t, D> idx, const char* op) {
  const Shape& s = x.shape();
  const int a = s.normalize_axis(axis);
  index_t outer = 1, inner = 1;
  for (int d = 0; d < a; ++d) outer *= s[d];
  for (int d = a + 1; d < s.rank(); ++d) inner *= s[d];
  const index_t n = s[a], q = idx.size(-1);
  const index_t idx_stride = idx.rank() == 2 ? q : 0;
  if constexpr (!std::is_same_v<D, cpu>) {
    return gather_along_cuda(x, a, idx, outer, n, q, inner, idx_stride, op);
  } else {
    check_gather_indices(op, idx.data(), idx.rank() == 2 ? outer : 1, q, n, a, s);
    Shape ys = s;
    ys[a] = q;
    auto y = Tensor<T, D>::empty(ys);
    const Tensor<T, D> xc = x.value().contiguous();
    gather_rows_forward(xc.data(), y.data(), idx.data(), idx_stride, outer, n, q, inner);
    auto backward = [idx, idx_stride, outer, n, q, inner](autograd::node<T, D>& out) {
      const Tensor<T, D> g = out.grad.contiguous();
      const Tensor<T, D>& gx = autograd::grad_to_add_into(*out.inputs[0]);
      gather_rows_backward(gx.data(), g.data(), idx.data(), idx_stride, outer, n, q, inner);
    };
    return Var<T, D>::make_result(std::move(y), op, backward, x);
  }
}

}  // namespace detail

/// Entries idx[k] of x along `axis` (idx 1-D, int64, each in [0, extent)), in idx's order:
/// the result has extent idx.numel() there. The gradient adds back into those entries.
template <class T, class D>
Var<T, D> index_select(const Var<T, D>& x, int axis, const Tensor<std::int64_t, D>& idx) {
  FLSL_CHECK(idx.rank() == 1, "index_select: index must be 1-D, got shape ", idx.shape());
  return detail::gather_along(x, axis, idx.clone(), "index_select");
}

/// The FLSL token gather: out[b, q, :] = x[b, idx[b, q], :] for x [B, N, D], idx [B, Q] int64.
template <class T, class D>
Var<T, D> gather_tokens(const Var<T, D>& x, const Tensor<std::int64_t, D>& idx) {
  FLSL_CHECK(x.rank() == 3, "gather_tokens: x must be [B, N, D], got shape ", x.shape());
  FLSL_CHECK(idx.rank() == 2 && idx.size(0) == x.size(0),
             "gather_tokens: idx must be [B, Q] with B = ", x.size(0), " for x of shape ",
             x.shape(), ", got shape ", idx.shape());
  return detail::gather_along(x, 1, idx.clone(), "gather_tokens");
}

/// The tokens of x [B, N, D] where mask [B, N] is true, in order: [B, Q, D]. Every row of the
/// mask must select the same count Q.
template <class T, class D>
Var<T, D> mask_select_tokens(const Var<T, D>& x, const Tensor<bool, D>& mask) {
  FLSL_CHECK(x.rank() == 3, "mask_select_tokens: x must be [B, N, D], got shape ", x.shape());
  FLSL_CHECK(mask.shape() == Shape({x.size(0), x.size(1)}),
             "mask_select_tokens: mask must be [B, N] = [", x.size(0), ", ", x.size(1),
             "] for x of shape ", x.shape(), ", got shape ", mask.shape());
  const index_t B = x.size(0), N = x.size(1);
  const Tensor<bool, cpu> m = mask.template to<cpu>().contiguous();  // cuda: a host copy
  const bool* mp = m.data();
  const auto count = [&](index_t b) {
    return index_t(std::count(mp + b * N, mp + (b + 1) * N, true));
  };
  const index_t Q = B > 0 ? count(0) : 0;
  for (index_t b = 1; b < B; ++b)
    FLSL_CHECK(count(b) == Q, "mask_select_tokens: row 0 of the mask selects ", Q,
               " tokens but row ", b, " selects ", count(b),
               " (every row must select the same count)");
  auto idx = Tensor<std::int64_t, cpu>::empty({B, Q});  // [B, Q], built on the host
  std::int64_t* ip = idx.data();
  for (index_t b = 0; b < B; ++b)
    for (index_t j = 0; j < N; ++j)
      if (mp[b * N + j]) *ip++ = j;
  return detail::gather_along(x, 1, idx.template to<D>(), "mask_select_tokens");
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(index_select_repeated) {
  using namespace autograd;
  const auto idx = Tensor<std::int64_t>::from({3, 0, 3, 1, 3});  // 3 three times, 2 never
  return gradcheck([idx](auto& in) { return index_select(in[0], 1, idx); },
                   {random_input(random_row_shape(21, {{2, 4}, {4, 6}, {2, 5}}), 21)});
}
FLSL_GRADCHECK_ROW(gather_tokens_repeated) {
  using namespace autograd;
  const auto idx = Tensor<std::int64_t>::from({0, 4, 4, 2, 1, 1, 1, 3}, {2, 4});
  return gradcheck([idx](auto& in) { return gather_tokens(in[0], idx); },
                   {random_input(random_row_shape(22, {{2, 2}, {5, 7}, {2, 6}}), 22)});
}
FLSL_GRADCHECK_ROW(mask_select_tokens) {
  using namespace autograd;
  const auto mask =
      Tensor<bool>::from({true, false, true, false, false, true, true, false}, {2, 4});
  return gradcheck([mask](auto& in) { return mask_select_tokens(in[0], mask); },
                   {random_input(random_row_shape(23, {{2, 2}, {4, 4}, {2, 6}}), 23)});
}
#endif

}  // namespace flsl
