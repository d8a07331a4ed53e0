// Antialiased separable bicubic resampling of a box of an image into a planar float image, with
// PIL's coefficients (Image.resize(BICUBIC, box), a = -0.5, support widened by the shrink factor),
// which torchvision's resize(antialias=True) shares.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"

namespace flsl::data {

/// A box in source pixel coordinates, [x0, x1) x [y0, y1); fractional edges are allowed (a
/// DCT-down-scaled decode maps an integer crop to a fractional box).
struct Box {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  double width() const { return x1 - x0; }
  double height() const { return y1 - y0; }
};

/// Keys' cubic convolution kernel with a = -0.5 (PIL's and torchvision-antialias's bicubic).
inline double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

/// Filter taps of one axis: output i reads source [first[i], first[i] + count[i]) with weights
/// w[i * max_taps + k] (zero padded). Source indices lie in [lo, hi), the integer hull of the box
/// clipped to the image, so the filter never reads outside the crop (as crop-then-resize does).
struct AxisTaps {
  int out_size = 0;
  int max_taps = 0;
  int lo = 0, hi = 0;
  std::vector<int> first, count;
  std::vector<float> w;  // [out_size, max_taps]
};

/// PIL's precompute_coeffs (Resample.c) for source extent [in0, in1) of an axis of `in_size`
/// pixels, scaled by `gain` (so that weights sum to gain). `mirror` reverses the output order
/// (horizontal flip for free).
inline void compute_taps(double in0, double in1, int in_size, int out_size, bool mirror,
                         float gain, AxisTaps& t) {
  FLSL_CHECK(out_size > 0 && in1 > in0 && in0 >= 0 && in1 <= in_size + 1e-9,
             "resample: box [", in0, ", ", in1, ") invalid for an axis of ", in_size,
             " pixels (output ", out_size, ")");
  t.lo = std::max(0, int(std::floor(in0)));
  t.hi = std::min(in_size, int(std::ceil(in1 - 1e-9)));
  if (t.hi <= t.lo) t.hi = t.lo + 1;
  const int size = t.hi - t.lo;
  const double start = in0 - t.lo;
  const double scale = (in1 - in0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  t.out_size = out_size;
  t.max_taps = int(std::ceil(support)) * 2 + 1;
  t.first.assign(std::size_t(out_size), 0);
  t.count.assign(std::size_t(out_size), 0);
  t.w.assign(std::size_t(out_size) * std::size_t(t.max_taps), 0.0f);
  double k[64];
  std::vector<double> big;
  double* kk = k;
  if (t.max_taps > 64) {
    big.resize(std::size_t(t.max_taps));
    kk = big.data();
  }
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = start + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    const int xmin = std::max(int(center - support + 0.5), 0);
    const int xmax = std::min(int(center + support + 0.5), size) - xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      kk[x] = bicubic_kernel((x + xmin - center + 0.5) * ss);
      ww += kk[x];
    }
    const int o = mirror ? out_size - 1 - xx : xx;
    t.first[std::size_t(o)] = t.lo + xmin;
    t.count[std::size_t(o)] = std::max(xmax, 0);
    float* dst = &t.w[std::size_t(o) * std::size_t(t.max_taps)];
    for (int x = 0; x < xmax; ++x) dst[x] = float((ww != 0.0 ? kk[x] / ww : 0.0) * gain);
  }
}

/// Separable resampler with reusable scratch (one per thread). Vertical pass first, vectorised
/// across the row; then the horizontal pass on RGBX quadruples, one 4-wide multiply-add per tap.
/// Results are clamped to [0, 1] like PIL's uint8 output (no intermediate rounding, though: the
/// passes run in float, as torchvision's tensor path does).
class Resampler {
 public:
  /// Bytes [H, W, 3] -> planar floats in [0, 1] of dst's size, from `box` of src.
  void resize(const ImageU8& src, const Box& box, PlanarView dst, bool mirror = false) {
    FLSL_CHECK(!src.empty() && dst.width > 0 && dst.height > 0, "resample: empty image (source ",
               src.width, "x", src.height, ", destination ", dst.width, "x", dst.height, ")");
    compute_taps(box.x0, box.x1, src.width, dst.width, mirror, 1.0f, tx_);
    compute_taps(box.y0, box.y1, src.height, dst.height, false, 1.0f / 255.0f, ty_);
    const int n = 3 * (tx_.hi - tx_.lo);
    row3_.resize(std::size_t(n));
    quad_.resize(std::size_t(tx_.hi - tx_.lo) * 4 + 4);
    for (int oy = 0; oy < dst.height; ++oy) {
      const float* wy = &ty_.w[std::size_t(oy) * std::size_t(ty_.max_taps)];
      const int y0 = ty_.first[std::size_t(oy)], ny = ty_.count[std::size_t(oy)];
      vertical(src.row(y0) + 3 * tx_.lo, src.row_stride(), wy, ny, n, row3_.data());
      float* q = quad_.data();
      const float* r = row3_.data();
      for (int x = 0; x < n / 3; ++x) {
        q[4 * x] = r[3 * x];
        q[4 * x + 1] = r[3 * x + 1];
        q[4 * x + 2] = r[3 * x + 2];
        q[4 * x + 3] = 0.0f;
      }
      horizontal(dst, oy);
    }
  }

