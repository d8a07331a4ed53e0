// matmul against a naive triple loop: transposed and strided operands, batches, broadcasting,
// alpha/beta accumulation, bf16, shape errors, and the matmul precision's input rounding.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <flsl/flsl.hpp>

using namespace flsl;

namespace {
Tensor<double> naive(const Tensor<double>& a, const Tensor<double>& b) {
  const index_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  const bool batched = a.rank() == 3 || b.rank() == 3;
  const index_t B =
      batched ? std::max(a.rank() == 3 ? a.size(0) : 1, b.rank() == 3 ? b.size(0) : 1) : 1;
  auto c = batched ? Tensor<double>::zeros({B, M, N}) : Tensor<double>::zeros({M, N});
  for (index_t q = 0; q < B; ++q) {
    auto aq = a.rank() == 3 ? a.select(0, a.size(0) == 1 ? 0 : q) : a;
    auto bq = b.rank() == 3 ? b.select(0, b.size(0) == 1 ? 0 : q) : b;
    auto cq = batched ? c.select(0, q) : c;
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) {
        double s = 0;
        for (index_t k = 0; k < K; ++k) s += aq(i, k) * bq(k, j);
        cq(i, j) = s;
      }
  }
  return c;
}
template <class T>
void check_close(const Tensor<T>& got, const Tensor<double>& want, double tol) {
  REQUIRE(got.shape() == want.shape());
  auto g = got.template to<double>().to_vector();
  auto w = want.to_vector();
  for (std::size_t i = 0; i < g.size(); ++i)
    CHECK(g[i] == doctest::Approx(w[i]).epsilon(tol).scale(1));
}
}  // namespace

TEST_CASE("2-D matmul with every transpose combination and strided views") {
  for (auto [M, K, N] : {std::tuple{3, 4, 5}, {1, 7, 1}, {70, 33, 65}, {257, 130, 96}}) {
    CAPTURE(M);
    auto a = Tensor<double>::randn({M, K}, 1), b = Tensor<double>::randn({K, N}, 2);
    auto at = a.t().contiguous(), bt = b.t().contiguous();
    auto want = naive(a, b);
    check_close(matmul(a, b), want, 1e-12);
    check_close(matmul(at.t(), b), want, 1e-12);
    check_close(matmul(a, bt.t()), want, 1e-12);
    check_close(matmul(at.t(), bt.t()), want, 1e-12);
    // every other row/column: a view Eigen cannot map directly is copied
    auto wide = Tensor<double>::randn({M, 2 * K}, 3);
    auto strided = wide.slice(1, 0, 2 * K, 2);
    check_close(matmul(strided, b), naive(strided, b), 1e-12);
    // transposed output: c^T = b^T a^T path
    auto c = Tensor<double>::zeros({N, M});
    matmul_into(c.t(), a, b);
    check_close(c.t().contiguous(), want, 1e-12);
  }
}

TEST_CASE("alpha and beta accumulate into the output") {
  auto a = Tensor<double>::randn({20, 30}, 4), b = Tensor<double>::randn({30, 10}, 5);
  auto c0 = Tensor<double>::randn({20, 10}, 6);
  auto c = c0.clone();
  matmul_into(c, a, b, 0.5, 2.0);
  auto ab = naive(a, b);
  for (index_t i = 0; i < 20; ++i)
    for (index_t j = 0; j < 10; ++j)
      CHECK(c(i, j) == doctest::Approx(0.5 * ab(i, j) + 2.0 * c0(i, j)).epsilon(1e-12));
}

