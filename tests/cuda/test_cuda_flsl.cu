// The FLSL objective on Var<float, cuda> against the CPU: each op of the loss and of the
// projection head (token gathers, l2_normalize, cosine_similarity, weight_norm, softmax /
// log_softmax, soft cross-entropy, entropy / KL to uniform, mean-shift attention), forward and
// backward through Var from the same inputs with the same random upstream gradient; the
// projection head as a module; the loss on given student tokens (the three terms and the
// gradients into the tokens and the head's parameters); and the whole flsl_loss with backbone and
// head (every intermediate, every student parameter gradient). Without a device each GPU test
// case prints "skipped: no CUDA device" and passes; test_cuda_main.cpp then exits 77 (CTest:
// Skipped). None of these comparisons has run on a GPU yet.
//
// Tolerances are relative to the largest |value| of the CPU tensor compared (check_rel_max:
// |cuda - cpu| <= rel * max |cpu| for every element), f32 on both devices, stated per check:
// - 1e-5 for one row op or gather (gathers and their scatter-adds are exact: same adds in the
//   same order, so their 1e-5 is slack; row ops sum <= 4096 terms in different orders, ~sqrt(K) u
//   of the terms' magnitudes, below 4e-6 of the largest element; exp / log within 2 ulp);
// - 1e-4 for mean-shift attention, the soft cross-entropy at temperature 0.1 and the head: as
//   for the attention kernels, exp amplifies the rounding of the logits (scores up to ~10 here),
//   and the loss divides the logits by tau (10x), so a 1e-6 difference of a logit moves the
//   probabilities by ~1e-5 of themselves;
// - 1e-4 for the loss values and 2e-4 for the gradients of the whole objective: the backbone
//   alone agrees to 1e-4 (test_cuda_vit); the teacher's assignment divides its logits by
//   tau_t = 0.04 (25x) and the gradient crosses the head twice (soft-CE and VMR paths), so the
//   gradients get twice the backbone's margin.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <flsl/autograd/ops.hpp>
#include <flsl/backend/cuda.cuh>
#include <flsl/nn/vit.hpp>
#include <flsl/objective/flsl_loss.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_test_support.cuh"

using namespace flsl;

namespace {

/// |gpu - ref| <= rel * max |ref| + abs_floor for every element; NaNs at the same places.
void check_rel_max(const Tensor<float, cuda>& gpu, const Tensor<float, cpu>& ref, double rel,
                   const std::string& what, double abs_floor = 1e-30) {
  INFO(what);
  REQUIRE(gpu.defined());
  REQUIRE(ref.defined());
  REQUIRE(gpu.shape() == ref.shape());
  const auto g = gpu.to<cpu>().to_vector();
  const auto r = ref.contiguous().to_vector();
  double max_ref = 0;
  for (float v : r) max_ref = std::max(max_ref, std::abs(double(v)));
  const double tol = rel * max_ref + abs_floor;
  double worst = 0;
  std::size_t at = 0, nan_mismatch = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i]) || std::isnan(r[i])) {
      nan_mismatch += std::isnan(g[i]) != std::isnan(r[i]);
      continue;
    }
    const double e = std::abs(double(g[i]) - double(r[i]));
    if (e > worst) worst = e, at = i;
  }
  CHECK_MESSAGE(nan_mismatch == 0, nan_mismatch, " NaN mismatches");
  INFO("worst element ", at, " of ", g.size(), ": cuda ", g.empty() ? 0.0f : g[at], " cpu ",
       r.empty() ? 0.0f : r[at], ", |difference| ", worst, " > ", tol, " (", rel, " of max |cpu| ",
       max_ref, ")");
  CHECK(worst <= tol);
}

/// The device of a Var type.
template <class V>
struct var_device;
template <class T, class D>
struct var_device<Var<T, D>> {
  using type = D;
};
template <class V>
using device_of = typename var_device<std::remove_cvref_t<V>>::type;

