// Properties of the FLSL objective and step that hold without any reference implementation.
#include <doctest/doctest.h>

#include <flsl/flsl.hpp>
#include <flsl/train/flsl_step.hpp>

using namespace flsl;

namespace {
using cfg = nn::vit_config<16, 1, 2, 8, 4, 32>;
using net_t = nn::model<
    nn::backbone_with_head<nn::vision_transformer<cfg>, nn::projection_head<16, 32, 32, 16>>,
    double>;

flsl_views<double> views(std::uint64_t seed) {
  flsl_views<double> v;
  v.teacher = Tensor<double>::randn({2, 3, 32, 32}, seed);
  v.global = Tensor<double>::randn({2, 3, 32, 32}, seed + 1);
  v.local = Tensor<double>::randn({4, 3, 16, 16}, seed + 2);
  v.locals = 2;
  v.query_global = Tensor<std::int64_t>::from({0, 2, 8, 10, 5, 7, 13, 15}, {2, 4});
  v.query_local = Tensor<std::int64_t>::from({0, 1, 2, 3}, {4, 1});
  return v;
}
optim::recipe short_recipe() {
  optim::recipe r;
  r.epochs = 2;
  r.iters_per_epoch = 3;
  r.total_batch = 2;
  r.warmup_epochs = 0;
  r.lr = 0.5;
  return r;
}
}  // namespace

TEST_CASE("L_vmr is 0 for a uniform batch mean and log K for a one-hot one") {
  auto u = Var<double>(Tensor<double>::full({64}, 1.0 / 64));
  CHECK(std::abs(kl_to_uniform(u).value().item()) < 1e-13);  // 64 terms of rounding
  auto one = Tensor<double>::zeros({64});
  one(3) = 1.0;
  CHECK(kl_to_uniform(Var<double>(one)).value().item() == doctest::Approx(std::log(64.0)));
}

TEST_CASE("the loss is the weighted sum of its parts; the teacher gets no gradient") {
  net_t s(1), t(1);
  auto r = flsl_loss(s, t, views(10), 0.04, flsl_loss_params{});
  CHECK(r.total.value().item() == doctest::Approx(0.03 * r.ms.value().item() + r.km.value().item() +
                                                  5.0 * r.vmr.value().item()));
  CHECK(r.ms.value().item() >= 0);
  CHECK(r.ms.value().item() <= 4);
  r.total.backward();
  for (auto& [n, p] : nn::named_parameters(t)) CHECK_FALSE(p.grad().defined());
  int with_grad = 0;
  for (auto& [n, p] : nn::named_parameters(s)) with_grad += p.grad().defined();
  CHECK(with_grad == int(nn::named_parameters(s).size()));
}

TEST_CASE("EMA with momentum 1 leaves the teacher unchanged, momentum 0 copies the student") {
  net_t s(1), t(2);
  const auto before = nn::named_parameters(t)[0].second.value().clone();
  optim::ema_update(t, s, 1.0);
  CHECK(nn::named_parameters(t)[0].second.value().to_vector() == before.to_vector());
  optim::ema_update(t, s, 0.0);
  CHECK(nn::named_parameters(t)[0].second.value().to_vector() ==
        nn::named_parameters(s)[0].second.value().to_vector());
}

TEST_CASE("a step is reproducible from the weights, the optimizer state and the train_state") {
  net_t s1(1), t1(1), s2(1), t2(1);
  flsl_learner<net_t, double> a(s1, t1, short_recipe(), {}, {}, {0, 99});
  flsl_learner<net_t, double> b(s2, t2, short_recipe(), {}, {}, {0, 99});
  a.sync_teacher();
  b.sync_teacher();
  for (int i = 0; i < 3; ++i) {
    const auto ra = a.step(views(20 + i)), rb = b.step(views(20 + i));
    CHECK(ra.total == rb.total);
  }
  auto pa = nn::named_parameters(s1), pb = nn::named_parameters(s2);
  for (std::size_t i = 0; i < pa.size(); ++i)
    CHECK(pa[i].second.value().to_vector() == pb[i].second.value().to_vector());
  CHECK(a.state().iteration == 3);
}