TEST_CASE("batched matmul, broadcasting a batch of one or a 2-D operand") {
  auto a = Tensor<double>::randn({6, 9, 7}, 7), b = Tensor<double>::randn({6, 7, 5}, 8);
  check_close(matmul(a, b), naive(a, b), 1e-12);
  auto b2 = Tensor<double>::randn({7, 5}, 9);
  check_close(matmul(a, b2), naive(a, b2), 1e-12);  // one tall product
  auto b1 = b2.unsqueeze(0);
  check_close(matmul(a, b1), naive(a, b1), 1e-12);
  auto a2 = Tensor<double>::randn({9, 7}, 10);
  check_close(matmul(a2, b), naive(a2, b), 1e-12);
  // attention-like: q @ k^T per batch, with k^T a view
  auto k = Tensor<double>::randn({6, 9, 7}, 11);
  check_close(matmul(a, k.t()), naive(a, k.t()), 1e-12);
  // many batches: the parallel-over-batch path
  auto x = Tensor<float>::randn({64, 16, 8}, 12), y = Tensor<float>::randn({64, 8, 16}, 13);
  check_close(matmul(x, y), naive(x.to<double>(), y.to<double>()), 1e-5);
}

TEST_CASE("large f32 products split over threads match f64") {
  auto a = Tensor<float>::randn({512, 384}, 14), b = Tensor<float>::randn({384, 300}, 15);
  auto want = naive(a.to<double>(), b.to<double>());
  auto got = matmul(a, b).to<double>();
  double maxerr = 0;
  auto g = got.to_vector(), w = want.to_vector();
  for (std::size_t i = 0; i < g.size(); ++i) maxerr = std::max(maxerr, std::abs(g[i] - w[i]));
  CHECK(maxerr < 1e-3);  // |sum| ~ sqrt(384) ~ 20, f32 epsilon 6e-8 * 384 terms
}

TEST_CASE("bf16 matmul computes in f32") {
  auto a = Tensor<float>::randn({8, 16}, 16).to<bf16>(),
       b = Tensor<float>::randn({16, 4}, 17).to<bf16>();
  auto want = naive(a.to<double>(), b.to<double>());
  check_close(matmul(a, b), want, 1e-2);
}

TEST_CASE("matmul shape errors name the operation and both shapes") {
  auto a = Tensor<float>::zeros({3, 4}), b = Tensor<float>::zeros({5, 6});
  CHECK_THROWS_WITH_AS(matmul(a, b),
                       doctest::Contains("matmul: inner dimensions differ: [3, 4] @ [5, 6]"),
                       flsl::error);
  auto c = Tensor<float>::zeros({3, 3});
  CHECK_THROWS_WITH_AS(
      matmul_into(c, a, Tensor<float>::zeros({4, 6})),
      doctest::Contains("matmul: output shape [3, 3] but [3, 4] @ [4, 6] is [3, 6]"), flsl::error);
  CHECK_THROWS_WITH_AS(matmul(Tensor<float>::zeros({2, 3, 4}), Tensor<float>::zeros({3, 4, 5})),
                       doctest::Contains("batch sizes differ"), flsl::error);
  auto z = Tensor<float>::zeros({3, 0});
  auto out = matmul(z, Tensor<float>::zeros({0, 2}));
  CHECK(out.to_vector() == std::vector<float>(6, 0.0f));
}

// ---- matmul precision (backend/matmul_precision.hpp): the CPU emulates the tensor cores' input
// rounding. Values chosen so that each precision gives a different, exactly known product.

TEST_CASE("GEMM input rounding: TF32 and bf16 keep 10 and 7 mantissa bits, ties to even") {
  using detail::round_for_matmul;
  constexpr auto tf32 = matmul_precision::tf32, bf = matmul_precision::bf16;
  const float e = std::ldexp(1.0f, -10);  // TF32's ulp at 1
  CHECK(round_for_matmul(1.0f + std::ldexp(1.0f, -12), tf32) == 1.0f);
  CHECK(round_for_matmul(1.0f + e, tf32) == 1.0f + e);
  CHECK(round_for_matmul(1.0f + e / 2, tf32) == 1.0f);                // tie: to the even 1
  CHECK(round_for_matmul(1.0f + 3 * e / 2, tf32) == 1.0f + 2 * e);    // tie: to the even 1+2e
  CHECK(round_for_matmul(-(1.0f + 3 * e / 4), tf32) == -(1.0f + e));  // above the tie: up
  CHECK(round_for_matmul(1.0f + std::ldexp(1.0f, -9), bf) == 1.0f);   // below bf16's half ulp
  CHECK(round_for_matmul(1.0f + std::ldexp(1.0f, -7), bf) == 1.0f + std::ldexp(1.0f, -7));
  CHECK(std::isinf(round_for_matmul(std::numeric_limits<float>::max(), bf)));  // rounds past max
  CHECK(std::isinf(round_for_matmul(INFINITY, tf32)));
  CHECK(std::isnan(round_for_matmul(NAN, bf)));
  CHECK(round_for_matmul(1.2345678f, matmul_precision::exact) == 1.2345678f);
  // bf16 rounding is the bf16 type's conversion, value for value
  const auto r = Tensor<float>::randn({4096}, 3).to_vector();
  for (float x : r) {
    const float y = x * 1e3f;
    CHECK(round_for_matmul(y, bf) == float(bf16(y)));
  }
}

