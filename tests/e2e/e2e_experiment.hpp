// A tiny experiment for the end-to-end tests: two small ViTs (D 32 and D 48, depth 2, patch 8) and
// a small head, tiny procedural images, a few steps per epoch, so that a whole run takes seconds.
#pragma once

#include <flsl/flsl.hpp>
#include <flsl/train/trainer.hpp>

namespace e2e {

using t32 = flsl::nn::vit_config<32, 2, 2, 8, 4, 32>;
using t48 = flsl::nn::vit_config<48, 2, 2, 8, 4, 32>;

struct tiny_experiment {
  static constexpr const char* name = "flsl_e2e";
  static constexpr const char* description = "End-to-end test experiment.";
  using value_type = float;
  using device = flsl::cpu;
  using archs =
      flsl::train::arch_list<flsl::train::arch<"t32", t32>, flsl::train::arch<"t48", t48>>;
  static constexpr flsl::index_t out_dim = 64, head_hidden = 64, head_bottleneck = 32;
  static constexpr bool norm_last_layer = true;

  static void defaults(flsl::train::run_config& c) {
    c.arch = "t32";
    c.patch = 8;
    c.epochs = 2;
    c.batch = 4;
    c.threads = 2;
    c.procedural_images = 16;  // 4 steps per epoch
    c.procedural_size = 48;
    c.global_size = 32;
    c.local_size = 16;
    c.global_window = 2;
    c.local_window = 1;
    c.lr = 0.01;
    c.warmup_epochs = 1;
    c.warmup_teacher_temp_epochs = 1;
    c.eval_size = 32;
    c.eval_train_images = 8;
    c.eval_val_images = 4;
    c.pictures = 2;
    c.kmeans_clusters = 3;
    c.progress = "plain";
  }
};

}  // namespace e2e
