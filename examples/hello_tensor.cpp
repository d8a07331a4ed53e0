// hello_tensor: a first tour of flsl's tensor API: creation, views, one fused expression, a
// reduction and a matmul, with what each costs on this machine.
#include <chrono>
#include <cstdio>
#include <flsl/flsl.hpp>
#include <iostream>

using flsl::Tensor;

/// Milliseconds taken by f(), best of `reps` runs.
template <class F>
double best_ms(F&& f, int reps = 5) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const std::chrono::duration<double, std::milli> dt = std::chrono::steady_clock::now() - t0;
    best = std::min(best, dt.count());
  }
  return best;
}

int main() {
  // Creation and views: a view shares memory, `clone()` copies.
  auto x = Tensor<float>::arange(12).view({3, 4});  // [3, 4]
  std::cout << "x          = " << x << '\n';
  std::cout << "x.t()      = " << x.t() << "  (a view: same memory)\n";
  std::cout << "x[1]       = " << x[1] << '\n';

  // A fused expression: `a * b + c * d` is a type; assigning it evaluates it in one pass with
  // broadcasting (d is one row), no temporaries.
  const flsl::Shape s{64 * 196, 384};  // [tokens, channels] of a ViT-S batch of 64
  auto a = Tensor<float>::randn(s, /*seed=*/1), b = Tensor<float>::randn(s, 2);
  auto c = Tensor<float>::randn(s, 3), d = Tensor<float>::randn({384}, 4);  // d: [384]
  auto out = Tensor<float>::empty(s);
  const double fused_ms = best_ms([&] { out = a * b + c * d; });
  const double gbytes = 4.0 * double(s.numel()) * sizeof(float) / 1e9;  // a, b, c read, out written
  std::printf("out = a*b + c*d over [%lld, %lld]: %.2f ms (%.1f GB/s)\n", (long long)s[0],
              (long long)s[1], fused_ms, gbytes / (fused_ms / 1e3));

  // Reductions consume expressions directly: the squared error is never materialised.
  const double mse = flsl::mean(flsl::square(out - a * b)).item();
  auto row_max = flsl::max(out, {1});  // [12544]
  std::printf(
      "mean((out - a*b)^2) = %.4f (about 1: c and d are standard normal), max of row 0 = %.3f\n",
      mse, double(row_max(0)));

  // Matmul: the qkv projection of a ViT-S block, [12544, 384] x [384, 1152].
  auto w = Tensor<float>::randn({384, 1152}, 5, 0, 0.0, 0.02);  // [384, 1152], std 0.02
  auto y = Tensor<float>::empty({s[0], 1152});
  const double mm_ms = best_ms([&] { flsl::matmul_into(y, out, w); }, 3);
  const double gflop = 2.0 * double(s[0]) * 384.0 * 1152.0 / 1e9;
  std::printf("matmul [%lld, 384] x [384, 1152]: %.1f ms (%.0f GFLOP/s)\n", (long long)s[0], mm_ms,
              gflop / (mm_ms / 1e3));
  std::cout << "y[0, :4]   = " << y[0].narrow(0, 0, 4) << '\n';
  return 0;
}
