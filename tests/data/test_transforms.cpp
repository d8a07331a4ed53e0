// Transform primitives against their formulas: RandomResizedCrop box statistics and fallback,
// bicubic antialiased resampling against PIL, colour jitter ops, greyscale, solarise, normalise,
// Gaussian blur of an impulse, the style augmentation's probabilities, query tokens.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <set>
#include <vector>

#include <flsl/core/random.hpp>
#include <flsl/data/blur.hpp>
#include <flsl/data/color.hpp>
#include <flsl/data/query_tokens.hpp>
#include <flsl/data/random_resized_crop.hpp>
#include <flsl/data/resample.hpp>
#include <flsl/data/transforms.hpp>

using namespace flsl::data;
using flsl::Generator;

namespace {

ImageF32 image_of(int w, int h, std::initializer_list<std::array<float, 3>> px) {
  ImageF32 img(w, h);
  const PlanarView v = img.view();
  int i = 0;
  for (const auto& p : px) {
    for (int c = 0; c < 3; ++c) v.plane(c)[i] = p[std::size_t(c)];
    ++i;
  }
  return img;
}

std::array<float, 3> pixel(const ImageF32& img, int i) {
  const std::size_t n = img.values.size() / 3;
  return {img.values[std::size_t(i)], img.values[n + std::size_t(i)],
          img.values[2 * n + std::size_t(i)]};
}

/// torchvision's _rgb2hsv / _hsv2rgb written the straightforward way (reference for adjust_hue).
std::array<double, 3> hue_reference(std::array<double, 3> rgb, double shift) {
  const double r = rgb[0], g = rgb[1], b = rgb[2];
  const double mx = std::max({r, g, b}), mn = std::min({r, g, b}), cr = mx - mn;
  const double s = cr / (mx == mn ? 1.0 : mx);
  const double div = mx == mn ? 1.0 : cr;
  const double rc = (mx - r) / div, gc = (mx - g) / div, bc = (mx - b) / div;
  double h = mx == r ? bc - gc : (mx == g ? 2.0 + rc - bc : 4.0 + gc - rc);
  h = std::fmod(h / 6.0 + 1.0, 1.0);
  h = h + shift;
  h = h - std::floor(h);
  const double v = mx;
  const double i = std::floor(h * 6.0), f = h * 6.0 - i;
  const double p = std::clamp(v * (1 - s), 0.0, 1.0), q = std::clamp(v * (1 - s * f), 0.0, 1.0),
               t = std::clamp(v * (1 - s * (1 - f)), 0.0, 1.0);
  switch (int(i) % 6) {
    case 0:
      return {v, t, p};
    case 1:
      return {q, v, p};
    case 2:
      return {p, v, t};
    case 3:
      return {p, q, v};
    case 4:
      return {t, p, v};
    default:
      return {v, p, q};
  }
}

struct PilCase {
  int left, top, w, h, out_w, out_h;
  std::vector<int> expect;  // [out_h, out_w, 3] uint8 from PIL
};

}  // namespace

// ---- RandomResizedCrop ------------------------------------------------------------------------

TEST_CASE(
    "RandomResizedCrop: area fraction uniform in scale, log-ratio uniform, position uniform") {
  // On a large square image every first try is accepted, so the draws show the distributions.
  const RandomResizedCropParams p{96, 0.05, 0.4};
  Generator g(7, 1);
  const int W = 1000, H = 1000, N = 20000;
  double area = 0, area2 = 0, logr = 0, logr2 = 0, top = 0, left = 0;
  for (int i = 0; i < N; ++i) {
    const CropBox c = sample_crop(W, H, p, g);
    REQUIRE(c.top >= 0);
    REQUIRE(c.left >= 0);
    REQUIRE(c.top + c.height <= H);
    REQUIRE(c.left + c.width <= W);
    const double a = double(c.width) * c.height / (W * H),
                 lr = std::log(double(c.width) / c.height);
    area += a, area2 += a * a, logr += lr, logr2 += lr * lr;
    top += double(c.top) / (H - c.height), left += double(c.left) / (W - c.width);
  }
  area /= N, logr /= N, top /= N, left /= N;
  const double area_var = area2 / N - area * area, logr_var = logr2 / N - logr * logr;
  CHECK(area == doctest::Approx(0.225).epsilon(0.01));
  CHECK(area_var == doctest::Approx(0.35 * 0.35 / 12).epsilon(0.04));
  CHECK(std::abs(logr) < 0.005);
  const double lr_range = std::log(4.0 / 3.0) - std::log(3.0 / 4.0);
  CHECK(logr_var == doctest::Approx(lr_range * lr_range / 12).epsilon(0.05));
  CHECK(top == doctest::Approx(0.5).epsilon(0.02));
  CHECK(left == doctest::Approx(0.5).epsilon(0.02));
}

