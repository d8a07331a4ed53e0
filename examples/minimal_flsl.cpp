// minimal_flsl: FLSL end to end in one page. A student and an EMA teacher ViT learn from synthetic
// images: each "image" is a few coloured squares on noise; the views are crops of it, and the
// objective makes the patch tokens of the same square agree across views. Run: ./minimal_flsl
#include <cstdio>
#include <flsl/data/query_tokens.hpp>
#include <flsl/flsl.hpp>
#include <flsl/train/flsl_step.hpp>

using namespace flsl;

// A small ViT (D=64, depth 4, 4 heads, patch 8, position table for 32 px) and its FLSL head.
using backbone = nn::vision_transformer<nn::vit_config<64, 4, 4, 8, 4, 32>>;
using head = nn::projection_head<64, /*K=*/256, /*hidden=*/256, /*bottleneck=*/64>;
using network = nn::model<nn::backbone_with_head<backbone, head>, float>;

// B synthetic images [B, 3, S, S]: noise plus three squares of random colour and position.
Tensor<float> synthetic_images(index_t B, index_t S, Generator& g) {
  auto img = Tensor<float>::randn({B, 3, S, S}, g.next_u32(), 0, 0.0, 0.3);
  for (index_t b = 0; b < B; ++b)
    for (int k = 0; k < 3; ++k) {
      const index_t w = S / 4 + index_t(g.uniform_int(std::uint32_t(S / 4)));
      const index_t y0 = index_t(g.uniform_int(std::uint32_t(S - w))),
                    x0 = index_t(g.uniform_int(std::uint32_t(S - w)));
      for (index_t c = 0; c < 3; ++c) {
        const float v = float(g.uniform(-1.5, 1.5));
        img.select(0, b).select(0, c).narrow(0, y0, w).narrow(1, x0, w).fill(v);
      }
    }
  return img;
}

// The spec's views, simplified: the teacher sees the image, the student a shifted copy (global)
// and two 16 px quarter crops (locals); the queries are one token per 2x2 window.
flsl_views<float> make_views(const Tensor<float>& images, Generator& g) {
  const index_t B = images.size(0), S = images.size(2);
  flsl_views<float> v;
  v.teacher = images;
  Tensor<float> shifted = Tensor<float>::empty(images.shape());
  shifted.narrow(3, 0, S - 2).copy_from(images.narrow(3, 2, S - 2));
  shifted.narrow(3, S - 2, 2).copy_from(images.narrow(3, 0, 2));
  v.global = shifted;
  v.locals = 2;
  v.local = Tensor<float>::empty({B * 2, 3, S / 2, S / 2});
  for (index_t b = 0; b < B; ++b)
    for (index_t l = 0; l < 2; ++l)
      v.local.select(0, b * 2 + l)
          .copy_from(images.select(0, b).narrow(1, l * S / 2, S / 2).narrow(2, l * S / 4, S / 2));
  auto queries = [&](index_t rows, int grid) {
    const int q = data::query_token_count(grid, 2);
    auto t = Tensor<std::int64_t>::empty({rows, q});
    for (index_t r = 0; r < rows; ++r)
      data::sample_query_tokens(grid, 2, true, g,
                                std::span<std::int64_t>(t.data() + r * q, std::size_t(q)));
    return t;
  };
  v.query_global = queries(B, int(S / 8));
  v.query_local = queries(B * 2, int(S / 16));
  return v;
}

int main() {
  network student(/*seed=*/1), teacher(/*seed=*/1);
  optim::recipe recipe;  // the published recipe, shortened
  recipe.epochs = 6;
  recipe.iters_per_epoch = 10;
  recipe.total_batch = 16;
  recipe.lr = 5e-3;  // x 16/256 -> peak 3.1e-4
  recipe.warmup_epochs = 1;
  recipe.warmup_teacher_temp_epochs = 2;
  flsl_learner<network, float> learner(student, teacher, recipe);
  learner.sync_teacher();

  Generator data_rng(7);
  for (index_t it = 0; it < recipe.epochs * recipe.iters_per_epoch; ++it) {
    const auto views = make_views(synthetic_images(16, 32, data_rng), data_rng);
    const auto r = learner.step(views);
    if (it % 10 == 0 || it + 1 == recipe.epochs * recipe.iters_per_epoch)
      std::printf(
          "iter %3lld  epoch %lld  loss %.4f  (ms %.4f  km %.4f  vmr %.4f)  lr %.2e  tau_t %.3f\n",
          (long long)it, (long long)r.schedule.epoch, r.total, r.ms, r.km, r.vmr, r.schedule.lr,
          r.schedule.teacher_temp);
  }
  std::printf("parameters: %lld\n", (long long)nn::parameter_count(student));
  return 0;
}