TEST_CASE("a non-finite loss stops the step before any weight changes") {
  net_t s(1), t(1);
  flsl_learner<net_t, double> l(s, t, short_recipe());
  l.sync_teacher();
  auto v = views(30);
  v.global(0, 0, 0, 0) = std::nan("");
  const auto before = nn::named_parameters(s)[2].second.value().clone();
  CHECK_THROWS_WITH_AS(
      l.step(v), doctest::Contains("flsl step 0 (epoch 0): the loss is not finite"), flsl::error);
  CHECK(nn::named_parameters(s)[2].second.value().to_vector() == before.to_vector());
  CHECK(l.state().iteration == 0);
}

TEST_CASE("the last layer is frozen during the first epochs, then trains") {
  net_t s(1), t(1);
  auto r = short_recipe();
  r.freeze_last_layer = 1;
  flsl_learner<net_t, double> l(s, t, r);
  l.sync_teacher();
  const auto v0 = s.head.weight_v.value().clone();
  for (int i = 0; i < 3; ++i) l.step(views(40 + i));  // epoch 0
  CHECK(s.head.weight_v.value().to_vector() == v0.to_vector());
  CHECK(l.optimizer().step_count("head.last_layer.weight_v") == 0);
  l.step(views(50));  // epoch 1
  CHECK(s.head.weight_v.value().to_vector() != v0.to_vector());
}

TEST_CASE("teacher centering subtracts the center before the teacher's softmax") {
  net_t s(1), t(3);
  const auto v = views(40);
  const auto plain = flsl_loss(s, t, v, 0.04, flsl_loss_params{});
  const index_t K = plain.teacher_logits.size(-1);
  auto center = Tensor<double>::randn({K}, 41);
  const auto centered = flsl_loss(s, t, v, 0.04, flsl_loss_params{}, {}, {}, center);
  // the same teacher logits, and L_km = -mean_i sum_k q_ik log p_ik with q from the centred ones
  CHECK(centered.teacher_logits.to_vector() == plain.teacher_logits.to_vector());
  const index_t R = plain.teacher_logits.size(0);
  const auto tl = plain.teacher_logits.to_vector(), sl = plain.student_logits.value().to_vector();
  const auto c = center.to_vector();
  double km = 0;
  for (index_t i = 0; i < R; ++i) {
    double tmax = -1e300, smax = -1e300;
    for (index_t k = 0; k < K; ++k) {
      tmax = std::max(tmax, (tl[i * K + k] - c[k]) / 0.04);
      smax = std::max(smax, sl[i * K + k] / 0.1);
    }
    double tz = 0, sz = 0;
    for (index_t k = 0; k < K; ++k) {
      tz += std::exp((tl[i * K + k] - c[k]) / 0.04 - tmax);
      sz += std::exp(sl[i * K + k] / 0.1 - smax);
    }
    for (index_t k = 0; k < K; ++k) {
      const double q = std::exp((tl[i * K + k] - c[k]) / 0.04 - tmax) / tz;
      km -= q * (sl[i * K + k] / 0.1 - smax - std::log(sz));
    }
  }
  CHECK(centered.km.value().item() == doctest::Approx(km / double(R)).epsilon(1e-12));
  CHECK(std::abs(centered.km.value().item() - plain.km.value().item()) > 1e-3);
  // a center that is the same for every prototype changes nothing
  const auto shifted =
      flsl_loss(s, t, v, 0.04, flsl_loss_params{}, {}, {}, Tensor<double>::full({K}, 2.5));
  CHECK(shifted.km.value().item() == doctest::Approx(plain.km.value().item()).epsilon(1e-12));
  CHECK_THROWS_WITH_AS(
      flsl_loss(s, t, v, 0.04, flsl_loss_params{}, {}, {}, Tensor<double>::zeros({K + 1})),
      doctest::Contains("teacher center of shape"), flsl::error);
}

