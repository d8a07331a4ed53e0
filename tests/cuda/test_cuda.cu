// The CUDA backend against the CPU: transfers, fused expressions, reductions, cuBLASLt GEMM and
// the Philox random numbers. Each GPU test case computes the same thing on both devices from the
// same inputs and compares with the tolerance stated next to it; without a device it prints
// "skipped: no CUDA device" and passes (test_cuda_main.cpp then exits 77: CTest shows Skipped).
#include <doctest/doctest.h>

#include <cmath>
#include <flsl/backend/cpu/gemm.hpp>
#include <flsl/backend/cuda.cuh>
#include <flsl/expr/reduce.hpp>
#include <sstream>

#include "cuda_test_support.cuh"

using namespace flsl;

namespace {

/// Largest |gpu - ref| - (abs_tol + rel * |ref|) over the elements (<= 0: all within tolerance);
/// NaNs must be at the same places. `scale`, when given, replaces |ref| (GEMM: |a| @ |b|).
template <class T, class U>
void check_close(const Tensor<T, cuda>& gpu, const Tensor<U, cpu>& ref, double rel,
                 double abs_tol = 0.0, const Tensor<double, cpu>& scale = {}) {
  REQUIRE(gpu.shape() == ref.shape());
  const auto g = gpu.template to<cpu>().template to<double>().to_vector();
  const auto r = ref.template to<double>().to_vector();
  const auto s = scale.defined() ? scale.to_vector() : std::vector<double>{};
  double worst = -1;
  std::size_t at = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i]) || std::isnan(r[i])) {
      CHECK_MESSAGE(std::isnan(g[i]) == std::isnan(r[i]), "NaN mismatch at element ", i);
      continue;
    }
    const double mag = s.empty() ? std::abs(r[i]) : s[i];
    const double excess = std::abs(g[i] - r[i]) - (abs_tol + rel * mag);
    if (excess > worst) worst = excess, at = i;
  }
  INFO("worst element ", at, ": cuda ", g.empty() ? 0.0 : g[at], " cpu ", r.empty() ? 0.0 : r[at]);
  CHECK(worst <= 0);
}
template <class T, class U>
void check_equal(const Tensor<T, cuda>& gpu, const Tensor<U, cpu>& ref) {
  check_close(gpu, ref, 0.0, 0.0);
}

// f32 elementwise tolerances. + - * / are correctly rounded on both devices, but either compiler
// may contract a * b + c into an FMA (nvcc does by default, g++ -march=native may), which moves
// the result by up to half an ulp of the product: operands here are N(0, 1), products below 16,
// so 4e-6 absolute. CUDA's expf, tanhf, erff, sinf, cosf are within 2 ulp of the true value and
// glibc's within 1, and the CPU's f32 GELU uses erf_f32 (expr/vector_math.hpp, within 3 ulp):
// 5 ulp relative (6e-7) covers each pair.
constexpr double f32_arith_abs = 4e-6, f32_ulp = 1.2e-7, f32_transcendental_rel = 6e-7;

}  // namespace

TEST_CASE("the caching allocator rounds requests into buckets") {
  CHECK(cuda_caching_allocator::rounded(1) == 512);
  CHECK(cuda_caching_allocator::rounded(513) == 1024);
  CHECK(cuda_caching_allocator::rounded(std::size_t(1) << 20) == std::size_t(1) << 20);
  // above 1 MiB: multiples of 1/8 of the next power of two (here 2 MiB / 8 = 256 KiB)
  CHECK(cuda_caching_allocator::rounded((std::size_t(1) << 20) + 1) ==
        (std::size_t(1) << 20) + (std::size_t(1) << 18));
}

