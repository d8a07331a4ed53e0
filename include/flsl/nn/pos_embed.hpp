// The fixed 2-D sine-cosine position table of FLSL_SPEC.md §1 and its bicubic resize to other
// grids.
#pragma once

#include <cmath>

#include "../core/tensor.hpp"

namespace flsl::nn {

/// [G*G, D] table, row y*G + x: columns [0, D/4) sin(x w_k), [D/4, D/2) cos(x w_k), then the same
/// for y, with w_k = 1 / 10000^(k / (D/4)). Computed in double.
inline Tensor<double> sincos_table(index_t dim, index_t grid) {
  FLSL_CHECK(dim % 4 == 0, "sincos_table: dimension ", dim, " is not a multiple of 4");
  const index_t q = dim / 4;
  auto t = Tensor<double>::empty({grid * grid, dim});  // [G*G, D]
  for (index_t y = 0; y < grid; ++y)
    for (index_t x = 0; x < grid; ++x) {
      double* row = t.data() + (y * grid + x) * dim;
      for (index_t k = 0; k < q; ++k) {
        const double w = 1.0 / std::pow(10000.0, double(k) / double(q));
        row[k] = std::sin(double(x) * w);
        row[q + k] = std::cos(double(x) * w);
        row[2 * q + k] = std::sin(double(y) * w);
        row[3 * q + k] = std::cos(double(y) * w);
      }
    }
  return t;
}

namespace detail {
/// Cubic convolution weights (A = -0.75, PyTorch's bicubic) for fractional offset t.
inline std::array<double, 4> cubic_weights(double t) {
  constexpr double A = -0.75;
  auto c1 = [](double x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };
  auto c2 = [](double x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };
  return {c2(t + 1), c1(t), c1(1 - t), c2(2 - t)};
}
}  // namespace detail

/// Resizes a [G*G, D] table to [S*S, D] like F.interpolate(size=(S, S), mode="bicubic",
/// align_corners=False): source coordinate scale*(o + 0.5) - 0.5 with scale = G/S, taps clamped to
/// the grid, separable (x within each row, then y).
inline Tensor<double> resize_table_bicubic(const Tensor<double>& table, index_t grid,
                                           index_t size) {
  const index_t dim = table.size(1);
  FLSL_CHECK(table.size(0) == grid * grid, "resize_table_bicubic: table of shape ", table.shape(),
             " is not a ", grid, "x", grid, " grid");
  if (size == grid) return table.clone();
  const double scale = double(grid) / double(size);
  struct taps {
    std::array<index_t, 4> idx;
    std::array<double, 4> w;
  };
  std::vector<taps> tap(static_cast<std::size_t>(size));
  for (index_t o = 0; o < size; ++o) {
    const double s = scale * (double(o) + 0.5) - 0.5;
    const double fl = std::floor(s);
    taps& tp = tap[std::size_t(o)];
    tp.w = detail::cubic_weights(s - fl);
    for (int k = 0; k < 4; ++k)
      tp.idx[std::size_t(k)] = std::clamp<index_t>(index_t(fl) - 1 + k, 0, grid - 1);
  }
  const Tensor<double> src = table.contiguous();
  auto rows = Tensor<double>::zeros({grid * size, dim});  // x resized: [G rows, S cols]
  for (index_t y = 0; y < grid; ++y)
    for (index_t x = 0; x < size; ++x) {
      double* out = rows.data() + (y * size + x) * dim;
      const taps& tp = tap[std::size_t(x)];
      for (index_t c = 0; c < dim; ++c) {
        double acc = 0;
        for (int k = 0; k < 4; ++k)
          acc += tp.w[std::size_t(k)] * src.data()[(y * grid + tp.idx[std::size_t(k)]) * dim + c];
        out[c] = acc;
      }
    }
  auto out = Tensor<double>::zeros({size * size, dim});
  for (index_t y = 0; y < size; ++y)
    for (index_t x = 0; x < size; ++x) {
      double* o = out.data() + (y * size + x) * dim;
      const taps& tp = tap[std::size_t(y)];
      for (index_t c = 0; c < dim; ++c) {
        double acc = 0;
        for (int k = 0; k < 4; ++k)
          acc += tp.w[std::size_t(k)] * rows.data()[(tp.idx[std::size_t(k)] * size + x) * dim + c];
        o[c] = acc;
      }
    }
  return out;
}

}  // namespace flsl::nn
