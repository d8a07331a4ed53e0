// RandomResizedCrop box sampling with torchvision's semantics (transforms.RandomResizedCrop.
// get_params): area fraction uniform in scale, log-uniform aspect ratio, 10 tries, then a centre
// crop clamped to the ratio range.
#pragma once

#include <algorithm>
#include <cmath>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "resample.hpp"

namespace flsl::data {

/// Integer crop box as torchvision returns it: rows [top, top + height), columns [left, left +
/// width).
struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
  Box box() const {
    return {double(left), double(top), double(left + width), double(top + height)};
  }
};

/// Parameters of one RandomResizedCrop: output side (square), area fraction range, aspect-ratio
/// range (width / height).
struct RandomResizedCropParams {
  int size = 224;
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
};

namespace detail {
/// Python's round(): to nearest, ties to even (std::nearbyint in the default rounding mode).
inline int round_half_even(double v) {
  const double r = v - std::floor(v) == 0.5 ? 2.0 * std::round(v / 2.0) : std::round(v);
  return int(r);
}
}  // namespace detail

/// Draws a crop box of an image of width x height exactly as torchvision's get_params does:
///   for 10 tries: target_area = area * U(scale); ratio = exp(U(log r_min, log r_max));
///     w = round(sqrt(target_area * ratio)), h = round(sqrt(target_area / ratio));
///     accept if 0 < w <= width and 0 < h <= height, with top ~ U{0..height-h}, left ~
///     U{0..width-w}.
///   otherwise the centre crop of the whole image, its ratio clamped into [r_min, r_max].
/// Random draws per try: two uniforms (scale, log-ratio), then two integers when accepted.
inline CropBox sample_crop(int width, int height, const RandomResizedCropParams& p, Generator& g) {
  FLSL_CHECK(width > 0 && height > 0, "RandomResizedCrop: empty image ", width, "x", height);
  FLSL_CHECK(p.scale_min > 0 && p.scale_min <= p.scale_max && p.ratio_min > 0 &&
                 p.ratio_min <= p.ratio_max,
             "RandomResizedCrop: invalid scale (", p.scale_min, ", ", p.scale_max, ") or ratio (",
             p.ratio_min, ", ", p.ratio_max, ")");
  const double area = double(width) * double(height);
  const double log_lo = std::log(p.ratio_min), log_hi = std::log(p.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * g.uniform(p.scale_min, p.scale_max);
    const double ratio = std::exp(g.uniform(log_lo, log_hi));
    const int w = detail::round_half_even(std::sqrt(target_area * ratio));
    const int h = detail::round_half_even(std::sqrt(target_area / ratio));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const int top = int(g.uniform_int(std::uint32_t(height - h + 1)));
      const int left = int(g.uniform_int(std::uint32_t(width - w + 1)));
      return {top, left, h, w};
    }
  }
  const double in_ratio = double(width) / double(height);
  int w = width, h = height;
  if (in_ratio < p.ratio_min) {
    h = detail::round_half_even(w / p.ratio_min);
  } else if (in_ratio > p.ratio_max) {
    w = detail::round_half_even(h * p.ratio_max);
  }
  return {(height - h) / 2, (width - w) / 2, h, w};
}

}  // namespace flsl::data
