// The CUDA kernels of the model's non-GEMM ops (flsl::cuda_ops: LayerNorm, softmax / log_softmax,
// GELU, fused multi-head attention; forward and backward) against the CPU autograd ops. Each GPU
// test case builds random inputs on the CPU, runs the CPU op forward and backward through Var
// (backward seeded with a random upstream gradient), runs the kernels on copies of the same
// inputs, and compares with the tolerance stated next to it. Without a device each prints
// "skipped: no CUDA device" and passes; test_cuda_main.cpp then exits 77 (CTest: Skipped).
//
// Tolerances are relative to a per-element magnitude `scale` (check_close's third argument) that
// bounds the terms the element is computed from, so cancellation does not make a correct result
// look wrong: e.g. for y = xhat * w + b the scale is |xhat w| + |b|, not |y|. Both devices round
// every operation (f32 ulp u = 1.2e-7, CUDA's expf / erff within 2 ulp, the CPU's within 1-2);
// the chains below are a few to ~10 roundings deep, so differences stay near 10 u = 1.2e-6 of the
// scale, and 1e-5 leaves an 8x margin. Attention: 1e-4 (see that section).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <flsl/autograd/elementwise.hpp>
#include <flsl/autograd/ops/attention.hpp>
#include <flsl/autograd/ops/layer_norm.hpp>
#include <flsl/autograd/ops/softmax.hpp>
#include <flsl/backend/cuda.cuh>
#include <functional>
#include <string>
#include <vector>

#include "cuda_test_support.cuh"

using namespace flsl;

namespace {

/// Checks |gpu - ref| <= abs_tol + rel * scale element by element (scale defaults to |ref|); NaNs
/// must be at the same places. Reports the worst element.
void check_close(const Tensor<float, cuda>& gpu, const Tensor<float, cpu>& ref, double rel,
                 double abs_tol = 0.0, const std::vector<double>& scale = {}) {
  REQUIRE(gpu.shape() == ref.shape());
  const auto g = gpu.to<cpu>().to_vector();
  const auto r = ref.contiguous().to_vector();
  REQUIRE((scale.empty() || scale.size() == r.size()));
  double worst = -1;
  std::size_t at = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i]) || std::isnan(r[i])) {
      CHECK_MESSAGE(std::isnan(g[i]) == std::isnan(r[i]), "NaN mismatch at element ", i);
      continue;
    }
    const double mag = scale.empty() ? std::abs(double(r[i])) : scale[i];
    const double excess = std::abs(double(g[i]) - double(r[i])) - (abs_tol + rel * mag);
    if (excess > worst) worst = excess, at = i;
  }
  INFO("worst element ", at, " of ", g.size(), ": cuda ", g.empty() ? 0.0f : g[at], " cpu ",
       r.empty() ? 0.0f : r[at], " scale ", scale.empty() ? 0.0 : scale[at]);
  CHECK(worst <= 0);
}

/// Exactly equal, bit for bit (determinism checks).
void check_identical(const Tensor<float, cuda>& a, const Tensor<float, cuda>& b) {
  const auto va = a.to<cpu>().to_vector(), vb = b.to<cpu>().to_vector();
  REQUIRE(va.size() == vb.size());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < va.size(); ++i)
    differ += std::memcmp(&va[i], &vb[i], sizeof(float)) != 0;
  CHECK_MESSAGE(differ == 0, differ, " elements differ between two identical runs");
}