/// Runs `f` (a generic lambda over a std::vector of Vars returning a Var) on both devices from the
/// same inputs, back-propagates the same random upstream gradient, and compares the output and
/// the gradient of every input that requires one.
template <class F>
void check_op(const std::string& name, F&& f, const std::vector<Tensor<float, cpu>>& inputs,
              const std::vector<bool>& trained, double rel, std::uint64_t seed = 1000) {
  REQUIRE(inputs.size() == trained.size());
  std::vector<Var<float, cpu>> vc;
  std::vector<Var<float, cuda>> vg;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    vc.emplace_back(inputs[i], trained[i]);
    vg.emplace_back(inputs[i].to<cuda>(), trained[i]);
  }
  const Var<float, cpu> yc = f(vc);
  const Var<float, cuda> yg = f(vg);
  check_rel_max(yg.value(), yc.value(), rel, name + ": output");
  const auto up = Tensor<float>::randn(yc.shape(), seed);  // the upstream gradient
  yc.backward(up);
  yg.backward(up.to<cuda>());
  for (std::size_t i = 0; i < inputs.size(); ++i)
    if (trained[i])
      check_rel_max(vg[i].grad(), vc[i].grad(), rel,
                    name + ": gradient of input " + std::to_string(i));
}

/// Positive values (probabilities need not sum to 1 for these ops).
Tensor<float> positive(const Shape& s, std::uint64_t seed) {
  auto t = Tensor<float>::rand(s, seed);
  t.assign(t + 0.05f);
  return t;
}

/// Same parameter names, shapes and initial values on both devices (to an f32 ulp; see
/// test_cuda_vit.cu), then the CPU values copied over so that only the ops are compared.
template <class MC, class MG>
void check_and_align_init(MC& mc, MG& mg) {
  auto pc = nn::named_parameters(mc);
  auto pg = nn::named_parameters(mg);
  REQUIRE(pc.size() == pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    INFO("parameter ", pc[i].first);
    CHECK(pc[i].first == pg[i].first);
    REQUIRE(pc[i].second.shape() == pg[i].second.shape());
    const auto c = pc[i].second.value().to_vector();
    const auto g = pg[i].second.value().template to<cpu>().to_vector();
    std::size_t off = 0;
    for (std::size_t j = 0; j < c.size(); ++j)
      off += std::abs(double(g[j]) - double(c[j])) > std::ldexp(std::abs(double(c[j])), -23);
    CHECK_MESSAGE(off == 0, off, " of ", c.size(), " initial values differ by more than an ulp");
    pg[i].second.value().copy_from(pc[i].second.value().template to<cuda>());
  }
}

/// Every parameter gradient of the cuda module against the CPU module's.
template <class MC, class MG>
void check_param_grads(MC& mc, MG& mg, double rel, const std::string& what) {
  auto pc = nn::named_parameters(mc);
  auto pg = nn::named_parameters(mg);
  REQUIRE(pc.size() == pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    REQUIRE(pc[i].second.grad().defined());
    check_rel_max(pg[i].second.grad(), pc[i].second.grad(), rel,
                  what + ": gradient of " + pc[i].first);
  }
}

using head_spec = nn::projection_head<32, 64, 48, 16>;  // In 32, K 64, hidden 48, bottleneck 16
template <class D>
using head_t = nn::model<head_spec, float, D>;

}  // namespace

// ---- the ops -----------------------------------------------------------------------------------

TEST_CASE("flsl ops: token gathers match the CPU, forward and backward (repeated indices)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto idx = Tensor<std::int64_t>::from({0, 4, 4, 2, 1, 1, 1, 3, 6, 0, 2, 2}, {3, 4});
  check_op(
      "gather_tokens",
      [&](auto& in) { return gather_tokens(in[0], idx.to<device_of<decltype(in[0])>>()); },
      {Tensor<float>::randn({3, 7, 40}, 1)}, {true}, 1e-5);
  check_op(
      "gather_tokens of a strided input used twice",
      [&](auto& in) {
        using V = std::remove_cvref_t<decltype(in[0])>;
        const V xt = transpose(in[0], 1, 2);  // [3, 7, 5] from [3, 5, 7]
        return Var(gather_tokens(xt, idx.to<device_of<V>>()) * 2.0 +
                   gather_tokens(xt, idx.to<device_of<V>>()));
      },
      {Tensor<float>::randn({3, 5, 7}, 2)}, {true}, 1e-5);
  const auto rows = Tensor<std::int64_t>::from({3, 0, 3, 1, 3});
  check_op(
      "index_select along axis 0 (the local views' teacher rows)",
      [&](auto& in) { return index_select(in[0], 0, rows.to<device_of<decltype(in[0])>>()); },
      {Tensor<float>::randn({4, 6, 9}, 3)}, {true}, 1e-5);
  check_op(
      "index_select along axis 1",
      [&](auto& in) { return index_select(in[0], 1, rows.to<device_of<decltype(in[0])>>()); },
      {Tensor<float>::randn({2, 5, 3}, 4)}, {true}, 1e-5);
  const auto mask =
      Tensor<bool>::from({true, false, true, false, false, true, true, false}, {2, 4});
  check_op(
      "mask_select_tokens",
      [&](auto& in) { return mask_select_tokens(in[0], mask.to<device_of<decltype(in[0])>>()); },
      {Tensor<float>::randn({2, 4, 33}, 5)}, {true}, 1e-5);
}

