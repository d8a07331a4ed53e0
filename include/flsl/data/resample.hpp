// Antialiased separable bicubic resampling of a box of an image into a planar float image, with
// PIL's coefficients (Image.resize(BICUBIC, box), a = -0.5, support widened by the shrink factor),
// which torchvision's resize(antialias=True) shares.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"
#include "simd.hpp"

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
/// With bands: the same weights regrouped per block of 16 outputs as a dense [len, 16] matrix
/// over the inputs the block touches, so a horizontal pass is one 16-lane multiply-add per input.
struct AxisTaps {
  int out_size = 0;
  int max_taps = 0;
  int lo = 0, hi = 0;
  std::vector<int> first, count;
  std::vector<float> w;                   // [out_size, max_taps]
  int band_stride = 0;                    // rows per band in band_w
  std::vector<int> band_start, band_len;  // per block of 16 outputs
  std::vector<float> band_w;              // [blocks, band_stride, 16]
};

/// PIL's precompute_coeffs (Resample.c) for source extent [in0, in1) of an axis of `in_size`
/// pixels, scaled by `gain` (so that weights sum to gain). `mirror` reverses the output order
/// (horizontal flip for free). `bands` also builds the 16-output blocks.
inline void compute_taps(double in0, double in1, int in_size, int out_size, bool mirror, float gain,
                         AxisTaps& t, bool bands = false) {
  FLSL_CHECK(out_size > 0 && in1 > in0 && in0 >= 0 && in1 <= in_size + 1e-9, "resample: box [", in0,
             ", ", in1, ") invalid for an axis of ", in_size, " pixels (output ", out_size, ")");
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
  if (!bands) return;
  constexpr int L = simd::lanes;
  const int blocks = (out_size + L - 1) / L;
  t.band_start.assign(std::size_t(blocks), 0);
  t.band_len.assign(std::size_t(blocks), 0);
  t.band_stride = 0;
  for (int b = 0; b < blocks; ++b) {
    int lo = t.hi, hi = t.lo;
    for (int o = b * L; o < std::min(out_size, b * L + L); ++o) {
      if (t.count[std::size_t(o)] == 0) continue;
      lo = std::min(lo, t.first[std::size_t(o)]);
      hi = std::max(hi, t.first[std::size_t(o)] + t.count[std::size_t(o)]);
    }
    t.band_start[std::size_t(b)] = hi > lo ? lo : t.lo;
    t.band_len[std::size_t(b)] = std::max(0, hi - lo);
    t.band_stride = std::max(t.band_stride, t.band_len[std::size_t(b)]);
  }
  t.band_w.assign(std::size_t(blocks) * std::size_t(t.band_stride) * L, 0.0f);
  for (int o = 0; o < out_size; ++o) {
    const int b = o / L, lane = o % L;
    for (int k = 0; k < t.count[std::size_t(o)]; ++k) {
      const int j = t.first[std::size_t(o)] + k - t.band_start[std::size_t(b)];
      t.band_w[(std::size_t(b) * std::size_t(t.band_stride) + std::size_t(j)) * L +
               std::size_t(lane)] = t.w[std::size_t(o) * std::size_t(t.max_taps) + std::size_t(k)];
    }
  }
}

/// Separable resampler with reusable scratch (one per thread). Per output row: the vertical pass
/// (16 source columns at a time, all taps in registers), then the horizontal pass over the
/// 16-output bands. Results are clamped to [0, 1] like PIL's uint8 output (without its rounding
/// to bytes between and after the passes: both run in float, as torchvision's tensor path does).
class Resampler {
 public:
  /// Bytes [H, W, 3] -> planar floats in [0, 1] of dst's size, from `box` of src.
  void resize(const ImageU8& src, const Box& box, PlanarView dst, bool mirror = false) {
    FLSL_CHECK(!src.empty() && dst.width > 0 && dst.height > 0, "resample: empty image (source ",
               src.width, "x", src.height, ", destination ", dst.width, "x", dst.height, ")");
    compute_taps(box.x0, box.x1, src.width, dst.width, mirror, 1.0f, tx_, true);
    compute_taps(box.y0, box.y1, src.height, dst.height, false, 1.0f / 255.0f, ty_);
    const int n = 3 * (tx_.hi - tx_.lo);
    row_.resize(std::size_t(n));
    for (int oy = 0; oy < dst.height; ++oy) {
      const float* wy = &ty_.w[std::size_t(oy) * std::size_t(ty_.max_taps)];
      const int y0 = ty_.first[std::size_t(oy)], ny = ty_.count[std::size_t(oy)];
      vertical(src.row(y0) + 3 * tx_.lo, src.row_stride(), wy, ny, n, row_.data());
      horizontal(row_.data(), row_.data() + 1, row_.data() + 2, 3, dst, oy);
    }
  }

