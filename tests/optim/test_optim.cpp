// Optimisation (FLSL_SPEC.md §4): schedules against the PyTorch fixture, AdamW against torch's
// algorithm, per-tensor clipping, last-layer freezing and the EMA teacher update.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <flsl/io/safetensors.hpp>
#include <flsl/optim/adamw.hpp>
#include <flsl/optim/schedule.hpp>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

using namespace flsl;

namespace {

const std::string fixture_path = std::string(FLSL_FIXTURE_DIR) + "/flsl_tiny.safetensors";

/// The fixture's recipe, read from its "config" metadata (tools/make_flsl_fixtures.py CFG).
optim::recipe fixture_recipe(const io::safetensors_file& f) {
  const auto cfg = nlohmann::json::parse(f.metadata("config"));
  optim::recipe r;
  r.epochs = cfg.at("epochs").get<index_t>();
  r.iters_per_epoch = cfg.at("iters_per_epoch").get<index_t>();
  r.total_batch = cfg.at("batch_size").get<index_t>();
  r.lr = cfg.at("base_lr").get<double>();
  r.min_lr = cfg.at("min_lr").get<double>();
  r.warmup_epochs = cfg.at("warmup_epochs").get<index_t>();
  r.weight_decay = cfg.at("weight_decay").get<double>();
  r.weight_decay_end = cfg.at("weight_decay_end").get<double>();
  r.momentum_teacher = cfg.at("momentum_teacher").get<double>();
  r.momentum_teacher_end = cfg.at("momentum_teacher_end").get<double>();
  r.warmup_teacher_temp = cfg.at("warmup_teacher_temp").get<double>();
  r.teacher_temp = cfg.at("teacher_temp").get<double>();
  r.warmup_teacher_temp_epochs = cfg.at("warmup_teacher_temp_epochs").get<index_t>();
  r.freeze_last_layer = cfg.at("freeze_last_layer").get<index_t>();
  r.b_sa = cfg.at("b_sa").get<double>();
  r.b_ca = cfg.at("b_ca").get<double>();
  r.coef_ms = cfg.at("coef_ms").get<double>();
  return r;
}

/// |a - b| within `ulps` units in the last place of `scale` (default: of b).
bool within_ulps(double a, double b, double ulps, double scale = 0) {
  const double mag = std::max({std::abs(scale), std::abs(b), std::numeric_limits<double>::min()});
  return std::abs(a - b) <= ulps * mag * std::numeric_limits<double>::epsilon();
}

/// Sets the accumulated gradient of a leaf (as a backward pass would).
template <class T>
void set_grad(const Var<T>& v, const Tensor<T>& g) {
  v.node()->grad = g.clone();
}

Var<double> param(const Tensor<double>& t) { return Var<double>(t.clone(), true); }

/// A tiny module with timm-like names, including a head's last layer.
struct tiny_model {
  using var_type = Var<double>;
  Var<double> w, b, last;
  explicit tiny_model(std::uint64_t seed)
      : w(Tensor<double>::randn({3, 4}, seed), true),
        b(Tensor<double>::randn({4}, seed + 1), true),
        last(Tensor<double>::randn({2, 3}, seed + 2), true) {}
  template <class F>
  void for_each_parameter(F&& f, std::string_view prefix) {
    f(nn::join_name(prefix, "blocks.0.fc.weight"), w);
    f(nn::join_name(prefix, "blocks.0.fc.bias"), b);
    f(nn::join_name(prefix, "head.last_layer.weight_v"), last);
  }
};

bool same_values(const Tensor<double>& a, const Tensor<double>& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

}  // namespace

// ---- schedules ------------------------------------------------------------------------------

TEST_CASE("schedules equal the fixture's schedule arrays (DINO cosine_scheduler semantics)") {
  const io::safetensors_file f(fixture_path);
  const optim::schedules s(fixture_recipe(f));
  const auto lr = f.get<double>("schedule.lr").to_vector();
  const auto wd = f.get<double>("schedule.wd").to_vector();
  const auto mom = f.get<double>("schedule.momentum").to_vector();
  const auto tt = f.get<double>("schedule.teacher_temp").to_vector();
  const auto epoch = f.get<std::int64_t>("schedule.epoch").to_vector();
  const auto frozen = f.get<std::int64_t>("schedule.last_layer_frozen").to_vector();
  REQUIRE(index_t(lr.size()) == s.total_iterations());
  for (index_t k = 0; k < s.total_iterations(); ++k) {
    CAPTURE(k);
    const auto v = s.at(k);
    const std::size_t i = std::size_t(k);
    // numpy's (SVML) cos differs from libm's by up to an ulp of cos, and the compiler may fuse a
    // multiply-add: allow 4 ulps of the schedule's scale max(|base|, |final|). Near the end of the
    // lr cosine, 1 + cos(.) is small and one ulp of cos is several ulps of the value.
    CHECK(within_ulps(v.lr, lr[i], 4, s.lr().base));
    CHECK(within_ulps(v.weight_decay, wd[i], 4, 0.4));
    CHECK(within_ulps(v.momentum, mom[i], 4, 1.0));
    CHECK(std::abs(v.lr - lr[i]) <= 1e-15);
    CHECK(std::abs(v.weight_decay - wd[i]) <= 1e-15);
    CHECK(std::abs(v.momentum - mom[i]) <= 1e-15);
    CHECK(v.teacher_temp == tt[i]);  // linspace values: exact
    CHECK(v.epoch == epoch[i]);
    CHECK(v.last_layer_frozen == (frozen[i] != 0));
    CHECK(v.b_sa == s.config().b_sa);  // no start values: constant, bit-exact
    CHECK(v.b_ca == s.config().b_ca);
    CHECK(v.coef_ms == s.config().coef_ms);
  }
  // The README's spot values: lr[0] = 0, lr[1] = lr[2] = peak, wd[0] = 0.03999999999999998.
  CHECK(s.at(0).lr == 0.0);
  CHECK(s.at(1).lr == 0.00390625);
  CHECK(s.at(2).lr == 0.00390625);
  CHECK(s.at(0).weight_decay == doctest::Approx(0.04).epsilon(1e-15));
}

TEST_CASE("the whole-array cosine_scheduler equals the on-demand values") {
  const auto arr = optim::cosine_scheduler(0.1, 1e-6, 7, 3, 2, 0.01);
  const auto sch = optim::cosine_schedule::dino(0.1, 1e-6, 7, 3, 2, 0.01);
  REQUIRE(arr.size() == 21);
  for (index_t i = 0; i < 21; ++i) CHECK(arr[std::size_t(i)] == sch(i));
  // Warm-up: np.linspace(0.01, 0.1, 6) including its endpoint, then the cosine from base.
  CHECK(arr[0] == 0.01);
  CHECK(arr[5] == 0.1);
  CHECK(arr[6] == 0.1);
  CHECK(arr[1] == 1 * ((0.1 - 0.01) / 5) + 0.01);
  CHECK(arr[7] == 1e-6 + 0.5 * (0.1 - 1e-6) * (1 + std::cos(std::numbers::pi * 1 / 15)));
  CHECK(optim::linspace_at(3.0, 5.0, 1, 0) == 3.0);  // np.linspace(3, 5, 1) == [3]
  CHECK_THROWS_WITH_AS(sch(21), doctest::Contains("out of range"), flsl::error);
  CHECK_THROWS_AS(optim::cosine_scheduler(1, 0, 2, 3, 3), flsl::error);  // warm-up > epochs
}

TEST_CASE("schedules hit their start and end values") {
  optim::recipe r;
  r.epochs = 100;
  r.iters_per_epoch = 50;
  r.total_batch = 512;
  const optim::schedules s(r);
  const index_t n = s.total_iterations(), warm = 10 * 50, T = n - warm;
  CHECK(r.resolved_warmup_epochs() == 10);
  CHECK(r.peak_lr() == 5e-4 * 512 / 256);
  CHECK(s.at(0).lr == 0.0);
  CHECK(s.at(warm - 1).lr == r.peak_lr());  // the linspace endpoint
  CHECK(s.at(warm).lr == r.peak_lr());      // cos(0) = 1
  CHECK(s.at(0).weight_decay == doctest::Approx(0.04).epsilon(1e-15));
  CHECK(s.at(0).momentum == doctest::Approx(0.996).epsilon(1e-15));
  // DINO's cosine stops one step short of its final value: v(T-1) - final = (base - final) *
  // (1 + cos(pi (T-1) / T)) / 2 ~ (base - final) (pi / T)^2 / 4.
  const double tail = std::pow(std::numbers::pi / double(T), 2) / 4;
  CHECK(s.at(n - 1).lr - 1e-6 == doctest::Approx((r.peak_lr() - 1e-6) * tail).epsilon(1e-3));
  CHECK(s.at(n - 1).weight_decay == doctest::Approx(0.4).epsilon(1e-6));
  CHECK(s.at(n - 1).momentum == doctest::Approx(1.0).epsilon(1e-9));
  // Teacher temperature: 0.04 at epoch 0, 0.07 from epoch 29 (linspace endpoint) on.
  CHECK(s.at(0).teacher_temp == 0.04);
  CHECK(s.at(29 * 50).teacher_temp == 0.07);
  CHECK(s.at(28 * 50).teacher_temp < 0.07);
  CHECK(s.at(n - 1).teacher_temp == 0.07);
  CHECK(s.at(49).last_layer_frozen);
  CHECK_FALSE(s.at(50).last_layer_frozen);
  // Monotone where they should be.
  for (index_t i = 1; i < n; ++i) {
    if (i < warm) CHECK(s.at(i).lr > s.at(i - 1).lr);
    if (i > warm) CHECK(s.at(i).lr <= s.at(i - 1).lr);
    CHECK(s.at(i).weight_decay >= s.at(i - 1).weight_decay);
  }
}

TEST_CASE(
    "optional start values give cosine schedules for b_sa, b_ca and u (a start of 0 counts)") {
  optim::recipe r;
  r.epochs = 4;
  r.iters_per_epoch = 5;
  r.total_batch = 8;
  r.start_intraview = 0.0;  // the authors' `x or default` drops this; we must not
  r.b_sa_start = 0.001;
  r.b_ca_start = 0.05;
  const optim::schedules s(r);
  CHECK(s.at(0).coef_ms == 0.0);
  CHECK(s.at(0).b_sa == doctest::Approx(0.001).epsilon(1e-15));
  CHECK(s.at(0).b_ca == doctest::Approx(0.05).epsilon(1e-15));
  CHECK(s.at(19).coef_ms == doctest::Approx(0.03).epsilon(0.01));
  CHECK(s.at(19).b_sa == doctest::Approx(r.b_sa).epsilon(0.01));
  CHECK(s.at(10).coef_ms == doctest::Approx(0.015).epsilon(1e-12));  // half way: cos(pi/2) = 0
  CHECK(r.b_sa == 0.1 / std::sqrt(384.0));
  CHECK(optim::recipe{.epochs = 5}.resolved_warmup_epochs() == 0);
  CHECK(optim::recipe{.epochs = 300}.resolved_warmup_epochs() == 30);
  CHECK_THROWS_AS(optim::schedules(optim::recipe{}), flsl::error);
}

// ---- AdamW -----------------------------------------------------------------------------------

TEST_CASE("AdamW matches a hand-computed two-step example (torch.optim.AdamW, float64)") {
  // Reference values: torch 1.13 torch.optim.AdamW(foreach=False) in float64, identical to the
  // README's formula evaluated by hand in Python floats. For w[0,0] at step 1:
  //   p = 0.5 * (1 - 0.01 * 0.05) = 0.49975;  m = 0.1 * 0.1 = 0.01;  v = 0.001 * 0.01 = 1e-5
  //   p += (-(0.01 / 0.1) * 0.01) / (sqrt(1e-5) / sqrt(0.001) + 1e-8) = -0.001 / (0.1 + 1e-8)
  //   -> 0.48975000099999993
  auto w = param(Tensor<double>::from({0.5, -1.0, 2.0, 0.25}, {2, 2}));
  auto b = param(Tensor<double>::from({0.1, -0.2}));
  optim::adamw<double> opt(optim::named_vars<double>{{"w", w}, {"b", b}});
  set_grad(w, Tensor<double>::from({0.1, -0.2, 0.3, 0.0}, {2, 2}));
  set_grad(b, Tensor<double>::from({0.5, -0.05}));
  opt.step(0.01, 0.05);
  const std::vector<double> w1{0.48975000099999993, -0.9895000005000001, 1.9890000003333335,
                               0.249875};
  const std::vector<double> b1{0.0900000002, -0.1900000019999996};
  for (std::size_t i = 0; i < 4; ++i) CHECK(within_ulps(w.value().to_vector()[i], w1[i], 2));
  for (std::size_t i = 0; i < 2; ++i) CHECK(within_ulps(b.value().to_vector()[i], b1[i], 2));

  set_grad(w, Tensor<double>::from({-0.3, 0.1, 0.2, 0.4}, {2, 2}));
  set_grad(b, Tensor<double>::from({0.25, 0.1}));
  opt.step(0.02, 0.1);
  const std::vector<double> w2{0.49865429722201327, -0.9821942600427352, 1.9656149585320208,
                               0.234492514054713};
  const std::vector<double> b2{0.07135640789549247, -0.19732207161467874};
  const std::vector<double> m2{-0.020999999999999994, -0.008, 0.046999999999999986,
                               0.039999999999999994};
  const std::vector<double> v2{9.999000000000008e-05, 4.996000000000006e-05, 0.00012991000000000012,
                               0.00016000000000000018};
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(within_ulps(w.value().to_vector()[i], w2[i], 4));
    CHECK(within_ulps(opt.state("w").exp_avg.to_vector()[i], m2[i], 2));
    CHECK(within_ulps(opt.state("w").exp_avg_sq.to_vector()[i], v2[i], 2));
  }
  for (std::size_t i = 0; i < 2; ++i) CHECK(within_ulps(b.value().to_vector()[i], b2[i], 4));
  CHECK(opt.step_count("w") == 2);
  CHECK(opt.step_count("b") == 2);
}