TEST_CASE("flsl ops: a gather index out of range on cuda throws the CPU's message") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto x = Var<float, cuda>(Tensor<float, cuda>::zeros({2, 4, 3}), true);
  const auto idx = Tensor<std::int64_t>::from({0, 1, 4, 2}, {2, 2}).to<cuda>();
  CHECK_THROWS_WITH(gather_tokens(x, idx),
                    doctest::Contains("gather_tokens: index 4 at [1, 0] is out of range"));
}

TEST_CASE("flsl ops: l2_normalize and cosine_similarity match the CPU") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_op(
      "l2_normalize last axis, input reused",
      [](auto& in) { return Var(l2_normalize(in[0]) * in[0]); },
      {Tensor<float>::randn({3, 5, 256}, 11)}, {true}, 1e-5);
  check_op(
      "l2_normalize middle axis of a strided input",
      [](auto& in) { return l2_normalize(transpose(in[0], 0, 2), 1); },
      {Tensor<float>::randn({6, 9, 4}, 12)}, {true}, 1e-5);
  {  // a row below eps: clamped norm, dx = g / eps on both devices
    auto x = Tensor<float>::randn({4, 16}, 13);
    x.narrow(0, 2, 1).assign(x.narrow(0, 2, 1) * 1e-6f);
    check_op(
        "l2_normalize with a clamped row", [](auto& in) { return l2_normalize(in[0], -1, 1e-3); },
        {x}, {true}, 1e-5);
  }
  check_op(
      "cosine_similarity with broadcasting",
      [](auto& in) { return cosine_similarity(in[0], in[1], -1); },
      {Tensor<float>::randn({3, 1, 64}, 14), Tensor<float>::randn({5, 64}, 15)}, {true, true},
      1e-5);
}

TEST_CASE("flsl ops: weight_norm matches the CPU (fixed gain and learned gain)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_op(
      "weight_norm, g fixed at 1", [](auto& in) { return weight_norm(in[0]); },
      {Tensor<float>::randn({64, 16}, 21)}, {true}, 1e-5);
  check_op(
      "weight_norm with a gain", [](auto& in) { return weight_norm(in[0], in[1]); },
      {Tensor<float>::randn({40, 24}, 22), Tensor<float>::randn({40}, 23)}, {true, true}, 1e-5);
}

TEST_CASE("flsl ops: softmax and log_softmax on Var<cuda> match the CPU") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_op(
      "softmax last axis", [](auto& in) { return softmax(in[0], -1); },
      {Tensor<float>::randn({7, 65}, 31, 0, 0.0, 3.0)}, {true}, 1e-5);
  check_op(
      "softmax over K = 4096 (a block per row), input reused",
      [](auto& in) { return Var(softmax(in[0], -1) * in[0]); },
      {Tensor<float>::randn({5, 4096}, 32, 0, 0.0, 2.0)}, {true}, 1e-5);
  check_op(
      "softmax middle axis", [](auto& in) { return softmax(in[0], 1); },
      {Tensor<float>::randn({3, 6, 5}, 33, 0, 0.0, 2.0)}, {true}, 1e-5);
  check_op(
      "log_softmax last axis of a strided input",
      [](auto& in) { return log_softmax(transpose(in[0], 0, 1), -1); },
      {Tensor<float>::randn({33, 4}, 34, 0, 0.0, 3.0)}, {true}, 1e-5);
  check_op(
      "log_softmax first axis", [](auto& in) { return log_softmax(in[0], 0); },
      {Tensor<float>::randn({9, 4, 3}, 35, 0, 0.0, 3.0)}, {true}, 1e-5);
}