TEST_CASE("without a device, allocating a cuda tensor fails with the CUDA error") {
  if (cuda_available()) {
    MESSAGE("skipped: a CUDA device is present");
    return;
  }
  auto allocate = [] { return Tensor<float, cuda>::empty({4}); };
  CHECK_THROWS_WITH_AS(allocate(), doctest::Contains("CUDA error"), flsl::error);
  auto allocate_nothing = [] { return Tensor<float, cuda>::empty({0, 3}); };
  CHECK_NOTHROW(allocate_nothing());
  auto copy_undefined = [] { return Tensor<float, cuda>{}.to<cpu>(); };
  CHECK_THROWS_WITH_AS(copy_undefined(), doctest::Contains("undefined"), flsl::error);
}

TEST_CASE("the caching allocator makes no cudaMalloc in the steady state") {
  SKIP_WITHOUT_CUDA_DEVICE();
  auto step = [] {
    auto a = Tensor<float, cuda>::empty({1000, 100});  // [1000, 100]
    auto b = Tensor<float, cuda>::empty({37});
    a.fill(1.0f);
    b.fill(2.0f);
    Tensor<float, cuda> c = a * 2.0f;
  };
  step();
  const cuda_memory_stats before = cuda_memory();
  for (int i = 0; i < 3; ++i) step();
  const cuda_memory_stats after = cuda_memory();
  CHECK(after.device_allocations == before.device_allocations);
  CHECK(after.reuses >= before.reuses + 9);
  CHECK(after.in_use == before.in_use);
  CHECK(after.peak_in_use >= 2 * cuda_caching_allocator::rounded(400000));
  CHECK(after.cached >= 2 * cuda_caching_allocator::rounded(400000));
}

TEST_CASE("transfers round-trip values, strided views included") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto x = Tensor<float>::randn({3, 4, 5}, 1);
  const auto view = x.permute({2, 0, 1}).slice(2, 0, 4, 2);  // [5, 3, 2], not contiguous
  const auto g = view.to<cuda>();
  CHECK(g.is_contiguous());
  check_equal(g, view);
  CHECK(g.to<cpu>().to_vector() == view.to_vector());
  check_equal(x.to<cuda>().permute({2, 0, 1}), x.permute({2, 0, 1}));  // strided device view

  const auto h = Tensor<bf16>::randn({7, 3}, 2);
  check_equal(h.to<cuda>(), h);
  const auto i = Tensor<std::int64_t>::arange(-5, 12, 3);
  check_equal(i.to<cuda>(), i);
  const auto big = Tensor<float>::randn({3 << 20}, 3);  // 12 MiB: two staging chunks
  check_equal(big.to<cuda>(), big);

  CHECK(x.to<cuda>()[1].select(0, 2).select(0, 3).item() == x(1, 2, 3));
  std::ostringstream os;
  os << Tensor<float, cuda>::arange(3);
  CHECK(os.str() == "Tensor<f32, cuda>[3] {0, 1, 2}");
}

TEST_CASE("creation on cuda equals creation on the CPU") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_equal(Tensor<float, cuda>::full({3, 2}, 2.5f), Tensor<float>::full({3, 2}, 2.5f));
  check_equal(Tensor<double, cuda>::arange(0, 10, 0.5), Tensor<double>::arange(0, 10, 0.5));
  check_equal(Tensor<float, cuda>::from({1, 2, 3, 4}, {2, 2}),
              Tensor<float>::from({1, 2, 3, 4}, {2, 2}));
  check_equal(Tensor<std::int32_t, cuda>::zeros({5}), Tensor<std::int32_t>::zeros({5}));
  CHECK(Tensor<float, cuda>::scalar(4.0f).item() == 4.0f);
  CHECK(Tensor<float, cuda>::ones({0, 4}).numel() == 0);
}