TEST_CASE("AdamW with a constant gradient follows the closed form p -= lr * g / (|g| + eps)") {
  // With m0 = v0 = 0 and a constant g, m_t = (1 - b1^t) g and v_t = (1 - b2^t) g^2, so the bias
  // corrections cancel exactly (in real arithmetic) and every step moves by lr * g / (|g| + eps)
  // after the decay.
  const auto p0 = Tensor<double>::randn({4, 5}, 11);
  const auto g = Tensor<double>::randn({4, 5}, 12, 0, 0.0, 0.3);
  auto p = param(p0);
  optim::adamw<double> opt(optim::named_vars<double>{{"p", p}});
  auto expect = p0.to_vector();
  const auto gv = g.to_vector();
  const double lrs[] = {0.0, 0.1, 0.05, 0.02, 0.3}, wds[] = {0.04, 0.1, 0.2, 0.3, 0.4};
  for (int t = 0; t < 5; ++t) {
    set_grad(p, g);
    opt.step(lrs[t], wds[t]);
    for (std::size_t i = 0; i < expect.size(); ++i)
      expect[i] = expect[i] * (1 - lrs[t] * wds[t]) - lrs[t] * gv[i] / (std::abs(gv[i]) + 1e-8);
    const auto got = p.value().to_vector();
    for (std::size_t i = 0; i < expect.size(); ++i)
      CHECK(got[i] == doctest::Approx(expect[i]).epsilon(1e-13));
  }
  // lr = 0 at the first step (DINO's warm-up starts at 0): the parameter did not move, the state
  // did.
  CHECK(opt.step_count("p") == 5);
}

