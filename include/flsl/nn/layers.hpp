// Basic layers as compile-time specs: linear<In, Out>, gelu, layer_norm<D>, identity.
#pragma once

#include "../autograd/ops.hpp"
#include "autocast.hpp"
#include "module.hpp"

namespace flsl::nn {

/// y = x W^T + b, W [Out, In] (trunc-normal std 0.02), b [Out] (zeros).
template <index_t In, index_t Out, bool Bias = true>
struct linear {
  static constexpr index_t in_features = In, out_features = Out;
  template <class T, class D>
  struct module {
    using var_type = Var<T, D>;
    Var<T, D> weight, bias;

    explicit module(init_stream& init)
        : weight(init.trunc_normal<T, D>({Out, In}), true),
          bias(Bias ? Var<T, D>(Tensor<T, D>::zeros({Out}), true) : Var<T, D>()) {}
    explicit module(init_stream&& init) : module(init) {}
    explicit module(std::uint64_t seed = 0) : module(init_stream{seed, 0}) {}

    Var<T, D> operator()(const Var<T, D>& x) const { return cast_forward(x); }
    /// The product in element type A (autocast): the weight and bias converted to A as graph
    /// nodes (their gradients reach the T parameters), x already in A. With A = T no conversion
    /// happens (Var::to<T> is the Var itself): the plain forward.
    template <class A>
    Var<A, D> cast_forward(const Var<A, D>& x) const {
      return flsl::linear(x, weight.template to<A>(),
                          bias.defined() ? bias.template to<A>() : Var<A, D>());
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      f(join_name(prefix, "weight"), weight);
      if constexpr (Bias) f(join_name(prefix, "bias"), bias);
    }
  };
};

/// Exact (erf) GELU, no parameters.
struct gelu {
  template <class T, class D>
  struct module {
    using var_type = Var<T, D>;
    explicit module(init_stream&) {}
    module() = default;
    Var<T, D> operator()(const Var<T, D>& x) const { return Var<T, D>(flsl::gelu(x)); }
    template <class F>
    void for_each_parameter(F&&, std::string_view) {}
  };
};

}  // namespace flsl::nn
