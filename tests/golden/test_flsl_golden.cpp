// The FLSL step against PyTorch: tests/fixtures/flsl_tiny.safetensors holds a float64 reference
// (tools/make_flsl_fixtures.py) of the loss, gradients, AdamW, freeze and EMA on a tiny ViT.
#include <doctest/doctest.h>

#include "flsl_tiny_fixture.hpp"

using namespace flsl;
using namespace flsl_test;

TEST_CASE("position tables equal the fixture's sin-cos table and its bicubic resize") {
  nn::model<tiny_net, double> m(0);
  CHECK(excess(m.backbone.positions(6), fixture().get<double>("const.pos_embed.global"), 1e-15,
               0) <= 1);
  CHECK(excess(m.backbone.positions(4), fixture().get<double>("const.pos_embed.local"), 1e-14, 0) <=
        1);
}

TEST_CASE("rectangular position grids equal F.interpolate's bicubic resize") {
  // tests/fixtures/pos_tables.safetensors: tools/make_flsl_fixtures.py --pos-tables-out
  const io::safetensors_file f(fixture_dir() + "/pos_tables.safetensors");
  struct resize_case {
    index_t dim, grid, rows, cols;
  };
  for (const resize_case c : {resize_case{32, 6, 4, 5}, resize_case{32, 6, 5, 3},
                              resize_case{32, 6, 6, 9}, resize_case{8, 14, 30, 52}}) {
    const std::string name = "d" + std::to_string(c.dim) + ".g" + std::to_string(c.grid) + "." +
                             std::to_string(c.rows) + "x" + std::to_string(c.cols);
    CAPTURE(name);
    const auto got =
        nn::resize_table_bicubic(nn::sincos_table(c.dim, c.grid), c.grid, c.rows, c.cols);
    CHECK(excess(got, f.get<double>(name), 1e-14, 0) <= 1);
  }
  // the model's table for a 4 x 5 grid (images of 32 x 40 px at patch 8), and its tokens' order
  nn::model<tiny_net, double> m(0);
  CHECK(excess(m.backbone.positions(4, 5), f.get<double>("d32.g6.4x5"), 1e-14, 0) <= 1);
  const auto images = Tensor<double>::randn({2, 3, 32, 40}, 7);
  CHECK(m.backbone(images).value().shape() == Shape{2, 20, 32});
  CHECK_THROWS_AS(m.backbone(Tensor<double>::zeros({1, 3, 32, 36})), flsl::error);
}

TEST_CASE("f64: the first step's loss, intermediates and gradients equal PyTorch's") {
  nn::model<tiny_net, double> s(0), t(0);
  load_init(s);
  load_init(t);
  auto r = flsl_loss(s, t, fixture_views<double>(), 0.04, fixture_loss(), fixture_drop<double>(0));
  CHECK(r.total.value().item() == doctest::Approx(ref("step1.loss")).epsilon(1e-12));
  CHECK(std::abs(r.total.value().item() - ref("step1.loss")) < 1e-10);
  CHECK(std::abs(r.ms.value().item() - ref("step1.loss_ms")) < 1e-10);
  CHECK(std::abs(r.km.value().item() - ref("step1.loss_km")) < 1e-10);
  CHECK(std::abs(r.vmr.value().item() - ref("step1.loss_vmr")) < 1e-10);
  CHECK(excess(r.teacher_tokens, fixture().get<double>("step1.teacher_tokens"), 1e-10, 0) <= 1);
  CHECK(excess(r.student_global.value(), fixture().get<double>("step1.student_tokens.global"),
               1e-10, 0) <= 1);
  CHECK(excess(r.student_local.value(), fixture().get<double>("step1.student_tokens.local"), 1e-10,
               0) <= 1);
  auto zh = r.zhat.value();
  CHECK(excess(zh.narrow(0, 0, 8), fixture().get<double>("step1.zhat.global").view({8, 32}), 1e-10,
               0) <= 1);
  CHECK(excess(zh.narrow(0, 8, 16), fixture().get<double>("step1.zhat.local").view({16, 32}), 1e-10,
               0) <= 1);
  CHECK(excess(r.zplus.narrow(0, 0, 8), fixture().get<double>("step1.zplus.global").view({8, 32}),
               1e-10, 0) <= 1);
  CHECK(excess(r.student_logits.value().narrow(0, 8, 16),
               fixture().get<double>("step1.student_logits.local").view({16, 64}), 1e-10, 0) <= 1);
  CHECK(excess(r.teacher_logits.narrow(0, 0, 8),
               fixture().get<double>("step1.teacher_logits.global").view({8, 64}), 1e-10, 0) <= 1);
  r.total.backward();
  int checked = 0;
  for (auto& [name, p] : nn::named_parameters(s)) {
    CAPTURE(name);
    REQUIRE(p.grad().defined());
    const double atol = is_key_bias(name) ? 1e-9 : 1e-10;
    CHECK(excess(p.grad(), fixture().get<double>("step1.grad." + name), atol, 1e-8) <= 1);
    ++checked;
  }
  CHECK(checked == 35);
}

