// Evaluating an expression into a tensor: one fused, oneTBB-parallel pass over the output.
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include "iteration.hpp"
#include "ops.hpp"

namespace flsl {

namespace detail {

/// Elements per parallel task: below this a loop runs on the calling thread.
inline constexpr index_t parallel_grain = 16384;

/// Address range [lo, hi) of a strided view, in bytes.
inline std::pair<const char*, const char*> byte_range(const void* p, std::size_t elem,
                                                      const Shape& shape, const Shape& strides) {
  const char* base = static_cast<const char*>(p);
  if (shape.numel() == 0) return {base, base};
  index_t lo = 0, hi = 0;
  for (int d = 0; d < shape.rank(); ++d) {
    const index_t span = (shape[d] - 1) * strides[d];
    (span < 0 ? lo : hi) += span;
  }
  return {base + lo * index_t(elem), base + (hi + 1) * index_t(elem)};
}

/// True when some leaf of `e` reads memory that `out` writes through a different element mapping
/// (then evaluating in place would read already-overwritten values).
template <class T, class Device, class E>
bool reads_overwritten(const Tensor<T, Device>& out, E e) {
  const auto out_range = byte_range(out.data(), sizeof(T), out.shape(), out.strides());
  const char* const olo = out_range.first;
  const char* const ohi = out_range.second;
  const Shape out_b = out.strides();
  bool hazard = false;
  e.bind(out.shape());
  e.for_each_leaf([&](Shape& strides, const void* p, std::size_t elem, const Shape& shape) {
    const auto [lo, hi] = byte_range(p, elem, shape, strides);
    if (lo >= ohi || olo >= hi) return;  // disjoint
    const bool same_map =
        p == static_cast<const void*>(out.data()) && elem == sizeof(T) && strides == out_b;
    hazard = hazard || !same_map;
  });
  return hazard;
}

/// Runs body(row_begin, row_end) over [0, rows), in parallel when rows * row_len is large.
template <class Body>
void parallel_rows(index_t rows, index_t row_len, Body&& body) {
  const index_t total = rows * std::max<index_t>(row_len, 1);
  if (total < 2 * parallel_grain || rows == 1) {
    body(index_t(0), rows);
    return;
  }
  const index_t grain = std::max<index_t>(1, parallel_grain / std::max<index_t>(row_len, 1));
  tbb::parallel_for(tbb::blocked_range<index_t>(0, rows, std::size_t(grain)),
                    [&](const tbb::blocked_range<index_t>& r) { body(r.begin(), r.end()); });
}

template <bool Unit, class T, class E>
FLSL_INLINE void eval_span(T* __restrict out, index_t out_stride, const E& e, index_t j0,
                           index_t j1, int inner) {
  if constexpr (Unit) {
    for (index_t j = j0; j < j1; ++j) out[j] = convert<T>(e.template get<true>(j, inner));
  } else {
    for (index_t j = j0; j < j1; ++j)
      out[j * out_stride] = convert<T>(e.template get<false>(j, inner));
  }
}

/// Binds `e` to `out_shape` and coalesces the iteration space of `out = e` (every device uses
/// it): on return `out_strides` and the strides of every leaf of `e` are those of the returned
/// extents, whose rank is that of the coalesced space (0 for a single element).
template <class E>
Shape coalesce_assignment(const Shape& out_shape, Shape& out_strides, E& e) {
  e.bind(out_shape);
  iteration_space sp{out_shape, {&out_strides}};
  e.for_each_leaf(
      [&](Shape& s, const void*, std::size_t, const Shape&) { sp.strides.push_back(&s); });
  sp.order_by_output(0, sp.extent.rank());
  sp.coalesce(0, sp.extent.rank());
  return sp.extent;
}

/// The CPU evaluation of `out = e` (shapes already checked, no aliasing hazard).
template <class T, class E>
void evaluate_cpu(const Tensor<T, cpu>& out, E e) {
  if (out.numel() == 0) return;
  Shape out_strides = out.strides();
  const Shape extent = coalesce_assignment(out.shape(), out_strides, e);
  const int r = extent.rank();
  if (r == 0) {  // a single element
    e.start_row(nullptr, 0);
    out.data()[0] = convert<T>(e.template get<true>(0, 0));
    return;
  }
  bool unit = out_strides[r - 1] == 1;
  e.for_each_leaf(
      [&](Shape& s, const void*, std::size_t, const Shape&) { unit = unit && s[r - 1] == 1; });
  const index_t inner = extent[r - 1];
  const index_t rows = extent.numel() / inner;
  const index_t out_inner = out_strides[r - 1];
  T* const base = out.data();

  if (rows == 1) {  // one long row: split it
    auto span = [&](index_t j0, index_t j1) {
      E local = e;
      local.start_row(nullptr, 0);
      if (unit)
        eval_span<true>(base, 1, local, j0, j1, 0);
      else
        eval_span<false>(base, out_inner, local, j0, j1, 0);
    };
    if (inner < 2 * parallel_grain) {
      span(0, inner);
    } else {
      tbb::parallel_for(tbb::blocked_range<index_t>(0, inner, std::size_t(parallel_grain)),
                        [&](const tbb::blocked_range<index_t>& rg) { span(rg.begin(), rg.end()); });
    }
    return;
  }
  parallel_rows(rows, inner, [&](index_t r0, index_t r1) {
    E local = e;
    row_counter rc(extent, r - 1, r0);
    for (index_t row = r0; row < r1; ++row, rc.next()) {
      index_t off = 0;
      for (int d = 0; d < r - 1; ++d) off += rc.idx[std::size_t(d)] * out_strides[d];
      local.start_row(rc.idx.data(), r - 1);
      if (unit)
        eval_span<true>(base + off, 1, local, 0, inner, r - 1);
      else
        eval_span<false>(base + off, out_inner, local, 0, inner, r - 1);
    }
  });
}

template <class T, class Device, class E>
void assign_expr(const Tensor<T, Device>& out, const E& e) {
  static_assert(
      std::is_same_v<typename E::device_type, Device> || std::is_void_v<typename E::device_type>,
      "flsl: assigning an expression of one device to a tensor of another");
  FLSL_CHECK(out.defined(), "assign: destination tensor is undefined");
  const Shape b = broadcast_shapes(e.shape(), out.shape(), "assign");
  FLSL_CHECK(b == out.shape(), "assign: expression of shape ", e.shape(),
             " does not broadcast to the destination shape ", out.shape());
  auto evaluate = [](const Tensor<T, Device>& dst, const auto& x) {
    if constexpr (std::is_same_v<Device, cpu>)
      evaluate_cpu(dst, x);
    else
      device_backend<Device>::evaluate(dst, x);
  };
  if (reads_overwritten(out, e)) {
    // Evaluate into a temporary first: the destination overlaps an input with another layout.
    auto tmp = Tensor<T, Device>::empty(out.shape());
    evaluate(tmp, e);
    evaluate(out, as_expr(tmp));
  } else {
    evaluate(out, e);
  }
}

}  // namespace detail

template <class T, class D>
void Tensor<T, D>::copy_from(const Tensor& src) const {
  detail::assign_expr(*this, as_expr(src));
}
template <class T, class D>
void Tensor<T, D>::fill(T value) const {
  detail::assign_expr(*this, scalar_expr<T>(value));
}
template <class T, class D>
template <class E>
const Tensor<T, D>& Tensor<T, D>::assign(const E& e) const {
  detail::assign_expr(*this, as_expr(e));
  return *this;
}
template <class T, class D>
template <class E>
Tensor<T, D>& Tensor<T, D>::operator+=(const E& e) {
  assign(*this + e);
  return *this;
}
template <class T, class D>
template <class E>
Tensor<T, D>& Tensor<T, D>::operator-=(const E& e) {
  assign(*this - e);
  return *this;
}
template <class T, class D>
template <class E>
Tensor<T, D>& Tensor<T, D>::operator*=(const E& e) {
  assign(*this * e);
  return *this;
}
template <class T, class D>
template <class E>
Tensor<T, D>& Tensor<T, D>::operator/=(const E& e) {
  assign(*this / e);
  return *this;
}

template <class T, class D>
template <class Gen>
Tensor<T, D> Tensor<T, D>::generate(const Shape& shape, Gen gen) {
  Tensor t = empty(shape);
  if constexpr (!std::is_same_v<D, cpu>) {
    device_backend<D>::generate(t, gen);
  } else {
    T* p = t.data();
    detail::parallel_rows(t.numel(), 1, [&](index_t i0, index_t i1) {
      for (index_t i = i0; i < i1; ++i) p[i] = convert<T>(gen(i));
    });
  }
  return t;
}

}  // namespace flsl