TEST_CASE("elementwise expressions on cuda equal the CPU's") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto x = Tensor<float>::randn({4, 5, 6}, 10);                     // [4, 5, 6]
  const auto y = Tensor<float>::randn({5, 1}, 11);                        // broadcasts
  const auto z = Tensor<float>::randn({6, 5, 4}, 12).permute({2, 1, 0});  // strided [4, 5, 6]
  const auto gx = x.to<cuda>(), gy = y.to<cuda>();
  const auto gz = z.to<cuda>().permute({0, 1, 2});

  SUBCASE("arithmetic with broadcasting and views") {
    Tensor<float, cuda> g = gx * gy + gz / (gx * gx + 1.0f) - 2.0f;
    const Tensor<float> c = x * y + z / (x * x + 1.0f) - 2.0f;
    check_close(g, c, 2 * f32_ulp, f32_arith_abs);
    Tensor<float, cuda> s = gx.slice(2, 0, 6, 2) * gy;  // a stride-2 inner axis
    check_close(s, Tensor<float>(x.slice(2, 0, 6, 2) * y), 2 * f32_ulp, f32_arith_abs);
  }
  SUBCASE("transcendentals") {
    Tensor<float, cuda> g = exp(-abs(gx)) + tanh(gz) * gelu(gx) + sigmoid(gz) + sin(gx) * cos(gz);
    const Tensor<float> c = exp(-abs(x)) + tanh(z) * gelu(x) + sigmoid(z) + sin(x) * cos(z);
    check_close(g, c, 4 * f32_transcendental_rel, f32_arith_abs);
  }
  SUBCASE("comparisons, where and bool results are exact") {
    Tensor<bool, cuda> g = (gx > 0.0f) && (gz < 0.5f);
    const Tensor<bool> c = (x > 0.0f) && (z < 0.5f);
    check_equal(g, c);
    Tensor<float, cuda> w = where(gx > gz, gx, 0.0f);
    check_equal(w, Tensor<float>(where(x > z, x, 0.0f)));
  }
  SUBCASE("conversions: bf16 rounding is the same function on both devices") {
    Tensor<bf16, cuda> g = cast<bf16>(gx * 3.0f);
    check_equal(g, Tensor<bf16>(cast<bf16>(x * 3.0f)));
    check_equal(gx.to<double>(), x.to<double>());
    check_equal(g.to<float>(), Tensor<bf16>(cast<bf16>(x * 3.0f)).to<float>());
  }
  SUBCASE("a transposed destination, and a destination its input overlaps") {
    auto g = Tensor<float, cuda>::empty({6, 5, 4}).permute({2, 1, 0});
    g = gx + 1.0f;
    check_equal(g, Tensor<float>(x + 1.0f));
    const auto sq = Tensor<float>::randn({8, 8}, 13);
    auto gsq = sq.to<cuda>();
    gsq.assign(gsq.t());  // evaluated through a temporary
    check_equal(gsq, sq.t());
    gsq += 1.0f;
    check_equal(gsq, Tensor<float>(sq.t() + 1.0f));
  }
  SUBCASE("f64 and integers") {
    const auto xd = x.to<double>();
    Tensor<double, cuda> g = xd.to<cuda>() * xd.to<cuda>() - 0.25;
    check_close(g, Tensor<double>(xd * xd - 0.25), 2.3e-16, 1e-15);
    const auto i = Tensor<std::int64_t>::arange(100);
    Tensor<std::int64_t, cuda> gi = i.to<cuda>() * std::int64_t(3) - std::int64_t(7);
    check_equal(gi, Tensor<std::int64_t>(i * std::int64_t(3) - std::int64_t(7)));
  }
  SUBCASE("rank 0 and empty tensors") {
    auto s = Tensor<float, cuda>::scalar(2.0f);
    s = s * s + 1.0f;
    CHECK(s.item() == 5.0f);
    auto e = Tensor<float, cuda>::empty({3, 0});
    e = e + 1.0f;
    CHECK(e.numel() == 0);
  }
}