Tensor<float, cuda> on_device(const Tensor<float, cpu>& t) { return t.to<cuda>(); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const flsl::error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- LayerNorm ------------------------------------------------------------------------------

namespace {

/// LayerNorm forward and backward on both devices for x of `shape` ~ N(center, 1).
void check_layer_norm(const Shape& shape, bool affine, double center, std::uint64_t seed) {
  CAPTURE(shape);
  CAPTURE(affine);
  CAPTURE(center);
  const int last = shape.rank() - 1;
  const index_t d = shape[last], rows = shape.numel() / d;
  const double eps = 1e-5;
  const auto x = Tensor<float>::randn(shape, seed, 0, center, 1.0);
  const auto w = Tensor<float>::randn({d}, seed + 1), b = Tensor<float>::randn({d}, seed + 2);
  const auto g = Tensor<float>::randn(shape, seed + 3);

  Var<float> xv(x, true), wv(w, true), bv(b, true);
  const Var<float> y =
      affine ? layer_norm(xv, wv, bv, eps) : layer_norm(xv, Var<float>(), Var<float>(), eps);
  y.backward(g);

  const auto xg = on_device(x), wg = affine ? on_device(w) : Tensor<float, cuda>{},
             bg = affine ? on_device(b) : Tensor<float, cuda>{}, gg = on_device(g);
  const auto yg = Tensor<float, cuda>::empty(shape);
  const auto mean = Tensor<float, cuda>::empty({rows, 2}),
             rstd = Tensor<float, cuda>::empty({rows});
  cuda_ops::layer_norm_forward(xg, wg, bg, eps, yg, mean, rstd);
  const auto dx = Tensor<float, cuda>::empty(shape);
  const auto dw = affine ? Tensor<float, cuda>::empty({d}) : Tensor<float, cuda>{};
  const auto db = affine ? Tensor<float, cuda>::empty({d}) : Tensor<float, cuda>{};
  cuda_ops::layer_norm_backward(xg, wg, mean, rstd, gg, dx, false, dw, db);

  // Magnitudes, in double on the host: xhat from a double LayerNorm of the same x.
  const auto xs = x.to_vector(), ws = w.to_vector(), bs = b.to_vector(), gs = g.to_vector();
  std::vector<double> xhat(xs.size()), sy(xs.size()), sdx(xs.size()), sdw(std::size_t(d), 0.0),
      sdb(std::size_t(d), 0.0);
  for (index_t r = 0; r < rows; ++r) {
    const std::size_t o = std::size_t(r * d);
    double m = 0, v = 0;
    for (index_t j = 0; j < d; ++j) m += xs[o + j];
    m /= double(d);
    for (index_t j = 0; j < d; ++j) v += (xs[o + j] - m) * (xs[o + j] - m);
    const double rs = 1.0 / std::sqrt(v / double(d) + eps);
    double mgy = 0, mgyx = 0;
    for (index_t j = 0; j < d; ++j) {
      xhat[o + j] = (xs[o + j] - m) * rs;
      const double wj = affine ? ws[std::size_t(j)] : 1.0;
      mgy += std::abs(gs[o + j] * wj) / double(d);
      mgyx += std::abs(gs[o + j] * wj * xhat[o + j]) / double(d);
    }
    for (index_t j = 0; j < d; ++j) {
      const double wj = affine ? ws[std::size_t(j)] : 1.0, bj = affine ? bs[std::size_t(j)] : 0.0;
      sy[o + j] = std::abs(xhat[o + j] * wj) + std::abs(bj);
      sdx[o + j] = rs * (std::abs(gs[o + j] * wj) + mgy + std::abs(xhat[o + j]) * mgyx);
      sdw[std::size_t(j)] += std::abs(gs[o + j] * xhat[o + j]);
      sdb[std::size_t(j)] += std::abs(gs[o + j]);
    }
  }
  // y and dx: ~10 roundings deep per element (see the file comment): 1e-5 of the magnitude.
  // Rows far from zero (center 1000) are as accurate: both devices subtract the first mean
  // estimate m0 exactly (Sterbenz) and carry the rest as `shift`, so xhat loses nothing to
  // ulp(1000) = 6e-5.
  check_close(yg, y.value(), 1e-5, 0.0, sy);
  check_close(dx, xv.grad(), 1e-5, 0.0, sdx);
  if (affine) {
    // dweight / dbias: both devices add the same rows in the same chunks (<= 50 rows in f32,
    // sequentially), then the chunks in double; sequential f32 sums of <= 50 terms are within
    // 50 u = 6e-6 of the sum of magnitudes, plus the per-element differences of g * xhat.
    check_close(dw, wv.grad(), 1e-5, 0.0, sdw);
    check_close(db, bv.grad(), 1e-5, 0.0, sdb);
  }
}

}  // namespace

TEST_CASE("cuda layer_norm forward and backward match the CPU op") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_layer_norm({49, 64}, true, 0.0, 100);
  check_layer_norm({3, 49, 37}, true, 0.0, 110);    // d odd, rows not a multiple of 8
  check_layer_norm({197, 192}, true, 0.0, 120);     // ViT-Tiny width
  check_layer_norm({257, 384}, false, 0.0, 130);    // no weight / bias
  check_layer_norm({4, 197, 192}, true, 0.0, 140);  // ViT-Tiny tokens: 788 rows
  check_layer_norm({33, 1500}, true, 0.0, 150);     // d > 1024: one block per row
  check_layer_norm({61, 96}, true, 1000.0, 160);    // far from zero
  check_layer_norm({5, 2000}, true, -1000.0, 170);  // far from zero, one block per row
  check_layer_norm({1, 1}, true, 0.0, 180);         // var 0: xhat = 0, rstd = 1 / sqrt(eps)
}

