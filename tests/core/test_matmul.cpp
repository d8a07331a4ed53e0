// matmul against a naive triple loop: transposed and strided operands, batches, broadcasting,
// alpha/beta accumulation, bf16, and shape errors.
#include <doctest/doctest.h>

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