TEST_CASE("flsl ops: soft cross-entropy, entropy and KL to uniform match the CPU") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_op(
      "soft_cross_entropy, constant target, tau 0.1",
      [](auto& in) { return soft_cross_entropy(in[0], in[1].value(), 0.1); },
      {Tensor<float>::randn({25, 512}, 41), positive({25, 512}, 42)}, {true, false}, 1e-4);
  check_op(
      "soft_cross_entropy with a target gradient, strided logits",
      [](auto& in) { return soft_cross_entropy(transpose(in[0], 0, 1), in[1], 0.5); },
      {Tensor<float>::randn({40, 9}, 43, 0, 0.0, 3.0), positive({9, 40}, 44)}, {true, true}, 1e-4);
  check_op(
      "soft_cross_entropy of large logits (logits / tau up to ~400)",
      [](auto& in) { return soft_cross_entropy(in[0], in[1], 0.1); },
      {Tensor<float>::randn({6, 300}, 45, 0, 0.0, 10.0), positive({6, 300}, 46)}, {true, true},
      1e-4);
  check_op(
      "entropy over axis 0", [](auto& in) { return entropy(in[0], 0); }, {positive({7, 30}, 47)},
      {true}, 1e-5);
  check_op(
      "kl_to_uniform of a batch mean",
      [](auto& in) { return kl_to_uniform(mean(softmax(in[0], -1), {0})); },
      {Tensor<float>::randn({20, 256}, 48, 0, 0.0, 2.0)}, {true}, 1e-5);
}

TEST_CASE("flsl ops: mean-shift attention matches the CPU, forward and backward") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_op(
      "meanshift_attention cross, ViT-Tiny shape (Q 16, M 196, D 192)",
      [](auto& in) { return meanshift_attention(in[0], in[1], 0.2); },
      {Tensor<float>::randn({2, 16, 192}, 51), Tensor<float>::randn({2, 196, 192}, 52)},
      {true, true}, 1e-4);
  check_op(
      "meanshift_attention, constant keys (zplus), Q 9, M 37, D 33",
      [](auto& in) { return meanshift_attention(in[0], in[1], 0.7); },
      {Tensor<float>::randn({3, 9, 33}, 53), Tensor<float>::randn({3, 37, 33}, 54)}, {true, false},
      1e-4);
  check_op(
      "meanshift_attention self (queries gathered from the keys), D 384, M 300",
      [](auto& in) {
        using V = std::remove_cvref_t<decltype(in[0])>;
        const auto idx =
            Tensor<std::int64_t>::from({0, 3, 7, 299, 150, 5, 5, 42}, {2, 4}).to<device_of<V>>();
        return meanshift_attention(gather_tokens(in[0], idx), in[0], 0.1 / std::sqrt(384.0));
      },
      {Tensor<float>::randn({2, 300, 384}, 55, 0, 0.0, 3.0)}, {true}, 1e-4);
  check_op(
      "meanshift_attention, one node as queries and keys, strided",
      [](auto& in) {
        return meanshift_attention(transpose(in[0], 1, 2), transpose(in[0], 1, 2), 0.5);
      },
      {Tensor<float>::randn({2, 20, 11}, 56)}, {true}, 1e-4);
}

TEST_CASE("flsl: the projection head on cuda matches the CPU, forward and backward") {
  SKIP_WITHOUT_CUDA_DEVICE();
  nn::init_stream ic{7, 0}, ig{7, 0};
  head_t<cpu> hc(ic);
  head_t<cuda> hg(ig);
  check_and_align_init(hc, hg);
  const auto x = Tensor<float>::randn({5, 7, 32}, 61);
  Var<float, cpu> xc(x, true);
  Var<float, cuda> xg(x.to<cuda>(), true);
  const Var<float, cpu> yc = hc(xc);
  const Var<float, cuda> yg = hg(xg);
  check_rel_max(yg.value(), yc.value(), 1e-4, "head output");
  const auto up = Tensor<float>::randn(yc.shape(), 62);
  yc.backward(up);
  yg.backward(up.to<cuda>());
  check_rel_max(xg.grad(), xc.grad(), 1e-4, "head: gradient of the input");
  check_param_grads(hc, hg, 1e-4, "head");
}