TEST_CASE("cuda layer_norm backward repeats bit-exactly, accumulates into dx") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape s{2000, 192};
  const auto x = on_device(Tensor<float>::randn(s, 200)),
             g = on_device(Tensor<float>::randn(s, 201));
  const auto w = on_device(Tensor<float>::randn({192}, 202)),
             b = on_device(Tensor<float>::randn({192}, 203));
  const auto y = Tensor<float, cuda>::empty(s), mean = Tensor<float, cuda>::empty({2000, 2}),
             rstd = Tensor<float, cuda>::empty({2000});
  cuda_ops::layer_norm_forward(x, w, b, 1e-6, y, mean, rstd);
  auto run = [&] {
    std::vector<Tensor<float, cuda>> r{Tensor<float, cuda>::empty(s),
                                       Tensor<float, cuda>::empty({192}),
                                       Tensor<float, cuda>::empty({192})};
    cuda_ops::layer_norm_backward(x, w, mean, rstd, g, r[0], false, r[1], r[2]);
    return r;
  };
  const auto a = run(), c = run();
  for (int i = 0; i < 3; ++i) check_identical(a[std::size_t(i)], c[std::size_t(i)]);
  // accumulate = true adds to what dx holds: dx = 1 + the fresh gradient
  const auto acc = Tensor<float, cuda>::ones(s);
  cuda_ops::layer_norm_backward(x, w, mean, rstd, g, acc, true, Tensor<float, cuda>{},
                                Tensor<float, cuda>{});
  const Tensor<float, cuda> want = a[0] + 1.0f;
  check_identical(acc, want);
}

TEST_CASE("cuda layer_norm refuses mismatched shapes before touching the device") {
  // Runs without a device: the checks come before any allocation or launch.
  const Tensor<float, cuda> none;
  const auto msg = error_of([&] {
    cuda_ops::layer_norm_forward(none, none, none, 1e-5, none, Tensor<float, cuda>{}, none);
  });
  CHECK(msg.find("no last axis") != std::string::npos);
}

// ---- softmax / log_softmax -------------------------------------------------------------------

namespace {

/// softmax (Log: log_softmax) over the last axis on both devices, x ~ N(0, 3^2) of `shape`. The
/// backward kernels get the CPU forward's output y, so each direction is compared alone.
template <bool Log>
void check_softmax(const Shape& shape, std::uint64_t seed) {
  CAPTURE(shape);
  CAPTURE(Log);
  const int last = shape.rank() - 1;
  const index_t n = shape[last], rows = shape.numel() / n;
  const auto x = Tensor<float>::randn(shape, seed, 0, 0.0, 3.0);
  const auto g = Tensor<float>::randn(shape, seed + 1);
  Var<float> xv(x, true);
  const Var<float> y = Log ? log_softmax(xv) : softmax(xv);
  y.backward(g);

  const auto yg = Tensor<float, cuda>::empty(shape), dx = Tensor<float, cuda>::empty(shape);
  if constexpr (Log) {
    cuda_ops::log_softmax_forward(on_device(x), yg);
    cuda_ops::log_softmax_backward(on_device(y.value()), on_device(g), dx);
  } else {
    cuda_ops::softmax_forward(on_device(x), yg);
    cuda_ops::softmax_backward(on_device(y.value()), on_device(g), dx);
  }

  const auto ys = y.value().to_vector(), gs = g.to_vector();
  std::vector<double> sy(ys.size()), sdx(ys.size());
  for (index_t r = 0; r < rows; ++r) {
    const std::size_t o = std::size_t(r * n);
    double ymax = -1e300, sum_g = 0, sum_gy = 0;
    for (index_t j = 0; j < n; ++j) {
      ymax = std::max(ymax, double(ys[o + j]));
      sum_g += std::abs(gs[o + j]);
      sum_gy += std::abs(gs[o + j] * ys[o + j]);
    }
    for (index_t j = 0; j < n; ++j) {
      const double yj = ys[o + j], gj = std::abs(gs[o + j]);
      if (Log) {
        // y = (x - m) - log s with log s = -max_j y_j: terms |x - m| <= |y| + |log s|
        sy[o + j] = std::abs(yj) + 2 * std::abs(ymax);
        sdx[o + j] = gj + std::exp(yj) * sum_g;  // g - exp(y) sum g
      } else {
        sy[o + j] = yj;  // a product of correctly rounded factors: relative accuracy
        sdx[o + j] = yj * (gj + sum_gy);  // y (g - sum g y)
      }
    }
  }
  check_close(yg, y.value(), 1e-5, 0.0, sy);
  check_close(dx, xv.grad(), 1e-5, 0.0, sdx);
}

}  // namespace