TEST_CASE("GEMM input rounding to fp16: range, subnormals and overflow") {
  const auto h = [](float x) { return detail::round_for_matmul(x, matmul_precision::fp16); };
  CHECK(h(65504.0f) == 65504.0f);  // the largest half
  CHECK(h(65519.0f) == 65504.0f);
  CHECK(std::isinf(h(65520.0f)));  // the tie with 2^16 goes to the even 2^16: infinity
  CHECK(h(-1e5f) == -INFINITY);
  CHECK(h(1.0f + std::ldexp(1.0f, -11)) == 1.0f);                // 10 mantissa bits, ties to even
  CHECK(h(std::ldexp(1.0f, -14)) == std::ldexp(1.0f, -14));      // smallest normal
  CHECK(h(std::ldexp(1.0f, -24)) == std::ldexp(1.0f, -24));      // smallest subnormal
  CHECK(h(std::ldexp(1.0f, -25)) == 0.0f);                       // tie with 0: to the even 0
  CHECK(h(3 * std::ldexp(1.0f, -25)) == std::ldexp(1.0f, -23));  // tie 1.5 quanta: to 2
  CHECK(h(std::ldexp(1.3f, -20)) == std::ldexp(1.0f, -24) * std::nearbyint(1.3f * 16.0f));
  CHECK(h(1e-9f) == 0.0f);
  CHECK(std::signbit(h(-1e-9f)));
  CHECK(std::isnan(h(NAN)));
#if defined(__FLT16_MAX__) && !defined(__CUDACC__)
  // the compiler's own float -> _Float16 conversion, over values spanning fp16's whole range
  const auto r = Tensor<float>::randn({20000}, 4).to_vector();
  for (std::size_t i = 0; i < r.size(); ++i) {
    const float x = r[i] * std::ldexp(1.0f, int(i % 48) - 30);
    CHECK(h(x) == float(static_cast<_Float16>(x)));
  }
#endif
}

TEST_CASE("f32 matmuls follow the matmul precision; f64 ignores it; a scope restores it") {
  REQUIRE(get_matmul_precision() == matmul_precision::exact);
  const index_t K = 64;  // partial sums k (1 + 2^-12) are exact in fp32 for k <= 2^11
  const auto ones = Tensor<float>::full({K, 3}, 1.0f);
  auto product = [&](float v, matmul_precision p) {
    matmul_precision_scope scope(p);
    return matmul(Tensor<float>::full({2, K}, v), ones).to_vector();
  };
  const float a = 1.0f + std::ldexp(1.0f, -12), b = 1.0f + std::ldexp(1.0f, -9);
  CHECK(product(a, matmul_precision::exact) == std::vector<float>(6, float(K) * a));
  CHECK(product(a, matmul_precision::tf32) == std::vector<float>(6, float(K)));
  CHECK(product(a, matmul_precision::fp16) == std::vector<float>(6, float(K)));
  CHECK(product(b, matmul_precision::tf32) == std::vector<float>(6, float(K) * b));
  CHECK(product(b, matmul_precision::fp16) == std::vector<float>(6, float(K) * b));
  CHECK(product(b, matmul_precision::bf16) == std::vector<float>(6, float(K)));
  const auto big = product(7e4f, matmul_precision::fp16);
  CHECK(std::isinf(big[0]));                                               // fp16 overflows
  CHECK(product(7e4f, matmul_precision::bf16)[0] == float(K) * 70144.0f);  // bf16(7e4) = 70144
  CHECK(get_matmul_precision() == matmul_precision::exact);  // every scope restored it
  {
    matmul_precision_scope scope(matmul_precision::bf16);
    const auto d =
        matmul(Tensor<double>::full({2, K}, double(b)), Tensor<double>::full({K, 1}, 1.0));
    CHECK(d(0, 0) == double(K) * double(b));
    // transposed and batched operands are rounded too
    const auto bt = Tensor<float>::full({3, K}, 1.0f).t();
    CHECK(matmul(Tensor<float>::full({2, 2, K}, b), bt).to_vector() ==
          std::vector<float>(12, float(K)));
  }
  CHECK(parse_matmul_precision("tf32") == matmul_precision::tf32);
  CHECK_THROWS_WITH_AS(parse_matmul_precision("fp8"),
                       doctest::Contains("matmul precision 'fp8' is not one of exact, tf32, bf16, "
                                         "fp16"),
                       flsl::error);
}

