// Forward values of the reduce, shape, gather, layer_norm, softmax and normalize ops against
// direct formulas, their errors, and the behaviours the gradcheck rows do not see.
#include <doctest/doctest.h>

#include <tbb/task_arena.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <flsl/autograd/ops/gather.hpp>
#include <flsl/autograd/ops/layer_norm.hpp>
#include <flsl/autograd/ops/normalize.hpp>
#include <flsl/autograd/ops/reduce.hpp>
#include <flsl/autograd/ops/shape.hpp>
#include <flsl/autograd/ops/softmax.hpp>
#include <limits>
#include <string>
#include <type_traits>

using namespace flsl;

namespace {
/// The message of the flsl::error that f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const flsl::error& e) {
    return e.what();
  }
  return "";
}
bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}
}  // namespace

// ---- reduce ---------------------------------------------------------------------------------

TEST_CASE("Var sum and mean match the tensor reductions, and both overloads resolve") {
  const auto x = Tensor<double>::randn({3, 4, 5}, 1);
  const Var<double> v(x);
  static_assert(std::is_same_v<decltype(sum(x, {1})), Tensor<double>>);
  static_assert(std::is_same_v<decltype(sum(v, {1})), Var<double>>);
  static_assert(std::is_same_v<decltype(mean(v * v)), Var<double>>);
  static_assert(std::is_same_v<decltype(sum(x * x)), Tensor<double>>);
  CHECK(sum(v, {1}).value().to_vector() == sum(x, {1}).to_vector());
  CHECK(sum(v, {0, 2}, true).shape() == Shape{1, 4, 1});
  CHECK(mean(v).value().item() == doctest::Approx(mean(x).item()).epsilon(1e-15));
  CHECK(mean(v, {-1}).value().to_vector() == mean(x, {-1}).to_vector());
  // float Vars keep their type (the sum accumulates in double)
  const Var<float> f(Tensor<float>::full({1000}, 0.1f));
  CHECK(sum(f).value().item() == doctest::Approx(100.0).epsilon(1e-6));
}

TEST_CASE("mean's gradient is 1/n over the reduced axes") {
  Var<double> v(Tensor<double>::randn({3, 4, 5}, 2), true);
  sum(mean(v, {0, 2})).backward();
  for (double g : v.grad().to_vector()) CHECK(g == doctest::Approx(1.0 / 15));
}

// ---- shape ----------------------------------------------------------------------------------

TEST_CASE("view, permute, narrow, select, split, expand and squeeze share the input's memory") {
  const Var<double> x(Tensor<double>::randn({4, 6}, 3));
  const auto& t = x.value();
  CHECK(view(x, {2, 12}).value().shares_storage(t));
  CHECK(reshape(x, {24}).value().shares_storage(t));
  CHECK(permute(x, {1, 0}).value().shares_storage(t));
  CHECK(transpose(x, 0, 1).value().shares_storage(t));
  CHECK(narrow(x, 1, 2, 3).value().shares_storage(t));
  CHECK(select(x, 0, -1).value().shares_storage(t));
  for (const auto& p : split(x, {1, 5}, 1)) CHECK(p.value().shares_storage(t));
  CHECK(expand(unsqueeze(x, 0), {3, 4, 6}).value().shares_storage(t));
  CHECK(squeeze(unsqueeze(x, 1), 1).value().shares_storage(t));
  // a transposed input cannot be viewed flat: reshape copies, view refuses
  const Var<double> xt = transpose(x, 0, 1);
  CHECK_FALSE(reshape(xt, {24}).value().shares_storage(t));
  CHECK(reshape(xt, {24}).value().to_vector() == t.t().contiguous().to_vector());
  CHECK(contains(error_of([&] { (void)view(xt, {24}); }), "without a copy"));
}