  /// Planar floats -> planar floats of dst's size, from `box` of src (src and dst must not
  /// overlap).
  void resize(const PlanarView& src, const Box& box, PlanarView dst, bool mirror = false) {
    FLSL_CHECK(src.width > 0 && src.height > 0 && dst.width > 0 && dst.height > 0,
               "resample: empty image (source ", src.width, "x", src.height, ", destination ",
               dst.width, "x", dst.height, ")");
    compute_taps(box.x0, box.x1, src.width, dst.width, mirror, 1.0f, tx_, true);
    compute_taps(box.y0, box.y1, src.height, dst.height, false, 1.0f, ty_);
    const std::size_t n = std::size_t(tx_.hi - tx_.lo);
    row_.resize(3 * n);
    for (int oy = 0; oy < dst.height; ++oy) {
      const float* wy = &ty_.w[std::size_t(oy) * std::size_t(ty_.max_taps)];
      const int y0 = ty_.first[std::size_t(oy)], ny = ty_.count[std::size_t(oy)];
      for (int c = 0; c < 3; ++c)
        vertical(src.row(c, y0) + tx_.lo, src.width, wy, ny, int(n),
                 row_.data() + std::size_t(c) * n);
      horizontal(row_.data(), row_.data() + n, row_.data() + 2 * n, 1, dst, oy);
    }
  }

 private:
  /// out[i] = sum_k w[k] * rows[k * stride + i] for i < n, bytes: tap by tap over the row (the
  /// compiler vectorises the byte -> float widening of this form well).
  static void vertical(const std::uint8_t* rows, std::ptrdiff_t stride, const float* w, int taps,
                       int n, float* __restrict out) {
    const float w0 = w[0];
    for (int i = 0; i < n; ++i) out[i] = w0 * float(int(rows[i]));
    for (int k = 1; k < taps; ++k) {
      const std::uint8_t* __restrict s = rows + std::ptrdiff_t(k) * stride;
      const float wk = w[k];
      for (int i = 0; i < n; ++i) out[i] += wk * float(int(s[i]));
    }
  }
  /// The same for floats, 16 columns at a time with every tap accumulated in registers.
  static void vertical(const float* rows, std::ptrdiff_t stride, const float* w, int taps, int n,
                       float* __restrict out) {
    using simd::vf16;
    int i = 0;
    for (; i + simd::lanes <= n; i += simd::lanes) {
      vf16 acc{};
      for (int k = 0; k < taps; ++k) {
        vf16 v;
        std::memcpy(&v, rows + std::ptrdiff_t(k) * stride + i, sizeof v);
        acc += w[k] * v;
      }
      std::memcpy(out + i, &acc, sizeof acc);
    }
    for (; i < n; ++i) {
      float acc = 0.0f;
      for (int k = 0; k < taps; ++k) acc += w[k] * rows[std::ptrdiff_t(k) * stride + i];
      out[i] = acc;
    }
  }

  /// Output row oy of dst from the vertically filtered row: channel c of source column lo + x is
  /// at ch_c[x * step]. One 16-output band at a time: per input, a 16-lane weight row times the
  /// input value, for the three channels.
  void horizontal(const float* ch0, const float* ch1, const float* ch2, int step, PlanarView dst,
                  int oy) const {
    using simd::vf16;
    constexpr int L = simd::lanes;
    float* d[3] = {dst.row(0, oy), dst.row(1, oy), dst.row(2, oy)};
    const vf16 zero{}, one = zero + 1.0f;
    const int blocks = int(tx_.band_start.size());
    for (int b = 0; b < blocks; ++b) {
      const float* w = tx_.band_w.data() + std::size_t(b) * std::size_t(tx_.band_stride) * L;
      const std::ptrdiff_t s = std::ptrdiff_t(tx_.band_start[std::size_t(b)] - tx_.lo) * step;
      const int len = tx_.band_len[std::size_t(b)];
      vf16 acc[3] = {zero, zero, zero};
      for (int j = 0; j < len; ++j) {
        vf16 wj;
        std::memcpy(&wj, w + std::size_t(j) * L, sizeof wj);
        const std::ptrdiff_t at = s + std::ptrdiff_t(j) * step;
        acc[0] += ch0[at] * wj;
        acc[1] += ch1[at] * wj;
        acc[2] += ch2[at] * wj;
      }
      const int x = b * L;
      for (int c = 0; c < 3; ++c) {
        vf16 v = acc[c] < zero ? zero : acc[c];
        v = v > one ? one : v;
        if (x + L <= dst.width) {
          std::memcpy(d[c] + x, &v, sizeof v);
        } else {
          for (int l = 0; l < dst.width - x; ++l) d[c][x + l] = v[l];
        }
      }
    }
  }

  AxisTaps tx_, ty_;
  std::vector<float> row_;
};

}  // namespace flsl::data
