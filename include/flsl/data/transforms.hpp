// The per-view style augmentation of FLSL_SPEC.md §2 (colour jitter in random order, greyscale,
// Gaussian blur or blur + solarise, ImageNet normalisation), drawn from one random stream.
#pragma once

#include <array>
#include <cstdint>

#include "../core/random.hpp"
#include "blur.hpp"
#include "color.hpp"
#include "image.hpp"

namespace flsl::data {

/// Probabilities and ranges of the style augmentation; the defaults are the spec's (and DINO's).
struct StyleParams {
  double jitter_p = 0.8;  // RandomApply(ColorJitter(...), p)
  float brightness = 0.4f, contrast = 0.4f, saturation = 0.2f, hue = 0.1f;
  double grayscale_p = 0.2;
  double blur_branch_p = 0.5;               // branch A with this probability, branch B otherwise
  double blur_p_a = 0.5;                    // A: blur with this probability
  double blur_p_b = 0.1;                    // B: blur with this probability, then
  double solarize_p = 0.2;                  //    solarise with this probability
  double sigma_min = 0.1, sigma_max = 2.0;  // blur radius (standard deviation), uniform
  bool normalize = true;
  std::array<float, 3> mean = imagenet_mean, std = imagenet_std;
};

/// What one application drew (for tests, statistics and debugging).
struct StyleRecord {
  bool jitter = false;
  std::array<int, 4> order{0, 1, 2, 3};  // 0 brightness, 1 contrast, 2 saturation, 3 hue
  float brightness = 1, contrast = 1, saturation = 1, hue = 0;
  bool grayscale = false;
  bool blur = false;
  double sigma = 0;
  bool solarize = false;
};

/// Applies the style augmentation in place to a planar image in [0, 1]. Draw order from `g`:
///   u < jitter_p ? then the order of the four ops (Fisher-Yates, 3 integers) and the factors
///   brightness U(max(0, 1 - b), 1 + b), contrast likewise, saturation likewise, hue U(-h, h);
///   u < grayscale_p ?; u < blur_branch_p ? (A: u < blur_p_a ? sigma U) : (B: u < blur_p_b ? sigma
///   U; u < solarize_p ?). A jitter range of 0 leaves that op out, as torchvision does.
class StyleAugment {
 public:
  StyleRecord operator()(PlanarView v, const StyleParams& p, Generator& g) {
    StyleRecord rec;
    if (g.uniform() < p.jitter_p) {
      rec.jitter = true;
      for (int i = 3; i > 0; --i)
        std::swap(rec.order[std::size_t(i)], rec.order[g.uniform_int(std::uint32_t(i + 1))]);
      rec.brightness = factor(p.brightness, g);
      rec.contrast = factor(p.contrast, g);
      rec.saturation = factor(p.saturation, g);
      rec.hue = float(g.uniform(-double(p.hue), double(p.hue)));
      for (int op : rec.order) {
        if (op == 0 && p.brightness > 0) adjust_brightness(v, rec.brightness);
        if (op == 1 && p.contrast > 0) adjust_contrast(v, rec.contrast);
        if (op == 2 && p.saturation > 0) adjust_saturation(v, rec.saturation);
        if (op == 3 && p.hue > 0) adjust_hue(v, rec.hue);
      }
    }
    if (g.uniform() < p.grayscale_p) {
      rec.grayscale = true;
      to_grayscale(v);
    }
    const bool branch_a = g.uniform() < p.blur_branch_p;
    if (g.uniform() < (branch_a ? p.blur_p_a : p.blur_p_b)) {
      rec.blur = true;
      rec.sigma = g.uniform(p.sigma_min, p.sigma_max);
      blur_(v, rec.sigma);
    }
    if (!branch_a && g.uniform() < p.solarize_p) {
      rec.solarize = true;
      solarize(v);
    }
    if (p.normalize) data::normalize(v, p.mean, p.std);
    return rec;
  }

 private:
  static float factor(float range, Generator& g) {
    const double lo = range < 1.0f ? 1.0 - double(range) : 0.0;
    return float(g.uniform(lo, 1.0 + double(range)));
  }

  GaussianBlur blur_;
};

}  // namespace flsl::data
