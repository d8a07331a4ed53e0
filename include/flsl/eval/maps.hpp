// Qualitative pictures of a backbone (FLSL_SPEC.md §7): per-head self-attention of the last block
// and a k-means clustering of the patch features, next to the image and its ground-truth mask,
// one row per image, written as a PNG.
//
// The backbone has no class token, so a head's map is the attention of one query patch (a patch
// inside the image's largest object, outlined in white) over all patches: a head that attends
// within the object lights up the object's shape. The probabilities are recomputed from the last
// block's qkv projection with plain tensor ops, for visualisation only.
#pragma once

#include <tbb/parallel_for.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <vector>

#include "../autograd/var.hpp"
#include "../backend/cpu/gemm.hpp"
#include "../core/random.hpp"
#include "../core/tensor.hpp"
#include "../data/encode.hpp"
#include "../data/image.hpp"
#include "knn_segmentation.hpp"

namespace flsl::evaluation {

/// Self-attention probabilities of every head of the backbone's last block for images
/// [n, 3, S, S]: [n, H, N, N], row i = the attention of token i (softmax(q_i k^T / sqrt(hd))).
/// `Backbone` is a vision_transformer module (patch_embed, positions, blocks with norm1 and
/// attn.qkv).
template <class Backbone>
Tensor<float> last_block_attention(const Backbone& backbone, const Tensor<float>& images,
                                   index_t heads, index_t patch) {
  using T = typename Backbone::var_type::value_type;
  using V = Var<T, cpu>;
  no_grad ng;
  const index_t n = images.size(0), grid = images.size(2) / patch;
  Tensor<T> x;
  if constexpr (std::is_same_v<T, float>) {
    x = images.contiguous();
  } else {
    x = images.template to<T>();
  }
  V h = backbone.patch_embed(V(x));
  h = V(h + V(backbone.positions(grid)));
  for (std::size_t i = 0; i + 1 < backbone.blocks.size(); ++i) h = backbone.blocks[i](h);
  const auto& last = backbone.blocks.back();
  const Tensor<T> qkv = last.attn.qkv(last.norm1(h)).value().contiguous();  // [n, N, 3D]
  const index_t N = qkv.size(1), D = qkv.size(2) / 3, hd = D / heads;
  auto out = Tensor<float>::empty({n, heads, N, N});  // [n, H, N, N]
  const double scale = 1.0 / std::sqrt(double(hd));
  for (index_t b = 0; b < n; ++b)
    for (index_t hh = 0; hh < heads; ++hh) {
      const Tensor<T> q = qkv.select(0, b).narrow(1, hh * hd, hd);      // [N, hd]
      const Tensor<T> k = qkv.select(0, b).narrow(1, D + hh * hd, hd);  // [N, hd]
      const Tensor<T> s = matmul(q, k.t());                             // [N, N]
      float* dst = out.data() + (b * heads + hh) * N * N;
      for (index_t i = 0; i < N; ++i) {
        const T* row = s.data() + i * N;
        double m = -std::numeric_limits<double>::infinity(), z = 0;
        for (index_t j = 0; j < N; ++j) m = std::max(m, double(row[j]) * scale);
        for (index_t j = 0; j < N; ++j) z += std::exp(double(row[j]) * scale - m);
        for (index_t j = 0; j < N; ++j)
          dst[i * N + j] = float(std::exp(double(row[j]) * scale - m) / z);
      }
    }
  return out;
}

/// Spherical k-means of L2-normalised rows x [N, D] into k clusters (cosine similarity), k-means++
/// initialisation from `seed`, at most `iterations` rounds. Returns the cluster of each row.
inline std::vector<int> kmeans_cosine(const Tensor<float>& x, index_t k, std::uint64_t seed,
                                      index_t iterations = 30) {
  const index_t N = x.size(0), D = x.size(1);
  k = std::min(k, N);
  const Tensor<float> xc = x.contiguous();
  auto row = [&](index_t i) { return xc.data() + i * D; };
  auto dot = [&](const float* a, const float* b) {
    double s = 0;
    for (index_t c = 0; c < D; ++c) s += double(a[c]) * double(b[c]);
    return s;
  };
  std::vector<float> centres(static_cast<std::size_t>(k * D));
  Generator g(seed, 0x6b6d65616e73ull);  // "kmeans"
  // k-means++: first centre uniform, then proportional to the squared distance 2 - 2 cos
  std::vector<double> dist(static_cast<std::size_t>(N), std::numeric_limits<double>::infinity());
  index_t pick = index_t(g.uniform_int(std::uint32_t(N)));
  for (index_t c = 0; c < k; ++c) {
    std::copy_n(row(pick), D, centres.data() + c * D);
    double total = 0;
    for (index_t i = 0; i < N; ++i) {
      const double d = std::max(0.0, 2.0 - 2.0 * dot(row(i), centres.data() + c * D));
      dist[std::size_t(i)] = std::min(dist[std::size_t(i)], d);
      total += dist[std::size_t(i)];
    }
    if (c + 1 == k) break;
    double u = g.uniform() * total;
    pick = N - 1;
    for (index_t i = 0; i < N; ++i) {
      u -= dist[std::size_t(i)];
      if (u <= 0 && dist[std::size_t(i)] > 0) {
        pick = i;
        break;
      }
    }
  }
  std::vector<int> assign(static_cast<std::size_t>(N), -1);
  for (index_t it = 0; it < iterations; ++it) {
    bool changed = false;
    for (index_t i = 0; i < N; ++i) {
      int best = 0;
      double best_s = -std::numeric_limits<double>::infinity();
      for (index_t c = 0; c < k; ++c) {
        const double s = dot(row(i), centres.data() + c * D);
        if (s > best_s) {
          best_s = s;
          best = int(c);
        }
      }
      changed = changed || assign[std::size_t(i)] != best;
      assign[std::size_t(i)] = best;
    }
    if (!changed) break;
    std::vector<double> sum(static_cast<std::size_t>(k * D), 0.0);
    std::vector<index_t> count(static_cast<std::size_t>(k), 0);
    for (index_t i = 0; i < N; ++i) {
      const int c = assign[std::size_t(i)];
      ++count[std::size_t(c)];
      for (index_t d = 0; d < D; ++d) sum[std::size_t(c * D + d)] += double(row(i)[d]);
    }
    for (index_t c = 0; c < k; ++c) {
      double norm = 0;
      for (index_t d = 0; d < D; ++d)
        norm += sum[std::size_t(c * D + d)] * sum[std::size_t(c * D + d)];
      norm = std::sqrt(norm);
      if (count[std::size_t(c)] == 0 || norm == 0) continue;  // keep the old centre
      for (index_t d = 0; d < D; ++d)
        centres[std::size_t(c * D + d)] = float(sum[std::size_t(c * D + d)] / norm);
    }
  }
  return assign;
}

namespace detail {

/// Class colours of the procedural masks: background dark grey, then 8 distinct hues.
inline std::array<std::uint8_t, 3> class_colour(int c) {
  static constexpr std::array<std::array<std::uint8_t, 3>, 9> palette = {{{40, 40, 40},
                                                                          {230, 25, 75},
                                                                          {60, 180, 75},
                                                                          {255, 225, 25},
                                                                          {0, 130, 200},
                                                                          {245, 130, 48},
                                                                          {145, 30, 180},
                                                                          {70, 240, 240},
                                                                          {240, 50, 230}}};
  if (c < 0) return {0, 0, 0};
  if (c < 9) return palette[std::size_t(c)];
  return {std::uint8_t(37 * c % 256), std::uint8_t(91 * c % 256), std::uint8_t(151 * c % 256)};
}

/// Cluster colours (a qualitative palette; cluster ids have no meaning across images).
inline std::array<std::uint8_t, 3> cluster_colour(int c) {
  static constexpr std::array<std::array<std::uint8_t, 3>, 12> palette = {{{166, 206, 227},
                                                                           {31, 120, 180},
                                                                           {178, 223, 138},
                                                                           {51, 160, 44},
                                                                           {251, 154, 153},
                                                                           {227, 26, 28},
                                                                           {253, 191, 111},
                                                                           {255, 127, 0},
                                                                           {202, 178, 214},
                                                                           {106, 61, 154},
                                                                           {255, 255, 153},
                                                                           {177, 89, 40}}};
  return palette[std::size_t(c) % palette.size()];
}

/// A dark-to-bright heat colour for t in [0, 1] (black, purple, red, orange, pale yellow).
inline std::array<std::uint8_t, 3> heat_colour(double t) {
  static constexpr std::array<std::array<double, 3>, 5> stops = {
      {{0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}}};
  t = std::clamp(t, 0.0, 1.0) * 4.0;
  const int i = std::min(3, int(t));
  const double f = t - i;
  std::array<std::uint8_t, 3> out{};
  for (int c = 0; c < 3; ++c)
    out[std::size_t(c)] = std::uint8_t(std::lround(stops[std::size_t(i)][std::size_t(c)] * (1 - f) +
                                                   stops[std::size_t(i + 1)][std::size_t(c)] * f));
  return out;
}

/// A canvas of RGB bytes with panels pasted at (x0, y0).
struct canvas {
  data::ImageU8 img;
  canvas(int w, int h) : img(w, h) { std::fill(img.pixels.begin(), img.pixels.end(), 255); }
  void put(int x, int y, const std::array<std::uint8_t, 3>& c) {
    if (x < 0 || y < 0 || x >= img.width || y >= img.height) return;
    for (int k = 0; k < 3; ++k) img.at(y, x, k) = c[std::size_t(k)];
  }
};

/// The token of the image's largest object to take the attention maps of: the patch holding the
/// object's pixel centroid if that patch is mostly the object, else the patch with the most of it.
inline index_t query_patch(const segmentation_set& s, index_t i, index_t patch) {
  const index_t S = s.size, G = S / patch;
  const auto& inst = s.instances[std::size_t(i)];
  std::vector<index_t> area;
  for (std::uint16_t v : inst) {
    if (v >= area.size()) area.resize(std::size_t(v) + 1, 0);
    ++area[v];
  }
  if (area.size() <= 1) return (G / 2) * G + G / 2;  // no object: the centre
  const auto largest = std::uint16_t(std::max_element(area.begin() + 1, area.end()) - area.begin());
  double cx = 0, cy = 0;
  std::vector<index_t> per_patch(static_cast<std::size_t>(G * G), 0);
  for (index_t y = 0; y < S; ++y)
    for (index_t x = 0; x < S; ++x)
      if (inst[std::size_t(y * S + x)] == largest) {
        cx += double(x);
        cy += double(y);
        const index_t gy = std::min(y / patch, G - 1), gx = std::min(x / patch, G - 1);
        ++per_patch[std::size_t(gy * G + gx)];
      }
  cx /= double(area[largest]);
  cy /= double(area[largest]);
  const index_t centre =
      std::min(index_t(cy) / patch, G - 1) * G + std::min(index_t(cx) / patch, G - 1);
  if (2 * per_patch[std::size_t(centre)] >= patch * patch) return centre;
  return index_t(std::max_element(per_patch.begin(), per_patch.end()) - per_patch.begin());
}

}  // namespace detail

struct picture_options {
  index_t images = 4;      // validation images, one row each
  index_t clusters = 6;    // k-means clusters
  index_t panel = 0;       // panel side in pixels (0: the image size scaled up to >= 160)
  std::uint64_t seed = 0;  // k-means initialisation
};

/// Writes the picture of the first `opt.images` images of `val` to `file` (PNG). Columns: the
/// image, its ground-truth classes, the k-means clusters of the patch features, then one attention
/// map per head of the last block (for the query patch outlined in white; each map scaled from its
/// smallest to its largest weight). Returns what it wrote.
template <class Backbone>
std::filesystem::path write_maps_picture(const Backbone& backbone, index_t heads, index_t patch,
                                         const segmentation_set& val, const picture_options& opt,
                                         const std::filesystem::path& file) {
  const index_t n = std::min(opt.images, val.count), S = val.size, G = S / patch;
  FLSL_CHECK(n > 0, "write_maps_picture: no images");
  const Tensor<float> images = val.images.narrow(0, 0, n).contiguous();
  const Tensor<float> feats = patch_features(backbone, images);                     // [n, N, D]
  const Tensor<float> attn = last_block_attention(backbone, images, heads, patch);  // [n, H, N, N]
  const index_t N = G * G;
  const int up = int(opt.panel > 0 ? std::max<index_t>(1, opt.panel / S)
                                   : std::max<index_t>(1, (160 + S - 1) / S));
  const int P = int(S) * up, gap = 4;
  const int cols = 3 + int(heads);
  detail::canvas cv(cols * P + (cols - 1) * gap, int(n) * P + (int(n) - 1) * gap);
  for (index_t i = 0; i < n; ++i) {
    const int y0 = int(i) * (P + gap);
    const auto& rgb = val.rgb[std::size_t(i)];
    const std::uint8_t* mask = val.mask(i);
    const std::vector<int> clusters =
        kmeans_cosine(feats.select(0, i), opt.clusters, opt.seed + std::uint64_t(i));
    const index_t q = detail::query_patch(val, i, patch);
    for (int py = 0; py < P; ++py)
      for (int px = 0; px < P; ++px) {
        const index_t sy = py / up, sx = px / up;
        const index_t token = std::min(sy / patch, G - 1) * G + std::min(sx / patch, G - 1);
        cv.put(px, y0 + py,
               {rgb.at(int(sy), int(sx), 0), rgb.at(int(sy), int(sx), 1),
                rgb.at(int(sy), int(sx), 2)});
        cv.put(P + gap + px, y0 + py, detail::class_colour(mask[sy * S + sx]));
        cv.put(2 * (P + gap) + px, y0 + py, detail::cluster_colour(clusters[std::size_t(token)]));
      }
    for (index_t h = 0; h < heads; ++h) {
      const float* a = attn.data() + ((i * heads + h) * N + q) * N;  // row q: [N]
      const float amax = *std::max_element(a, a + N), amin = *std::min_element(a, a + N);
      const int x0 = int(3 + h) * (P + gap);
      for (int py = 0; py < P; ++py)
        for (int px = 0; px < P; ++px) {
          const index_t token = std::min(index_t(py / up) / patch, G - 1) * G +
                                std::min(index_t(px / up) / patch, G - 1);
          cv.put(x0 + px, y0 + py,
                 detail::heat_colour(amax > amin ? (a[token] - amin) / (amax - amin) : 0.0));
        }
      // outline the query patch
      const int qx = int(q % G) * int(patch) * up, qy = int(q / G) * int(patch) * up,
                qs = int(patch) * up;
      for (int t = 0; t < qs; ++t) {
        cv.put(x0 + qx + t, y0 + qy, {255, 255, 255});
        cv.put(x0 + qx + t, y0 + qy + qs - 1, {255, 255, 255});
        cv.put(x0 + qx, y0 + qy + t, {255, 255, 255});
        cv.put(x0 + qx + qs - 1, y0 + qy + t, {255, 255, 255});
      }
    }
  }
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  data::write_file(file, data::encode_png(cv.img));
  return file;
}

}  // namespace flsl::evaluation
