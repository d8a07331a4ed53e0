// Forward values of attention, patch embedding, mean-shift, drop path, weight norm and the FLSL
// losses against naive reference loops; attention's backward memory bound. (Their gradients are
// checked by the gradcheck table.)
#include <doctest/doctest.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <flsl/flsl.hpp>
#include <thread>
#include <vector>

using namespace flsl;

namespace {

/// out[b, i, h hd + c] = sum_j softmax_j(<q_bhi, k_bhj> / sqrt(hd)) v_bhj[c], straight from the
/// definition (timm's qkv layout), in f64.
Tensor<double> reference_attention(const Tensor<double>& qkv, int heads) {
  const index_t nb = qkv.size(0), n = qkv.size(1), d = qkv.size(2) / 3, hd = d / heads;
  auto out = Tensor<double>::zeros({nb, n, d});
  for (index_t b = 0; b < nb; ++b)
    for (index_t h = 0; h < heads; ++h)
      for (index_t i = 0; i < n; ++i) {
        std::vector<double> s(std::size_t(n), 0.0);
        for (index_t j = 0; j < n; ++j) {
          for (index_t c = 0; c < hd; ++c)
            s[j] += qkv(b, i, h * hd + c) * qkv(b, j, d + h * hd + c);
          s[j] /= std::sqrt(double(hd));
        }
        const double m = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - m));
        for (index_t j = 0; j < n; ++j)
          for (index_t c = 0; c < hd; ++c)
            out(b, i, h * hd + c) += s[j] / z * qkv(b, j, 2 * d + h * hd + c);
      }
  return out;
}

double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  REQUIRE(a.shape() == b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (std::size_t i = 0; i < va.size(); ++i) m = std::max(m, std::abs(va[i] - vb[i]));
  return m;
}

}  // namespace

TEST_CASE("multi_head_attention equals the per-head softmax formula with timm's qkv layout") {
  const auto qkv = Tensor<double>::randn({2, 7, 36}, 11);
  const auto ref = reference_attention(qkv, 3);
  const auto y = multi_head_attention(Var<double>(qkv), 3);
  CHECK(y.shape() == Shape{2, 7, 12});
  CHECK(max_abs_diff(y.value(), ref) < 1e-12);
  // f32 and a non-contiguous input give the same values
  const auto y32 = multi_head_attention(Var<float>(qkv.to<float>()), 3);
  CHECK(max_abs_diff(y32.value().to<double>(), ref) < 1e-5);
  const auto wide = Tensor<double>::randn({7, 2, 72}, 11);
  const auto strided = wide.slice(-1, 0, 72, 2).transpose(0, 1);
  CHECK(max_abs_diff(multi_head_attention(Var<double>(strided), 3).value(),
                     reference_attention(strided.clone(), 3)) < 1e-12);
}