TEST_CASE("f64: two and ten full steps (clip, freeze, AdamW, EMA, schedules) equal PyTorch's") {
  nn::model<tiny_net, double> s(0), t(0);
  load_init(s);
  flsl_learner<nn::model<tiny_net, double>, double> learner(s, t, fixture_recipe(), fixture_loss());
  learner.sync_teacher();
  const auto views = fixture_views<double>();
  const auto losses = fixture().get<double>("steps10.loss");      // [10, 4]
  const auto norms = fixture().get<double>("steps10.grad_norm");  // [10, 35]
  const auto sched_lr = fixture().get<double>("schedule.lr");
  auto teacher_stats = [&](const char* key) {
    const auto st = fixture().get<double>(key);  // [35, 4]
    const auto init_names = nn::named_parameters(t);
    for (std::size_t i = 0; i < init_names.size(); ++i) {
      const auto& [name, p] = init_names[i];
      CAPTURE(name);
      Tensor<double> diff = p.value() - fixture().get<double>("init." + name);
      const double atol = is_key_bias(name) ? 1e-9 : 1e-9;
      CHECK(std::abs(sum(diff).item() - st(index_t(i), 0)) < atol);
      CHECK(std::abs(std::sqrt(sum(square(diff)).item()) - st(index_t(i), 1)) < atol);
      CHECK(std::abs(sum(p.value()).item() - st(index_t(i), 3)) < atol);
    }
  };
  for (index_t k = 0; k < 10; ++k) {
    CAPTURE(k);
    const auto res = learner.step(views, fixture_drop<double>(k));
    CHECK(res.schedule.lr == doctest::Approx(sched_lr(k)).epsilon(1e-15));
    CHECK(std::abs(res.total - losses(k, 0)) < 1e-10);
    CHECK(std::abs(res.ms - losses(k, 1)) < 1e-10);
    CHECK(std::abs(res.km - losses(k, 2)) < 1e-10);
    CHECK(std::abs(res.vmr - losses(k, 3)) < 1e-10);
    for (index_t i = 0; i < 35; ++i)
      CHECK(res.grad_norms[std::size_t(i)] == doctest::Approx(norms(k, i)).epsilon(1e-9));
    if (k == 1) {
      for (auto& [name, p] : nn::named_parameters(s)) {
        CAPTURE(name);
        CHECK(excess(p.value(), fixture().get<double>("step2.param." + name),
                     is_key_bias(name) ? 1e-9 : 1e-10, 0) <= 1);
      }
      teacher_stats("step2.teacher_stats");
      CHECK(learner.optimizer().step_count("head.last_layer.weight_v") == 0);
      CHECK(learner.optimizer().step_count("norm.weight") == 2);
    }
  }
  for (auto& [name, p] : nn::named_parameters(s)) {
    CAPTURE(name);
    CHECK(excess(p.value(), fixture().get<double>("steps10.param." + name),
                 is_key_bias(name) ? 1e-9 : 1e-10, 0) <= 1);
  }
  teacher_stats("steps10.teacher_stats");
}

TEST_CASE("f32: the first step and ten steps' losses track the f64 reference") {
  nn::model<tiny_net, float> s(0), t(0);
  load_init(s);
  auto r = flsl_loss(s, s, fixture_views<float>(), 0.04, fixture_loss(), fixture_drop<float>(0));
  for (auto [got, key] : {std::pair{r.total, "step1.loss"},
                          {r.ms, "step1.loss_ms"},
                          {r.km, "step1.loss_km"},
                          {r.vmr, "step1.loss_vmr"}}) {
    CAPTURE(key);
    CHECK(double(got.value().item()) == doctest::Approx(ref(key)).epsilon(1e-5));
  }
  r.total.backward();
  for (auto& [name, p] : nn::named_parameters(s)) {
    CAPTURE(name);
    const auto want = fixture().get<double>("step1.grad." + name);
    const double scale = max(abs(want)).item();
    CHECK(excess(p.grad(), want, 1e-4 * scale + 1e-7, 0) <= 1);
  }
  nn::zero_grad(s);
  flsl_learner<nn::model<tiny_net, float>, float> learner(s, t, fixture_recipe(), fixture_loss());
  learner.sync_teacher();
  check_ten_f32_steps<cpu>(learner, s);
}

TEST_CASE("bf16 autocast: the first step and ten steps track the f64 reference to bf16 accuracy") {
  check_autocast_bf16<cpu>();
}