TEST_CASE("cuda softmax and log_softmax forward and backward match the CPU op") {
  SKIP_WITHOUT_CUDA_DEVICE();
  for (const Shape& s : {Shape{49, 49}, Shape{3, 197, 197}, Shape{257, 257}, Shape{5, 1},
                         Shape{7, 3000} /* n > 1024: one block per row */, Shape{2, 65536}}) {
    check_softmax<false>(s, 300);
    check_softmax<true>(s, 310);
  }
}

TEST_CASE("cuda softmax backward accumulates into dx") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape s{33, 50};
  const auto y = Tensor<float, cuda>::empty(s), g = on_device(Tensor<float>::randn(s, 320));
  cuda_ops::softmax_forward(on_device(Tensor<float>::randn(s, 321)), y);
  const auto fresh = Tensor<float, cuda>::empty(s), acc = Tensor<float, cuda>::full(s, 2.0f);
  cuda_ops::softmax_backward(y, g, fresh);
  cuda_ops::softmax_backward(y, g, acc, true);
  const Tensor<float, cuda> want = fresh + 2.0f;
  check_identical(acc, want);
}

// ---- GELU ----------------------------------------------------------------------------------

TEST_CASE("cuda gelu forward and backward (exact erf) match the CPU op") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const Shape s{4, 197, 3 * 64};
  const auto x = Tensor<float>::randn(s, 400, 0, 0.0, 3.0), g = Tensor<float>::randn(s, 401);
  Var<float> xv(x, true);
  const Var<float> y(gelu(xv));
  y.backward(g);
  const auto yg = Tensor<float, cuda>::empty(s), dx = Tensor<float, cuda>::empty(s);
  cuda_ops::gelu_forward(on_device(x), yg);
  cuda_ops::gelu_backward(on_device(x), on_device(g), dx);
  // gelu = 0.5 x (1 + erf(x / sqrt 2)): for x << 0, 1 + erf cancels, so the error is relative to
  // |x| (erff within 2 ulp of 1 on both devices), not to |gelu(x)|; the gradient's terms are
  // bounded by |g| (1 + |x|).
  const auto xs = x.to_vector(), gs = g.to_vector();
  std::vector<double> sy(xs.size()), sdx(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    sy[i] = std::abs(xs[i]);
    sdx[i] = std::abs(gs[i]) * (1.0 + std::abs(xs[i]));
  }
  check_close(yg, y.value(), 1e-5, 0.0, sy);
  check_close(dx, xv.grad(), 1e-5, 0.0, sdx);
}

// ---- fused multi-head attention ------------------------------------------------------------

