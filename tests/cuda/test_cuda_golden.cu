// The FLSL step on cuda in f32 against PyTorch: tests/fixtures/flsl_tiny.safetensors, the float64
// reference of tools/make_flsl_fixtures.py (loss, gradients, AdamW, freeze, EMA on a tiny ViT),
// that test_golden checks the CPU against. The same checks as test_golden's f32 case, with the
// same tolerances: f32 arithmetic on either device tracks the f64 reference to them, so a cuda
// kernel that is right to f32 rounding passes and one that is wrong (a dropped term, a stale
// gradient, a wrong mask) does not. The fixture and its helpers:
// tests/golden/flsl_tiny_fixture.hpp.
#include <doctest/doctest.h>

#include <flsl/backend/cuda.cuh>

#include "../golden/flsl_tiny_fixture.hpp"
#include "cuda_test_support.cuh"

using namespace flsl;
using namespace flsl_test;

namespace {
using cuda_net = nn::model<tiny_net, float, cuda>;
}  // namespace

TEST_CASE("cuda f32: the first step's loss and gradients track PyTorch's f64 reference") {
  SKIP_WITHOUT_CUDA_DEVICE();
  cuda_net s(0);
  load_init(s);
  auto r = flsl_loss(s, s, fixture_views<float, cuda>(), 0.04, fixture_loss(),
                     fixture_drop<float, cuda>(0));
  for (auto [got, key] : {std::pair{r.total, "step1.loss"},
                          {r.ms, "step1.loss_ms"},
                          {r.km, "step1.loss_km"},
                          {r.vmr, "step1.loss_vmr"}}) {
    CAPTURE(key);
    CHECK(double(got.value().item()) == doctest::Approx(ref(key)).epsilon(1e-5));
  }
  CHECK(excess(r.teacher_tokens, fixture().get<double>("step1.teacher_tokens"), 1e-5, 1e-4) <= 1);
  r.total.backward();
  int checked = 0;
  for (auto& [name, p] : nn::named_parameters(s)) {
    CAPTURE(name);
    REQUIRE(p.grad().defined());
    const auto want = fixture().get<double>("step1.grad." + name);
    const double scale = max(abs(want)).item();
    CHECK(excess(p.grad(), want, 1e-4 * scale + 1e-7, 0) <= 1);
    ++checked;
  }
  CHECK(checked == 35);
}

TEST_CASE("cuda f32: ten full steps (clip, freeze, AdamW, EMA, schedules) track PyTorch's") {
  SKIP_WITHOUT_CUDA_DEVICE();
  cuda_net s(0), t(0);
  load_init(s);
  flsl_learner<cuda_net, float, cuda> learner(s, t, fixture_recipe(), fixture_loss());
  learner.sync_teacher();
  check_ten_f32_steps<cuda>(learner, s);
}

TEST_CASE("cuda bf16 autocast: the first step and ten steps track PyTorch's to bf16 accuracy") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_autocast_bf16<cuda>();  // the CPU's bounds (measured there, times about three)
}
