// What a module is: a type built from compile-time dimensions whose parameters are enumerable by
// name (for optimisers, checkpoints and the EMA teacher), and the helpers modules share.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../autograd/var.hpp"

namespace flsl::nn {

/// How parameters are initialised: a seed and a running Philox offset, so every parameter gets its
/// own numbers and the whole model is reproducible from the seed alone.
struct init_stream {
  std::uint64_t seed = 0;
  std::uint64_t offset = 0;
  template <class T, class D>
  Tensor<T, D> trunc_normal(const Shape& s, double std = 0.02) {
    auto t = Tensor<T, D>::trunc_normal(s, seed, offset, 0.0, std, -2.0, 2.0);
    offset += std::uint64_t(s.numel());
    return t;
  }
};

/// Joins a module path and a parameter name the way PyTorch's state_dict does ("blocks.0.attn").
inline std::string join_name(std::string_view prefix, std::string_view name) {
  if (prefix.empty()) return std::string(name);
  std::string s(prefix);
  s += '.';
  s += name;
  return s;
}

/// A module exposes `for_each_parameter(f, prefix)`, calling f(full_name, Var&) for each parameter.
template <class M>
concept module = requires(M& m) {
  m.for_each_parameter([](const std::string&, auto&) {}, std::string_view{});
};

/// (name, Var) pairs of every parameter of `m`, in registration order.
template <class M>
auto named_parameters(M& m) {
  using V = typename M::var_type;
  std::vector<std::pair<std::string, V>> out;
  m.for_each_parameter([&](const std::string& name, V& v) { out.emplace_back(name, v); }, "");
  return out;
}
/// Number of scalar parameters.
template <class M>
index_t parameter_count(M& m) {
  index_t n = 0;
  m.for_each_parameter([&](const std::string&, auto& v) { n += v.numel(); }, "");
  return n;
}
/// Drops every parameter's gradient.
template <class M>
void zero_grad(M& m) {
  m.for_each_parameter([](const std::string&, auto& v) { v.zero_grad(); }, "");
}

/// Instantiates a module spec (dims only) for an element type and device:
/// `nn::model<nn::sequential<nn::linear<2, 8>, nn::gelu, nn::linear<8, 1>>, float> net(seed);`
template <class Spec, class T, class D = cpu>
using model = typename Spec::template module<T, D>;

}  // namespace flsl::nn