TEST_CASE(
    "the assignment entropies are the mean entropies of the teacher's q and the student's p") {
  net_t s(1), t(3);
  const auto v = views(50);
  const index_t K = 32;  // the prototypes of net_t's projection head
  const auto center = Tensor<double>::randn({K}, 51);
  const double tau_t = 0.05, tau_s = 0.1;
  const auto r = flsl_loss(s, t, v, tau_t, flsl_loss_params{}, {}, {}, center);
  const index_t R = r.teacher_logits.size(0);
  REQUIRE(r.teacher_logits.size(-1) == K);
  // H of softmax(l / tau) per row, averaged over the rows, from the logits in double
  const auto mean_entropy = [&](const std::vector<double>& l, const std::vector<double>& shift,
                                double tau) {
    double total = 0;
    for (index_t i = 0; i < R; ++i) {
      std::vector<double> a(static_cast<std::size_t>(K));
      double amax = -1e300, z = 0;
      for (index_t k = 0; k < K; ++k) {
        a[std::size_t(k)] = (l[std::size_t(i * K + k)] - shift[std::size_t(k)]) / tau;
        amax = std::max(amax, a[std::size_t(k)]);
      }
      for (double x : a) z += std::exp(x - amax);
      for (double x : a) {
        const double logp = x - amax - std::log(z);
        total -= std::exp(logp) * logp;
      }
    }
    return total / double(R);
  };
  const double h_teacher = mean_entropy(r.teacher_logits.to_vector(), center.to_vector(), tau_t);
  const double h_student = mean_entropy(r.student_logits.value().to_vector(),
                                        std::vector<double>(std::size_t(K), 0.0), tau_s);
  CHECK(r.teacher_entropy.item() == doctest::Approx(h_teacher).epsilon(1e-12));
  CHECK(r.student_entropy.item() == doctest::Approx(h_student).epsilon(1e-12));
  CHECK(h_teacher > 0);
  CHECK(h_student > 0);
  CHECK(h_teacher < std::log(double(K)));
  CHECK(h_student < std::log(double(K)));
  // the centre moves the teacher's entropy, not the student's
  const auto plain = flsl_loss(s, t, v, tau_t, flsl_loss_params{});
  CHECK(std::abs(plain.teacher_entropy.item() - h_teacher) > 1e-3);
  CHECK(plain.student_entropy.item() == doctest::Approx(h_student).epsilon(1e-12));
  // a sharper teacher temperature gives sharper assignments
  CHECK(flsl_loss(s, t, v, 0.01, flsl_loss_params{}).teacher_entropy.item() <
        plain.teacher_entropy.item());
}

TEST_CASE("the learner's teacher center is the EMA of the batch-mean teacher logits") {
  net_t s(1), t(1), s2(1), t2(1);
  flsl_loss_params lp;
  lp.center_teacher = true;
  lp.center_momentum = 0.7;
  lp.coef_vmr = 0;
  flsl_learner<net_t, double> a(s, t, short_recipe(), lp, {}, {0, 5});
  a.sync_teacher();
  const index_t K = a.out_dim();
  REQUIRE(a.teacher_center().to_vector() == std::vector<double>(std::size_t(K), 0.0));
  // the expected center, from the teacher logits of a second learner that steps in lockstep
  flsl_learner<net_t, double> b(s2, t2, short_recipe(), lp, {}, {0, 5});
  b.sync_teacher();
  std::vector<double> expect(std::size_t(K), 0.0);
  for (int i = 0; i < 3; ++i) {
    const auto batch = views(50 + i);
    const auto sched = b.schedules().at(b.state().iteration);
    const auto r = flsl_loss(s2, t2, batch, sched.teacher_temp, lp, b.draw_drop_paths(batch), {},
                             b.teacher_center());
    const auto tl = r.teacher_logits.to_vector();
    const index_t R = r.teacher_logits.size(0);
    for (index_t k = 0; k < K; ++k) {
      double m = 0;
      for (index_t row = 0; row < R; ++row) m += tl[row * K + k];
      expect[std::size_t(k)] = 0.7 * expect[std::size_t(k)] + 0.3 * (m / double(R));
    }
    const auto ra = a.step(batch);
    const auto rb = b.step(batch);
    CHECK(ra.km == rb.km);
    CHECK(ra.km == doctest::Approx(r.km.value().item()).epsilon(1e-12));
    CHECK(ra.teacher_entropy == doctest::Approx(r.teacher_entropy.item()).epsilon(1e-12));
    CHECK(ra.student_entropy == doctest::Approx(r.student_entropy.item()).epsilon(1e-12));
    const auto got = a.teacher_center().to_vector();
    for (index_t k = 0; k < K; ++k)
      CHECK(got[std::size_t(k)] == doctest::Approx(expect[std::size_t(k)]).epsilon(1e-12));
  }
  CHECK_THROWS_WITH_AS(a.set_teacher_center(Tensor<double>::zeros({K + 1})),
                       doctest::Contains("teacher center of shape"), flsl::error);
}