TEST_CASE("reductions on cuda equal the CPU's") {
  SKIP_WITHOUT_CUDA_DEVICE();
  auto x = Tensor<float>::randn({7, 300, 5}, 20);  // [7, 300, 5]
  const auto gx = x.to<cuda>();
  // Sums accumulate in double on both devices, in different orders, then round to f32: the
  // results agree to about an ulp of f32 (1e-6 relative, 1e-6 absolute near 0).
  for (const axes_t& axes :
       {axes_t{}, axes_t{0}, axes_t{1}, axes_t{2}, axes_t{0, 2}, axes_t{1, 2}}) {
    CAPTURE(axes.size());
    check_close(sum(gx, axes), sum(x, axes), 1e-6, 1e-6);
    check_close(mean(gx * gx, axes), mean(x * x, axes), 1e-6, 1e-6);
    check_equal(max(gx, axes), max(x, axes));  // max and min are exact
    check_equal(min(gx.permute({2, 0, 1}), axes), min(x.permute({2, 0, 1}), axes));
  }
  check_close(sum(gx, {1}, true), sum(x, {1}, true), 1e-6, 1e-6);
  // column reductions (reduce.cuh's two-pass kernel): a bias gradient's shape (3000 rows: 94
  // chunks of 32), an expression, bf16 values, a mean, a max, a broadcast operand, a transposed
  // view (its kept axis is the unit-strided one) and two reduced axes that coalesce into one
  const auto tall = Tensor<float>::randn({3000, 97}, 22);
  const auto gt = tall.to<cuda>();
  check_close(sum(gt, {0}), sum(tall, {0}), 1e-6, 1e-6);
  check_close(sum(gt * gt - gt, {0}), sum(tall * tall - tall, {0}), 1e-6, 1e-6);
  check_close(sum(gt.to<bf16>(), {0}).to<float>(), sum(tall.to<bf16>(), {0}).to<float>(), 1e-2,
              1e-2);
  check_close(mean(gt, {0}), mean(tall, {0}), 1e-6, 1e-6);
  check_equal(max(gt, {0}), max(tall, {0}));
  const auto row = Tensor<float>::randn({97}, 23);
  check_close(sum(gt * row.to<cuda>(), {0}), sum(tall * row, {0}), 1e-6, 1e-6);
  check_close(sum(gt.t(), {1}), sum(tall.t(), {1}), 1e-6, 1e-6);
  check_close(sum(gt.view({30, 100, 97}), {0, 1}), sum(tall.view({30, 100, 97}), {0, 1}), 1e-6,
              1e-6);
  const auto big = Tensor<float>::randn({1 << 20}, 21);
  check_close(sum(big.to<cuda>()), sum(big), 1e-6, 1e-6);
  // NaN propagates through max; the mean of nothing is NaN.
  x(3, 100, 2) = std::nanf("");
  check_equal(max(x.to<cuda>(), {1}), max(x, {1}));
  check_equal(mean(Tensor<float, cuda>::zeros({3, 0}), {1}),
              mean(Tensor<float>::zeros({3, 0}), {1}));
  const auto xd = Tensor<double>::randn({33, 65}, 22);
  check_close(sum(xd.to<cuda>(), {0}), sum(xd, {0}), 1e-14, 1e-14);
  const auto i = Tensor<std::int32_t>::arange(1000);
  check_equal(sum(i.to<cuda>()), sum(i));
}

namespace {
/// a @ b in f64 on the host (the exact product of the stored values, to 1e-16), and |a| @ |b|
/// (the scale that bounds the rounding error of any summation order). 2-D or batched.
template <class T>
std::pair<Tensor<double>, Tensor<double>> reference_matmul(const Tensor<T>& a, const Tensor<T>& b) {
  const bool batched = a.rank() == 3 || b.rank() == 3;
  const index_t batch = std::max(a.rank() == 3 ? a.size(0) : 1, b.rank() == 3 ? b.size(0) : 1);
  const index_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  auto c = Tensor<double>::zeros({batch, M, N}), s = Tensor<double>::zeros({batch, M, N});
  auto mat = [](const Tensor<T>& x, index_t i) {
    return x.rank() == 2 ? x : x.select(0, x.size(0) == 1 ? 0 : i);
  };
  for (index_t p = 0; p < batch; ++p) {
    const auto A = mat(a, p).template to<double>(), B = mat(b, p).template to<double>();
    for (index_t m = 0; m < M; ++m)
      for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k) {
          c(p, m, n) += A(m, k) * B(k, n);
          s(p, m, n) += std::abs(A(m, k) * B(k, n));
        }
  }
  if (!batched) return {c.select(0, 0), s.select(0, 0)};
  return {c, s};
}
template <class T>
void check_matmul(const Tensor<T>& a, const Tensor<T>& b, double rel, gemm_options opt = {}) {
  const auto [ref, scale] = reference_matmul(a, b);
  check_close(matmul(a.template to<cuda>(), b.template to<cuda>(), opt), ref, rel, 0.0, scale);
}
}  // namespace

