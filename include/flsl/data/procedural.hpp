// Built-in procedural dataset: images of any size with several large, textured, occluding objects
// of 8 classes on a smooth, low-contrast background, with per-pixel class and instance masks;
// integer arithmetic only, so a (seed, split, index) gives the same image on every machine and
// compiler.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "dataset.hpp"
#include "image.hpp"

namespace flsl::data {

/// Classes of the procedural dataset (mask value; 0 is the background). A class is a shape with
/// a texture; colours are drawn per object independently of the class, so colour alone tells
/// nothing about the class.
inline constexpr int procedural_num_classes = 8;
inline constexpr std::array<const char*, procedural_num_classes + 1> procedural_class_names = {
    "background",    "striped disc",    "checkered square", "dotted triangle", "plain ring",
    "gridded cross", "ringed hexagram", "zigzag ellipse",   "speckled hexagon"};

enum class Split { train = 0, val = 1 };

struct ProceduralParams {
  std::uint64_t seed = 0;
  Split split = Split::train;
  std::size_t size = 10000;  // images in the split
  int width = 256, height = 256;
  int min_objects = 2, max_objects = 5;
};

/// One rendered image with its ground truth. classes: [H, W] class per pixel (0 background);
/// instances: [H, W] object per pixel (0 background, k = k-th object drawn, later ones on top);
/// instance_class[k - 1]: the class of object k.
struct ProceduralSample {
  ImageU8 image;
  std::vector<std::uint8_t> classes;
  std::vector<std::uint16_t> instances;
  std::vector<std::uint8_t> instance_class;
  std::int64_t dominant_class = -1;  // the object class covering most pixels
};

namespace detail {

// round(16384 * sin(2 pi k / 64)), k = 0..16: rotations in Q14 without libm.
inline constexpr std::array<std::int64_t, 17> sin_q14_quarter = {
    0,     1606,  3196,  4756,  6270,  7723,  9102,  10394, 11585,
    12665, 13623, 14449, 15137, 15679, 16069, 16305, 16384};
constexpr std::int64_t sin_q14(int k) {
  k &= 63;
  if (k <= 16) return sin_q14_quarter[std::size_t(k)];
  if (k <= 32) return sin_q14_quarter[std::size_t(32 - k)];
  if (k <= 48) return -sin_q14_quarter[std::size_t(k - 32)];
  return -sin_q14_quarter[std::size_t(64 - k)];
}
constexpr std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
constexpr std::int64_t floor_mod(std::int64_t a, std::int64_t b) { return a - floor_div(a, b) * b; }
constexpr std::uint64_t hash64(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}
inline std::int64_t isqrt(std::int64_t v) {  // floor(sqrt(v)); sqrt is correctly rounded (IEEE)
  auto r = std::int64_t(std::sqrt(double(v)));
  while (r * r > v) --r;
  while ((r + 1) * (r + 1) <= v) ++r;
  return r;
}
/// Triangle wave in [0, 256) of period 2p.
constexpr std::int64_t triangle(std::int64_t x, std::int64_t p) {
  const std::int64_t m = floor_mod(x, 2 * p);
  return (m < p ? m : 2 * p - m) * 255 / p;
}

struct Object {
  int cls;                 // 0..7
  std::int64_t cx, cy, r;  // centre and size in 1/16 pixel
  std::int64_t cs, sn;     // rotation, Q14
  std::int64_t period;     // texture period, 1/16 pixel
  std::array<int, 3> c1, c2;
  std::uint64_t salt;
};

constexpr std::int64_t sqrt3_q10 = 1773;  // sqrt(3) * 1024

constexpr bool in_triangle(std::int64_t u, std::int64_t v, std::int64_t r) {
  const std::int64_t au = u < 0 ? -u : u;
  return 2 * v <= r && au * sqrt3_q10 <= (v + r) * 1024;
}

/// Shape test in the object's frame (u, v in 1/16 pixel).
constexpr bool inside(int cls, std::int64_t u, std::int64_t v, std::int64_t r) {
  const std::int64_t au = u < 0 ? -u : u, av = v < 0 ? -v : v;
  const std::int64_t d2 = u * u + v * v;
  switch (cls) {
    case 0:
      return d2 <= r * r;  // disc
    case 1:
      return 4 * au <= 3 * r && 4 * av <= 3 * r;  // square
    case 2:
      return in_triangle(u, v, r);  // triangle
    case 3:
      return d2 <= r * r && 400 * d2 >= 121 * r * r;  // ring
    case 4:
      return (3 * au <= r && av <= r) || (3 * av <= r && au <= r);  // cross
    case 5:
      return in_triangle(u, v, r) || in_triangle(u, -v, r);  // hexagram
    case 6:
      return u * u + 4 * v * v <= r * r;  // ellipse
    default:                              // hexagon
      return 2048 * au <= sqrt3_q10 * r && sqrt3_q10 * av + 1024 * au <= sqrt3_q10 * r;
  }
}

/// Texture bit (0: colour 1, 1: colour 2) in the object's frame.
inline bool texture(const Object& o, std::int64_t u, std::int64_t v) {
  const std::int64_t p = o.period;
  switch (o.cls) {
    case 0:
      return floor_div(u, p) & 1;  // stripes
    case 1:
      return (floor_div(u, p) + floor_div(v, p)) & 1;  // checker
    case 2: {                                          // dots
      const std::int64_t mu = floor_mod(u, p) - p / 2, mv = floor_mod(v, p) - p / 2;
      return 9 * (mu * mu + mv * mv) <= p * p;
    }
    case 3:
      return false;  // plain
    case 4:
      return 4 * floor_mod(u, p) < p || 4 * floor_mod(v, p) < p;  // grid
    case 5:
      return floor_div(isqrt(u * u + v * v), (2 * p) / 3) & 1;  // rings
    case 6: {                                                   // zigzag
      const std::int64_t w = floor_mod(u, 2 * p), tri = w < p ? w : 2 * p - w;
      return floor_div(v + tri, p) & 1;
    }
    default:  // speckle
      return hash64(o.salt ^ std::uint64_t(floor_div(u, p / 2)) * 0x9E3779B97F4A7C15ull ^
                    std::uint64_t(floor_div(v, p / 2))) &
             1;
  }
}

}  // namespace detail

/// The procedural dataset: image i of a split is drawn from Generator(seed, mix_stream(tag, split,
/// i)) with integer draws only, so train and val never share an image and every machine renders
/// the same pixels.
class ProceduralDataset {
 public:
  static constexpr std::uint64_t tag = 0x666c736c2d70726full;  // "flsl-pro"

