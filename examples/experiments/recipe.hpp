// The published recipe (FLSL_SPEC.md §4: ViT-S/16, 224 px views, 2 local 96 px views, out_dim
// 4096, 100 epochs here), built as `flsl_pretrain_recipe`. Meant for --data DIR on a large machine;
// every default is the spec's.
#pragma once

#include <flsl/flsl.hpp>
#include <flsl/train/trainer.hpp>

namespace experiments {

struct recipe_experiment {
  static constexpr const char* name = "flsl_pretrain_recipe";
  static constexpr const char* description =
      "Pretrains ViT-S/16 (or --arch base, --patch 8) with FLSL using the published recipe's "
      "defaults (FLSL_SPEC.md): 224 px teacher and student views, two 96 px local views, out_dim "
      "4096, AdamW with lr 5e-4 * batch / 256, teacher temperature 0.04 -> 0.07 over 30 epochs.";
  using value_type = float;
  using device = flsl::cpu;
  using archs = flsl::train::arch_list<flsl::train::arch<"small", flsl::nn::vit_small<16>>,
                                       flsl::train::arch<"base", flsl::nn::vit_base<16>>,
                                       flsl::train::arch<"small", flsl::nn::vit_small<8>>,
                                       flsl::train::arch<"base", flsl::nn::vit_base<8>>>;
  static constexpr flsl::index_t out_dim = 4096, head_hidden = 2048, head_bottleneck = 256;
  static constexpr bool norm_last_layer = true;

  static void defaults(flsl::train::run_config& c) {
    c.arch = "small";
    c.patch = 16;
    c.epochs = 100;
    c.batch = 64;
  }
};

}  // namespace experiments

using flsl_experiment = experiments::recipe_experiment;