TEST_CASE("AdamW decays only tensors of rank >= 2") {
  auto w = param(Tensor<double>::randn({2, 3}, 1));
  auto conv = param(Tensor<double>::randn({2, 1, 2, 2}, 2));
  auto bias = param(Tensor<double>::randn({3}, 3));
  auto scale = param(Tensor<double>::randn({}, 4));
  const auto w0 = w.value().clone(), c0 = conv.value().clone(), b0 = bias.value().clone(),
             s0 = scale.value().clone();
  optim::adamw<double> opt(
      optim::named_vars<double>{{"w", w}, {"conv", conv}, {"bias", bias}, {"scale", scale}});
  CHECK(opt.state("w").decay);
  CHECK(opt.state("conv").decay);
  CHECK_FALSE(opt.state("bias").decay);
  CHECK_FALSE(opt.state("scale").decay);
  // Zero gradients: the Adam update is 0 / (0 + eps) = 0, only the decay moves a parameter.
  for (auto* v : {&w, &conv, &bias, &scale}) set_grad(*v, Tensor<double>::zeros(v->shape()));
  opt.step(0.1, 0.5);
  CHECK(same_values(w.value(), Tensor<double>(w0 * (1 - 0.1 * 0.5))));
  CHECK(same_values(conv.value(), Tensor<double>(c0 * (1 - 0.1 * 0.5))));
  CHECK(same_values(bias.value(), b0));
  CHECK(same_values(scale.value(), s0));
}

