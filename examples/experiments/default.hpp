// The default experiment, built as `flsl_pretrain`: ViT-Tiny/16 (or --arch small|base, --patch 8)
// in f32 on the CPU, with a short-run recipe that trains on the built-in procedural dataset in
// 5 to 12 minutes on two cores. Its k-NN segmentation shows no gain over random weights yet;
// the linear probe (on by default here) shows the features learnt to tell objects from background
// (docs/training.md, "Measured").

#pragma once

#include <flsl/flsl.hpp>
#include <flsl/train/trainer.hpp>

namespace experiments {

struct default_experiment {
  static constexpr const char* name = "flsl_pretrain";
  static constexpr const char* description =
      "Pretrains a Vision Transformer with FLSL (feature-level self-supervised learning). With no "
      "options it trains vit_tiny/16 on the built-in procedural dataset on the CPU in 5 to 12 "
      "minutes on 2 cores, with a short-run recipe (small views, few epochs, higher learning "
      "rate), and "
      "prints the dense k-NN segmentation mIoU of the random and of the trained weights. "
      "--data DIR trains on a folder of images; every value of the published recipe is an option.";
  using value_type = float;
  using device = flsl::cpu;
  using archs = flsl::train::arch_list<flsl::train::arch<"tiny", flsl::nn::vit_tiny<16>>,
                                       flsl::train::arch<"small", flsl::nn::vit_small<16>>,
                                       flsl::train::arch<"base", flsl::nn::vit_base<16>>,
                                       flsl::train::arch<"tiny", flsl::nn::vit_tiny<8>>,
                                       flsl::train::arch<"small", flsl::nn::vit_small<8>>,
                                       flsl::train::arch<"base", flsl::nn::vit_base<8>>>;
  // --device cuda (when built with the CUDA backend): the patch-16 tiny and small models only,
  // which bounds nvcc's compile time of examples/flsl_pretrain_cuda.cu
  using cuda_archs = flsl::train::arch_list<flsl::train::arch<"tiny", flsl::nn::vit_tiny<16>>,
                                            flsl::train::arch<"small", flsl::nn::vit_small<16>>>;
  // the projection head of the spec (Linear 2048, 2048, bottleneck 256, K prototypes)
  static constexpr flsl::index_t out_dim = 4096, head_hidden = 2048, head_bottleneck = 256;
  static constexpr bool norm_last_layer = true;

  /// The short-run recipe: what differs from the published one (FLSL_SPEC.md) and why is in
  /// docs/training.md.
  static void defaults(flsl::train::run_config& c) {
    c.arch = "tiny";
    c.patch = 16;
    c.epochs = 6;
    c.batch = 32;
    c.procedural_images = 2000;
    c.procedural_size = 128;
    c.global_size = 112;
    c.local_size = 48;
    c.global_window = 2;
    c.local_window = 1;
    c.lr = 0.004;
    c.warmup_epochs = 1;
    c.warmup_teacher_temp_epochs = 2;
    c.momentum_teacher = 0.99;
    c.eval_size = 112;
    c.eval_train_images = 200;
    c.eval_val_images = 100;
    c.checkpoint_every = 0;
    c.linear_probe = true;
  }
};

}  // namespace experiments

using flsl_experiment = experiments::default_experiment;