TEST_CASE("narrow and select put their gradient in the slice and zeros elsewhere") {
  Var<double> x(Tensor<double>::zeros({4, 3}), true);
  sum(Var(narrow(x, 0, 1, 2) * 2.0)).backward();
  sum(select(x, 1, 0)).backward();  // accumulates into the existing gradient
  const auto& g = x.grad();
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 3; ++j)
      CHECK(g(i, j) == (i == 1 || i == 2 ? 2.0 : 0.0) + (j == 0 ? 1.0 : 0.0));
}

TEST_CASE("concat joins along an axis and split undoes it") {
  const Var<double> a(Tensor<double>::randn({2, 3, 4}, 4)), b(Tensor<double>::randn({2, 1, 4}, 5));
  const auto c = concat({a, b}, 1);
  CHECK(c.shape() == Shape{2, 4, 4});
  const auto parts = split(c, {3, 1}, -2);
  CHECK(parts[0].value().to_vector() == a.value().to_vector());
  CHECK(parts[1].value().to_vector() == b.value().to_vector());
  const auto bad = Var<double>(Tensor<double>::zeros({2, 3, 5}));
  CHECK(contains(error_of([&] { (void)concat({a, bad}, 1); }), "input 1 has shape [2, 3, 5]"));
  CHECK(contains(error_of([&] { (void)split(c, {3, 2}, 1); }), "add up to 5"));
}

// ---- gather ---------------------------------------------------------------------------------

TEST_CASE("index_select picks entries along any axis, in index order") {
  const auto x = Tensor<double>::randn({3, 5, 4}, 6);
  for (int axis = 0; axis < 3; ++axis) {
    CAPTURE(axis);
    const std::int64_t last = x.t().size(axis) - 1;  // repeated, first entry skipped
    const auto i = Tensor<std::int64_t>::from({last, 0, last});
    const auto y = index_select(Var<double>(x.t()), axis, i).value();  // strided input
    const auto xt = x.t();
    for (index_t a = 0; a < y.size(0); ++a)
      for (index_t b = 0; b < y.size(1); ++b)
        for (index_t c = 0; c < y.size(2); ++c) {
          index_t s[3] = {a, b, c};
          s[axis] = i(s[axis]);
          CHECK(y(a, b, c) == xt(s[0], s[1], s[2]));
        }
  }
}

TEST_CASE("gather_tokens picks tokens per image and adds repeated indices' gradients") {
  Var<double> x(Tensor<double>::randn({2, 5, 3}, 7), true);
  const auto idx = Tensor<std::int64_t>::from({1, 1, 4, 0, 3, 1}, {2, 3});
  const auto y = gather_tokens(x, idx);
  CHECK(y.shape() == Shape{2, 3, 3});
  for (index_t b = 0; b < 2; ++b)
    for (index_t q = 0; q < 3; ++q)
      for (index_t d = 0; d < 3; ++d) CHECK(y.value()(b, q, d) == x.value()(b, idx(b, q), d));
  sum(y).backward();
  const double want[2][5] = {{0, 2, 0, 0, 1}, {1, 1, 0, 1, 0}};
  for (index_t b = 0; b < 2; ++b)
    for (index_t n = 0; n < 5; ++n)
      for (index_t d = 0; d < 3; ++d) CHECK(x.grad()(b, n, d) == want[b][n]);
}

TEST_CASE("mask_select_tokens keeps the masked tokens in order") {
  const Var<double> x(Tensor<double>::randn({2, 4, 3}, 8));
  const auto mask =
      Tensor<bool>::from({false, true, true, false, true, false, false, true}, {2, 4});
  const auto y = mask_select_tokens(x, mask);
  const auto want = gather_tokens(x, Tensor<std::int64_t>::from({1, 2, 0, 3}, {2, 2}));
  CHECK(y.value().to_vector() == want.value().to_vector());
}