TEST_CASE("a parameter without gradient is skipped: no decay, no moments, no step count") {
  auto a = param(Tensor<double>::randn({3, 2}, 5));
  auto frozen = param(Tensor<double>::randn({2, 3}, 6));
  const auto f0 = frozen.value().clone();
  optim::adamw<double> opt(
      optim::named_vars<double>{{"a", a}, {"head.last_layer.weight_v", frozen}});
  const auto g = Tensor<double>::randn({2, 3}, 7);
  for (int it = 0; it < 2; ++it) {  // two frozen iterations, as the fixture's first epoch
    set_grad(a, Tensor<double>::randn({3, 2}, 8 + std::uint64_t(it)));
    set_grad(frozen, g);
    optim::cancel_last_layer_gradients(
        optim::named_vars<double>{{"a", a}, {"head.last_layer.weight_v", frozen}},
        /*epoch=*/0, /*freeze_epochs=*/1);
    CHECK_FALSE(frozen.grad().defined());
    opt.step(0.1, 0.4);
  }
  CHECK(same_values(frozen.value(), f0));  // not even decayed
  CHECK(opt.step_count("head.last_layer.weight_v") == 0);
  CHECK(opt.step_count("a") == 2);
  CHECK(sum(abs(opt.state("head.last_layer.weight_v").exp_avg)).item() == 0.0);
  CHECK(sum(abs(opt.state("head.last_layer.weight_v").exp_avg_sq)).item() == 0.0);
  // Its first real step uses the bias corrections of t = 1: p(1 - lr wd) - lr g / (|g| + eps).
  set_grad(a, Tensor<double>::randn({3, 2}, 10));
  set_grad(frozen, g);
  opt.step(0.1, 0.4);
  CHECK(opt.step_count("head.last_layer.weight_v") == 1);
  CHECK(opt.step_count("a") == 3);
  const auto got = frozen.value().to_vector(), fv = f0.to_vector(), gv = g.to_vector();
  for (std::size_t i = 0; i < got.size(); ++i)
    CHECK(got[i] == doctest::Approx(fv[i] * (1 - 0.04) - 0.1 * gv[i] / (std::abs(gv[i]) + 1e-8))
                        .epsilon(1e-14));
}

