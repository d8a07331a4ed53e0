// What an experiment is: a type that fixes at compile time the models a trainer binary can build
// (ViT configurations selectable by --arch/--patch, the projection head), the element type, the
// device, and the recipe's defaults. examples/experiments/ holds the ones this project builds.
//
//   struct my_experiment {
//     static constexpr const char* name = "flsl_small8";
//     static constexpr const char* description = "ViT-S/8 on a folder of images";
//     using value_type = float;
//     using device = flsl::cpu;
//     using archs = train::arch_list<train::arch<"small", nn::vit_small<8>>>;
//     static constexpr index_t out_dim = 4096, head_hidden = 2048, head_bottleneck = 256;
//     static constexpr bool norm_last_layer = true;
//     static void defaults(train::run_config& c) { c.arch = "small"; c.patch = 8; }
//   };
//   int main(int argc, char** argv) { return flsl::train::run_experiment<my_experiment>(argc,
//   argv); }
#pragma once

#include <algorithm>
#include <concepts>
#include <string>
#include <string_view>

#include "../core/device.hpp"
#include "../core/dtype.hpp"
#include "../nn/vit.hpp"
#include "checkpoint.hpp"
#include "config.hpp"

namespace flsl::train {

/// A string usable as a template argument: arch<"tiny", nn::vit_tiny<16>>.
template <std::size_t N>
struct fixed_string {
  char value[N]{};
  constexpr fixed_string(const char (&s)[N]) { std::copy_n(s, N, value); }  // NOLINT: implicit
  constexpr std::string_view view() const { return {value, N - 1}; }
};

/// One architecture a trainer binary offers: its --arch name and its vit_config (the patch comes
/// from the config).
template <fixed_string Name, class Cfg>
struct arch {
  static constexpr std::string_view name = Name.view();
  using config = Cfg;
};

template <class... Archs>
struct arch_list {};

/// The requirements on an experiment type (see the example at the top of this file).
template <class E>
concept experiment = requires(run_config& c) {
  { E::name } -> std::convertible_to<const char*>;
  { E::description } -> std::convertible_to<const char*>;
  typename E::value_type;
  typename E::device;
  typename E::archs;
  { E::out_dim } -> std::convertible_to<index_t>;
  { E::head_hidden } -> std::convertible_to<index_t>;
  { E::head_bottleneck } -> std::convertible_to<index_t>;
  { E::norm_last_layer } -> std::convertible_to<bool>;
  E::defaults(c);
};

/// The student/teacher network of an experiment for one ViT configuration.
template <class Exp, class Cfg>
using network_spec =
    nn::backbone_with_head<nn::vision_transformer<Cfg>,
                           nn::projection_head<Cfg::dim, Exp::out_dim, Exp::head_hidden,
                                               Exp::head_bottleneck, Exp::norm_last_layer>>;
template <class Exp, class Cfg>
using network = nn::model<network_spec<Exp, Cfg>, typename Exp::value_type, typename Exp::device>;

/// The architecture record of checkpoints and exports.
template <class Exp, class Cfg>
architecture_info make_architecture_info(std::string_view arch_name) {
  architecture_info a;
  a.arch = std::string(arch_name);
  a.patch = Cfg::patch;
  a.dim = Cfg::dim;
  a.depth = Cfg::depth;
  a.heads = Cfg::heads;
  a.mlp_hidden = Cfg::mlp_hidden;
  a.out_dim = Exp::out_dim;
  a.head_hidden = Exp::head_hidden;
  a.head_bottleneck = Exp::head_bottleneck;
  a.norm_last_layer = Exp::norm_last_layer;
  a.dtype = std::string(dtype_name(dtype_of<typename Exp::value_type>));
  return a;
}

namespace detail {
template <class... A>
void add_arch_choices(experiment_info& info, arch_list<A...>) {
  (info.archs.push_back({std::string(A::name), A::config::patch}), ...);
}
}  // namespace detail

/// What the option parser needs to know about an experiment.
template <experiment Exp>
experiment_info make_experiment_info() {
  experiment_info info;
  info.name = Exp::name;
  info.description = Exp::description;
  detail::add_arch_choices(info, typename Exp::archs{});
  info.out_dim = Exp::out_dim;
  info.norm_last_layer = Exp::norm_last_layer;
  info.defaults.out_dim = Exp::out_dim;
  info.defaults.norm_last_layer = Exp::norm_last_layer;
  info.defaults.out = std::string("runs/") + Exp::name;
  Exp::defaults(info.defaults);
  return info;
}

}  // namespace flsl::train