namespace {

/// The FLSL loss on given student tokens: flsl_loss's body after the backbones (the same calls in
/// the same order), so that the gradients into the tokens can be compared.
template <class D>
struct token_loss {
  Var<float, D> total, ms, km, vmr, zhat, logits;
};
template <class D>
token_loss<D> flsl_loss_on_tokens(const head_t<D>& sh, const head_t<D>& th, const Var<float, D>& zg,
                                  const Var<float, D>& zl, const Tensor<float, D>& tt,
                                  const Tensor<std::int64_t, D>& qg,
                                  const Tensor<std::int64_t, D>& ql, index_t locals,
                                  double teacher_temp, const flsl_loss_params& p) {
  using V = Var<float, D>;
  std::vector<V> zq, zhat;
  std::vector<Tensor<float, D>> zplus;
  detail::flsl_view_terms(zg, qg, tt, p, zq, zhat, zplus);
  auto rows = Tensor<std::int64_t, cpu>::empty(Shape{zl.size(0)});
  for (index_t i = 0; i < zl.size(0); ++i) rows.data()[i] = i / locals;
  Tensor<float, D> paired = index_select(V(tt), 0, rows.to<D>()).value();
  detail::flsl_view_terms(zl, ql, paired, p, zq, zhat, zplus);
  token_loss<D> r;
  V q_all = concat(zq, 0);
  r.zhat = concat(zhat, 0);
  const Tensor<float, D> zp = concat(std::vector<V>(zplus.begin(), zplus.end()), 0).value();
  V cos_rows = sum(V(l2_normalize(q_all, -1) * l2_normalize(r.zhat, -1)), {-1});
  r.ms = V(2.0 - 2.0 * mean(cos_rows));
  r.logits = sh(r.zhat);
  Tensor<float, D> q;
  {
    no_grad ng;
    q = softmax(V(V(th(V(zp)).value()) / teacher_temp), -1).value();
  }
  r.km = soft_cross_entropy(r.logits, q, p.student_temp);
  V probs = softmax(V(r.logits / p.student_temp), -1);
  r.vmr = kl_to_uniform(mean(probs, {0}));
  r.total = V(p.coef_ms * r.ms + p.coef_km * r.km + p.coef_vmr * r.vmr);
  return r;
}

}  // namespace

TEST_CASE("flsl: the loss on given tokens on cuda matches the CPU (terms, token and head grads)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  nn::init_stream isc{3, 0}, isg{3, 0}, itc{4, 0}, itg{4, 0};
  head_t<cpu> shc(isc), thc(itc);
  head_t<cuda> shg(isg), thg(itg);
  check_and_align_init(shc, shg);
  check_and_align_init(thc, thg);
  const index_t B = 2, L = 2;
  const auto zg = Tensor<float>::randn({B, 16, 32}, 71);     // global view tokens, 4 x 4 grid
  const auto zl = Tensor<float>::randn({B * L, 4, 32}, 72);  // local view tokens, 2 x 2 grid
  const auto tt = Tensor<float>::randn({B, 16, 32}, 73);     // teacher tokens
  const auto qg = Tensor<std::int64_t>::from({0, 2, 8, 10, 5, 7, 13, 15}, {2, 4});
  const auto ql = Tensor<std::int64_t>::from({0, 1, 2, 3}, {4, 1});
  flsl_loss_params p;
  p.b_sa = 0.3;  // larger than the defaults, so that the attention is far from uniform
  p.b_ca = 0.6;
  Var<float, cpu> zgc(zg, true), zlc(zl, true);
  Var<float, cuda> zgg(zg.to<cuda>(), true), zlg(zl.to<cuda>(), true);
  const auto rc = flsl_loss_on_tokens<cpu>(shc, thc, zgc, zlc, tt, qg, ql, L, 0.04, p);
  const auto rg = flsl_loss_on_tokens<cuda>(shg, thg, zgg, zlg, tt.to<cuda>(), qg.to<cuda>(),
                                            ql.to<cuda>(), L, 0.04, p);
  check_rel_max(rg.ms.value(), rc.ms.value(), 1e-4, "L_ms");
  check_rel_max(rg.km.value(), rc.km.value(), 1e-4, "L_km");
  check_rel_max(rg.vmr.value(), rc.vmr.value(), 1e-4, "L_vmr");
  check_rel_max(rg.total.value(), rc.total.value(), 1e-4, "total");
  check_rel_max(rg.zhat.value(), rc.zhat.value(), 1e-4, "zhat");
  check_rel_max(rg.logits.value(), rc.logits.value(), 1e-4, "student logits");
  rc.total.backward();
  rg.total.backward();
  check_rel_max(zgg.grad(), zgc.grad(), 2e-4, "gradient of the global tokens");
  check_rel_max(zlg.grad(), zlc.grad(), 2e-4, "gradient of the local tokens");
  check_param_grads(shc, shg, 2e-4, "student head");
}