namespace {

double max_abs(const Tensor<float, cpu>& t) {
  double m = 0;
  for (float v : t.contiguous().to_vector()) m = std::max(m, double(std::abs(v)));
  return m;
}

/// Attention forward (out, lse) and backward (dqkv) on both devices for qkv ~ N(0, 1) of
/// [b, n, 3 heads hd]. The GPU backward runs from the GPU forward's out and lse (as training will).
void check_attention(index_t b, index_t n, int heads, index_t hd, std::uint64_t seed) {
  CAPTURE(b);
  CAPTURE(n);
  CAPTURE(heads);
  CAPTURE(hd);
  const index_t d = heads * hd;
  const auto qkv = Tensor<float>::randn({b, n, 3 * d}, seed);
  const auto g = Tensor<float>::randn({b, n, d}, seed + 1);
  Var<float> qv(qkv, true);
  const Var<float> out = multi_head_attention(qv, heads);
  out.backward(g);
  auto lse_cpu = Tensor<float>::empty({b, index_t(heads), n});
  {
    auto o = Tensor<float>::empty({b, n, d});
    detail::attention_forward(qkv, index_t(heads), float(1.0 / std::sqrt(double(hd))), o, lse_cpu);
  }

  const auto qg = on_device(qkv), gg = on_device(g);
  const auto og = Tensor<float, cuda>::empty({b, n, d});
  const auto lg = Tensor<float, cuda>::empty({b, index_t(heads), n});
  cuda_ops::attention_forward(qg, heads, og, lg);
  const auto dg = Tensor<float, cuda>::empty({b, n, 3 * d});
  cuda_ops::attention_backward(qg, og, gg, lg, heads, dg);

  // Tolerance 1e-4 relative plus an absolute floor of 1e-5 (forward) / 2e-5 (backward) times
  // the largest |reference| element. Where the differences come from: S = scale <q, k> is a dot
  // product of hd terms (|S| ~ 1 here) summed in a different order (the CPU's GEMM blocks vs a
  // sequential fmaf chain), ~sqrt(hd) u |q||k| scale ~ 1e-6 absolute; exp turns that into the
  // same relative error of P; the online softmax rescales O by exp(m_old - m_new) factors and
  // divides by l at the end where the CPU normalises P first (a few more roundings); O, dV, dQ,
  // dK are sums over up to N = 1024 terms in a different order (sqrt(N) u relative to the sum
  // of magnitudes). Elementwise relative error is meaningless where a sum cancels to near zero,
  // hence the floor relative to the tensor's largest element. Expected differences: ~1e-6
  // relative; 1e-4 leaves margin for the long sums without hiding a wrong index (which is O(1)).
  check_close(og, out.value(), 1e-4, 1e-5 * max_abs(out.value()));
  check_close(lg, lse_cpu, 1e-5, 1e-5);  // |lse| ~ log n + max S: a few roundings of ~5
  check_close(dg, qv.grad(), 1e-4, 2e-5 * max_abs(qv.grad()));
}

}  // namespace

TEST_CASE("cuda attention forward and backward match the CPU op: small dims, odd N") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_attention(2, 49, 3, 16, 500);   // head_dim 16, N = 49 (one partial tile)
  check_attention(1, 257, 2, 32, 510);  // head_dim 32, N = 257 (one key past the tiles)
  check_attention(3, 1, 1, 64, 520);    // one token
  check_attention(2, 65, 4, 16, 530);   // N = 65: a forward tile with one row
}

TEST_CASE("cuda attention forward and backward match the CPU op: ViT-Tiny, long sequences") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_attention(4, 197, 3, 64, 600);   // ViT-Tiny: qkv [4, 197, 3 * 192], 3 heads of 64
  check_attention(1, 1024, 2, 64, 610);  // N = 1024
  check_attention(1, 1030, 1, 32, 620);  // N > 1024, not a multiple of any tile
}

namespace {

/// The bf16 attention kernels `impl` (attention_mma.cuh's tensor cores, or the SIMT kernels with
/// bf16 converted on load) against the f32 CPU op on the same (bf16-representable) values,
/// forward and backward, and a bit-exact repeat. `bwd_floor`: the backward's absolute tolerance
/// in units of the largest gradient element.
void check_attention_bf16(index_t b, index_t n, int heads, index_t hd, std::uint64_t seed,
                          cuda_ops::attention_impl impl, double bwd_floor) {
  CAPTURE(b);
  CAPTURE(n);
  CAPTURE(heads);
  CAPTURE(hd);
  const cuda_ops::attention_impl_scope scope(impl);
  const index_t d = heads * hd;
  const auto qkv = Tensor<float>::randn({b, n, 3 * d}, seed).to<bf16>();
  const auto g = Tensor<float>::randn({b, n, d}, seed + 1).to<bf16>();
  Var<float> qv(qkv.to<float>(), true);
  const Var<float> out = multi_head_attention(qv, heads);
  out.backward(g.to<float>());
  auto lse_cpu = Tensor<float>::empty({b, index_t(heads), n});
  {
    auto o = Tensor<float>::empty({b, n, d});
    detail::attention_forward(qkv.to<float>(), index_t(heads), float(1.0 / std::sqrt(double(hd))),
                              o, lse_cpu);
  }
  const auto qg = qkv.to<cuda>(), gg = g.to<cuda>();
  const auto og = Tensor<bf16, cuda>::empty({b, n, d});
  const auto lg = Tensor<float, cuda>::empty({b, index_t(heads), n});
  cuda_ops::attention_forward(qg, heads, og, lg);
  const auto dg = Tensor<bf16, cuda>::empty({b, n, 3 * d});
  cuda_ops::attention_backward(qg, og, gg, lg, heads, dg);
  // SIMT: fp32 arithmetic on the same values; the differences are the bf16 rounding of the
  // outputs (2^-9 = 2e-3 relative) and, in the backward, of O in D = rowsum(dO * O) (the GPU
  // reads its bf16 O): 1e-2 relative plus 1e-2 of the largest element.
  // Tensor cores: besides those, P is rounded to bf16 before P V and P^T dO, and dS before dS K
  // and dS^T Q: each term of those sums moves by up to 2^-9 of itself, so a sum moves by up to
  // 2^-9 of the sum of its terms' magnitudes, which for these N(0, 1) inputs is a few times the
  // largest element: 2e-2 of it in the backward. A wrong index or a missed tile is O(1). lse
  // sums the rounded probabilities: l moves by up to 2^-9 relative, lse by 2e-3 absolute.
  check_close(og.to<float>(), out.value(), 1e-2, 1e-2 * max_abs(out.value()));
  check_close(lg, lse_cpu, 0.0, 5e-3);
  check_close(dg.to<float>(), qv.grad(), 1e-2, bwd_floor * max_abs(qv.grad()));
  const auto dg2 = Tensor<bf16, cuda>::empty({b, n, 3 * d});
  cuda_ops::attention_backward(qg, og, gg, lg, heads, dg2);
  check_identical(dg.to<float>(), dg2.to<float>());  // bf16 -> f32 is exact
}

}  // namespace

