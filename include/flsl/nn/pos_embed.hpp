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

/// Resizes a [G*G, D] table to [H*W, D] (row y*W + x) like F.interpolate(size=(H, W),
/// mode="bicubic", align_corners=False): along each axis the source coordinate is
/// scale*(o + 0.5) - 0.5 with scale = G/H (rows) or G/W (columns), taps clamped to the grid;
/// separable (x within each row, then y).
inline Tensor<double> resize_table_bicubic(const Tensor<double>& table, index_t grid, index_t rows,
                                           index_t cols) {
  const index_t dim = table.size(1);
  FLSL_CHECK(table.size(0) == grid * grid, "resize_table_bicubic: table of shape ", table.shape(),
             " is not a ", grid, "x", grid, " grid");
  FLSL_CHECK(rows > 0 && cols > 0, "resize_table_bicubic: a ", rows, "x", cols, " grid");
  if (rows == grid && cols == grid) return table.clone();
  struct taps {
    std::array<index_t, 4> idx;
    std::array<double, 4> w;
  };
  auto make_taps = [grid](index_t size) {
    const double scale = double(grid) / double(size);
    std::vector<taps> tap(static_cast<std::size_t>(size));
    for (index_t o = 0; o < size; ++o) {
      const double s = scale * (double(o) + 0.5) - 0.5;
      const double fl = std::floor(s);
      taps& tp = tap[std::size_t(o)];
      tp.w = detail::cubic_weights(s - fl);
      for (int k = 0; k < 4; ++k)
        tp.idx[std::size_t(k)] = std::clamp<index_t>(index_t(fl) - 1 + k, 0, grid - 1);
    }
    return tap;
  };
  const std::vector<taps> tap_x = make_taps(cols), tap_y = make_taps(rows);
  const Tensor<double> src = table.contiguous();
  auto xr = Tensor<double>::zeros({grid * cols, dim});  // x resized: [G rows, W cols]
  for (index_t y = 0; y < grid; ++y)
    for (index_t x = 0; x < cols; ++x) {
      double* out = xr.data() + (y * cols + x) * dim;
      const taps& tp = tap_x[std::size_t(x)];
      for (index_t c = 0; c < dim; ++c) {
        double acc = 0;
        for (int k = 0; k < 4; ++k)
          acc += tp.w[std::size_t(k)] * src.data()[(y * grid + tp.idx[std::size_t(k)]) * dim + c];
        out[c] = acc;
      }
    }
  auto out = Tensor<double>::zeros({rows * cols, dim});
  for (index_t y = 0; y < rows; ++y)
    for (index_t x = 0; x < cols; ++x) {
      double* o = out.data() + (y * cols + x) * dim;
      const taps& tp = tap_y[std::size_t(y)];
      for (index_t c = 0; c < dim; ++c) {
        double acc = 0;
        for (int k = 0; k < 4; ++k)
          acc += tp.w[std::size_t(k)] * xr.data()[(tp.idx[std::size_t(k)] * cols + x) * dim + c];
        o[c] = acc;
      }
    }
  return out;
}

/// The square case: [G*G, D] -> [S*S, D].
inline Tensor<double> resize_table_bicubic(const Tensor<double>& table, index_t grid,
                                           index_t size) {
  return resize_table_bicubic(table, grid, size, size);
}

}  // namespace flsl::nn