// ---- loss scaling (optim/grad_scaler.hpp) with the fp16 matmul emulation

namespace {
using net_f = nn::model<
    nn::backbone_with_head<nn::vision_transformer<cfg>, nn::projection_head<16, 32, 32, 16>>,
    float>;
flsl_views<float> views_f(std::uint64_t seed) {
  const auto v = views(seed);
  flsl_views<float> f;
  f.teacher = v.teacher.to<float>();
  f.global = v.global.to<float>();
  f.local = v.local.to<float>();
  f.locals = v.locals;
  f.query_global = v.query_global;
  f.query_local = v.query_local;
  return f;
}
template <class N>
std::vector<std::vector<double>> values_of(N& net) {
  std::vector<std::vector<double>> out;
  for (auto& [n, p] : nn::named_parameters(net))
    out.push_back(p.value().template to<double>().to_vector());
  return out;
}
}  // namespace

TEST_CASE("a power-of-two loss scale changes no bit of an exact step") {
  // The backward is linear in its seed and every gradient is divided by the same power of two
  // before clipping, so the scaled and the unscaled steps do the same arithmetic up to exponents.
  net_t s1(1), t1(1), s2(1), t2(1);
  flsl_step_options scaled;
  scaled.loss_scale = {.enabled = true, .dynamic = false, .init_scale = 1024.0};
  flsl_learner<net_t, double> a(s1, t1, short_recipe(), {}, {}, {0, 7});
  flsl_learner<net_t, double> b(s2, t2, short_recipe(), {}, scaled, {0, 7});
  a.sync_teacher();
  b.sync_teacher();
  for (int i = 0; i < 3; ++i) {
    const auto ra = a.step(views(60 + i)), rb = b.step(views(60 + i));
    CHECK(rb.loss_scale == 1024.0);
    CHECK_FALSE(rb.skipped);
    CHECK(ra.grad_norms == rb.grad_norms);
  }
  CHECK(values_of(s1) == values_of(s2));
  CHECK(values_of(t1) == values_of(t2));
}

TEST_CASE("fp16 products: a step whose gradients overflow is skipped and the scale backs off") {
  matmul_precision_scope fp16(matmul_precision::fp16);
  net_f s(1), t(1);
  flsl_step_options o;
  o.loss_scale = {.enabled = true, .init_scale = std::ldexp(1.0, 40), .growth_interval = 2};
  auto recipe = short_recipe();
  recipe.epochs = 20;  // room for the halvings
  flsl_learner<net_f, float> l(s, t, recipe, {}, o);
  l.sync_teacher();
  const auto w0 = values_of(s);
  const auto r = l.step(views_f(70));  // dL/dlogits * 2^40 is far past fp16's 65504
  CHECK(std::isfinite(r.total));
  CHECK(r.skipped);
  CHECK(r.loss_scale == std::ldexp(1.0, 40));
  CHECK(l.loss_scaler().scale() == std::ldexp(1.0, 39));
  CHECK(values_of(s) == w0);  // no update, and the moments did not move either
  CHECK(l.optimizer().step_count("blocks.0.mlp.fc2.weight") == 0);
  CHECK(l.state().iteration == 1);  // the schedules go on
  // it keeps halving until the gradients fit, then trains, and grows after 2 good steps
  int steps = 1;
  while (l.step(views_f(70 + steps)).skipped) ++steps;
  ++steps;
  CHECK(steps < 40);
  CHECK(values_of(s) != w0);
  const double fit = l.loss_scaler().scale();
  CHECK(fit <= std::ldexp(1.0, 39));
  CHECK(l.loss_scaler().state().good_steps == 1);
  const auto r2 = l.step(views_f(200));
  if (!r2.skipped) CHECK(l.loss_scaler().scale() == 2 * fit);
}