TEST_CASE("reduced-precision products stay within their input rounding of the exact product") {
  const auto a = Tensor<float>::randn({48, 96}, 20), b = Tensor<float>::randn({96, 40}, 21);
  const auto want = naive(a.to<double>(), b.to<double>());
  const auto scale =
      naive(Tensor<double>(abs(a.to<double>())), Tensor<double>(abs(b.to<double>()))).to_vector();
  auto max_rel = [&](matmul_precision p) {
    matmul_precision_scope scope(p);
    const auto g = matmul(a, b).to<double>().to_vector();
    const auto w = want.to_vector();
    double m = 0;
    for (std::size_t i = 0; i < g.size(); ++i) m = std::max(m, std::abs(g[i] - w[i]) / scale[i]);
    return m;
  };
  // each input is off by at most half an ulp (2^-11 TF32 / fp16, 2^-8 bf16), a product by twice
  const double exact = max_rel(matmul_precision::exact), tf = max_rel(matmul_precision::tf32),
               bf = max_rel(matmul_precision::bf16), hf = max_rel(matmul_precision::fp16);
  CHECK(exact < 1e-6);
  CHECK(tf < std::ldexp(1.0, -10) * 1.01);
  CHECK(hf < std::ldexp(1.0, -10) * 1.01);
  CHECK(bf < std::ldexp(1.0, -7) * 1.01);
  CHECK(tf > 20 * exact);  // the rounding did happen
  CHECK(bf > 4 * tf);
}

namespace {
/// The f64 product of f32 operands and the bound |a| @ |b| that f32 rounding errors scale with.
std::pair<Tensor<double>, Tensor<double>> product_and_scale(const Tensor<float>& a,
                                                            const Tensor<float>& b) {
  const auto a64 = a.to<double>(), b64 = b.to<double>();
  Tensor<double> aa = abs(a64), ab = abs(b64);
  return {naive(a64, b64), naive(aa, ab)};
}
/// |got - want| <= K * 2^-23 * (|a| @ |b|) elementwise: what f32 accumulation over K terms allows.
void check_f32_product(const Tensor<float>& got, const Tensor<double>& want,
                       const Tensor<double>& scale, index_t K) {
  REQUIRE(got.shape() == want.shape());
  const auto g = got.to<double>().to_vector(), w = want.to_vector(), s = scale.to_vector();
  const double eps = double(K) * std::ldexp(1.0, -23);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < g.size(); ++i) bad += !(std::abs(g[i] - w[i]) <= eps * s[i] + 1e-30);
  CHECK(bad == 0);
}
}  // namespace

