// Gaussian blur of a planar float image: a true separable Gaussian of standard deviation sigma
// (the "radius" of PIL's ImageFilter.GaussianBlur), truncated at 4 sigma, edges replicated.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"
#include "simd.hpp"

namespace flsl::data {

/// Normalised taps exp(-k^2 / (2 sigma^2)), k = -r..r with r = max(1, ceil(4 sigma)).
inline void gaussian_taps(double sigma, std::vector<float>& taps) {
  FLSL_CHECK(sigma > 0 && sigma < 256, "gaussian_blur: sigma ", sigma, " outside (0, 256)");
  const int r = std::max(1, int(std::ceil(4.0 * sigma)));
  taps.resize(std::size_t(2 * r + 1));
  auto weight = [&](int k) { return std::exp(-double(k) * k / (2.0 * sigma * sigma)); };
  double sum = 0.0;
  for (int k = -r; k <= r; ++k) sum += weight(k);
  for (int k = -r; k <= r; ++k) taps[std::size_t(k + r)] = float(weight(k) / sum);
}

/// Blurs every channel of `v` in place. PIL approximates the same Gaussian (same variance) with
/// three extended box blurs; both replicate edge pixels. Both passes accumulate 16 pixels over all
/// taps in registers. Scratch memory lives in the object.
class GaussianBlur {
 public:
  void operator()(PlanarView v, double sigma) {
    gaussian_taps(sigma, taps_);
    const int r = int(taps_.size() / 2);
    const int w = v.width, h = v.height;
    tmp_.resize(std::size_t(w) * std::size_t(h));
    pad_.resize(std::size_t(w + 2 * r));
    rows_.resize(taps_.size());
    for (int c = 0; c < 3; ++c) {
      float* plane = v.plane(c);
      // vertical: tmp row y = sum_k taps[k] * plane row clamp(y + k - r)
      for (int y = 0; y < h; ++y) {
        for (int k = 0; k < int(taps_.size()); ++k)
          rows_[std::size_t(k)] =
              plane + std::size_t(std::clamp(y + k - r, 0, h - 1)) * std::size_t(w);
        filter_row(rows_.data(), 0, w, tmp_.data() + std::size_t(y) * std::size_t(w));
      }
      // horizontal, through a row padded with replicated edges: tap k reads pad + k
      for (int y = 0; y < h; ++y) {
        const float* row = tmp_.data() + std::size_t(y) * std::size_t(w);
        float* pad = pad_.data();
        std::fill(pad, pad + r, row[0]);
        std::copy(row, row + w, pad + r);
        std::fill(pad + r + w, pad + 2 * r + w, row[w - 1]);
        for (int k = 0; k < int(taps_.size()); ++k) rows_[std::size_t(k)] = pad;
        filter_row(rows_.data(), 1, w, plane + std::size_t(y) * std::size_t(w));
      }
    }
  }

 private:
  /// out[x] = sum_k taps[k] * src[k][x + k * shift] for x < n (shift 0: vertical, 1: horizontal).
  void filter_row(const float* const* src, int shift, int n, float* __restrict out) const {
    using simd::vf16;
    const int taps = int(taps_.size());
    int x = 0;
    for (; x + simd::lanes <= n; x += simd::lanes) {
      vf16 acc{};
      for (int k = 0; k < taps; ++k) {
        vf16 s;
        std::memcpy(&s, src[k] + x + k * shift, sizeof s);
        acc += taps_[std::size_t(k)] * s;
      }
      std::memcpy(out + x, &acc, sizeof acc);
    }
    for (; x < n; ++x) {
      float acc = 0.0f;
      for (int k = 0; k < taps; ++k) acc += taps_[std::size_t(k)] * src[k][x + k * shift];
      out[x] = acc;
    }
  }

  std::vector<float> taps_, tmp_, pad_;
  std::vector<const float*> rows_;
};

}  // namespace flsl::data