TEST_CASE("flsl: flsl_loss with backbone and head on cuda matches the CPU") {
  SKIP_WITHOUT_CUDA_DEVICE();
  using cfg = nn::vit_config<32, 2, 2, 8, 4, 32>;  // dim 32, depth 2, 2 heads, patch 8
  using spec = nn::backbone_with_head<nn::vision_transformer<cfg>, head_spec>;
  nn::model<spec, float, cpu> sc(1), tc(2);
  nn::model<spec, float, cuda> sg(1), tg(2);
  check_and_align_init(sc, sg);
  check_and_align_init(tc, tg);
  flsl_views<float, cpu> vc;
  vc.teacher = Tensor<float>::randn({2, 3, 32, 32}, 81);
  vc.global = Tensor<float>::randn({2, 3, 32, 32}, 82);
  vc.local = Tensor<float>::randn({4, 3, 16, 16}, 83);
  vc.locals = 2;
  vc.query_global = Tensor<std::int64_t>::from({0, 2, 8, 10, 5, 7, 13, 15}, {2, 4});
  vc.query_local = Tensor<std::int64_t>::from({0, 1, 2, 3}, {4, 1});
  flsl_views<float, cuda> vg;
  vg.teacher = vc.teacher.to<cuda>();
  vg.global = vc.global.to<cuda>();
  vg.local = vc.local.to<cuda>();
  vg.locals = vc.locals;
  vg.query_global = vc.query_global.to<cuda>();
  vg.query_local = vc.query_local.to<cuda>();
  flsl_loss_params p;
  p.b_sa = 0.3;
  p.b_ca = 0.6;
  const auto rc = flsl_loss(sc, tc, vc, 0.04, p);
  const auto rg = flsl_loss(sg, tg, vg, 0.04, p);
  check_rel_max(rg.teacher_tokens, rc.teacher_tokens, 1e-4, "teacher tokens");
  check_rel_max(rg.zhat.value(), rc.zhat.value(), 1e-4, "zhat");
  check_rel_max(rg.zplus, rc.zplus, 1e-4, "zplus");
  check_rel_max(rg.student_logits.value(), rc.student_logits.value(), 1e-4, "student logits");
  check_rel_max(rg.teacher_logits, rc.teacher_logits, 1e-4, "teacher logits");
  check_rel_max(rg.ms.value(), rc.ms.value(), 1e-4, "L_ms");
  check_rel_max(rg.km.value(), rc.km.value(), 1e-4, "L_km");
  check_rel_max(rg.vmr.value(), rc.vmr.value(), 1e-4, "L_vmr");
  check_rel_max(rg.total.value(), rc.total.value(), 1e-4, "total");
  rc.total.backward();
  rg.total.backward();
  check_param_grads(sc, sg, 2e-4, "student");
  for (auto& [n, q] : nn::named_parameters(tg)) CHECK_FALSE(q.grad().defined());
}

// ---- without a device: the device-generic cuda paths, instantiated on the CPU ---------------

