// Elementwise math on Vars: a chain such as `a * b + exp(c)` is one graph node. Its forward is one
// fused tensor expression; its backward differentiates the expression symbolically at compile time
// and accumulates `grad * d(expr)/d(leaf)` into each leaf, again as one fused pass per leaf.
#pragma once

#include <tuple>
#include <utility>

#include "../expr/ops.hpp"
#include "gradcheck.hpp"
#include "var.hpp"

namespace flsl {

namespace autograd {

/// Symbolic constants of the derivative algebra: multiplying by one_t is free, zero_t drops a term.
struct one_t {};
struct zero_t {};

template <class A, class B>
auto chain(const A& a, const B& b) {
  if constexpr (std::is_same_v<A, zero_t> || std::is_same_v<B, zero_t>)
    return zero_t{};
  else if constexpr (std::is_same_v<A, one_t>)
    return b;
  else if constexpr (std::is_same_v<B, one_t>)
    return a;
  else
    return a * b;
}

/// Partial derivatives of the elementwise functors: d<I>(args...) is d op / d arg_I as a tensor
/// expression of the arguments' expressions (or one_t / zero_t).
template <class Op>
struct derivative;

template <class A>
using vt = typename A::value_type;
template <class A>
auto cst(double v) {
  return scalar_expr<vt<A>>(vt<A>(v));
}

#define FLSL_D1(OP, EXPR)                        \
  template <>                                    \
  struct derivative<op::OP> {                    \
    template <int I, class A>                    \
    static auto d([[maybe_unused]] const A& a) { \
      return EXPR;                               \
    }                                            \
  };
FLSL_D1(neg, cst<A>(-1))
FLSL_D1(abs, cast<vt<A>>(a > cst<A>(0)) - cast<vt<A>>(a < cst<A>(0)))
FLSL_D1(exp, exp(a))
FLSL_D1(log, cst<A>(1) / a)
FLSL_D1(sqrt, cst<A>(0.5) / sqrt(a))
FLSL_D1(rsqrt, cst<A>(-0.5) * rsqrt(a) / a)
FLSL_D1(tanh, cst<A>(1) - square(tanh(a)))
FLSL_D1(erf, cst<A>(1.1283791670955125739) * exp(-square(a)))
FLSL_D1(sin, cos(a))
FLSL_D1(cos, -sin(a))
FLSL_D1(square, cst<A>(2) * a)
FLSL_D1(sigmoid, sigmoid(a) * (cst<A>(1) - sigmoid(a)))
FLSL_D1(relu, cast<vt<A>>(a > cst<A>(0)))
FLSL_D1(gelu, gelu_grad(a))
#undef FLSL_D1

template <>
struct derivative<op::add> {
  template <int I, class A, class B>
  static auto d(const A&, const B&) {
    return one_t{};
  }
};
template <>
struct derivative<op::sub> {
  template <int I, class A, class B>
  static auto d(const A&, const B&) {
    if constexpr (I == 0)
      return one_t{};
    else
      return cst<A>(-1);
  }
};
template <>
struct derivative<op::mul> {
  template <int I, class A, class B>
  static auto d(const A& a, const B& b) {
    if constexpr (I == 0)
      return b;
    else
      return a;
  }
};
template <>
struct derivative<op::div> {
  template <int I, class A, class B>
  static auto d(const A& a, const B& b) {
    if constexpr (I == 0)
      return cst<A>(1) / b;
    else
      return -a / square(b);
  }
};
template <>
struct derivative<op::pow> {
  template <int I, class A, class B>
  static auto d(const A& a, const B& b) {
    if constexpr (I == 0)
      return b * pow(a, b - cst<A>(1));
    else
      return pow(a, b) * log(a);
  }
};
/// min/max: the gradient goes to the selected operand, split evenly on ties (as PyTorch).
template <class Op, bool Max>
struct extreme_derivative {
  template <int I, class A, class B>
  static auto d(const A& a, const B& b) {
    const auto win = [&] {
      if constexpr ((I == 0) == Max)
        return cast<vt<A>>(a > b);
      else
        return cast<vt<A>>(a < b);
    }();
    return win + cst<A>(0.5) * cast<vt<A>>(a == b);
  }
};
template <>
struct derivative<op::maximum> : extreme_derivative<op::maximum, true> {};
template <>
struct derivative<op::minimum> : extreme_derivative<op::minimum, false> {};
template <>
struct derivative<op::where> {
  template <int I, class C, class A, class B>
  static auto d(const C& c, const A&, const B&) {
    if constexpr (I == 0)
      return zero_t{};
    else if constexpr (I == 1)
      return cast<vt<A>>(c);
    else
      return cast<vt<A>>(!c);
  }
};
/// Comparisons and logic are piecewise constant: zero gradient.
#define FLSL_DZERO(OP)           \
  template <>                    \
  struct derivative<op::OP> {    \
    template <int I, class... A> \
    static auto d(const A&...) { \
      return zero_t{};           \
    }                            \
  };
FLSL_DZERO(eq)
FLSL_DZERO(ne)
FLSL_DZERO(lt)
FLSL_DZERO(le)
FLSL_DZERO(gt)
FLSL_DZERO(ge)
FLSL_DZERO(logical_and)
FLSL_DZERO(logical_or)
FLSL_DZERO(logical_not)
#undef FLSL_DZERO

/// Tag base of Var expression nodes.
struct var_expr_base {};

/// A Var inside an expression.
template <class T, class D>
struct var_leaf : var_expr_base {
  using value_type = T;
  using device_type = D;
  static constexpr int leaves = 1;
  Var<T, D> v;
  explicit var_leaf(Var<T, D> x) : v(std::move(x)) {
    FLSL_CHECK(v.defined(), "expression uses an undefined Var");
  }
  auto texpr() const { return as_expr(v.value()); }
  template <int K>
  auto partial() const {
    return one_t{};
  }
  template <class F>
  void for_each_var(F&& f) const {
    f(v);
  }
};
/// A constant inside a Var expression.
template <class T>
struct var_scalar : var_expr_base {
  using value_type = T;
  using device_type = void;
  static constexpr int leaves = 0;
  compute_t<T> value;
  auto texpr() const { return scalar_expr<compute_t<T>>(value); }
  template <class F>
  void for_each_var(F&&) const {}
};

template <class Op, class... C>
struct var_map : var_expr_base {
  using value_type = typename std::tuple_element_t<0, std::tuple<C...>>::value_type;
  using device_type = typename detail::devices<typename C::device_type...>::type;
  static constexpr int leaves = (C::leaves + ...);
  std::tuple<C...> ch;