  /// Planar floats -> planar floats of dst's size, from `box` of src (src and dst must not
  /// overlap).
  void resize(const PlanarView& src, const Box& box, PlanarView dst, bool mirror = false) {
    FLSL_CHECK(src.width > 0 && src.height > 0 && dst.width > 0 && dst.height > 0,
               "resample: empty image (source ", src.width, "x", src.height, ", destination ",
               dst.width, "x", dst.height, ")");
    compute_taps(box.x0, box.x1, src.width, dst.width, mirror, 1.0f, tx_);
    compute_taps(box.y0, box.y1, src.height, dst.height, false, 1.0f, ty_);
    const int n = tx_.hi - tx_.lo;
    row3_.resize(std::size_t(n) * 3);
    quad_.resize(std::size_t(n) * 4 + 4);
    for (int oy = 0; oy < dst.height; ++oy) {
      const float* wy = &ty_.w[std::size_t(oy) * std::size_t(ty_.max_taps)];
      const int y0 = ty_.first[std::size_t(oy)], ny = ty_.count[std::size_t(oy)];
      for (int c = 0; c < 3; ++c)
        vertical(src.row(c, y0) + tx_.lo, src.width, wy, ny, n, row3_.data() + std::size_t(c) * n);
      float* q = quad_.data();
      const float* r = row3_.data();
      for (int x = 0; x < n; ++x) {
        q[4 * x] = r[x];
        q[4 * x + 1] = r[n + x];
        q[4 * x + 2] = r[2 * n + x];
        q[4 * x + 3] = 0.0f;
      }
      horizontal(dst, oy);
    }
  }

 private:
  typedef float float4 __attribute__((vector_size(16)));

  /// out[i] = sum_k w[k] * rows[k][i] for i < n, rows `stride` elements apart.
  template <class T>
  static void vertical(const T* rows, std::ptrdiff_t stride, const float* w, int taps, int n,
                       float* __restrict out) {
    {
      const T* s = rows;
      const float wk = w[0];
      for (int i = 0; i < n; ++i) out[i] = wk * float(s[i]);
    }
    for (int k = 1; k < taps; ++k) {
      const T* __restrict s = rows + std::ptrdiff_t(k) * stride;
      const float wk = w[k];
      for (int i = 0; i < n; ++i) out[i] += wk * float(s[i]);
    }
  }

  /// Output row oy of dst from the RGBX row in quad_.
  void horizontal(PlanarView dst, int oy) const {
    float* r = dst.row(0, oy);
    float* g = dst.row(1, oy);
    float* b = dst.row(2, oy);
    const float4 zero = {0, 0, 0, 0}, one = {1, 1, 1, 1};
    const float* q = quad_.data();
    for (int ox = 0; ox < dst.width; ++ox) {
      const float* w = &tx_.w[std::size_t(ox) * std::size_t(tx_.max_taps)];
      const float* s = q + 4 * (tx_.first[std::size_t(ox)] - tx_.lo);
      const int taps = tx_.count[std::size_t(ox)];
      float4 acc = zero;
      for (int k = 0; k < taps; ++k) {
        float4 v;
        __builtin_memcpy(&v, s + 4 * k, sizeof v);
        acc += w[k] * v;
      }
      acc = acc < zero ? zero : acc;
      acc = acc > one ? one : acc;
      r[ox] = acc[0];
      g[ox] = acc[1];
      b[ox] = acc[2];
    }
  }

  AxisTaps tx_, ty_;
  std::vector<float> row3_, quad_;
};

}  // namespace flsl::data