TEST_CASE("multi_head_attention's backward never holds a [B, H, N, N] buffer") {
  const index_t b = 4, heads = 3, n = 196, hd = 8, d = heads * hd;
  const double full_scores = double(b * heads * n * n * index_t(sizeof(float)));  // [B, H, N, N]
  // One worker thread (one [N, N] scratch pair) leaves the other core to a sampler thread that
  // records the largest number of live storage bytes while forward and backward repeat.
  const int threads = 1, repeats = 20;
  tbb::task_arena arena(threads);
  Var<float> qkv(Tensor<float>::randn({b, n, 3 * d}, 5), true);
  const auto seed = Tensor<float>::randn({b, n, d}, 6);
  const long long live0 = storage_stats::bytes_live().load();
  std::atomic<bool> started{false}, done{false};
  std::atomic<long long> peak{live0};
  std::thread sampler([&] {
    started.store(true);
    while (!done.load()) {
      const long long now = storage_stats::bytes_live().load();
      if (now > peak.load()) peak.store(now);
    }
  });
  while (!started.load()) std::this_thread::yield();
  long long backward_allocs = 0;
  arena.execute([&] {
    for (int r = 0; r < repeats; ++r) {
      qkv.zero_grad();
      auto y = multi_head_attention(qkv, int(heads));
      const long long a0 = storage_stats::allocations().load();
      y.backward(seed);
      backward_allocs = std::max(backward_allocs, storage_stats::allocations().load() - a0);
    }
  });
  done.store(true);
  sampler.join();
  const double extra = double(peak.load() - live0);
  // live at most: out [B, N, D] + lse [B, H, N] + the seed's copy [B, N, D] + dqkv [B, N, 3D]
  // + one 2 x [N, N] scratch per thread (f32)
  const double bound =
      double((2 * b * n * d + b * heads * n + b * n * 3 * d + threads * 2 * n * n) * 4);
  MESSAGE("peak extra live bytes ", extra, " (bound ", bound, "), at most ", backward_allocs,
          " allocations per backward; a [B, H, N, N] buffer is ", full_scores, " bytes");
  CHECK(extra <= bound);
  CHECK(extra < full_scores / 2);
  CHECK(backward_allocs <= 2 + threads);  // the seed's copy, dqkv, the scratch
  WARN_MESSAGE(extra >= double(threads * 2 * n * n * 4), "the sampler missed the backward");
  CHECK(qkv.grad().shape() == qkv.shape());
}

TEST_CASE("multi_head_attention rejects heads that do not divide D") {
  Var<double> qkv(Tensor<double>::zeros({1, 2, 15}));
  CHECK_THROWS_WITH_AS(multi_head_attention(qkv, 2), doctest::Contains("[1, 2, 15]"), flsl::error);
}

TEST_CASE("patch_embed equals a p x p stride-p convolution, token index y (W/p) + x") {
  const index_t nb = 2, c = 3, h = 8, w = 12, p = 4, d = 5;
  const auto wide = Tensor<double>::randn({c, nb, h, 2 * w}, 21);
  const auto images = wide.slice(-1, 0, 2 * w, 2).transpose(0, 1);  // non-contiguous [B, C, H, W]
  const auto weight = Tensor<double>::randn({d, c, p, p}, 22);
  const auto bias = Tensor<double>::randn({d}, 23);
  const auto y = patch_embed(Var<double>(images), Var<double>(weight), Var<double>(bias), p);
  REQUIRE(y.shape() == Shape{nb, (h / p) * (w / p), d});
  double err = 0;
  for (index_t b = 0; b < nb; ++b)
    for (index_t ty = 0; ty < h / p; ++ty)
      for (index_t tx = 0; tx < w / p; ++tx)
        for (index_t o = 0; o < d; ++o) {
          double acc = bias(o);
          for (index_t ci = 0; ci < c; ++ci)
            for (index_t i = 0; i < p; ++i)
              for (index_t j = 0; j < p; ++j)
                acc += weight(o, ci, i, j) * images(b, ci, ty * p + i, tx * p + j);
          err = std::max(err, std::abs(acc - y.value()(b, ty * (w / p) + tx, o)));
        }
  CHECK(err < 1e-12);
}

TEST_CASE("patch_embed names the shape when H or W is not a multiple of p") {
  Var<float> images(Tensor<float>::zeros({1, 3, 10, 8}));
  Var<float> weight(Tensor<float>::zeros({4, 3, 4, 4}));
  CHECK_THROWS_WITH_AS(patch_embed(images, weight, 4), doctest::Contains("[1, 3, 10, 8]"),
                       flsl::error);
}

TEST_CASE("patch_embed leaves constant images without a gradient") {
  Var<float> images(Tensor<float>::randn({2, 3, 8, 8}, 31));
  Var<float> weight(Tensor<float>::randn({4, 3, 4, 4}, 32), true);
  Var<float> bias(Tensor<float>::zeros({4}), true);
  patch_embed(images, weight, bias, 4).backward(Tensor<float>::ones({2, 4, 4}));
  CHECK_FALSE(images.grad().defined());
  CHECK(weight.grad().shape() == weight.shape());
  CHECK(bias.grad().to_vector() == std::vector<float>(4, 8.0f));  // 2 images x 4 tokens
}