TEST_CASE(
    "cuda attention with bf16 tensors (fp32 inside) matches the f32 CPU op on the same values") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_attention_bf16(2, 197, 3, 64, 800, cuda_ops::attention_impl::simt, 1e-2);
}

TEST_CASE("cuda attention on the tensor cores (bf16) matches the CPU op: head dims 16, 32, 64") {
  SKIP_WITHOUT_CUDA_DEVICE();
  constexpr auto tc = cuda_ops::attention_impl::tensor_cores;
  check_attention_bf16(2, 49, 3, 16, 900, tc, 2e-2);   // one partial tile of 64
  check_attention_bf16(1, 257, 2, 32, 910, tc, 2e-2);  // one key past four tiles
  check_attention_bf16(3, 1, 1, 64, 920, tc, 2e-2);    // one token
  check_attention_bf16(4, 197, 3, 64, 930, tc, 2e-2);  // ViT-Tiny
  check_attention_bf16(2, 128, 6, 64, 940, tc, 2e-2);  // whole tiles only
  check_attention_bf16(1, 1030, 1, 32, 950, tc, 2e-2);
}

TEST_CASE("cuda attention backward repeats bit-exactly") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const index_t b = 2, n = 197, heads = 3, d = 192;
  const auto qkv = on_device(Tensor<float>::randn({b, n, 3 * d}, 700));
  const auto g = on_device(Tensor<float>::randn({b, n, d}, 701));
  const auto out = Tensor<float, cuda>::empty({b, n, d}),
             lse = Tensor<float, cuda>::empty({b, heads, n});
  cuda_ops::attention_forward(qkv, int(heads), out, lse);
  const auto d1 = Tensor<float, cuda>::empty({b, n, 3 * d}),
             d2 = Tensor<float, cuda>::empty({b, n, 3 * d});
  cuda_ops::attention_backward(qkv, out, g, lse, int(heads), d1);
  cuda_ops::attention_backward(qkv, out, g, lse, int(heads), d2);
  check_identical(d1, d2);
}

TEST_CASE("cuda attention refuses an unsupported head_dim with a clear error") {
  // Runs without a device: the shape checks come before any allocation or launch, and a tensor
  // with no elements allocates nothing.
  const auto qkv = Tensor<float, cuda>::empty({1, 0, 3 * 40});
  const std::string msg = error_of(
      [&] { cuda_ops::attention_forward(qkv, 1, Tensor<float, cuda>{}, Tensor<float, cuda>{}); });
  CHECK(msg.find("head_dim 40") != std::string::npos);
  CHECK(msg.find("16, 32 or 64") != std::string::npos);
  const std::string msg2 = error_of([&] {
    cuda_ops::attention_backward(qkv, Tensor<float, cuda>{}, Tensor<float, cuda>{},
                                 Tensor<float, cuda>{}, 1, Tensor<float, cuda>{});
  });
  CHECK(msg2.find("head_dim 40") != std::string::npos);
}