TEST_CASE("gathers name the bad index, the axis and the shape") {
  const Var<double> x(Tensor<double>::zeros({2, 5, 3}));
  const auto e1 = error_of([&] { (void)index_select(x, 1, Tensor<std::int64_t>::from({0, 7})); });
  CHECK(contains(e1, "index_select: index 7 at position 1"));
  CHECK(contains(e1, "axis 1 of shape [2, 5, 3]"));
  const auto e2 = error_of([&] {
    (void)gather_tokens(x, Tensor<std::int64_t>::from({0, 1, -1, 2}, {2, 2}));
  });
  CHECK(contains(e2, "gather_tokens: index -1 at [1, 0]"));
  CHECK(contains(e2, "axis 1 of shape [2, 5, 3]"));
  const auto e3 = error_of([&] {
    (void)mask_select_tokens(
        x, Tensor<bool>::from({true, true, false, false, false, true, true, true, false, false},
                              {2, 5}));
  });
  CHECK(contains(e3, "row 0 of the mask selects 2 tokens but row 1 selects 3"));
  CHECK(contains(error_of([&] {
                   (void)gather_tokens(x, Tensor<std::int64_t>::zeros({3, 2}));
                 }),
                 "idx must be [B, Q] with B = 2"));
}

// ---- layer_norm -----------------------------------------------------------------------------

namespace {
/// Direct LayerNorm of a [rows, d] tensor in double.
std::vector<double> layer_norm_reference(const Tensor<float>& x, const Tensor<float>& w,
                                         const Tensor<float>& b, double eps) {
  const index_t rows = x.size(0), d = x.size(1);
  std::vector<double> y;
  for (index_t r = 0; r < rows; ++r) {
    double m = 0, v = 0;
    for (index_t j = 0; j < d; ++j) m += x(r, j);
    m /= double(d);
    for (index_t j = 0; j < d; ++j) v += (x(r, j) - m) * (x(r, j) - m);
    v /= double(d);
    for (index_t j = 0; j < d; ++j) y.push_back((x(r, j) - m) / std::sqrt(v + eps) * w(j) + b(j));
  }
  return y;
}
}  // namespace

TEST_CASE("layer_norm matches the direct formula in f32, also far from zero") {
  for (double offset : {0.0, 1000.0, 1e5}) {  // the error does not grow with the offset
    CAPTURE(offset);
    const auto x = Tensor<float>::randn({50, 384}, 9, 0, offset, 1.0);
    const auto w = Tensor<float>::randn({384}, 10), b = Tensor<float>::randn({384}, 11);
    const auto y = layer_norm(Var<float>(x), Var<float>(w), Var<float>(b), 1e-6).value();
    const auto want = layer_norm_reference(x, w, b, 1e-6);
    const auto got = y.to_vector();
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::abs(got[i] - want[i]));
    CHECK(worst < 3e-6);
  }
  // no affine parameters: ones and zeros
  const auto x = Tensor<float>::randn({3, 8}, 12);
  const auto y = layer_norm(Var<float>(x)).value().to_vector();
  const auto want =
      layer_norm_reference(x, Tensor<float>::ones({8}), Tensor<float>::zeros({8}), 1e-5);
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == doctest::Approx(want[i]).epsilon(1e-5));
  CHECK(contains(
      error_of([&] { (void)layer_norm(Var<float>(x), Var<float>(Tensor<float>::ones({7}))); }),
      "weight of shape [7]"));
}

TEST_CASE("layer_norm's weight and bias gradients do not depend on the thread count") {
  const auto x = Tensor<float>::randn({1000, 64}, 13);
  const auto seed = Tensor<float>::randn({1000, 64}, 14);
  auto grads = [&] {
    Var<float> xv(x, true), w(Tensor<float>::randn({64}, 15), true),
        b(Tensor<float>::zeros({64}), true);
    layer_norm(xv, w, b).backward(seed);
    std::vector<float> all = w.grad().to_vector();
    for (float v : b.grad().to_vector()) all.push_back(v);
    for (float v : xv.grad().to_vector()) all.push_back(v);
    return all;
  };
  std::vector<float> one, many = grads();
  tbb::task_arena(1).execute([&] { one = grads(); });
  CHECK(one == many);
}

// ---- softmax --------------------------------------------------------------------------------