TEST_CASE("meanshift_attention equals sum_j softmax_j(beta <q_i, k_j>) k_j") {
  const index_t nb = 2, nq = 3, m = 6, d = 5;
  const double beta = 0.8;
  const auto q = Tensor<double>::randn({nb, nq, d}, 41);
  const auto k = Tensor<double>::randn({nb, m, d}, 42);
  const auto y = meanshift_attention(Var<double>(q), Var<double>(k), beta);
  double err = 0;
  for (index_t b = 0; b < nb; ++b)
    for (index_t i = 0; i < nq; ++i) {
      std::vector<double> w(std::size_t(m), 0.0);
      double z = 0;
      for (index_t j = 0; j < m; ++j) {
        double dot = 0;
        for (index_t c = 0; c < d; ++c) dot += q(b, i, c) * k(b, j, c);
        z += (w[j] = std::exp(beta * dot));
      }
      for (index_t c = 0; c < d; ++c) {
        double acc = 0;
        for (index_t j = 0; j < m; ++j) acc += w[j] / z * k(b, j, c);
        err = std::max(err, std::abs(acc - y.value()(b, i, c)));
      }
    }
  CHECK(err < 1e-12);
}

TEST_CASE("soft_cross_entropy equals -mean sum q log softmax(z / tau)") {
  const auto z = Tensor<double>::randn({4, 6}, 51, 0, 0.0, 2.0);
  auto q = Tensor<double>::rand({4, 6}, 52);
  q.assign(q / sum(q, {1}, true));
  const double tau = 0.5;
  double ref = 0;
  for (index_t r = 0; r < 4; ++r) {
    double zs = 0;
    for (index_t k = 0; k < 6; ++k) zs += std::exp(z(r, k) / tau);
    for (index_t k = 0; k < 6; ++k) ref -= q(r, k) * std::log(std::exp(z(r, k) / tau) / zs);
  }
  ref /= 4;
  CHECK(soft_cross_entropy(Var<double>(z), q, tau).value().item() ==
        doctest::Approx(ref).epsilon(1e-12));
}

TEST_CASE("soft_cross_entropy stays finite and exact for huge logits") {
  // logits of +-1e4 at the teacher's temperature 0.04: exp overflows anywhere but in log-softmax
  const auto z = Tensor<double>::randn({3, 8}, 61, 0, 0.0, 1e4);
  auto q = Tensor<double>::rand({3, 8}, 62);
  q.assign(q / sum(q, {1}, true));
  const double tau = 0.04;
  double ref = 0;  // -sum q (y - lse) with a max-shifted lse, in f64
  for (index_t r = 0; r < 3; ++r) {
    double m = -INFINITY, s = 0;
    for (index_t k = 0; k < 8; ++k) m = std::max(m, z(r, k) / tau);
    for (index_t k = 0; k < 8; ++k) s += std::exp(z(r, k) / tau - m);
    for (index_t k = 0; k < 8; ++k) ref += q(r, k) * (m + std::log(s) - z(r, k) / tau);
  }
  ref /= 3;
  Var<float> logits(z.to<float>(), true);
  auto loss = soft_cross_entropy(logits, q.to<float>(), tau);
  CHECK(std::isfinite(loss.value().item()));
  CHECK(double(loss.value().item()) == doctest::Approx(ref).epsilon(1e-5));
  loss.backward();
  for (float g : logits.grad().to_vector()) CHECK(std::isfinite(g));
}