// backend/cpu/sgemm.hpp (the f32 kernel on AVX2 + FMA / AVX-512F targets; Eigen elsewhere): tiles
// of 6 x 16 or 12 x 32, K blocks of at most 256, row blocks of at most 144. The shapes cross each
// of those edges (partial tiles, several K and row blocks, zero padding) in every layout.
TEST_CASE("f32 matmul across the register tile, K block and row block edges, every layout") {
  for (auto [M, K, N] : {std::tuple{12, 8, 16},
                         {13, 255, 33},
                         {6, 257, 32},
                         {145, 600, 31},
                         {300, 96, 70},
                         {7, 513, 100}}) {
    CAPTURE(M);
    CAPTURE(K);
    CAPTURE(N);
    const auto a = Tensor<float>::randn({M, K}, 11), b = Tensor<float>::randn({K, N}, 12);
    const auto [want, scale] = product_and_scale(a, b);
    const auto at = a.t().contiguous(), bt = b.t().contiguous();
    check_f32_product(matmul(a, b), want, scale, K);
    check_f32_product(matmul(at.t(), b), want, scale, K);
    check_f32_product(matmul(a, bt.t()), want, scale, K);
    check_f32_product(matmul(at.t(), bt.t()), want, scale, K);
    // operands that are offset views with leading dimensions wider than their rows (unaligned)
    const auto a_wide = Tensor<float>::zeros({M, K + 3}),
               b_wide = Tensor<float>::zeros({K + 1, N + 7});
    a_wide.narrow(1, 1, K).copy_from(a);
    b_wide.narrow(0, 1, K).narrow(1, 5, N).copy_from(b);
    check_f32_product(matmul(a_wide.narrow(1, 1, K), b_wide.narrow(0, 1, K).narrow(1, 5, N)), want,
                      scale, K);
    // a row-major output with a leading dimension wider than N
    auto wide = Tensor<float>::zeros({M, N + 5});
    matmul_into(wide.narrow(1, 0, N), a, b);
    check_f32_product(wide.narrow(1, 0, N).contiguous(), want, scale, K);
    CHECK(max(abs(wide.narrow(1, N, 5))).item() == 0.0f);
  }
}

TEST_CASE("f32 matmul: beta = 0 never reads the output; alpha and beta otherwise") {
  const index_t M = 50, K = 300, N = 40;
  const auto a = Tensor<float>::randn({M, K}, 13), b = Tensor<float>::randn({K, N}, 14);
  const auto [ab, scale] = product_and_scale(a, b);
  auto c = Tensor<float>::full({M, N}, std::numeric_limits<float>::quiet_NaN());
  matmul_into(c, a, b, 2.0, 0.0);
  check_f32_product(c, Tensor<double>(ab * 2.0), Tensor<double>(scale * 2.0), K);
  const auto c0 = Tensor<float>::randn({M, N}, 15);
  c = c0.clone();
  matmul_into(c, a, b, 0.5, -1.5);
  const Tensor<double> want = ab * 0.5 + c0.to<double>() * -1.5;
  const Tensor<double> bound = scale * 0.5 + abs(c0.to<double>()) * 1.5;
  check_f32_product(c, want, bound, K);
}

TEST_CASE("f32 matmul gives the same bits on 1 and 2 threads, and inside a parallel loop") {
  const index_t M = 400, K = 700, N = 300;
  const auto a = Tensor<float>::randn({M, K}, 16), b = Tensor<float>::randn({K, N}, 17);
  Tensor<float> one, two;
  tbb::task_arena(1).execute([&] { one = matmul(a, b); });
  tbb::task_arena(2).execute([&] { two = matmul(a.t().contiguous().t(), b); });
  CHECK(max(abs(one - two)).item() == 0.0f);
  // products that split over threads, started from the tasks of an outer parallel loop: a thread
  // that waits inside one may run another's task (the packing buffers must not be shared)
  std::vector<Tensor<float>> outs(8);
  tbb::task_arena(2).execute([&] {
    tbb::parallel_for(0, 8, [&](int i) {
      const Tensor<float> ai = a * float(i + 1);
      outs[std::size_t(i)] = matmul(ai, b);
    });
  });
  for (int i = 0; i < 8; ++i) {
    CAPTURE(i);
    const Tensor<float> want = one * float(i + 1);  // scaling by a small integer: exact when
    const Tensor<float> diff = outs[std::size_t(i)] - want;  // i + 1 is a power of two only
    if ((i + 1) & i) {
      CHECK(max(abs(diff)).item() <= 1e-3f * max(abs(want)).item());
    } else {
      CHECK(max(abs(diff)).item() == 0.0f);
    }
  }
}