namespace {

/// max |a - b| <= rel * max |b| (f64, host tensors).
void check_close_host(const Tensor<double>& a, const Tensor<double>& b, double rel,
                      const std::string& what) {
  INFO(what);
  REQUIRE(a.defined());
  REQUIRE(b.defined());
  REQUIRE(a.shape() == b.shape());
  const auto x = a.contiguous().to_vector(), y = b.contiguous().to_vector();
  double max_ref = 0, worst = 0;
  for (double v : y) max_ref = std::max(max_ref, std::abs(v));
  for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  INFO("worst |difference| ", worst, ", max |ref| ", max_ref);
  CHECK(worst <= rel * max_ref + 1e-300);
}

/// `dev` (a cuda path's device-generic code, here on the CPU) against `ref` (the CPU op) in f64:
/// outputs and the gradients of every trained input, with the same random upstream gradient.
template <class Ref, class Dev>
void check_generic_path(const std::string& name, Ref&& ref, Dev&& dev,
                        const std::vector<Tensor<double>>& inputs,
                        const std::vector<bool>& trained) {
  std::vector<Var<double>> va, vb;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    va.emplace_back(inputs[i].clone(), trained[i]);
    vb.emplace_back(inputs[i].clone(), trained[i]);
  }
  const Var<double> ya = ref(va), yb = dev(vb);
  check_close_host(yb.value(), ya.value(), 1e-12, name + ": output");
  const auto up = Tensor<double>::randn(ya.shape(), 77);
  ya.backward(up);
  yb.backward(up);
  for (std::size_t i = 0; i < inputs.size(); ++i)
    if (trained[i])
      check_close_host(vb[i].grad(), va[i].grad(), 1e-12,
                       name + ": gradient of input " + std::to_string(i));
}

}  // namespace

TEST_CASE("flsl: the expression paths of the cuda ops, run on the CPU, equal the CPU ops") {
  // l2_normalize, cosine_similarity and soft_cross_entropy run on cuda as device-generic
  // expressions and reductions (no kernel of their own); instantiated for cpu they must give the
  // CPU row kernels' values to f64 rounding (1e-12 of the largest element). No device needed.
  auto x = Tensor<double>::randn({4, 5, 7}, 91);
  x.narrow(1, 2, 1).assign(x.narrow(1, 2, 1) * 1e-9);  // rows with a clamped norm (eps 1e-6)
  check_generic_path(
      "l2_normalize", [](auto& in) { return Var(l2_normalize(in[0], -1, 1e-6) * in[0]); },
      [](auto& in) { return Var(detail::l2_normalize_device(in[0], 2, 1e-6) * in[0]); }, {x},
      {true});
  check_generic_path(
      "l2_normalize, middle axis", [](auto& in) { return l2_normalize(in[0], 1, 1e-6); },
      [](auto& in) { return detail::l2_normalize_device(in[0], 1, 1e-6); }, {x}, {true});
  const auto a = Tensor<double>::randn({3, 1, 6}, 92), b = Tensor<double>::randn({4, 6}, 93);
  check_generic_path(
      "cosine_similarity, broadcast", [](auto& in) { return cosine_similarity(in[0], in[1]); },
      [](auto& in) {
        return detail::cosine_similarity_device(in[0], in[1], Shape{3, 4, 6}, 2, 1e-8);
      },
      {a, b}, {true, true});
  auto t = Tensor<double>::rand({6, 40}, 94);
  t.assign(t + 0.05);
  check_generic_path(
      "soft_cross_entropy with a target gradient",
      [](auto& in) { return soft_cross_entropy(in[0], in[1], 0.1); },
      [](auto& in) { return detail::soft_cross_entropy_device(in[0], in[1], 0.1); },
      {Tensor<double>::randn({6, 40}, 95, 0, 0.0, 3.0), t}, {true, true});
  check_generic_path(
      "soft_cross_entropy, strided logits, one node as logits and target",
      [](auto& in) {
        return soft_cross_entropy(transpose(in[0], 0, 1), transpose(in[0], 0, 1), 0.5);
      },
      [](auto& in) {
        return detail::soft_cross_entropy_device(transpose(in[0], 0, 1), transpose(in[0], 0, 1),
                                                 0.5);
      },
      {Tensor<double>::rand({9, 5}, 96)}, {true});
}
