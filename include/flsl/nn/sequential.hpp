// sequential<Layers...>: layers applied in order; a flat variadic list (no recursive nesting), its
// children named "0", "1", ... as in torch.nn.Sequential.
#pragma once

#include <tuple>

#include "module.hpp"

namespace flsl::nn {

template <class... Layers>
struct sequential {
  static_assert(sizeof...(Layers) > 0, "nn::sequential needs at least one layer");
  template <class T, class D>
  struct module {
    using var_type = Var<T, D>;
    std::tuple<typename Layers::template module<T, D>...> layers;

    explicit module(init_stream& init) : layers{typename Layers::template module<T, D>(init)...} {}
    explicit module(init_stream&& init) : module(init) {}
    explicit module(std::uint64_t seed = 0) : module(init_stream{seed, 0}) {}

    Var<T, D> operator()(const Var<T, D>& x) const {
      Var<T, D> h = x;
      std::apply([&](const auto&... layer) { ((h = layer(h)), ...); }, layers);
      return h;
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      visit(f, prefix, std::index_sequence_for<Layers...>{});
    }
    /// The I-th layer.
    template <std::size_t I>
    auto& get() {
      return std::get<I>(layers);
    }

   private:
    template <class F, std::size_t... I>
    void visit(F& f, std::string_view prefix, std::index_sequence<I...>) {
      (std::get<I>(layers).for_each_parameter(f, join_name(prefix, std::to_string(I))), ...);
    }
  };
};

}  // namespace flsl::nn
