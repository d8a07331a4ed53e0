// Expression-template nodes: leaves (tensor views), scalars, and unary/binary/ternary maps.
#pragma once

#include <cmath>
#include <type_traits>

#include "../core/tensor.hpp"

namespace flsl {

// ---- device views ------------------------------------------------------------------------------
// What a GPU kernel receives for an expression: trivially copyable aggregates (a node keeps a
// storage handle and its children in a std::tuple, neither of which can be a kernel argument).
// Each node's device_view() is taken after the iteration space is coalesced; `at(idx, rank)`
// reads the element at multi-index idx[0..rank), `at1(i)` element i of a rank-1 space.

/// A leaf: pointer and strides on the (coalesced) iteration axes; unused axes have stride 0.
template <class T>
struct leaf_view {
  const T* ptr;
  index_t stride[max_rank];
  FLSL_HD FLSL_INLINE compute_t<T> at(const index_t* idx, int rank) const {
    index_t off = 0;
    FLSL_UNROLL
    for (int d = 0; d < max_rank; ++d)
      if (d < rank) off += idx[d] * stride[d];
    return convert<compute_t<T>>(ptr[off]);
  }
  FLSL_HD FLSL_INLINE compute_t<T> at1(index_t i) const {
    return convert<compute_t<T>>(ptr[i * stride[0]]);
  }
};
template <class V>
struct scalar_view {
  V value;
  FLSL_HD FLSL_INLINE V at(const index_t*, int) const { return value; }
  FLSL_HD FLSL_INLINE V at1(index_t) const { return value; }
};
/// op(children...): the functors are empty structs with FLSL_HD call operators.
template <class Op, class... C>
struct map_view;
template <class Op, class A>
struct map_view<Op, A> {
  Op op;
  A a;
  FLSL_HD FLSL_INLINE auto at(const index_t* i, int r) const { return op(a.at(i, r)); }
  FLSL_HD FLSL_INLINE auto at1(index_t j) const { return op(a.at1(j)); }
};
template <class Op, class A, class B>
struct map_view<Op, A, B> {
  Op op;
  A a;
  B b;
  FLSL_HD FLSL_INLINE auto at(const index_t* i, int r) const { return op(a.at(i, r), b.at(i, r)); }
  FLSL_HD FLSL_INLINE auto at1(index_t j) const { return op(a.at1(j), b.at1(j)); }
};
template <class Op, class A, class B, class C>
struct map_view<Op, A, B, C> {
  Op op;
  A a;
  B b;
  C c;
  FLSL_HD FLSL_INLINE auto at(const index_t* i, int r) const {
    return op(a.at(i, r), b.at(i, r), c.at(i, r));
  }
  FLSL_HD FLSL_INLINE auto at1(index_t j) const { return op(a.at1(j), b.at1(j), c.at1(j)); }
};

/// A tensor view inside an expression: a pointer plus strides, broadcast to the expression's shape
/// when bound. Its pointer and strides are what an evaluator reads; `keep` owns the memory.
template <class T, class Device>
struct leaf_expr : expr_base {
  using value_type = compute_t<T>;
  using device_type = Device;
  static constexpr int leaves = 1;

  const T* ptr = nullptr;
  Shape shape_;
  Shape strides;
  const T* row = nullptr;  // element [row, 0] during evaluation
  // Keeps the memory alive, so that an expression stored with `auto` over a temporary tensor
  // (`auto e = Tensor<float>::randn(s, 0) + 1.0f;`) stays valid. A device evaluator copies the
  // plain fields above, not this.
  std::shared_ptr<const void> keep;

  leaf_expr() = default;
  explicit leaf_expr(const Tensor<T, Device>& t)
      : ptr(t.data()), shape_(t.shape()), strides(t.strides()), row(t.data()), keep(t.storage()) {}