  explicit var_map(C... c) : ch(std::move(c)...) {}

  auto texpr() const {
    return std::apply([](const auto&... c) { return detail::make_map<Op>(c.texpr()...); }, ch);
  }
  template <class F>
  void for_each_var(F&& f) const {
    std::apply([&](const auto&... c) { (c.for_each_var(f), ...); }, ch);
  }
  /// d(this)/d(leaf K) as a tensor expression (or one_t / zero_t).
  template <int K>
  auto partial() const {
    return partial_in<K, 0, 0>();
  }

  /// Evaluates the expression as one node whose backward is fused per leaf.
  template <class T, class D>
  Var<T, D> materialize() const {
    Tensor<T, D> value = texpr();
    std::vector<Var<T, D>> ins;
    for_each_var([&](const auto& v) { ins.push_back(v); });
    auto backward = [self = *this](node<T, D>& out) {
      self.backward_leaves(out, std::make_integer_sequence<int, leaves>{});
    };
    return Var<T, D>::make_result_n(std::move(value), "elementwise", std::move(backward), ins);
  }

 private:
  template <int K, std::size_t I, int Offset>
  auto partial_in() const {
    using Child = std::tuple_element_t<I, std::tuple<C...>>;
    if constexpr (K < Offset + Child::leaves) {
      const auto outer = std::apply(
          [](const auto&... c) { return derivative<Op>::template d<int(I)>(c.texpr()...); }, ch);
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(outer)>, zero_t>)
        return zero_t{};
      else
        return chain(outer, std::get<I>(ch).template partial<K - Offset>());
    } else {
      return partial_in<K, I + 1, Offset + Child::leaves>();
    }
  }
  template <class T, class D, int... K>
  void backward_leaves(node<T, D>& out, std::integer_sequence<int, K...>) const {
    (backward_leaf<K>(out), ...);
  }
  template <int K, class T, class D>
  void backward_leaf(node<T, D>& out) const {
    auto& in = out.inputs[std::size_t(K)];
    if (!in->requires_grad) return;
    const auto p = partial<K>();
    using P = std::remove_cvref_t<decltype(p)>;
    if constexpr (std::is_same_v<P, zero_t>)
      return;
    else if constexpr (std::is_same_v<P, one_t>)
      in->accumulate(out.grad);
    else
      in->accumulate(out.grad * p);
  }
};

}  // namespace autograd

template <class X>
concept var_like = detail::is_var<std::remove_cvref_t<X>>::value ||
    std::is_base_of_v<autograd::var_expr_base, std::remove_cvref_t<X>>;

template <class T, class D>
autograd::var_leaf<T, D> as_var_expr(const Var<T, D>& v) {
  return autograd::var_leaf<T, D>(v);
}
template <class E>
requires std::is_base_of_v<autograd::var_expr_base, E>
const E& as_var_expr(const E& e) { return e; }

namespace detail {
template <class X>
using vnode_t = std::remove_cvref_t<decltype(as_var_expr(std::declval<const X&>()))>;
template <class Other, class S>
auto var_scalar_for(S s) {
  using T = typename vnode_t<Other>::value_type;
  return autograd::var_scalar<T>{{}, static_cast<compute_t<T>>(s)};
}
}  // namespace detail