TEST_CASE("RandomResizedCrop: after 10 failed tries the centre crop, ratio clamped") {
  Generator g(1, 2);
  const RandomResizedCropParams p{224, 0.9, 1.0};
  // a 1000 x 10 strip never fits a crop of 90% of its area at ratio <= 4/3
  const CropBox wide = sample_crop(1000, 10, p, g);
  CHECK(wide.height == 10);
  CHECK(wide.width == 13);  // round(10 * 4/3)
  CHECK(wide.top == 0);
  CHECK(wide.left == (1000 - 13) / 2);
  const CropBox tall = sample_crop(10, 1000, p, g);
  CHECK(tall.width == 10);
  CHECK(tall.height == 13);  // round(10 / (3/4))
  CHECK(tall.top == (1000 - 13) / 2);
  // in-range ratio: the whole image
  const CropBox whole = sample_crop(100, 90, {224, 1.5, 2.0}, g);
  CHECK(whole.top == 0);
  CHECK(whole.left == 0);
  CHECK(whole.width == 100);
  CHECK(whole.height == 90);
}

TEST_CASE("RandomResizedCrop rounds like Python (half to even)") {
  CHECK(detail::round_half_even(2.5) == 2);
  CHECK(detail::round_half_even(3.5) == 4);
  CHECK(detail::round_half_even(3.4999) == 3);
  CHECK(detail::round_half_even(13.3333) == 13);
}

// ---- resampling -------------------------------------------------------------------------------

TEST_CASE("bicubic resampling matches PIL's crop + resize(BICUBIC) within one grey level") {
  // made by tests/data/make_resample_fixture.py
  const int W = 7, H = 5;
  ImageU8 img(W, H);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < 3; ++c)
        img.at(y, x, c) =
            std::uint8_t(std::lround(128 + 60 * std::sin(0.9 * x + c) * std::cos(0.7 * y)));
  const std::vector<PilCase> cases = {
#include "resample_fixture.inc"
  };
  Resampler rs;
  for (const auto& pc : cases) {
    CAPTURE(pc.out_w);
    CAPTURE(pc.out_h);
    ImageF32 out(pc.out_w, pc.out_h);
    const CropBox crop{pc.top, pc.left, pc.h, pc.w};
    rs.resize(img, crop.box(), out.view());
    double worst = 0;
    for (int y = 0; y < pc.out_h; ++y)
      for (int x = 0; x < pc.out_w; ++x)
        for (int c = 0; c < 3; ++c) {
          const double ours = 255.0 * out.view().at(c, y, x);
          const double pil = pc.expect[std::size_t((y * pc.out_w + x) * 3 + c)];
          worst = std::max(worst, std::abs(ours - pil));
        }
    CHECK(worst <= 1.0);
  }
}