TEST_CASE("softmax and log_softmax match the direct formula along every axis") {
  const auto x = Tensor<double>::randn({3, 4, 5}, 16, 0, 0.0, 3.0);
  for (int axis = 0; axis < 3; ++axis) {
    CAPTURE(axis);
    const auto y = softmax(Var<double>(x), axis).value();
    const auto ly = log_softmax(Var<double>(x), axis).value();
    const auto e = Tensor<double>(exp(x));
    const auto s = sum(e, {axis}, true);
    const auto want = Tensor<double>(e / s);
    const auto want_log = Tensor<double>(x - log(s));
    const auto yv = y.to_vector(), lv = ly.to_vector(), wv = want.to_vector(),
               wl = want_log.to_vector();
    for (std::size_t i = 0; i < yv.size(); ++i) {
      CHECK(yv[i] == doctest::Approx(wv[i]).epsilon(1e-14));
      CHECK(lv[i] == doctest::Approx(wl[i]).epsilon(1e-14));
    }
  }
  // f32 over a ViT-head-sized row
  const auto xf = Tensor<float>::randn({4, 4096}, 17, 0, 0.0, 5.0);
  const auto yf = softmax(Var<float>(xf)).value();
  for (index_t r = 0; r < 4; ++r) {
    double s = 0;
    for (index_t j = 0; j < 4096; ++j) s += std::exp(double(xf(r, j)));
    for (index_t j = 0; j < 4096; j += 97)
      CHECK(yf(r, j) == doctest::Approx(std::exp(double(xf(r, j))) / s).epsilon(1e-5));
  }
}

TEST_CASE("the vectorised f32 exp is within 1.03 ulp of exp and exact at 0") {
  double worst = 0;
  const auto lo = std::bit_cast<std::uint32_t>(87.3f), hi = std::bit_cast<std::uint32_t>(88.7f);
  for (std::uint32_t sign : {0u, 0x80000000u})
    for (std::uint32_t bits = 0; bits <= (sign ? lo : hi); bits += 997) {
      const float x = std::bit_cast<float>(bits | sign);
      const double want = std::exp(double(x));
      const float ulp = std::nextafter(float(want), INFINITY) - float(want);
      worst = std::max(worst, std::abs(double(detail::exp_f32(x)) - want) / ulp);
    }
  CHECK(worst <= 1.03);
  CHECK(detail::exp_f32(0.f) == 1.f);
  CHECK(detail::exp_f32(-1000.f) == 0.f);
  CHECK(detail::exp_f32(-INFINITY) == 0.f);
  CHECK(detail::exp_f32(89.f) == INFINITY);
  CHECK(std::isnan(detail::exp_f32(NAN)));
}