TEST_CASE("fp16 products lose small gradients without a loss scale and keep them with one") {
  // y = x W^T with upstream gradients of 1e-9: in fp16 they flush to 0 (the smallest subnormal is
  // 2^-24 ~ 6e-8), so dW = dY^T x is 0. Scaled by 2^16 they are normal halves, and dW / 2^16 is
  // the exact gradient to fp16's input rounding.
  const auto x = Tensor<float>::randn({8, 16}, 80);
  const auto w0 = Tensor<float>::randn({4, 16}, 81);
  auto grad = [&](double scale, matmul_precision p) {
    matmul_precision_scope sc(p);
    optim::named_vars<float> params{{"w", Var<float>(w0.clone(), true)}};
    auto y = linear(Var<float>(x), params[0].second);
    Var<float> loss = sum(y) * 1e-9f;
    loss.backward(Tensor<float>::full({}, float(scale)));
    optim::grad_scaler gs({.enabled = true, .dynamic = false, .init_scale = scale});
    gs.unscale(params);
    return params[0].second.grad().to<double>().to_vector();
  };
  const auto exact = grad(1.0, matmul_precision::exact);
  const auto lost = grad(1.0, matmul_precision::fp16);
  const auto kept = grad(65536.0, matmul_precision::fp16);
  CHECK(lost == std::vector<double>(exact.size(), 0.0));
  double worst = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    CHECK(exact[i] != 0.0);
    worst = std::max(worst, std::abs(kept[i] - exact[i]) / (8e-9 * 4.0));
  }
  CHECK(worst < 2e-3);  // of sum_i |x_i| 1e-9 with |x| ~ 4 at most: fp16's relative 2^-11, twice
}

TEST_CASE("the dynamic loss scale: growth after an interval, backoff, limits and bad states") {
  optim::grad_scaler off;
  CHECK_FALSE(off.enabled());
  CHECK(off.scale() == 1.0);
  off.update(false);
  CHECK(off.scale() == 1.0);
  optim::grad_scaler g({.enabled = true, .init_scale = 8.0, .growth_interval = 3});
  g.update(true);
  g.update(true);
  CHECK(g.scale() == 8.0);
  g.update(true);
  CHECK(g.scale() == 16.0);
  CHECK(g.state().good_steps == 0);
  g.update(true);
  g.update(false);
  CHECK(g.scale() == 8.0);
  CHECK(g.state().good_steps == 0);
  g.set_state({.scale = 4.0, .good_steps = 2});
  g.update(true);
  CHECK(g.scale() == 8.0);
  optim::grad_scaler fixed({.enabled = true, .dynamic = false, .init_scale = 32.0});
  fixed.update(false);
  CHECK(fixed.scale() == 32.0);
  CHECK_THROWS_WITH_AS(g.set_state({.scale = 0.0}), doctest::Contains("invalid state"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(optim::grad_scaler({.enabled = true, .init_scale = -1.0}),
                       doctest::Contains("positive number"), flsl::error);
  optim::grad_scaler sinking({.enabled = true, .init_scale = 1.0});
  for (int i = 0; i < 20; ++i) sinking.update(false);
  CHECK_THROWS_WITH_AS(sinking.update(false), doctest::Contains("not an fp16 overflow"),
                       flsl::error);
}