  explicit ProceduralDataset(ProceduralParams p = {}) : p_(p) {
    FLSL_CHECK(p_.width >= 8 && p_.height >= 8 && p_.width <= 8192 && p_.height <= 8192,
               "ProceduralDataset: image size ", p_.width, "x", p_.height, " outside [8, 8192]");
    FLSL_CHECK(p_.min_objects >= 1 && p_.min_objects <= p_.max_objects && p_.max_objects <= 64,
               "ProceduralDataset: objects per image [", p_.min_objects, ", ", p_.max_objects,
               "] invalid (1 <= min <= max <= 64)");
  }
  const ProceduralParams& params() const { return p_; }
  std::size_t size() const { return p_.size; }

  /// Image, class mask and instance mask of image i.
  void render(std::size_t i, ProceduralSample& s) const {
    FLSL_CHECK(i < p_.size, "ProceduralDataset: index ", i, " out of range (", p_.size, " images)");
    Generator g(p_.seed, mix_stream(tag, std::uint64_t(p_.split), std::uint64_t(i)));
    const int W = p_.width, H = p_.height;
    auto draw = [&](std::int64_t n) { return std::int64_t(g.uniform_int(std::uint32_t(n))); };
    auto colour = [&] {
      return std::array<int, 3>{int(draw(256)), int(draw(256)), int(draw(256))};
    };

    // background: two close colours (at most 40 apart per channel) blended by two crossing
    // triangle waves, plus pixel noise: any colour, but smooth and of low contrast, where every
    // object is textured in two contrasting colours (except the plain ring)
    const auto b1 = colour();
    std::array<int, 3> b2{};
    for (int c = 0; c < 3; ++c)
      b2[std::size_t(c)] = std::clamp(b1[std::size_t(c)] + int(draw(81)) - 40, 0, 255);
    const std::int64_t fx1 = 1 + draw(3), fy1 = draw(3), fx2 = draw(3), fy2 = 1 + draw(3);
    const std::int64_t p1 = 24 + draw(48), p2 = 24 + draw(48);
    const std::uint64_t noise_salt = g.next_u32();

    const int n = int(p_.min_objects + draw(p_.max_objects - p_.min_objects + 1));
    const std::int64_t side = 16 * std::int64_t(std::min(W, H));
    std::array<detail::Object, 64> objects;
    for (int k = 0; k < n; ++k) {
      auto& o = objects[std::size_t(k)];
      o.cls = int(draw(procedural_num_classes));
      o.cx = draw(16 * std::int64_t(W));
      o.cy = draw(16 * std::int64_t(H));
      o.r = side * 16 / 100 + draw(side * 20 / 100 + 1);
      const int angle = int(draw(64));
      o.cs = detail::sin_q14(angle + 16);
      o.sn = detail::sin_q14(angle);
      o.period = std::max<std::int64_t>(48, o.r / (3 + draw(3)));
      o.c1 = colour();
      for (int c = 0; c < 3; ++c)
        o.c2[std::size_t(c)] = (o.c1[std::size_t(c)] + 80 + int(draw(96))) & 255;
      o.salt = (std::uint64_t(g.next_u32()) << 32) | g.next_u32();
    }

    s.image.resize(W, H);
    s.classes.assign(std::size_t(W) * std::size_t(H), 0);
    s.instances.assign(std::size_t(W) * std::size_t(H), 0);
    s.instance_class.resize(std::size_t(n));
    for (int k = 0; k < n; ++k)
      s.instance_class[std::size_t(k)] = std::uint8_t(objects[std::size_t(k)].cls + 1);
    std::array<std::int64_t, procedural_num_classes + 1> area{};
    for (int y = 0; y < H; ++y) {
      std::uint8_t* row = s.image.row(y);
      const std::int64_t py = 16 * std::int64_t(y) + 8;
      for (int x = 0; x < W; ++x) {
        const std::int64_t px = 16 * std::int64_t(x) + 8;
        const std::size_t at = std::size_t(y) * std::size_t(W) + std::size_t(x);
        std::array<int, 3> rgb{};
        int hit = -1;
        for (int k = n - 1; k >= 0 && hit < 0; --k) {
          const auto& o = objects[std::size_t(k)];
          const std::int64_t dx = px - o.cx, dy = py - o.cy;
          const std::int64_t reach = o.r + o.r / 8;
          if (dx > reach || -dx > reach || dy > reach || -dy > reach) continue;
          const std::int64_t u = (dx * o.cs + dy * o.sn) >> 14;
          const std::int64_t v = (dy * o.cs - dx * o.sn) >> 14;
          if (!detail::inside(o.cls, u, v, o.r)) continue;
          hit = k;
          rgb = detail::texture(o, u, v) ? o.c2 : o.c1;
        }
        if (hit < 0) {
          const std::int64_t t =
              (detail::triangle(fx1 * x + fy1 * y, p1) + detail::triangle(fx2 * x - fy2 * y, p2)) /
              2;
          for (int c = 0; c < 3; ++c) {
            const std::size_t cc = std::size_t(c);
            rgb[cc] = int(b1[cc] + (b2[cc] - b1[cc]) * t / 255);
          }
        } else {
          s.classes[at] = std::uint8_t(objects[std::size_t(hit)].cls + 1);
          s.instances[at] = std::uint16_t(hit + 1);
        }
        ++area[s.classes[at]];
        const std::uint64_t h =
            detail::hash64(noise_salt ^ (std::uint64_t(y) << 32 | std::uint64_t(x)));
        for (int c = 0; c < 3; ++c) {
          const int noise = int((h >> (8 * c)) % 17) - 8;
          row[3 * x + c] = std::uint8_t(std::clamp(rgb[std::size_t(c)] + noise, 0, 255));
        }
      }
    }
    s.dominant_class = -1;
    for (int c = 1; c <= procedural_num_classes; ++c)
      if (area[std::size_t(c)] > 0 &&
          (s.dominant_class < 0 || area[std::size_t(c)] > area[std::size_t(s.dominant_class)]))
        s.dominant_class = c;
  }

  /// The loader's entry: the decoded image, labelled with its dominant class (1..8).
  void load(std::size_t i, SourceImage& out) const {
    thread_local ProceduralSample s;
    render(i, s);
    out.encoded = false;
    std::swap(out.pixels, s.image);
    out.label = s.dominant_class;
    out.name = "<procedural " + std::string(p_.split == Split::train ? "train " : "val ") +
               std::to_string(i) + ">";
  }

 private:
  ProceduralParams p_;
};

}  // namespace flsl::data