// fp32 GEMM: each product is exact in fp32's 24 bits and the fp32 sums of K terms are off by about
// K * 2^-24 * sum|a b| at worst (random signs: far less): 1e-5 of |a| @ |b| for K <= 128.
TEST_CASE("matmul on cuda equals the product on the CPU (fp32, f64)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto a = Tensor<float>::randn({33, 17}, 30), b = Tensor<float>::randn({17, 29}, 31);
  const auto at = Tensor<float>::randn({17, 33}, 32), bt = Tensor<float>::randn({29, 17}, 33);
  check_matmul(a, b, 1e-5);
  check_matmul(at.t(), b, 1e-5);  // column-major a, read in place
  check_matmul(a, bt.t(), 1e-5);
  check_matmul(at.t(), bt.t(), 1e-5);
  check_matmul(Tensor<float>(a.slice(1, 0, 17, 2)), Tensor<float>(b.slice(0, 0, 17, 2)), 1e-5);
  // non-mappable view (stride-2 columns): copied first
  const auto wide = Tensor<float>::randn({33, 34}, 34);
  check_matmul(wide.slice(1, 0, 34, 2), b, 1e-5);

  const auto ba = Tensor<float>::randn({4, 9, 7}, 35), bb = Tensor<float>::randn({4, 7, 5}, 36);
  check_matmul(ba, bb, 1e-5);                                   // batched
  check_matmul(ba, Tensor<float>::randn({7, 5}, 37), 1e-5);     // shared 2-D b
  check_matmul(Tensor<float>::randn({1, 9, 7}, 38), bb, 1e-5);  // batch of 1 broadcasts
  check_matmul(ba, Tensor<float>::randn({4, 5, 7}, 39).transpose(1, 2), 1e-5);  // batched b^T

  // alpha, beta, and a column-major (transposed) output
  const auto c0 = Tensor<float>::randn({29, 33}, 40);
  auto gc = c0.to<cuda>().t();  // [33, 29], column-major
  matmul_into(gc, a.to<cuda>(), b.to<cuda>(), 0.5, 2.0);
  const auto [ref, scale] = reference_matmul(a, b);
  const Tensor<double> want = ref * 0.5 + c0.t().to<double>() * 2.0;
  check_close(gc, want, 1e-5, 1e-5, Tensor<double>(scale * 0.5 + abs(c0.t().to<double>()) * 2.0));
  // K = 0: the empty sum
  auto gk = Tensor<float, cuda>::full({3, 2}, 1.0f);
  matmul_into(gk, Tensor<float, cuda>::empty({3, 0}), Tensor<float, cuda>::empty({0, 2}), 1.0, 3.0);
  check_equal(gk, Tensor<float>::full({3, 2}, 3.0f));

  check_matmul(a.to<double>(), b.to<double>(), 1e-14);
}

TEST_CASE("matmul on cuda makes one cuBLASLt plan per shape and reuses it") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto a = Tensor<float>::randn({45, 23}, 50).to<cuda>();
  const auto b = Tensor<float>::randn({23, 31}, 51).to<cuda>();
  auto& plans = cuda_detail::gemm_plans::instance();
  const Tensor<float, cuda> first = matmul(a, b);
  const std::size_t after_first = plans.size();
  const Tensor<float, cuda> again = matmul(a, b);  // the same plan: nothing new
  CHECK(plans.size() == after_first);
  check_equal(again, first.to<cpu>());                     // and the same bits
  const Tensor<float, cuda> other = matmul(b.t(), a.t());  // another layout: a new plan
  CHECK(plans.size() == after_first + 1);
  check_matmul(b.t().to<cpu>(), a.t().to<cpu>(), 1e-5);
}