  const Shape& shape() const { return shape_; }
  /// Rebinds the strides to the iteration shape (broadcasting).
  void bind(const Shape& target) {
    strides = broadcast_strides(shape_, strides, target);
    shape_ = target;
  }
  template <class F>
  void for_each_leaf(F&& f) {
    f(strides, static_cast<const void*>(ptr), sizeof(T), shape_);
  }
  leaf_view<T> device_view() const {
    leaf_view<T> v{ptr, {}};
    for (int d = 0; d < strides.rank(); ++d) v.stride[d] = strides[d];
    return v;
  }
  /// Points `row` at the element with multi-index idx[0..n) (the remaining axes at 0).
  FLSL_HD void start_row(const index_t* idx, int n) {
    const T* p = ptr;
    for (int d = 0; d < n; ++d) p += idx[d] * strides[d];
    row = p;
  }
  template <bool Unit>
  FLSL_HD FLSL_INLINE value_type get(index_t j, int inner_axis) const {
    if constexpr (Unit) {
      return convert<value_type>(row[j]);
    } else {
      return convert<value_type>(row[j * strides[inner_axis]]);
    }
  }
};

/// A constant broadcast to any shape.
template <class V>
struct scalar_expr : expr_base {
  using value_type = V;
  using device_type = void;
  static constexpr int leaves = 0;
  V value;
  explicit scalar_expr(V v) : value(v) {}
  Shape shape() const { return Shape{}; }
  void bind(const Shape&) {}
  template <class F>
  void for_each_leaf(F&&) {}
  scalar_view<V> device_view() const { return {value}; }
  FLSL_HD void start_row(const index_t*, int) {}
  template <bool Unit>
  FLSL_HD FLSL_INLINE V get(index_t, int) const {
    return value;
  }
};

namespace detail {
template <class A, class B>
struct common_device {
  static_assert(std::is_void_v<A> || std::is_void_v<B> || std::is_same_v<A, B>,
                "flsl: an expression mixes tensors of different devices; copy one first");
  using type = std::conditional_t<std::is_void_v<A>, B, A>;
};
template <class... D>
struct devices;
template <class D>
struct devices<D> {
  using type = D;
};
template <class A, class B, class... R>
struct devices<A, B, R...> {
  using type = typename devices<typename common_device<A, B>::type, R...>::type;
};
}  // namespace detail

/// op(children...) elementwise: the shape is the broadcast of the children's shapes.
template <class Op, class... C>
struct map_expr : expr_base {
  using value_type = std::invoke_result_t<Op, typename C::value_type...>;
  using device_type = typename detail::devices<typename C::device_type...>::type;
  static constexpr int leaves = (C::leaves + ...);

  Op op;
  std::tuple<C...> children;
  Shape shape_;

  map_expr(Op o, C... c) : op(o), children(c...) {
    Shape s;
    bool first = true;
    ((s = first ? c.shape() : broadcast_shapes(s, c.shape(), Op::name), first = false), ...);
    shape_ = s;
  }
  const Shape& shape() const { return shape_; }
  void bind(const Shape& target) {
    std::apply([&](auto&... c) { (c.bind(target), ...); }, children);
    shape_ = target;
  }
  template <class F>
  void for_each_leaf(F&& f) {
    std::apply([&](auto&... c) { (c.for_each_leaf(f), ...); }, children);
  }
  auto device_view() const {
    static_assert(sizeof...(C) <= 3, "flsl: device views exist for maps of 1 to 3 operands");
    return std::apply(
        [&](const auto&... c) {
          return map_view<Op, decltype(c.device_view())...>{op, c.device_view()...};
        },
        children);
  }
  FLSL_HD void start_row(const index_t* idx, int n) {
    std::apply([&](auto&... c) { (c.start_row(idx, n), ...); }, children);
  }
  template <bool Unit>
  FLSL_HD FLSL_INLINE value_type get(index_t j, int inner_axis) const {
    return std::apply([&](const auto&... c) { return op(c.template get<Unit>(j, inner_axis)...); },
                      children);
  }
};

}  // namespace flsl