TEST_CASE(
    "resampling: identity at scale 1, constants stay constant, flip mirrors, clamped to [0, 1]") {
  ImageU8 img(9, 6);
  for (std::size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = std::uint8_t((i * 37) % 256);
  Resampler rs;
  ImageF32 same(9, 6), flipped(9, 6);
  rs.resize(img, {0, 0, 9, 6}, same.view());
  rs.resize(img, {0, 0, 9, 6}, flipped.view(), true);
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 9; ++x)
      for (int c = 0; c < 3; ++c) {
        CHECK(same.view().at(c, y, x) == doctest::Approx(img.at(y, x, c) / 255.0).epsilon(1e-5));
        CHECK(flipped.view().at(c, y, x) == same.view().at(c, y, 8 - x));
      }
  // the planar overload from a float image agrees with the byte overload
  ImageF32 planar;
  to_planar(img, planar);
  ImageF32 a(4, 5), b(4, 5);
  rs.resize(img, {1, 0.5, 8, 6}, a.view());
  rs.resize(planar.view(), {1, 0.5, 8, 6}, b.view());
  for (std::size_t i = 0; i < a.values.size(); ++i)
    CHECK(a.values[i] == doctest::Approx(b.values[i]).epsilon(1e-5));

  ImageU8 flat(13, 7);
  std::fill(flat.pixels.begin(), flat.pixels.end(), std::uint8_t(77));
  for (auto [ow, oh] : {std::pair{3, 2}, std::pair{40, 31}, std::pair{13, 3}}) {
    ImageF32 out(ow, oh);
    rs.resize(flat, {0.5, 1.25, 12.5, 7}, out.view());
    for (float v : out.values) CHECK(v == doctest::Approx(77 / 255.0).epsilon(1e-5));
  }
  ImageU8 step(8, 1);  // a hard edge overshoots with a = -0.5 before clamping
  for (int x = 0; x < 8; ++x)
    for (int c = 0; c < 3; ++c) step.at(0, x, c) = x < 4 ? 0 : 255;
  ImageF32 up(29, 1);
  rs.resize(step, {0, 0, 8, 1}, up.view());
  for (float v : up.values) CHECK((v >= 0.0f && v <= 1.0f));
}

TEST_CASE("resampling weights: PIL's support widens with the shrink factor and sums to one") {
  AxisTaps t;
  compute_taps(0, 100, 100, 10, false, 1.0f, t);  // shrink x10: support 20 each side
  CHECK(t.max_taps == 41);
  for (int i = 0; i < 10; ++i) {
    double sum = 0;
    for (int k = 0; k < t.count[std::size_t(i)]; ++k) sum += t.w[std::size_t(i * t.max_taps + k)];
    CHECK(sum == doctest::Approx(1.0));
  }
  compute_taps(2, 5, 10, 6, false, 1.0f, t);  // taps never leave the crop [2, 5)
  for (int i = 0; i < 6; ++i) {
    CHECK(t.first[std::size_t(i)] >= 2);
    CHECK(t.first[std::size_t(i)] + t.count[std::size_t(i)] <= 5);
  }
  CHECK(bicubic_kernel(0) == 1.0);
  CHECK(bicubic_kernel(1) == 0.0);
  CHECK(bicubic_kernel(0.5) == doctest::Approx(0.5625));   // (a+2)/8 - (a+3)/4 + 1, a = -0.5
  CHECK(bicubic_kernel(1.5) == doctest::Approx(-0.0625));  // a (1.5^3 - 5 * 1.5^2 + 8 * 1.5 - 4)
}

// ---- colour -----------------------------------------------------------------------------------