TEST_CASE("matmul_bias_into on cuda: the bias epilogue equals a @ b + bias on the CPU") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto a = Tensor<float>::randn({67, 40}, 60), w = Tensor<float>::randn({24, 40}, 61);
  const auto bias = Tensor<float>::randn({24}, 62);
  auto [ref, scale] = reference_matmul(a, w.t());  // f64 a w^T and |a| |w|^T
  const Tensor<double> want = ref + bias.to<double>();
  auto c = Tensor<float, cuda>::empty({67, 24});
  matmul_bias_into(c, a.to<cuda>(), w.to<cuda>().t(), bias.to<cuda>());  // epilogue path
  check_close(c, want, 1e-5, 1e-5, Tensor<double>(scale + abs(bias.to<double>())));
  auto wide = Tensor<float, cuda>::zeros({67, 48});
  const Tensor<float, cuda> strided = wide.slice(1, 0, 48, 2);  // not contiguous: the fallback
  matmul_bias_into(strided, a.to<cuda>(), w.to<cuda>().t(), bias.to<cuda>());
  check_close(strided, want, 1e-5, 1e-5, Tensor<double>(scale + abs(bias.to<double>())));
  // bf16: the bias is added in fp32 before the one rounding of the output
  auto cb = Tensor<bf16, cuda>::empty({67, 24});
  matmul_bias_into(cb, a.to<bf16>().to<cuda>(), w.to<bf16>().to<cuda>().t(),
                   bias.to<bf16>().to<cuda>());
  const auto [rb, sb] = reference_matmul(a.to<bf16>().to<float>(), w.to<bf16>().to<float>().t());
  check_close(cb, Tensor<double>(rb + bias.to<bf16>().to<double>()), 1e-2, 1e-2,
              Tensor<double>(sb + abs(bias.to<bf16>().to<double>())));
  CHECK_THROWS_WITH_AS(
      matmul_bias_into(c, a.to<cuda>(), w.to<cuda>().t(), bias.to<cuda>().narrow(0, 0, 5)),
      doctest::Contains("bias of shape [5] for an output of shape [67, 24]"), flsl::error);
}

// TF32 rounds each input to a 10-bit mantissa (relative error 2^-11 each, so 2^-10 per product):
// 3e-3 of |a| @ |b|. bf16 inputs are exact in fp32, products accumulate in fp32, and the output is
// rounded once to bf16 (2^-9 relative): 1e-2 of |a| @ |b|, with room for fp32 accumulation.
TEST_CASE("matmul on cuda: TF32 when allowed, bf16 inputs with fp32 accumulation") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto a = Tensor<float>::randn({64, 128}, 50), b = Tensor<float>::randn({128, 48}, 51);
  check_matmul(a, b, 3e-3, gemm_options{.precision = matmul_precision::tf32});
  const Tensor<bf16> ha = cast<bf16>(a), hb = cast<bf16>(b);
  check_matmul(ha, hb, 1e-2);
  check_matmul(Tensor<bf16>(cast<bf16>(Tensor<float>::randn({3, 16, 32}, 52))),
               Tensor<bf16>(cast<bf16>(Tensor<float>::randn({3, 32, 8}, 53))), 1e-2);
  CHECK_THROWS_WITH_AS(matmul(a.to<cuda>(), a.to<cuda>()), doctest::Contains("inner dimensions"),
                       flsl::error);
}

