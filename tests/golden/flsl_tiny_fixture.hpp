// tests/fixtures/flsl_tiny.safetensors (tools/make_flsl_fixtures.py): the float64 PyTorch reference
// of the FLSL step on a tiny ViT, and what the tests that compare against it share: the model,
// its initial weights, the input views, the drop-path masks of each iteration, the recipe and the
// loss parameters the script used, and the checks both devices run (ten f32 steps; the step
// under bf16 autocast). Included by test_golden (the CPU: f64, f32, autocast) and
// test_cuda_golden (cuda: f32, autocast).
//
// The fixture folder is FLSL_FIXTURE_DIR (compiled in: the source tree's) unless the environment
// variable of the same name says where it is (a GPU machine that runs binaries built elsewhere).
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <flsl/flsl.hpp>
#include <flsl/io/safetensors.hpp>
#include <flsl/train/flsl_step.hpp>
#include <string>
#include <utility>

namespace flsl_test {

using namespace flsl;

using tiny_cfg = nn::vit_config<32, 2, 2, 8, 4, 48>;
using tiny_net =
    nn::backbone_with_head<nn::vision_transformer<tiny_cfg>, nn::projection_head<32, 64, 64, 32>>;

inline std::string fixture_dir() {
  const char* env = std::getenv("FLSL_FIXTURE_DIR");
  return env != nullptr ? std::string(env) : std::string(FLSL_FIXTURE_DIR);
}

inline const io::safetensors_file& fixture() {
  static const io::safetensors_file f(fixture_dir() + "/flsl_tiny.safetensors");
  return f;
}

template <class T, class D>
void load_init(nn::model<tiny_net, T, D>& m) {
  for (auto& [name, p] : nn::named_parameters(m))
    p.value().copy_from(fixture().get_as<T>("init." + name).template to<D>());
}

template <class T, class D = cpu>
flsl_views<T, D> fixture_views() {
  flsl_views<T> v;
  v.teacher = fixture().get_as<T>("input.teacher");
  v.global = fixture().get_as<T>("input.global");
  v.local = fixture().get_as<T>("input.local");
  v.query_global = fixture().get<std::int64_t>("input.query.global");
  v.query_local = fixture().get<std::int64_t>("input.query.local");
  v.locals = 2;
  return views_to<D>(v);
}

/// Keep masks of iteration k: block 1 (rate 0.1) has one per branch and forward; block 0 none.
template <class T, class D = cpu>
flsl_drop_paths<T, D> fixture_drop(index_t k) {
  flsl_drop_paths<T, D> d;
  for (auto [view, out] : {std::pair{"global", &d.global}, std::pair{"local", &d.local}}) {
    out->resize(2);
    auto& b1 = (*out)[1];
    b1.rate = 0.1;
    const std::string key = std::string("input.keep.") + view + ".blocks.1.";
    b1.attn = fixture().get_as<T>(key + "attn").select(0, k).clone().template to<D>();
    b1.mlp = fixture().get_as<T>(key + "mlp").select(0, k).clone().template to<D>();
  }
  return d;
}

inline optim::recipe fixture_recipe() {
  optim::recipe r;
  r.epochs = 5;
  r.iters_per_epoch = 2;
  r.total_batch = 2;
  r.lr = 0.5;
  r.warmup_epochs = 1;
  r.warmup_teacher_temp_epochs = 2;
  r.freeze_last_layer = 1;
  return r;
}

inline flsl_loss_params fixture_loss() {
  flsl_loss_params p;
  p.b_sa = 0.1 / std::sqrt(384.0);
  p.b_ca = 0.2 / std::sqrt(384.0);
  return p;
}

/// max |a - b| / (atol + rtol |b|) over all elements, a on any device: <= 1 passes.
template <class T, class D>
double excess(const Tensor<T, D>& got_any, const Tensor<double>& want, double atol, double rtol) {
  const Tensor<T> got = got_any.template to<cpu>();
  const Tensor<double> w_shaped = want.reshape_or_copy(got.shape());
  REQUIRE(w_shaped.shape() == got.shape());
  const auto g = got.template to<double>().to_vector();
  const auto w = w_shaped.contiguous().to_vector();
  double worst = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    worst = std::max(worst, std::abs(g[i] - w[i]) / (atol + rtol * std::abs(w[i])));
  return worst;
}

inline double ref(const std::string& name) { return fixture().get<double>(name).data()[0]; }

inline bool is_key_bias(const std::string& name) {
  return name.find("qkv.bias") != std::string::npos;
}

/// test_golden's f32 criterion, on either device: the losses of the ten fixture steps to 1e-4, then
/// every weight to 1e-5 + 1e-4 relative. The key bias's gradient is zero analytically (softmax
/// ignores q.b_k); in f32 its rounding noise is what AdamW normalises, so only its query and value
/// thirds are comparable.
template <class D, class Learner, class Model>
void check_ten_f32_steps(Learner& learner, Model& s) {
  const auto losses = fixture().get<double>("steps10.loss");  // [10, 4]
  const auto views = fixture_views<float, D>();
  for (index_t k = 0; k < 10; ++k) {
    CAPTURE(k);
    const auto res = learner.step(views, fixture_drop<float, D>(k));
    CHECK(res.total == doctest::Approx(losses(k, 0)).epsilon(1e-4));
  }
  for (auto& [name, p] : nn::named_parameters(s)) {
    CAPTURE(name);
    const auto want = fixture().get<double>("steps10.param." + name);
    if (is_key_bias(name)) {
      for (index_t part : {0, 2})
        CHECK(excess(p.value().narrow(0, 32 * part, 32).contiguous(), want.narrow(0, 32 * part, 32),
                     1e-5, 1e-4) <= 1);
    } else {
      CHECK(excess(p.value(), want, 1e-5, 1e-4) <= 1);
    }
  }
}

/// The FLSL step with the backbones under autocast bf16 (nn/autocast.hpp; f32 master weights, the
/// head and the objective f32) against the f64 reference: the first step's loss terms and
/// gradients, then ten learner steps' losses and weights. Each bf16 rounding moves a value by up
/// to 2^-9 relative; the bounds are the errors measured on the CPU (in the comments and the
/// MESSAGEs) times about three.
template <class D>
void check_autocast_bf16() {
  auto rel_max = [](const std::vector<double>& g, const std::vector<double>& w) {
    REQUIRE(g.size() == w.size());
    double e = 0, m = 0;
    for (std::size_t i = 0; i < g.size(); ++i) {
      e = std::max(e, std::abs(g[i] - w[i]));
      m = std::max(m, std::abs(w[i]));
    }
    return e / std::max(m, 1e-30);  // max |g - w| / max |w|
  };
  nn::model<tiny_net, float, D> s(0), t(0);
  load_init(s);
  flsl_loss_params lp = fixture_loss();
  lp.autocast = nn::autocast::bf16;
  auto r = flsl_loss(s, s, fixture_views<float, D>(), 0.04, lp, fixture_drop<float, D>(0));
  double worst_loss = 0;
  const std::pair<const Var<float, D>*, const char*> terms[] = {{&r.total, "step1.loss"},
                                                                {&r.ms, "step1.loss_ms"},
                                                                {&r.km, "step1.loss_km"},
                                                                {&r.vmr, "step1.loss_vmr"}};
  for (const auto& [got, key] : terms) {
    CAPTURE(key);
    const double e = std::abs(double(got->value().item()) - ref(key)) / std::abs(ref(key));
    worst_loss = std::max(worst_loss, e);
  }
  r.total.backward();
  double worst_grad = 0, dot = 0, na = 0, nb = 0;
  for (auto& [name, p] : nn::named_parameters(s)) {
    CAPTURE(name);
    const auto want = fixture().get<double>("step1.grad." + name);
    const auto w = want.contiguous().to_vector();
    const auto g = p.grad().template to<cpu>().template to<double>().to_vector();
    worst_grad = std::max(worst_grad, rel_max(g, w));
    for (std::size_t i = 0; i < g.size(); ++i)
      dot += g[i] * w[i], na += g[i] * g[i], nb += w[i] * w[i];
  }
  MESSAGE("first step: worst loss term error ", worst_loss, ", worst per-tensor gradient error ",
          worst_grad, ", gradient cosine ", dot / std::sqrt(na * nb));
  CHECK(worst_loss < 1.5e-3);  // measured 4.5e-4
  CHECK(worst_loss > 1e-5);    // f32's tolerance: the bf16 path did run
  CHECK(worst_grad < 4e-2);    // measured 1.2e-2 (of each tensor's largest element)
  CHECK(dot / std::sqrt(na * nb) > 0.9999);
  nn::zero_grad(s);
  flsl_learner<nn::model<tiny_net, float, D>, float, D> learner(s, t, fixture_recipe(), lp);
  learner.sync_teacher();
  const auto losses = fixture().get<double>("steps10.loss");  // [10, 4]
  const auto views = fixture_views<float, D>();
  double worst_step = 0;
  for (index_t k = 0; k < 10; ++k) {
    const auto res = learner.step(views, fixture_drop<float, D>(k));
    worst_step = std::max(worst_step, std::abs(res.total - losses(k, 0)) / std::abs(losses(k, 0)));
  }
  double worst_weight = 0;
  for (auto& [name, p] : nn::named_parameters(s)) {
    const auto want = fixture().get<double>("steps10.param." + name);
    const auto w = want.contiguous().to_vector();
    const auto g = p.value().template to<cpu>().template to<double>().to_vector();
    if (!is_key_bias(name)) worst_weight = std::max(worst_weight, rel_max(g, w));
  }
  MESSAGE("ten steps: worst loss error ", worst_step, ", worst per-tensor weight error ",
          worst_weight);
  CHECK(worst_step < 1e-2);    // measured 2.8e-3
  CHECK(worst_weight < 4e-2);  // measured 1.4e-2 (the key bias, whose gradient is 0, left out)
}

}  // namespace flsl_test