TEST_CASE("brightness, contrast and saturation follow torchvision's blend formulas") {
  SUBCASE("brightness multiplies and clamps") {
    ImageF32 img = image_of(2, 1, {{0.2f, 0.5f, 0.9f}, {0.0f, 0.1f, 0.3f}});
    adjust_brightness(img.view(), 1.4f);
    CHECK(pixel(img, 0)[0] == doctest::Approx(0.28));
    CHECK(pixel(img, 0)[1] == doctest::Approx(0.7));
    CHECK(pixel(img, 0)[2] == 1.0f);
    CHECK(pixel(img, 1)[2] == doctest::Approx(0.42));
  }
  SUBCASE("contrast blends with the mean luma of the image") {
    ImageF32 img = image_of(2, 1, {{0.2f, 0.5f, 0.9f}, {0.0f, 0.1f, 0.3f}});
    const double m =
        (0.299 * 0.2 + 0.587 * 0.5 + 0.114 * 0.9 + 0.299 * 0 + 0.587 * 0.1 + 0.114 * 0.3) / 2;
    adjust_contrast(img.view(), 0.6f);
    CHECK(pixel(img, 0)[0] == doctest::Approx(0.6 * 0.2 + 0.4 * m));
    CHECK(pixel(img, 1)[1] == doctest::Approx(0.6 * 0.1 + 0.4 * m));
  }
  SUBCASE("saturation blends with each pixel's luma; 0 gives greyscale, greys stay") {
    ImageF32 img = image_of(2, 1, {{0.6f, 0.4f, 0.2f}, {0.5f, 0.5f, 0.5f}});
    const double l = 0.299 * 0.6 + 0.587 * 0.4 + 0.114 * 0.2;
    ImageF32 sat = img;
    adjust_saturation(sat.view(), 1.2f);
    CHECK(pixel(sat, 0)[0] == doctest::Approx(1.2 * 0.6 - 0.2 * l));
    CHECK(pixel(sat, 0)[2] == doctest::Approx(1.2 * 0.2 - 0.2 * l));
    CHECK(pixel(sat, 1)[1] == doctest::Approx(0.5));
    adjust_saturation(img.view(), 0.0f);
    for (int c = 0; c < 3; ++c) CHECK(pixel(img, 0)[std::size_t(c)] == doctest::Approx(l));
  }
}

TEST_CASE("hue rotation of known colours") {
  ImageF32 img = image_of(4, 1, {{1, 0, 0}, {0.2f, 0.4f, 0.8f}, {0.5f, 0.5f, 0.5f}, {0, 1, 1}});
  SUBCASE("one third turn: red -> green, cyan -> magenta") {
    adjust_hue(img.view(), 1.0f / 3.0f);
    const auto red = pixel(img, 0), cyan = pixel(img, 3);
    CHECK(red[0] == doctest::Approx(0.0).epsilon(1e-6));
    CHECK(red[1] == doctest::Approx(1.0));
    CHECK(red[2] == doctest::Approx(0.0).epsilon(1e-6));
    CHECK(cyan[0] == doctest::Approx(1.0));
    CHECK(cyan[1] == doctest::Approx(0.0).epsilon(1e-6));
    CHECK(cyan[2] == doctest::Approx(1.0));
  }
  SUBCASE("negative shifts wrap: red - 1/6 -> magenta") {
    adjust_hue(img.view(), -1.0f / 6.0f);
    const auto red = pixel(img, 0);
    CHECK(red[0] == doctest::Approx(1.0));
    CHECK(red[1] == doctest::Approx(0.0).epsilon(1e-6));
    CHECK(red[2] == doctest::Approx(1.0));
  }
  SUBCASE("half turn keeps value and saturation: (0.2, 0.4, 0.8) -> (0.8, 0.6, 0.2); grey stays") {
    adjust_hue(img.view(), 0.5f);
    const auto p = pixel(img, 1), grey = pixel(img, 2);
    CHECK(p[0] == doctest::Approx(0.8));
    CHECK(p[1] == doctest::Approx(0.6));
    CHECK(p[2] == doctest::Approx(0.2));
    for (float v : grey) CHECK(v == doctest::Approx(0.5));
  }
}

TEST_CASE("hue rotation agrees with torchvision's rgb->hsv->rgb on random colours") {
  Generator g(3, 4);
  const int n = 2000;
  ImageF32 img(n, 1);
  std::vector<std::array<double, 3>> src(n);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < 3; ++c) {
      // some exact ties between channels too
      const double v = i % 7 == 0 ? std::round(g.uniform() * 4) / 4 : g.uniform();
      src[std::size_t(i)][std::size_t(c)] = double(float(v));
      img.view().plane(c)[i] = float(v);
    }
  for (float shift : {0.1f, -0.1f, 0.37f, -0.5f}) {
    ImageF32 out = img;
    adjust_hue(out.view(), shift);
    double worst = 0;
    for (int i = 0; i < n; ++i) {
      const auto ref = hue_reference(src[std::size_t(i)], double(shift));
      for (int c = 0; c < 3; ++c)
        worst = std::max(worst, std::abs(ref[std::size_t(c)] - double(out.view().plane(c)[i])));
    }
    CHECK(worst < 1e-5);
  }
}

