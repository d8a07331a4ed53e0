// Reductions over axes of expressions against naive loops.
#include <doctest/doctest.h>

#include <cmath>
#include <flsl/flsl.hpp>

using namespace flsl;

namespace {
// Naive reduction of a [A, B, C] tensor over one axis.
std::vector<double> naive3(const Tensor<double>& x, int axis, int kind) {
  const auto s = x.shape();
  std::vector<double> out;
  const int o1 = axis == 0 ? 1 : 0, o2 = axis == 2 ? 1 : 2;
  for (index_t i = 0; i < s[o1]; ++i)
    for (index_t j = 0; j < s[o2]; ++j) {
      double acc = (kind == 1 || kind == 2) ? -INFINITY : 0, sq = 0;
      index_t arg = 0;
      for (index_t k = 0; k < s[axis]; ++k) {
        index_t ix[3];
        ix[axis] = k;
        ix[o1] = i;
        ix[o2] = j;
        const double v = x(ix[0], ix[1], ix[2]);
        if (kind == 1 || kind == 2) {
          if (v > acc) acc = v, arg = k;
        } else {
          acc += v;
          sq += v * v;
        }
      }
      const double n = double(s[axis]);
      if (kind == 0) out.push_back(acc);
      if (kind == 1) out.push_back(acc);
      if (kind == 2) out.push_back(double(arg));
      if (kind == 3) out.push_back((sq - acc * acc / n) / (n - 1));
    }
  return out;
}
}  // namespace

TEST_CASE("sum, max, argmax and var along each axis match naive loops") {
  auto x = Tensor<double>::randn({5, 6, 7}, 3);
  for (auto src : {x, x.permute({2, 0, 1}).contiguous().permute({1, 2, 0})}) {
    for (int axis = 0; axis < 3; ++axis) {
      CAPTURE(axis);
      auto s = sum(src, {axis}).to_vector();
      auto m = max(src, {axis}).to_vector();
      auto am = argmax(src, axis).to_vector();
      auto v = var(src, {axis}).to_vector();
      auto ns = naive3(src, axis, 0), nm = naive3(src, axis, 1), na = naive3(src, axis, 2),
           nv = naive3(src, axis, 3);
      for (std::size_t i = 0; i < s.size(); ++i) {
        CHECK(s[i] == doctest::Approx(ns[i]).epsilon(1e-13));
        CHECK(m[i] == nm[i]);
        CHECK(double(am[i]) == na[i]);
        CHECK(v[i] == doctest::Approx(nv[i]).epsilon(1e-10));
      }
    }
  }
}

TEST_CASE("reductions over several axes, keepdim, all axes, and of expressions") {
  auto x = Tensor<double>::randn({4, 3, 5}, 9);
  auto y = Tensor<double>::randn({5}, 10);
  auto s = sum(x * y + 1.0, {0, 2}, true);  // the product is never materialised
  CHECK(s.shape() == Shape{1, 3, 1});
  for (index_t j = 0; j < 3; ++j) {
    double want = 0;
    for (index_t i = 0; i < 4; ++i)
      for (index_t k = 0; k < 5; ++k) want += x(i, j, k) * y(k) + 1.0;
    CHECK(s(0, j, 0) == doctest::Approx(want).epsilon(1e-13));
  }
  auto total = sum(x);
  CHECK(total.rank() == 0);
  double want = 0;
  for (double v : x.to_vector()) want += v;
  CHECK(total.item() == doctest::Approx(want).epsilon(1e-13));
  CHECK(mean(x, {-1}).shape() == Shape{4, 3});
  CHECK(mean(x).item() == doctest::Approx(want / 60).epsilon(1e-13));
  CHECK(min(x).item() == -max(-x).item());
  auto v0 = var(x, {0, 1, 2}, false, 0).item();
  double m = want / 60, acc = 0;
  for (double v : x.to_vector()) acc += (v - m) * (v - m);
  CHECK(v0 == doctest::Approx(acc / 60).epsilon(1e-12));
}

TEST_CASE("reductions of empty, rank-0 and unit axes") {
  auto e = Tensor<float>::zeros({3, 0});
  auto s = sum(e, {1});
  CHECK(s.shape() == Shape{3});
  CHECK(s.to_vector() == std::vector<float>{0, 0, 0});
  auto r0 = Tensor<double>::scalar(4.0);
  CHECK(sum(r0).item() == 4.0);
  auto u = Tensor<double>::from({1, 2, 3}, {3, 1});
  CHECK(sum(u, {1}).to_vector() == std::vector<double>{1, 2, 3});
  CHECK(argmax(Tensor<float>::from({1, 5, 5, 2}), 0).item() == 1);  // first of ties
  auto b = Tensor<bool>::from({true, false, true});
  CHECK(sum(b).item() == 2);
}

TEST_CASE("f32 sums accumulate in double") {
  auto x = Tensor<float>::full({1 << 20}, 0.1f);
  const double want = double(0.1f) * double(1 << 20);
  CHECK(double(sum(x).item()) == doctest::Approx(want).epsilon(1e-7));
}