TEST_CASE("kl_to_uniform is 0 at the uniform distribution and log K at a one-hot one") {
  Var<double> uniform(Tensor<double>::full({5}, 0.2), true);
  auto kl = kl_to_uniform(uniform);
  CHECK(kl.value().item() == doctest::Approx(0.0));
  kl.backward();
  for (double g : uniform.grad().to_vector()) CHECK(g == doctest::Approx(std::log(0.2) + 1));
  Var<double> one_hot(Tensor<double>::from({0.0, 1.0, 0.0, 0.0}), true);  // 0 log 0 = 0
  auto kl1 = kl_to_uniform(one_hot);
  CHECK(kl1.value().item() == doctest::Approx(std::log(4.0)));
  kl1.backward();
  for (double g : one_hot.grad().to_vector()) CHECK(std::isfinite(g));
}

TEST_CASE("entropy reduces one axis") {
  const auto p = Tensor<double>::from({0.5, 0.25, 0.0, 1.0, 0.5, 0.75}, {2, 3});
  const auto h = entropy(Var<double>(p), 0);
  REQUIRE(h.shape() == Shape{3});
  const auto hv = h.value().to_vector();
  CHECK(hv[0] == doctest::Approx(-0.5 * std::log(0.5)));
  CHECK(hv[1] == doctest::Approx(-0.25 * std::log(0.25) - 0.5 * std::log(0.5)));
  CHECK(hv[2] == doctest::Approx(-0.75 * std::log(0.75)));
}

TEST_CASE("drop_path is the identity at rate 0 and outside training") {
  Var<float> x(Tensor<float>::randn({4, 3}, 71), true);
  const auto keep = Tensor<float>::from({1, 0, 1, 0});
  CHECK(drop_path(x, keep, 0.0).node() == x.node());
  CHECK(drop_path(x, keep, 0.3, /*training=*/false).node() == x.node());
}

TEST_CASE("drop_path zeroes dropped samples and rescales kept ones") {
  Var<double> x(Tensor<double>::randn({3, 2, 2}, 72), true);
  const auto keep = Tensor<double>::from({1, 0, 1});
  auto y = drop_path(x, keep, 0.2);
  for (index_t b = 0; b < 3; ++b)
    for (index_t i = 0; i < 2; ++i)
      CHECK(y.value()(b, i, 1) == doctest::Approx(x.value()(b, i, 1) * keep(b) / 0.8));
  y.backward(Tensor<double>::ones({3, 2, 2}));
  CHECK(x.grad()(1, 0, 0) == 0.0);
  CHECK(x.grad()(2, 1, 1) == doctest::Approx(1.25));
}

TEST_CASE("drop_path_mask is reproducible from the generator and keeps about 1 - rate") {
  Generator g1(7, 3), g2(7, 3);
  const auto a = drop_path_mask<float>(20000, 0.1, g1);
  const auto b = drop_path_mask<float>(20000, 0.1, g2);
  CHECK(a.to_vector() == b.to_vector());
  CHECK(g1.offset() == g2.offset());
  const double kept = double(sum(a).item()) / 20000;
  CHECK(kept == doctest::Approx(0.9).epsilon(0.01));
  for (float v : a.to_vector()) CHECK((v == 0.0f || v == 1.0f));
}

TEST_CASE("weight_norm rows are g v / ||v||") {
  const auto v = Tensor<double>::randn({3, 4}, 81);
  const auto g = Tensor<double>::from({2.0, -1.0, 0.5});
  const auto w = weight_norm(Var<double>(v), Var<double>(g)).value();
  const auto w1 = weight_norm(Var<double>(v)).value();
  for (index_t r = 0; r < 3; ++r) {
    double n = 0;
    for (index_t c = 0; c < 4; ++c) n += v(r, c) * v(r, c);
    n = std::sqrt(n);
    for (index_t c = 0; c < 4; ++c) {
      CHECK(w(r, c) == doctest::Approx(g(r) * v(r, c) / n));
      CHECK(w1(r, c) == doctest::Approx(v(r, c) / n));
    }
  }
}