TEST_CASE("greyscale uses 0.299 / 0.587 / 0.114; solarise inverts from 128/255 up; normalise") {
  ImageF32 img = image_of(3, 1, {{1, 0, 0}, {0, 1, 0}, {127 / 255.0f, 128 / 255.0f, 1.0f}});
  ImageF32 grey = img;
  to_grayscale(grey.view());
  CHECK(pixel(grey, 0)[2] == doctest::Approx(0.299));
  CHECK(pixel(grey, 1)[0] == doctest::Approx(0.587));
  solarize(img.view());
  CHECK(pixel(img, 2)[0] == doctest::Approx(127 / 255.0));  // below the threshold: unchanged
  CHECK(pixel(img, 2)[1] == doctest::Approx(127 / 255.0));  // 128 -> 255 - 128
  CHECK(pixel(img, 2)[2] == doctest::Approx(0.0));          // 255 -> 0
  CHECK(pixel(img, 0)[0] == doctest::Approx(0.0));
  ImageF32 n = image_of(1, 1, {{0.485f, 0.0f, 1.0f}});
  normalize(n.view());
  CHECK(pixel(n, 0)[0] == doctest::Approx(0.0));
  CHECK(pixel(n, 0)[1] == doctest::Approx(-0.456 / 0.224));
  CHECK(pixel(n, 0)[2] == doctest::Approx((1 - 0.406) / 0.225));
}

// ---- blur -------------------------------------------------------------------------------------

TEST_CASE("Gaussian blur of an impulse: sums to one, symmetric, variance sigma^2") {
  const int n = 41, mid = 20;
  for (double sigma : {0.6, 1.0, 2.0}) {
    CAPTURE(sigma);
    ImageF32 img(n, n);
    for (int c = 0; c < 3; ++c) img.view().at(c, mid, mid) = 1.0f;
    GaussianBlur blur;
    blur(img.view(), sigma);
    const PlanarView v = img.view();
    double sum = 0, var_x = 0;
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        const double w = v.at(0, y, x);
        sum += w;
        var_x += w * (x - mid) * (x - mid);
        CHECK(v.at(0, y, x) == doctest::Approx(v.at(0, y, n - 1 - x)).epsilon(1e-6));
        CHECK(v.at(0, y, x) == doctest::Approx(v.at(0, n - 1 - y, x)).epsilon(1e-6));
        CHECK(v.at(0, y, x) == doctest::Approx(v.at(0, x, y)).epsilon(1e-6));
        CHECK(v.at(2, y, x) == v.at(0, y, x));
      }
    CHECK(sum == doctest::Approx(1.0).epsilon(1e-5));
    // a sampled Gaussian's variance is sigma^2 up to a small discretisation error (exp(-2 pi^2
    // s^2))
    CHECK(var_x == doctest::Approx(sigma * sigma).epsilon(sigma < 1 ? 0.05 : 0.002));
  }
  ImageF32 flat(7, 5);
  std::fill(flat.values.begin(), flat.values.end(), 0.3f);
  GaussianBlur blur;
  blur(flat.view(), 2.0);  // edges are replicated: a constant stays constant up to the border
  for (float v : flat.values) CHECK(v == doctest::Approx(0.3).epsilon(1e-5));
}

// ---- the style augmentation -------------------------------------------------------------------