TEST_CASE("softmax of large logits stays finite and log_softmax of [-1000, 0] is exact") {
  const auto y = softmax(Var<float>(Tensor<float>::from({1000.f, 1001.f, 1002.f, -1e4f}))).value();
  double total = 0;
  for (float v : y.to_vector()) {
    CHECK(std::isfinite(v));
    total += v;
  }
  CHECK(total == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(y(3) == 0.f);
  CHECK(y(2) == doctest::Approx(1.0 / (1.0 + std::exp(-1.0) + std::exp(-2.0))).epsilon(1e-6));
  CHECK(log_softmax(Var<float>(Tensor<float>::from({-1000.f, 0.f}))).value().to_vector() ==
        std::vector<float>{-1000.f, 0.f});
  CHECK(log_softmax(Var<double>(Tensor<double>::from({-1000.0, 0.0}))).value().to_vector() ==
        std::vector<double>{-1000.0, 0.0});
  // its gradient: g - softmax * sum(g), finite too
  Var<float> x(Tensor<float>::from({-1000.f, 0.f}), true);
  sum(log_softmax(x)).backward();
  CHECK(x.grad().to_vector() == std::vector<float>{1.f, -1.f});
}

// ---- normalize ------------------------------------------------------------------------------

TEST_CASE("l2_normalize divides by max(norm, eps) as torch.nn.functional.normalize") {
  const auto x = Tensor<double>::from({3, 4, 0, 0, 1e-13, 0}, {3, 2});
  const auto y = l2_normalize(Var<double>(x), 1).value();
  CHECK(y(0, 0) == 0.6);
  CHECK(y(0, 1) == 0.8);
  CHECK(y(1, 0) == 0.0);  // a zero row stays zero
  CHECK(y(1, 1) == 0.0);
  CHECK(y(2, 0) == doctest::Approx(0.1).epsilon(1e-15));  // 1e-13 / eps, as torch
  CHECK(y(2, 1) == 0.0);
  // along axis 0 of a strided input: unit columns
  const auto z = l2_normalize(Var<double>(autograd::random_input({5, 3}, 18)), 0).value();
  for (index_t c = 0; c < 3; ++c) {
    double n = 0;
    for (index_t r = 0; r < 5; ++r) n += z(r, c) * z(r, c);
    CHECK(n == doctest::Approx(1.0).epsilon(1e-14));
  }
  // a clamped row passes g / eps
  Var<double> t(Tensor<double>::from({1e-13, 0.0}), true);
  sum(l2_normalize(t)).backward();
  CHECK(t.grad()(0) == doctest::Approx(1e12));
  CHECK(t.grad()(1) == doctest::Approx(1e12));
}

TEST_CASE("cosine_similarity clamps each norm on its own, as torch 1.13 computes it") {
  auto cos = [](std::vector<double> a, std::vector<double> b) {
    return cosine_similarity(Var<double>(Tensor<double>::from_vector(a)),
                             Var<double>(Tensor<double>::from_vector(b)))
        .value()
        .item();
  };
  // values printed by torch 1.13.1 (F.cosine_similarity(a, b, dim=-1) in float64)
  CHECK(cos({1e-5, 0}, {1e-5, 1e-5}) == doctest::Approx(0.7071067811865476).epsilon(1e-15));
  CHECK(cos({1e-9, 2e-9}, {1.0, 0.5}) == doctest::Approx(0.17888543819998318).epsilon(1e-15));
  CHECK(cos({1, 2, 3}, {-2, 0.5, 4}) ==
        doctest::Approx(11.0 / std::sqrt(14.0 * 20.25)).epsilon(1e-15));
  CHECK(cos({0, 0}, {1, 2}) == 0.0);
  // broadcast [3, 1, 5] with [4, 5] -> [3, 4]
  const auto a = Tensor<double>::randn({3, 1, 5}, 19), b = Tensor<double>::randn({4, 5}, 20);
  const auto s = cosine_similarity(Var<double>(a), Var<double>(b), -1).value();
  REQUIRE(s.shape() == Shape{3, 4});
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) {
      double d = 0, na = 0, nb = 0;
      for (index_t k = 0; k < 5; ++k) {
        d += a(i, 0, k) * b(j, k);
        na += a(i, 0, k) * a(i, 0, k);
        nb += b(j, k) * b(j, k);
      }
      CHECK(s(i, j) == doctest::Approx(d / std::sqrt(na * nb)).epsilon(1e-14));
    }
}

TEST_CASE("cosine_similarity's gradient below eps is the derivative of the clamped formula") {
  // a's norm (2.2e-9) is below eps = 1e-8: s = a.b / (eps |b|), so ds/da = b / (eps |b|). torch
  // 1.13 gives [87653864.7, 41143650.8] here (it differentiates the norm it clamped).
  Var<double> a(Tensor<double>::from({1e-9, 2e-9}), true),
      b(Tensor<double>::from({1.0, 0.5}), true);
  cosine_similarity(a, b).backward();
  CHECK(a.grad()(0) == doctest::Approx(89442719.1).epsilon(1e-9));
  CHECK(a.grad()(1) == doctest::Approx(44721359.55).epsilon(1e-9));
  CHECK(b.grad()(0) == doctest::Approx(-0.0536656315599).epsilon(1e-9));  // torch: -0.0537
  CHECK(b.grad()(1) == doctest::Approx(0.1073312629199).epsilon(1e-9));   // torch: 0.1073
}
