// Colour operations on planar float RGB images in [0, 1], with torchvision's formulas:
// brightness, contrast, saturation, hue (HSV rotation), greyscale, solarise, normalise.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>

#include "image.hpp"

namespace flsl::data {

/// ITU-R 601 luma weights, as PIL's convert("L") (torchvision's tensor path uses 0.2989 for red).
inline constexpr float luma_r = 0.299f, luma_g = 0.587f, luma_b = 0.114f;

namespace detail {
inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

/// Mean of the luma of an image, accumulated in 8 float lanes and summed in double.
inline double mean_luma(const PlanarView& v) {
  typedef float float8 __attribute__((vector_size(32)));
  const std::size_t n = v.plane_size();
  const float* r = v.plane(0);
  const float* g = v.plane(1);
  const float* b = v.plane(2);
  float8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float8 rr, gg, bb;
    __builtin_memcpy(&rr, r + i, sizeof rr);
    __builtin_memcpy(&gg, g + i, sizeof gg);
    __builtin_memcpy(&bb, b + i, sizeof bb);
    acc += luma_r * rr + luma_g * gg + luma_b * bb;
  }
  double sum = 0.0;
  for (int k = 0; k < 8; ++k) sum += acc[k];
  for (; i < n; ++i) sum += luma_r * r[i] + luma_g * g[i] + luma_b * b[i];
  return n ? sum / double(n) : 0.0;
}
}  // namespace detail

/// torchvision adjust_brightness: x = clamp(factor * x).
inline void adjust_brightness(PlanarView v, float factor) {
  const std::size_t n = 3 * v.plane_size();
  float* x = v.data;
  for (std::size_t i = 0; i < n; ++i) x[i] = detail::clamp01(factor * x[i]);
}

/// torchvision adjust_contrast: x = clamp(factor * x + (1 - factor) * mean), mean the average
/// luma of the whole image.
inline void adjust_contrast(PlanarView v, float factor) {
  const float offset = float((1.0 - factor) * detail::mean_luma(v));
  const std::size_t n = 3 * v.plane_size();
  float* x = v.data;
  for (std::size_t i = 0; i < n; ++i) x[i] = detail::clamp01(factor * x[i] + offset);
}

/// torchvision adjust_saturation: x = clamp(factor * x + (1 - factor) * luma(pixel)).
inline void adjust_saturation(PlanarView v, float factor) {
  const std::size_t n = v.plane_size();
  float* r = v.plane(0);
  float* g = v.plane(1);
  float* b = v.plane(2);
  const float keep = 1.0f - factor;
  for (std::size_t i = 0; i < n; ++i) {
    const float l = keep * (luma_r * r[i] + luma_g * g[i] + luma_b * b[i]);
    r[i] = detail::clamp01(factor * r[i] + l);
    g[i] = detail::clamp01(factor * g[i] + l);
    b[i] = detail::clamp01(factor * b[i] + l);
  }
}

/// torchvision adjust_hue: RGB -> HSV, h = (h + shift) mod 1, HSV -> RGB; shift in [-0.5, 0.5].
/// Branch-free form of the same maps (so the loop vectorises): with hue h6 = 6h in [0, 6),
/// value V = max, chroma C = max - min, channel n in {R: 5, G: 3, B: 1} is
/// V - C * clamp(min(k, 4 - k), 0, 1), k = (n + h6) mod 6. Greys (C = 0) are unchanged.
inline void adjust_hue(PlanarView v, float shift) {
  const std::size_t n = v.plane_size();
  float* r = v.plane(0);
  float* g = v.plane(1);
  float* b = v.plane(2);
  const float shift6 = 6.0f * (shift - std::floor(shift));  // in [0, 6)
  for (std::size_t i = 0; i < n; ++i) {
    const float R = r[i], G = g[i], B = b[i];
    const float mx = std::max(R, std::max(G, B));
    const float mn = std::min(R, std::min(G, B));
    const float c = mx - mn;
    const float inv = c > 0.0f ? 1.0f / c : 0.0f;
    float h = mx == R ? (G - B) * inv : (mx == G ? 2.0f + (B - R) * inv : 4.0f + (R - G) * inv);
    h += shift6;                   // in [-1, 11)
    h = h < 0.0f ? h + 6.0f : h;   // [0, 11)
    h = h >= 6.0f ? h - 6.0f : h;  // [0, 6)
    float k;
    k = 5.0f + h;
    k = k >= 6.0f ? k - 6.0f : k;
    r[i] = mx - c * detail::clamp01(std::min(k, 4.0f - k));
    k = 3.0f + h;
    k = k >= 6.0f ? k - 6.0f : k;
    g[i] = mx - c * detail::clamp01(std::min(k, 4.0f - k));
    k = 1.0f + h;
    k = k >= 6.0f ? k - 6.0f : k;
    b[i] = mx - c * detail::clamp01(std::min(k, 4.0f - k));
  }
}

/// RandomGrayscale with 3 output channels: every channel becomes the luma.
inline void to_grayscale(PlanarView v) {
  const std::size_t n = v.plane_size();
  float* r = v.plane(0);
  float* g = v.plane(1);
  float* b = v.plane(2);
  for (std::size_t i = 0; i < n; ++i) {
    const float l = luma_r * r[i] + luma_g * g[i] + luma_b * b[i];
    r[i] = l;
    g[i] = l;
    b[i] = l;
  }
}

/// PIL's ImageOps.solarize(threshold=128) on [0, 1] values: x >= 128/255 -> 1 - x.
inline void solarize(PlanarView v, float threshold = 128.0f / 255.0f) {
  const std::size_t n = 3 * v.plane_size();
  float* x = v.data;
  for (std::size_t i = 0; i < n; ++i) x[i] = x[i] >= threshold ? 1.0f - x[i] : x[i];
}

/// ImageNet statistics (torchvision's Normalize in every DINO-family recipe).
inline constexpr std::array<float, 3> imagenet_mean = {0.485f, 0.456f, 0.406f};
inline constexpr std::array<float, 3> imagenet_std = {0.229f, 0.224f, 0.225f};

/// x = (x - mean[c]) / std[c] per channel.
inline void normalize(PlanarView v, const std::array<float, 3>& mean = imagenet_mean,
                      const std::array<float, 3>& std = imagenet_std) {
  const std::size_t n = v.plane_size();
  for (int c = 0; c < 3; ++c) {
    float* x = v.plane(c);
    const float m = mean[std::size_t(c)], inv = 1.0f / std[std::size_t(c)];
    for (std::size_t i = 0; i < n; ++i) x[i] = (x[i] - m) * inv;
  }
}

}  // namespace flsl::data