TEST_CASE("style augmentation: the spec's probabilities, ranges and a fresh random order") {
  const StyleParams p;  // defaults: jitter 0.8, grey 0.2, blur 0.5*0.5 + 0.5*0.1, solarise 0.5*0.2
  StyleAugment style;
  Generator g(11, 0);
  ImageF32 img(4, 4);
  const int N = 6000;
  int jitter = 0, grey = 0, blur = 0, sol = 0;
  std::set<std::array<int, 4>> orders;
  for (int i = 0; i < N; ++i) {
    std::fill(img.values.begin(), img.values.end(), 0.5f);
    const StyleRecord r = style(img.view(), p, g);
    jitter += r.jitter, grey += r.grayscale, blur += r.blur, sol += r.solarize;
    if (r.jitter) {
      orders.insert(r.order);
      CHECK((r.brightness >= 0.6f && r.brightness <= 1.4f));
      CHECK((r.contrast >= 0.6f && r.contrast <= 1.4f));
      CHECK((r.saturation >= 0.8f && r.saturation <= 1.2f));
      CHECK((r.hue >= -0.1f && r.hue <= 0.1f));
    }
    if (r.blur) CHECK((r.sigma >= 0.1 && r.sigma <= 2.0));
  }
  CHECK(jitter / double(N) == doctest::Approx(0.8).epsilon(0.03));
  CHECK(grey / double(N) == doctest::Approx(0.2).epsilon(0.08));
  CHECK(blur / double(N) == doctest::Approx(0.3).epsilon(0.07));
  CHECK(sol / double(N) == doctest::Approx(0.1).epsilon(0.12));
  CHECK(orders.size() == 24);  // every order of the four ops occurs
  // normalisation is last: a grey 0.5 image that was not solarised maps to (0.5 - mean) / std
  ImageF32 one(1, 1);
  std::fill(one.values.begin(), one.values.end(), 0.5f);
  StyleParams off = p;
  off.jitter_p = off.grayscale_p = off.blur_p_a = off.blur_p_b = off.solarize_p = 0;
  style(one.view(), off, g);
  CHECK(one.values[0] == doctest::Approx((0.5 - 0.485) / 0.229));
}

// ---- query tokens -----------------------------------------------------------------------------

TEST_CASE("query tokens: 16 per 224 px global view, 9 per 96 px local view (patch 16)") {
  CHECK(query_token_count(224 / 16, 3) == 16);
  CHECK(query_token_count(96 / 16, 2) == 9);
  CHECK(query_token_count(224 / 8, 3) == 81);
  Generator g(5, 5);
  std::vector<std::int64_t> q(16);
  std::array<int, 4> corners{};
  for (int i = 0; i < 4000; ++i) {
    sample_query_tokens(14, 3, false, g, q);
    const std::int64_t y0 = q[0] / 14, x0 = q[0] % 14;
    REQUIRE(((y0 == 0 || y0 == 2) && (x0 == 0 || x0 == 2)));  // the 12x12 block at a corner
    ++corners[std::size_t((y0 == 2) * 2 + (x0 == 2))];
    for (int k = 0; k < 16; ++k) {  // top-left token of each 3x3 window, row-major
      CHECK(q[std::size_t(k)] / 14 == y0 + 3 * (k / 4));
      CHECK(q[std::size_t(k)] % 14 == x0 + 3 * (k % 4));
    }
  }
  for (int c : corners) CHECK(c / 4000.0 == doctest::Approx(0.25).epsilon(0.1));

  std::vector<std::int64_t> local(9);
  sample_query_tokens(6, 2, false, g, local);  // 6x6 filled by 3x3 windows of 2: no corner draw
  CHECK(local == std::vector<std::int64_t>{0, 2, 4, 12, 14, 16, 24, 26, 28});

  std::set<std::int64_t> seen;
  for (int i = 0; i < 2000; ++i) {
    sample_query_tokens(6, 2, true, g, local);
    for (int k = 0; k < 9; ++k) {
      const std::int64_t y = local[std::size_t(k)] / 6, x = local[std::size_t(k)] % 6;
      CHECK(y / 2 == k / 3);  // inside its own window
      CHECK(x / 2 == k % 3);
      seen.insert(local[std::size_t(k)]);
    }
  }
  CHECK(seen.size() == 36);  // random sampling reaches every token
  CHECK_THROWS_AS(sample_query_tokens(6, 7, false, g, local), flsl::error);
}
