// The vectorisable f32 erf behind GELU (expr/vector_math.hpp) against the f64 math library, and
// f32 GELU and its derivative against f64 GELU (exp_f32's test: tests/autograd/test_ops_a.cpp).
#include <doctest/doctest.h>

#include <cmath>
#include <flsl/flsl.hpp>
#include <limits>

using namespace flsl;

namespace {
/// The spacing of f32 values at |v| (an ulp of the correctly rounded result).
double ulp_at(double v) {
  const float f = std::fabs(float(v));
  return double(std::nextafter(f, std::numeric_limits<float>::infinity())) - double(f);
}
constexpr float inf = std::numeric_limits<float>::infinity();
}  // namespace

TEST_CASE("erf_f32 is within 3 ulp of erf over [-12, 12], keeps NaN, and saturates at +-1") {
  double worst = 0, at = 0;
  for (double v = -12; v <= 12; v += 1e-5) {
    const float x = float(v);
    const double ref = std::erf(double(x));
    const double err = std::fabs(double(detail::erf_f32(x)) - ref) / ulp_at(ref);
    if (err > worst) worst = err, at = x;
  }
  INFO("worst ", worst, " ulp at ", at);
  CHECK(worst <= 3.0);
  CHECK(worst > 0.5);  // an approximation, not the library function: the test can see a change
  CHECK(std::isnan(detail::erf_f32(std::numeric_limits<float>::quiet_NaN())));
  CHECK(detail::erf_f32(inf) == 1.0f);
  CHECK(detail::erf_f32(-inf) == -1.0f);
  CHECK(detail::erf_f32(4.5f) == 1.0f);
  CHECK(detail::erf_f32(0.0f) == 0.0f);
  CHECK(std::signbit(detail::erf_f32(-0.0f)));
  // tiny arguments keep their relative accuracy (erf x ~ 2 x / sqrt(pi)), subnormals included
  for (float x : {1e-30f, -3e-20f, 1e-40f}) {
    CAPTURE(x);
    CHECK(detail::erf_f32(x) == doctest::Approx(std::erf(double(x))).epsilon(1e-6));
  }
}

// f32 GELU = 0.5 x (1 + erf(x / sqrt 2)) in f32 arithmetic: the sum 1 + erf cancels for x << 0,
// so its error is bounded relative to |x| (a few ulp of 1, times |x| / 2), as with the math
// library's erff, not relative to |gelu(x)|. Likewise the derivative's, relative to 1 + |x|.
TEST_CASE("f32 gelu and gelu_grad match f64 within a few ulp of their terms; NaN propagates") {
  const op::gelu g;
  const op::gelu_grad gg;
  double worst_y = 0, worst_d = 0;
  for (double v = -12; v <= 12; v += 1e-4) {
    const float x = float(v);
    const double xd = x;
    const double y = g(xd), d = gg(xd);
    worst_y = std::max(worst_y, std::fabs(double(g(x)) - y) / (std::fabs(xd) + 1e-30));
    worst_d = std::max(worst_d, std::fabs(double(gg(x)) - d) / (1.0 + std::fabs(xd)));
  }
  INFO("gelu ", worst_y, " of |x|, gelu_grad ", worst_d, " of 1 + |x|");
  CHECK(worst_y <= 3e-7);
  CHECK(worst_d <= 3e-7);
  CHECK(std::isnan(g(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(gg(std::numeric_limits<float>::quiet_NaN())));
  CHECK(g(inf) == inf);
  CHECK(g(0.0f) == 0.0f);
  CHECK(gg(0.0f) == 0.5f);
  // a tensor expression takes the same path
  const auto x = Tensor<float>::from_vector({-3.0f, -0.5f, 0.0f, 0.7f, 5.0f}, {5});
  const Tensor<float> y = gelu(x);
  for (index_t i = 0; i < 5; ++i) CHECK(y(i) == g(x(i)));
}
