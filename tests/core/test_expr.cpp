// Expression templates: every elementwise op against a naive loop, broadcasting, views, aliasing,
// and the proof that a fused expression allocates nothing beyond its destination.
#include <doctest/doctest.h>

#include <cmath>
#include <flsl/flsl.hpp>

using namespace flsl;

namespace {
// Naive reference: out[i] = f(a[bcast i], b[bcast i]) over the broadcast shape, row-major.
template <class F>
std::vector<double> naive_binary(const Tensor<double>& a, const Tensor<double>& b, F f) {
  const Shape s = broadcast_shapes(a.shape(), b.shape());
  auto ea = a.expand(s), eb = b.expand(s);
  auto va = ea.to_vector(), vb = eb.to_vector();
  std::vector<double> out(va.size());
  for (std::size_t i = 0; i < va.size(); ++i) out[i] = f(va[i], vb[i]);
  return out;
}
void check_close(const std::vector<double>& got, const std::vector<double>& want,
                 double tol = 1e-14) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      CHECK(std::isnan(got[i]));
    } else {
      CHECK(got[i] == doctest::Approx(want[i]).epsilon(tol).scale(1.0));
    }
  }
}
}  // namespace

TEST_CASE("binary ops with broadcasting match a naive loop") {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{4, 5}, {4, 5}},    {{4, 5}, {5}},    {{4, 1}, {1, 5}},
      {{3, 1, 5}, {4, 1}}, {{}, {2, 3}},     {{2, 3}, {}},
      {{1}, {7}},          {{2, 0, 3}, {3}}, {{2, 3, 4, 5, 6}, {3, 1, 5, 1}}};
  for (auto [sa, sb] : cases) {
    CAPTURE(sa);
    CAPTURE(sb);
    auto a = Tensor<double>::randn(sa, 1) + 2.0;
    Tensor<double> a2 = a;
    auto b = Tensor<double>::rand(sb, 2, 0, 0.5, 2.0);
    check_close(Tensor<double>(a + b).to_vector(), naive_binary(a, b, std::plus<>{}));
    check_close(Tensor<double>(a - b).to_vector(), naive_binary(a, b, std::minus<>{}));
    check_close(Tensor<double>(a * b).to_vector(), naive_binary(a, b, std::multiplies<>{}));
    check_close(Tensor<double>(a / b).to_vector(), naive_binary(a, b, std::divides<>{}));
    check_close(Tensor<double>(pow(abs(a), b)).to_vector(),
                naive_binary(a, b, [](double x, double y) { return std::pow(std::abs(x), y); }));
    check_close(Tensor<double>(minimum(a, b)).to_vector(),
                naive_binary(a, b, [](double x, double y) { return std::min(x, y); }));
    check_close(Tensor<double>(maximum(a, b)).to_vector(),
                naive_binary(a, b, [](double x, double y) { return std::max(x, y); }));
    Tensor<bool> lt = a < b;
    auto want = naive_binary(a, b, [](double x, double y) { return double(x < y); });
    auto got = lt.to_vector();
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(double(got[i]) == want[i]);
    Tensor<double> w = where(a >= b, a, b * 10.0);
    check_close(w.to_vector(),
                naive_binary(a, b, [](double x, double y) { return x >= y ? x : y * 10.0; }));
  }
}

TEST_CASE("unary ops match std:: math") {
  auto x = Tensor<double>::rand({3, 7}, 4, 0, 0.1, 3.0);
  auto v = x.to_vector();
  auto check = [&](const Tensor<double>& got, double (*f)(double)) {
    auto g = got.to_vector();
    for (std::size_t i = 0; i < v.size(); ++i)
      CHECK(g[i] == doctest::Approx(f(v[i])).epsilon(1e-14));
  };
  check(-x, [](double a) { return -a; });
  check(abs(-x), [](double a) { return a; });
  check(exp(x), [](double a) { return std::exp(a); });
  check(log(x), [](double a) { return std::log(a); });
  check(sqrt(x), [](double a) { return std::sqrt(a); });
  check(rsqrt(x), [](double a) { return 1.0 / std::sqrt(a); });
  check(tanh(x), [](double a) { return std::tanh(a); });
  check(erf(x), [](double a) { return std::erf(a); });
  check(square(x), [](double a) { return a * a; });
  check(sigmoid(x), [](double a) { return 1.0 / (1.0 + std::exp(-a)); });
  check(sin(x) + cos(x), [](double a) { return std::sin(a) + std::cos(a); });
}

TEST_CASE("scalars take the operand's type and work on either side") {
  auto x = Tensor<float>::from({1, 2, 3});
  Tensor<float> y = 2.0 * x + 1 - x / 2.0f;
  CHECK(y.to_vector() == std::vector<float>{2.5f, 4.0f, 5.5f});
  Tensor<float> z = 1.0f / x;
  CHECK(z(1) == 0.5f);
}