TEST_CASE("AdamW state is enumerable by name and restores into a new optimizer bit-exactly") {
  tiny_model net(1);
  optim::adamw<double> opt(net);
  auto params = nn::named_parameters(net);
  auto run_step = [&](optim::adamw<double>& o, tiny_model& m, std::uint64_t seed) {
    std::uint64_t k = 0;
    m.for_each_parameter(
        [&](const std::string&, Var<double>& v) {
          set_grad(v, Tensor<double>::randn(v.shape(), seed, 1000 * k++));
        },
        "");
    o.step(0.01, 0.1);
  };
  for (std::uint64_t s = 0; s < 3; ++s) run_step(opt, net, s);
  std::vector<std::string> names;
  for (const auto& [n, t] : opt.state_tensors()) names.push_back(n);
  CHECK(names == std::vector<std::string>{
                     "exp_avg.blocks.0.fc.weight", "exp_avg_sq.blocks.0.fc.weight",
                     "exp_avg.blocks.0.fc.bias", "exp_avg_sq.blocks.0.fc.bias",
                     "exp_avg.head.last_layer.weight_v", "exp_avg_sq.head.last_layer.weight_v"});
  CHECK(opt.step_counts().front() ==
        std::pair<std::string, std::int64_t>{"step.blocks.0.fc.weight", 3});

  // Checkpoint through safetensors: parameters, moments, step counts.
  const auto dir =
      std::filesystem::temp_directory_path() / ("flsl_optim_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::vector<io::named_tensor> ckpt;
  for (const auto& [n, v] : params) ckpt.push_back({"param." + n, v.value()});
  for (const auto& [n, t] : opt.state_tensors()) ckpt.push_back({n, t});
  for (const auto& [n, s] : opt.step_counts()) ckpt.push_back({n, Tensor<std::int64_t>::scalar(s)});
  io::save_safetensors(dir / "ckpt.safetensors", ckpt);

  tiny_model net2(99);  // other weights, fresh state
  optim::adamw<double> opt2(net2);
  const io::safetensors_file f(dir / "ckpt.safetensors");
  net2.for_each_parameter(
      [&](const std::string& n, Var<double>& v) {
        v.value().copy_from(f.get<double>("param." + n));
        opt2.set_step_count(n, f.get<std::int64_t>("step." + n).item());
      },
      "");
  for (const auto& [n, t] : opt2.state_tensors()) opt2.load_state_tensor(n, f.get<double>(n));
  std::filesystem::remove_all(dir);

  run_step(opt, net, 7);
  run_step(opt2, net2, 7);
  CHECK(same_values(net.w.value(), net2.w.value()));
  CHECK(same_values(net.b.value(), net2.b.value()));
  CHECK(same_values(net.last.value(), net2.last.value()));
  CHECK(opt2.step_count("blocks.0.fc.bias") == 4);

  CHECK_THROWS_WITH_AS(
      opt2.load_state_tensor("exp_avg.blocks.0.fc.bias", Tensor<double>::zeros({5})),
      doctest::Contains("has shape [4]"), flsl::error);
  CHECK_THROWS_WITH_AS(opt2.load_state_tensor("momentum.x", Tensor<double>::zeros({5})),
                       doctest::Contains("not a state tensor name"), flsl::error);
  CHECK_THROWS_WITH_AS(opt2.step_count("nope"), doctest::Contains("no parameter named 'nope'"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(optim::adamw<double>(optim::named_vars<double>{{"x", net.w}, {"x", net.b}}),
                       doctest::Contains("appears twice"), flsl::error);
}

TEST_CASE("AdamW in float32 follows the float64 reference to float precision") {
  const auto p0 = Tensor<double>::randn({8, 8}, 21);
  auto pd = param(p0);
  auto pf = Var<float>(p0.to<float>(), true);
  optim::adamw<double> od(optim::named_vars<double>{{"p", pd}});
  optim::adamw<float> of(optim::named_vars<float>{{"p", pf}});
  for (std::uint64_t t = 0; t < 4; ++t) {
    const auto g = Tensor<double>::randn({8, 8}, 30 + t);
    set_grad(pd, g);
    set_grad(pf, g.to<float>());
    od.step(0.01, 0.1);
    of.step(0.01, 0.1);
  }
  const auto a = pd.value().to_vector();
  const auto b = pf.value().to_vector();
  for (std::size_t i = 0; i < a.size(); ++i)
    CHECK(double(b[i]) == doctest::Approx(a[i]).epsilon(1e-5));
}

TEST_CASE("an optimizer step, clipping and the EMA allocate no tensor memory") {
  tiny_model student(3), teacher(3);
  const auto sp = nn::named_parameters(student), tp = nn::named_parameters(teacher);
  optim::adamw<double> opt(student);
  for (const auto& [n, v] : sp) set_grad(v, Tensor<double>::randn(v.shape(), 4, 0, 0.0, 10.0));
  std::vector<double> norms(sp.size());
  optim::clip_grad_per_tensor(sp, 3.0, std::span<double>(norms));  // warms the norm scratch up
  const long long before = storage_stats::allocations().load();
  for (int i = 0; i < 3; ++i) {
    optim::clip_grad_per_tensor(sp, 3.0, std::span<double>(norms));
    opt.step(0.01, 0.04);
    optim::ema_update(tp, sp, 0.996);
  }
  CHECK(storage_stats::allocations().load() == before);
}

// ---- clipping, freezing, EMA --------------------------------------------------------------------

TEST_CASE("per-tensor clipping scales only gradients whose norm exceeds the threshold") {
  auto big = param(Tensor<double>::zeros({2, 2}));
  auto at = param(Tensor<double>::zeros({2}));
  auto small = param(Tensor<double>::zeros({3}));
  auto none = param(Tensor<double>::zeros({3}));
  set_grad(big, Tensor<double>::from({3.0, 4.0, 0.0, 0.0}, {2, 2}));  // norm 5
  set_grad(at, Tensor<double>::from({3.0, 0.0}));                     // norm 3: not above
  set_grad(small, Tensor<double>::from({1.0, 0.0, 0.0}));             // norm 1
  const optim::named_vars<double> ps{{"big", big}, {"at", at}, {"small", small}, {"none", none}};
  const auto norms = optim::clip_grad_per_tensor(ps, 3.0);
  CHECK(norms[0] == 5.0);
  CHECK(norms[1] == 3.0);
  CHECK(norms[2] == 1.0);
  CHECK(std::isnan(norms[3]));
  const double coef = 3.0 / (5.0 + 1e-6);
  CHECK(big.grad().to_vector() == std::vector<double>{3.0 * coef, 4.0 * coef, 0.0, 0.0});
  CHECK(at.grad().to_vector() == std::vector<double>{3.0, 0.0});
  CHECK(small.grad().to_vector() == std::vector<double>{1.0, 0.0, 0.0});
  CHECK_FALSE(none.grad().defined());
  // 0 disables clipping; the norms are still reported.
  set_grad(big, Tensor<double>::from({30.0, 40.0, 0.0, 0.0}, {2, 2}));
  CHECK(optim::clip_grad_per_tensor(ps, 0.0)[0] == 50.0);
  CHECK(big.grad().to_vector() == std::vector<double>{30.0, 40.0, 0.0, 0.0});
  CHECK_THROWS_AS(optim::clip_grad_per_tensor(ps, -1.0), flsl::error);
}

TEST_CASE("the last layer's gradients are dropped during the first freeze epochs only") {
  tiny_model net(5);
  const auto ps = nn::named_parameters(net);
  auto fill = [&] {
    for (const auto& [n, v] : ps) set_grad(v, Tensor<double>::ones(v.shape()));
  };
  fill();
  CHECK(optim::cancel_last_layer_gradients(ps, 0, 1) == 1);
  CHECK_FALSE(net.last.grad().defined());
  CHECK(net.w.grad().defined());
  CHECK(net.b.grad().defined());
  fill();
  CHECK(optim::cancel_last_layer_gradients(ps, 1, 1) == 0);  // epoch 1: trained again
  CHECK(net.last.grad().defined());
  CHECK(optim::cancel_last_layer_gradients(ps, 0, 0) == 0);  // freeze_last_layer = 0
  // Any predicate.
  CHECK(optim::cancel_last_layer_gradients(
            ps, [](std::string_view n) { return n.ends_with(".bias"); }, 2, 3) == 1);
  CHECK_FALSE(net.b.grad().defined());
}

TEST_CASE("EMA: m = 1 leaves the teacher unchanged, m = 0 copies the student") {
  tiny_model student(7), teacher(8);
  const auto t0 = teacher.w.value().clone();
  optim::ema_update(teacher, student, 1.0);
  CHECK(same_values(teacher.w.value(), t0));
  optim::ema_update(teacher, student, 0.0);
  CHECK(same_values(teacher.w.value(), student.w.value()));
  CHECK(same_values(teacher.b.value(), student.b.value()));
  CHECK(same_values(teacher.last.value(), student.last.value()));
  // t = t * m + (1 - m) * s elementwise, in torch's order.
  tiny_model t2(9);
  const auto before = t2.b.value().to_vector(), s = student.b.value().to_vector();
  optim::ema_update(t2, student, 0.996);
  const auto after = t2.b.value().to_vector();
  for (std::size_t i = 0; i < after.size(); ++i)
    CHECK(within_ulps(after[i], before[i] * 0.996 + (1 - 0.996) * s[i], 2));  // FMA may differ
}

TEST_CASE("EMA matches parameters by name and refuses mismatched names or shapes") {
  tiny_model student(1), teacher(2);
  auto sp = nn::named_parameters(student);
  auto tp = nn::named_parameters(teacher);
  std::reverse(sp.begin(), sp.end());  // another order: still matched by name
  optim::ema_update(tp, sp, 0.0);
  CHECK(same_values(teacher.w.value(), student.w.value()));
  CHECK(same_values(teacher.last.value(), student.last.value()));

  auto renamed = nn::named_parameters(student);
  renamed[1].first = "blocks.0.fc.bias_other";
  CHECK_THROWS_WITH_AS(optim::ema_update(tp, renamed, 0.5),
                       doctest::Contains("teacher parameter 'blocks.0.fc.bias' has no student"),
                       flsl::error);
  auto reshaped = nn::named_parameters(student);
  reshaped[0].second = Var<double>(Tensor<double>::zeros({4, 3}), true);
  CHECK_THROWS_WITH_AS(
      optim::ema_update(tp, reshaped, 0.5),
      doctest::Contains("'blocks.0.fc.weight' has shape [3, 4] in the teacher and [4, 3]"),
      flsl::error);
  auto extra = nn::named_parameters(student);
  extra.emplace_back("head.last_layer.weight_g", Var<double>(Tensor<double>::ones({2, 1})));
  CHECK_THROWS_WITH_AS(
      optim::ema_update(tp, extra, 0.5),
      doctest::Contains("student parameter 'head.last_layer.weight_g' has no teacher parameter"),
      flsl::error);
  extra.pop_back();
  extra.pop_back();
  CHECK_THROWS_WITH_AS(optim::ema_update(tp, extra, 0.5),
                       doctest::Contains("the teacher has 3 parameters, the student 2"),
                       flsl::error);
  CHECK_THROWS_AS(optim::ema_update(tp, sp, 1.5), flsl::error);
}
