// Elementwise functors and the operators/functions that build expressions from tensors.
#pragma once

#include <cmath>
#include <type_traits>

#include "node.hpp"
#include "vector_math.hpp"

namespace flsl {

namespace op {
#define FLSL_UNARY_OP(NAME, EXPR)                                                             \
  struct NAME {                                                                               \
    static constexpr const char* name = #NAME;                                                \
    template <class A>                                                                        \
    FLSL_HD FLSL_INLINE auto operator()(A a) const {                                          \
      using std::abs, std::exp, std::log, std::sqrt, std::tanh, std::erf, std::sin, std::cos; \
      return EXPR;                                                                            \
    }                                                                                         \
  };
FLSL_UNARY_OP(neg, -a)
FLSL_UNARY_OP(abs, abs(a))
FLSL_UNARY_OP(exp, exp(a))
FLSL_UNARY_OP(log, log(a))
FLSL_UNARY_OP(sqrt, sqrt(a))
FLSL_UNARY_OP(rsqrt, A(1) / sqrt(a))
FLSL_UNARY_OP(tanh, tanh(a))
FLSL_UNARY_OP(erf, erf(a))
FLSL_UNARY_OP(sin, sin(a))
FLSL_UNARY_OP(cos, cos(a))
FLSL_UNARY_OP(square, a* a)
FLSL_UNARY_OP(sigmoid, A(1) / (A(1) + exp(-a)))
FLSL_UNARY_OP(relu, a > A(0) ? a : A(0))
FLSL_UNARY_OP(logical_not, !a)
#undef FLSL_UNARY_OP

// Exact GELU: a * Phi(a) = 0.5 a (1 + erf(a / sqrt 2)), and its derivative Phi(a) + a phi(a).
// f32 on the host uses the vectorisable erf_f32 / exp_f32 (vector_math.hpp: within 3 ulp);
// f64, and every type in CUDA device code, the math library's erf and exp.
struct gelu {
  static constexpr const char* name = "gelu";
  template <class A>
  FLSL_HD FLSL_INLINE auto operator()(A a) const {
#ifndef __CUDA_ARCH__
    if constexpr (std::is_same_v<A, float>)
      return 0.5f * a * (1.0f + detail::erf_f32(a * 0.70710678118654752440f));
    else
#endif
    {
      using std::erf;
      return A(0.5) * a * (A(1) + erf(a * A(0.70710678118654752440)));
    }
  }
};
struct gelu_grad {
  static constexpr const char* name = "gelu_grad";
  template <class A>
  FLSL_HD FLSL_INLINE auto operator()(A a) const {
#ifndef __CUDA_ARCH__
    if constexpr (std::is_same_v<A, float>)
      return 0.5f * (1.0f + detail::erf_f32(a * 0.70710678118654752440f)) +
             a * 0.39894228040143267794f * detail::exp_f32(-0.5f * a * a);
    else
#endif
    {
      using std::erf, std::exp;
      return A(0.5) * (A(1) + erf(a * A(0.70710678118654752440))) +
             a * A(0.39894228040143267794) * exp(A(-0.5) * a * a);
    }
  }
};

#define FLSL_BINARY_OP(NAME, EXPR)                                                              \
  struct NAME {                                                                                 \
    static constexpr const char* name = #NAME;                                                  \
    template <class A, class B>                                                                 \
    FLSL_HD FLSL_INLINE auto operator()(A a, B b) const {                                       \
      static_assert(std::is_same_v<A, B>,                                                       \
                    "flsl: operands of " #NAME " have different element types; use cast<T>()"); \
      using std::pow;                                                                           \
      return EXPR;                                                                              \
    }                                                                                           \
  };
FLSL_BINARY_OP(add, a + b)
FLSL_BINARY_OP(sub, a - b)
FLSL_BINARY_OP(mul, a* b)
FLSL_BINARY_OP(div, a / b)
FLSL_BINARY_OP(pow, pow(a, b))
FLSL_BINARY_OP(minimum, b < a ? b : a)
FLSL_BINARY_OP(maximum, a < b ? b : a)
FLSL_BINARY_OP(eq, a == b)
FLSL_BINARY_OP(ne, a != b)
FLSL_BINARY_OP(lt, a < b)
FLSL_BINARY_OP(le, a <= b)
FLSL_BINARY_OP(gt, a > b)
FLSL_BINARY_OP(ge, a >= b)
FLSL_BINARY_OP(logical_and, a&& b)
FLSL_BINARY_OP(logical_or, a || b)
#undef FLSL_BINARY_OP

/// cond ? a : b
struct where {
  static constexpr const char* name = "where";
  template <class C, class A, class B>
  FLSL_HD FLSL_INLINE A operator()(C c, A a, B b) const {
    static_assert(std::is_same_v<A, B>, "flsl: where() branches have different element types");
    return c ? a : b;
  }
};
/// Conversion to the compute type of To.
template <class To>
struct cast {
  static constexpr const char* name = "cast";
  template <class A>
  FLSL_HD FLSL_INLINE compute_t<To> operator()(A a) const {
    return convert<compute_t<To>>(a);
  }
};
}  // namespace op

namespace detail {
template <class X>
struct is_tensor : std::false_type {};
template <class T, class D>
struct is_tensor<Tensor<T, D>> : std::true_type {};
}  // namespace detail

/// Anything that can stand in an expression: a tensor, an expression, or an arithmetic scalar.
template <class X>
concept tensor_like = detail::is_tensor<std::remove_cvref_t<X>>::value || expression<X>;
template <class X>
concept scalar_like = std::is_arithmetic_v<std::remove_cvref_t<X>>;

/// The expression node for an operand: tensors become leaves, expressions stay as they are.
template <class T, class D>
leaf_expr<T, D> as_expr(const Tensor<T, D>& t) {
  FLSL_CHECK(t.defined(), "expression uses an undefined tensor");
  return leaf_expr<T, D>(t);
}
template <expression E>
const E& as_expr(const E& e) {
  return e;
}

namespace detail {
template <class X>
using node_t = std::remove_cvref_t<decltype(as_expr(std::declval<const X&>()))>;
template <class X>
using value_t = typename node_t<X>::value_type;

/// A scalar operand takes the value type of the other operand (2.0 * float_tensor is float).
template <class Other, class S>
auto scalar_for(S s) {
  return scalar_expr<value_t<Other>>(static_cast<value_t<Other>>(s));
}
template <class Op, class... X>
auto make_map(const X&... x) {
  return map_expr<Op, node_t<X>...>(Op{}, as_expr(x)...);
}
}  // namespace detail

#define FLSL_BINARY_FN(FN, OP)                                                   \
  template <tensor_like A, tensor_like B>                                        \
  auto FN(const A& a, const B& b) {                                              \
    return detail::make_map<op::OP>(a, b);                                       \
  }                                                                              \
  template <tensor_like A, scalar_like S>                                        \
  auto FN(const A& a, S s) {                                                     \
    return map_expr<op::OP, detail::node_t<A>, scalar_expr<detail::value_t<A>>>( \
        op::OP{}, as_expr(a), detail::scalar_for<A>(s));                         \
  }                                                                              \
  template <scalar_like S, tensor_like B>                                        \
  auto FN(S s, const B& b) {                                                     \
    return map_expr<op::OP, scalar_expr<detail::value_t<B>>, detail::node_t<B>>( \
        op::OP{}, detail::scalar_for<B>(s), as_expr(b));                         \
  }
FLSL_BINARY_FN(operator+, add)
FLSL_BINARY_FN(operator-, sub)
FLSL_BINARY_FN(operator*, mul)
FLSL_BINARY_FN(operator/, div)
FLSL_BINARY_FN(pow, pow)
FLSL_BINARY_FN(minimum, minimum)
FLSL_BINARY_FN(maximum, maximum)
FLSL_BINARY_FN(operator==, eq)
FLSL_BINARY_FN(operator!=, ne)
FLSL_BINARY_FN(operator<, lt)
FLSL_BINARY_FN(operator<=, le)
FLSL_BINARY_FN(operator>, gt)
FLSL_BINARY_FN(operator>=, ge)
FLSL_BINARY_FN(operator&&, logical_and)
FLSL_BINARY_FN(operator||, logical_or)
#undef FLSL_BINARY_FN

#define FLSL_UNARY_FN(FN, OP)           \
  template <tensor_like A>              \
  auto FN(const A& a) {                 \
    return detail::make_map<op::OP>(a); \
  }
FLSL_UNARY_FN(operator-, neg)
FLSL_UNARY_FN(operator!, logical_not)
FLSL_UNARY_FN(abs, abs)
FLSL_UNARY_FN(exp, exp)
FLSL_UNARY_FN(log, log)
FLSL_UNARY_FN(sqrt, sqrt)
FLSL_UNARY_FN(rsqrt, rsqrt)
FLSL_UNARY_FN(tanh, tanh)
FLSL_UNARY_FN(erf, erf)
FLSL_UNARY_FN(sin, sin)
FLSL_UNARY_FN(cos, cos)
FLSL_UNARY_FN(square, square)
FLSL_UNARY_FN(sigmoid, sigmoid)
FLSL_UNARY_FN(relu, relu)
FLSL_UNARY_FN(gelu, gelu)
FLSL_UNARY_FN(gelu_grad, gelu_grad)
#undef FLSL_UNARY_FN

/// Elementwise conversion to the compute type of To (bf16 -> float, float -> double, ...).
template <class To, tensor_like A>
auto cast(const A& a) {
  return detail::make_map<op::cast<To>>(a);
}
/// cond ? a : b elementwise (scalars allowed for a and b).
template <tensor_like C, class A, class B>
auto where(const C& c, const A& a, const B& b) {
  if constexpr (scalar_like<A> && scalar_like<B>) {
    static_assert(!scalar_like<A>, "flsl: where() needs at least one tensor branch");
  } else if constexpr (scalar_like<A>) {
    return map_expr<op::where, detail::node_t<C>, scalar_expr<detail::value_t<B>>,
                    detail::node_t<B>>(op::where{}, as_expr(c), detail::scalar_for<B>(a),
                                       as_expr(b));
  } else if constexpr (scalar_like<B>) {
    return map_expr<op::where, detail::node_t<C>, detail::node_t<A>,
                    scalar_expr<detail::value_t<A>>>(op::where{}, as_expr(c), as_expr(a),
                                                     detail::scalar_for<A>(b));
  } else {
    return detail::make_map<op::where>(c, a, b);
  }
}

}  // namespace flsl