TEST_CASE("expressions read and write non-contiguous views") {
  auto a = Tensor<double>::randn({6, 8}, 7);
  auto b = Tensor<double>::randn({8, 6}, 8);
  auto out = Tensor<double>::zeros({8, 12});
  auto dst = out.slice(1, 0, 12, 2);  // [8, 6], every other column
  dst = a.t() * b + 1.0;
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 6; ++j) {
      CHECK(out(i, 2 * j) == doctest::Approx(a(j, i) * b(i, j) + 1.0));
      CHECK(out(i, 2 * j + 1) == 0.0);
    }
  auto sel = a.select(1, 3);  // strided column
  Tensor<double> twice = sel * 2.0;
  for (int i = 0; i < 6; ++i) CHECK(twice(i) == 2.0 * a(i, 3));
}

TEST_CASE("assignment handles a destination that aliases an input with another layout") {
  auto x = Tensor<double>::arange(9).view({3, 3});
  auto ref = x.clone();
  x.assign(x.t() + 0.0);  // in-place transpose needs a temporary
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) CHECK(x(i, j) == ref(j, i));
  auto y = Tensor<double>::arange(4);
  y = y * y + y;  // same layout: evaluated in place
  CHECK(y.to_vector() == std::vector<double>{0, 2, 6, 12});
}

TEST_CASE("out = a * b + c * d allocates nothing beyond out") {
  const Shape s{64, 196, 48};
  auto a = Tensor<float>::randn(s, 1), b = Tensor<float>::randn(s, 2);
  auto c = Tensor<float>::randn(s, 3), d = Tensor<float>::randn({48}, 4);
  auto out = Tensor<float>::empty(s);
  const auto before = storage_stats::allocations().load();
  out = a * b + c * d;
  CHECK(storage_stats::allocations().load() == before);
  // and the values are right
  for (index_t i : {index_t(0), index_t(1000), s.numel() - 1}) {
    const index_t k = i % 48;
    CHECK(out.data()[i] == doctest::Approx(a.data()[i] * b.data()[i] + c.data()[i] * d(k)));
  }
  Tensor<float> fresh = a * b + c * d;  // constructing allocates exactly one storage
  CHECK(storage_stats::allocations().load() == before + 1);
}

TEST_CASE("an expression stored with auto keeps a temporary tensor's memory alive") {
  auto e = Tensor<double>::full({1000}, 2.0) + 1.0;  // the tensor is a temporary
  auto filler = Tensor<double>::full({1000}, -7.0);  // would reuse a freed block
  Tensor<double> v = e;
  CHECK(v(999) == 3.0);
  CHECK(filler(0) == -7.0);
}

TEST_CASE("mismatched shapes throw naming the op and both shapes") {
  auto a = Tensor<float>::zeros({2, 3}), b = Tensor<float>::zeros({4, 3});
  CHECK_THROWS_WITH_AS(Tensor<float>(a + b),
                       doctest::Contains("add: shapes [2, 3] and [4, 3] do not broadcast"),
                       flsl::error);
  auto out = Tensor<float>::zeros({3});
  CHECK_THROWS_WITH_AS(
      out.assign(a),
      doctest::Contains(
          "assign: expression of shape [2, 3] does not broadcast to the destination shape [3]"),
      flsl::error);
  auto out2 = Tensor<float>::zeros({1, 3});
  CHECK_THROWS_WITH_AS(
      out2.assign(a),
      doctest::Contains(
          "expression of shape [2, 3] does not broadcast to the destination shape [1, 3]"),
      flsl::error);
}

TEST_CASE("bf16 tensors compute in float and round on store") {
  auto x = Tensor<float>::randn({100}, 11);
  auto xb = x.to<bf16>();
  Tensor<bf16> y = cast<bf16>(x) * 2.0f;  // bf16 leaves read as float
  Tensor<float> yf = xb * 2.0f;
  for (index_t i = 0; i < 100; ++i) {
    CHECK(static_cast<float>(y(i)) == static_cast<float>(bf16(static_cast<float>(xb(i)) * 2.0f)));
    CHECK(yf(i) == static_cast<float>(xb(i)) * 2.0f);
  }
}

TEST_CASE("large contiguous and broadcast expressions evaluate in parallel correctly") {
  auto a = Tensor<float>::randn({300, 1000}, 21), r = Tensor<float>::randn({300, 1}, 22);
  Tensor<float> o = a * r - r;
  auto va = a.to_vector();
  for (index_t i = 0; i < 300; i += 37)
    for (index_t j = 0; j < 1000; j += 111) CHECK(o(i, j) == a(i, j) * r(i, 0) - r(i, 0));
}