#define FLSL_VAR_BINARY(FN, OP)                                                                   \
  template <var_like A, var_like B>                                                               \
  auto FN(const A& a, const B& b) {                                                               \
    return autograd::var_map<op::OP, detail::vnode_t<A>, detail::vnode_t<B>>(as_var_expr(a),      \
                                                                             as_var_expr(b));     \
  }                                                                                               \
  template <var_like A, scalar_like S>                                                            \
  auto FN(const A& a, S s) {                                                                      \
    return autograd::var_map<op::OP, detail::vnode_t<A>, decltype(detail::var_scalar_for<A>(s))>( \
        as_var_expr(a), detail::var_scalar_for<A>(s));                                            \
  }                                                                                               \
  template <scalar_like S, var_like B>                                                            \
  auto FN(S s, const B& b) {                                                                      \
    return autograd::var_map<op::OP, decltype(detail::var_scalar_for<B>(s)), detail::vnode_t<B>>( \
        detail::var_scalar_for<B>(s), as_var_expr(b));                                            \
  }
FLSL_VAR_BINARY(operator+, add)
FLSL_VAR_BINARY(operator-, sub)
FLSL_VAR_BINARY(operator*, mul)
FLSL_VAR_BINARY(operator/, div)
FLSL_VAR_BINARY(pow, pow)
FLSL_VAR_BINARY(minimum, minimum)
FLSL_VAR_BINARY(maximum, maximum)
FLSL_VAR_BINARY(operator<, lt)
FLSL_VAR_BINARY(operator<=, le)
FLSL_VAR_BINARY(operator>, gt)
FLSL_VAR_BINARY(operator>=, ge)
#undef FLSL_VAR_BINARY

#define FLSL_VAR_UNARY(FN, OP)                                            \
  template <var_like A>                                                   \
  auto FN(const A& a) {                                                   \
    return autograd::var_map<op::OP, detail::vnode_t<A>>(as_var_expr(a)); \
  }
FLSL_VAR_UNARY(operator-, neg)
FLSL_VAR_UNARY(abs, abs)
FLSL_VAR_UNARY(exp, exp)
FLSL_VAR_UNARY(log, log)
FLSL_VAR_UNARY(sqrt, sqrt)
FLSL_VAR_UNARY(rsqrt, rsqrt)
FLSL_VAR_UNARY(tanh, tanh)
FLSL_VAR_UNARY(erf, erf)
FLSL_VAR_UNARY(sin, sin)
FLSL_VAR_UNARY(cos, cos)
FLSL_VAR_UNARY(square, square)
FLSL_VAR_UNARY(sigmoid, sigmoid)
FLSL_VAR_UNARY(relu, relu)
FLSL_VAR_UNARY(gelu, gelu)
#undef FLSL_VAR_UNARY

/// cond ? a : b on Vars (cond may itself compare Vars; it carries no gradient).
template <var_like C, var_like A, var_like B>
auto where(const C& c, const A& a, const B& b) {
  return autograd::var_map<op::where, detail::vnode_t<C>, detail::vnode_t<A>, detail::vnode_t<B>>(
      as_var_expr(c), as_var_expr(a), as_var_expr(b));
}

/// Deduces Var<T, D> from a Var expression: `Var y = a * b + 1.0;`
template <class E>
requires std::is_base_of_v<autograd::var_expr_base, E> Var(const E&)
->Var<typename E::value_type, typename E::device_type>;

/// Evaluates a Var expression into a Var (one node); a Var passes through.
template <var_like X>
auto eval(const X& x) {
  if constexpr (detail::is_var<std::remove_cvref_t<X>>::value)
    return x;
  else
    return x.template materialize<typename X::value_type, typename X::device_type>();
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(elementwise_arithmetic_broadcast) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) { return Var(in[0] * in[1] + in[2] / (square(in[1]) + 1.0) - 2.0 * in[0]); },
      {random_input({3, 4}, 1), random_input({4}, 2), random_input({3, 1}, 3)});
}
FLSL_GRADCHECK_ROW(elementwise_unary) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) {
        return Var(exp(in[0]) * tanh(in[1]) + erf(in[0]) - sigmoid(in[1]) * sin(in[0]) +
                   cos(in[1]) + gelu(in[0]) + abs(in[1]) + relu(in[0]));
      },
      {random_input({2, 5}, 4), random_input({2, 5}, 5)});
}
FLSL_GRADCHECK_ROW(elementwise_positive_domain) {
  using namespace autograd;
  auto a = random_input({6}, 6), b = random_input({6}, 7);
  a.assign(abs(a) + 0.5);
  b.assign(abs(b) + 0.5);
  return gradcheck(
      [](auto& in) { return Var(log(in[0]) + sqrt(in[1]) * rsqrt(in[0]) + pow(in[0], in[1])); },
      {a, b});
}
FLSL_GRADCHECK_ROW(elementwise_select) {
  using namespace autograd;
  auto a = Tensor<double>::from({-1.0, 0.5, 2.0, -3.0}),
       b = Tensor<double>::from({0.3, -0.7, 1.0, 2.5});
  return gradcheck(
      [](auto& in) {
        return Var(where(in[0] > in[1], in[0] * in[1], in[1] - in[0]) + maximum(in[0], in[1]) -
                   minimum(in[0], 0.25));
      },
      {a, b});
}
#endif

}  // namespace flsl