// The matmul precision policy reaches cuBLASLt's compute type. Exact-value inputs first (the CPU
// test's, tests/core/test_matmul.cpp): with K = 64 ones, every partial sum is exact in fp32, so
// the result shows only the input rounding, whatever order the tensor cores add in. Then random
// data against the CPU's emulation of the same rounding: the inputs are rounded identically, so
// only the fp32 accumulation order differs: 1e-5 of |a| @ |b|, as for exact fp32 (if cuBLASLt
// rounded its inputs other than to nearest even, this is where it shows).
TEST_CASE("matmul on cuda follows the matmul precision and matches the CPU's emulation") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const index_t K = 64;
  const auto ones = Tensor<float, cuda>::full({K, 3}, 1.0f);
  auto product = [&](float v, matmul_precision p) {
    matmul_precision_scope scope(p);  // the library-wide setting, not gemm_options
    return matmul(Tensor<float, cuda>::full({2, K}, v), ones).to<cpu>().to_vector();
  };
  const float a = 1.0f + std::ldexp(1.0f, -12), b = 1.0f + std::ldexp(1.0f, -9);
  CHECK(product(a, matmul_precision::exact) == std::vector<float>(6, float(K) * a));
  CHECK(product(a, matmul_precision::tf32) == std::vector<float>(6, float(K)));
  CHECK(product(a, matmul_precision::fp16) == std::vector<float>(6, float(K)));
  CHECK(product(b, matmul_precision::tf32) == std::vector<float>(6, float(K) * b));
  CHECK(product(b, matmul_precision::fp16) == std::vector<float>(6, float(K) * b));
  CHECK(product(b, matmul_precision::bf16) == std::vector<float>(6, float(K)));
  CHECK(std::isinf(product(7e4f, matmul_precision::fp16)[0]));  // fp16 overflows past 65504
  CHECK(product(7e4f, matmul_precision::bf16)[0] == float(K) * 70144.0f);

  const auto x = Tensor<float>::randn({96, 128}, 54), y = Tensor<float>::randn({128, 40}, 55);
  for (auto p : {matmul_precision::tf32, matmul_precision::bf16, matmul_precision::fp16}) {
    CAPTURE(to_string(p));
    matmul_precision_scope scope(p);
    const auto [ref, scale] = reference_matmul(x, y);  // |x| @ |y| as the tolerance's scale
    const Tensor<float> emulated = matmul(x, y);       // the CPU rounds the same inputs
    check_close(matmul(x.to<cuda>(), y.to<cuda>()), emulated, 1e-5, 0.0, scale);
    // an explicit gemm_options overrides the setting for one call
    check_close(
        matmul(x.to<cuda>(), y.to<cuda>(), gemm_options{.precision = matmul_precision::exact}), ref,
        1e-5, 0.0, scale);
  }
}

// The Philox words are integer arithmetic: identical on both devices, and so are the uniform
// doubles made from them. Normals go through log, sqrt and cos, which CUDA's and glibc's f64 math
// compute to within 1-2 ulp of each other: 1e-14 in f64; in f32 the rounded results agree to an
// ulp. A trunc_normal rejection could only differ for a draw within 1e-15 of a bound.
TEST_CASE("random numbers on cuda are the CPU's for the same (seed, offset)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  check_equal(Tensor<double, cuda>::rand({1000}, 7, 123), Tensor<double>::rand({1000}, 7, 123));
  check_close(Tensor<float, cuda>::rand({999}, 8, 5, -2.0, 3.0),
              Tensor<float>::rand({999}, 8, 5, -2.0, 3.0), f32_ulp);
  check_close(Tensor<double, cuda>::randn({4096}, 9, 77), Tensor<double>::randn({4096}, 9, 77),
              1e-14, 1e-14);
  check_close(Tensor<float, cuda>::randn({3, 50, 7}, 10, 1 << 20, 0.5, 2.0),
              Tensor<float>::randn({3, 50, 7}, 10, 1 << 20, 0.5, 2.0), f32_ulp, 1e-7);
  check_close(Tensor<float, cuda>::trunc_normal({5000}, 11, 0, 0.0, 0.02, -0.04, 0.04),
              Tensor<float>::trunc_normal({5000}, 11, 0, 0.0, 0.02, -0.04, 0.04), f32_ulp, 1e-9);
  check_close(Tensor<bf16, cuda>::randn({300}, 12), Tensor<bf16>::randn({300}, 12), 1.0 / 256);
}
