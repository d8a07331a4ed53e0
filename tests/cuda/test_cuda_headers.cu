// <flsl/flsl.hpp> compiled by nvcc: the whole library's headers (CUDA backend included) are
// nvcc-clean, and host code built by nvcc computes what the g++ build computes.
#include <doctest/doctest.h>

#include <flsl/flsl.hpp>

using namespace flsl;

TEST_CASE("flsl.hpp compiled by nvcc evaluates CPU expressions, reductions and products") {
  const auto a = Tensor<float>::from({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor<float> b = a * 2.0f + 1.0f;
  CHECK(b.to_vector() == std::vector<float>{3, 5, 7, 9, 11, 13});
  CHECK(sum(b).item() == doctest::Approx(48));
  CHECK(max(a, {1}).to_vector() == std::vector<float>{3, 6});
  const auto c = matmul(a, a.t());  // [2, 2]
  CHECK(c.to_vector() == std::vector<float>{14, 32, 32, 77});
  const auto r = Tensor<double>::randn({4}, 3);
  CHECK(r(0) == normal_at(3, 0, 0));
}

// Compiled (device kernels instantiated), never called: test_cuda runs the device paths.
Tensor<float, cuda> fused_expression_on_cuda(const Tensor<float, cuda>& x) {
  Tensor<float, cuda> y = gelu(x) * 0.5f + x.t();
  return sum(y, {0});
}

TEST_CASE("flsl.hpp compiled by nvcc declares the CUDA backend") {
  CHECK(cuda_caching_allocator::rounded(1) == 512);
}
