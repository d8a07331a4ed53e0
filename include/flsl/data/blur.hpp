// Gaussian blur of a planar float image: a true separable Gaussian of standard deviation sigma
// (the "radius" of PIL's ImageFilter.GaussianBlur), truncated at 4 sigma, edges replicated.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"

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
/// three extended box blurs; both replicate edge pixels. Scratch memory lives in the object.
class GaussianBlur {
 public:
  void operator()(PlanarView v, double sigma) {
    gaussian_taps(sigma, taps_);
    const int r = int(taps_.size() / 2);
    const int w = v.width, h = v.height;
    tmp_.resize(std::size_t(w) * std::size_t(h));
    pad_.resize(std::size_t(w + 2 * r));
    for (int c = 0; c < 3; ++c) {
      float* plane = v.plane(c);
      // vertical: tmp row y = sum_k taps[k] * plane row clamp(y + k - r)
      for (int y = 0; y < h; ++y) {
        float* __restrict out = tmp_.data() + std::size_t(y) * std::size_t(w);
        for (int k = 0; k < int(taps_.size()); ++k) {
          const int sy = std::clamp(y + k - r, 0, h - 1);
          const float* __restrict in = plane + std::size_t(sy) * std::size_t(w);
          const float t = taps_[std::size_t(k)];
          if (k == 0) {
            for (int x = 0; x < w; ++x) out[x] = t * in[x];
          } else {
            for (int x = 0; x < w; ++x) out[x] += t * in[x];
          }
        }
      }
      // horizontal, through a row padded with replicated edges
      for (int y = 0; y < h; ++y) {
        const float* row = tmp_.data() + std::size_t(y) * std::size_t(w);
        float* __restrict pad = pad_.data();
        std::fill(pad, pad + r, row[0]);
        std::copy(row, row + w, pad + r);
        std::fill(pad + r + w, pad + 2 * r + w, row[w - 1]);
        float* __restrict out = plane + std::size_t(y) * std::size_t(w);
        const float t0 = taps_[0];
        for (int x = 0; x < w; ++x) out[x] = t0 * pad[x];
        for (int k = 1; k < int(taps_.size()); ++k) {
          const float t = taps_[std::size_t(k)];
          const float* __restrict p = pad + k;
          for (int x = 0; x < w; ++x) out[x] += t * p[x];
        }
      }
    }
  }

 private:
  std::vector<float> taps_, tmp_, pad_;
};

}  // namespace flsl::data
