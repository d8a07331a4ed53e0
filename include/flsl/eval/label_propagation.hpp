// Video object segmentation by label propagation on frozen patch features (FLSL_SPEC.md §7), as
// DINO's eval_video_segmentation.py does it: the first frame's mask is given; every later frame's
// patches take the labels of their top-k most similar patches (cosine of L2-normalised features,
// weight exp(cos / T)) in the first frame and the n previous frames, within a square neighbourhood;
// the soft labels are upsampled to pixels and scored with the DAVIS metrics J and F
// (davis_metrics.hpp). Reads the DAVIS folder layout (JPEGImages/480p/<sequence>/*.jpg,
// Annotations/480p/<sequence>/*.png).
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "../autograd/ops/normalize.hpp"
#include "../autograd/var.hpp"
#include "../backend/cpu/gemm.hpp"
#include "../core/tensor.hpp"
#include "../data/color.hpp"
#include "../data/decode.hpp"
#include "../data/encode.hpp"
#include "../data/folder_dataset.hpp"
#include "../data/resample.hpp"
#include "davis_metrics.hpp"

namespace flsl::evaluation {

/// The propagation's constants; the defaults are DINO's (and FLSL_SPEC.md §7's).
struct propagation_params {
  index_t context = 7;        // previous frames used besides the first
  index_t neighborhood = 12;  // source patches within this many rows and columns (0: all)
  index_t topk = 5;           // sources kept per target patch (ties with the k-th are kept too)
  double temperature = 0.1;   // source weight exp(cos / temperature)
};

namespace detail {
/// The [N, D] rows scaled to unit length, as F.normalize (the library's l2_normalize op).
inline Tensor<float> unit_rows(const Tensor<float>& f) {
  FLSL_CHECK(f.rank() == 2, "label propagation: features of shape ", f.shape(),
             " (expected [N, D])");
  no_grad ng;
  return l2_normalize(Var<float>(f), -1).value();
}
}  // namespace detail

/// Propagates soft labels through a video, one frame at a time. Features are [rows*cols, D] (token
/// order: row-major grid, as the ViT returns them; any length: they are normalised here); labels
/// are [C, rows, cols] (one-hot for the first frame; what next() returns for later ones).
class label_propagator {
 public:
  label_propagator(const Tensor<float>& first_features, const Tensor<float>& first_labels,
                   index_t rows, index_t cols, propagation_params p = {})
      : rows_(rows), cols_(cols), p_(p) {
    FLSL_CHECK(rows > 0 && cols > 0, "label_propagator: a ", rows, "x", cols, " grid");
    FLSL_CHECK(p.context >= 0 && p.neighborhood >= 0 && p.topk >= 1 && p.temperature > 0,
               "label_propagator: context ", p.context, ", neighborhood ", p.neighborhood,
               ", topk ", p.topk, ", temperature ", p.temperature);
    FLSL_CHECK(
        first_labels.rank() == 3 && first_labels.size(1) == rows && first_labels.size(2) == cols,
        "label_propagator: first labels of shape ", first_labels.shape(), " for a ", rows, "x",
        cols, " grid (expected [C, ", rows, ", ", cols, "])");
    classes_ = first_labels.size(0);
    first_ = make_frame(first_features, first_labels);
  }

  index_t classes() const { return classes_; }

  /// The soft labels [C, rows, cols] of the next frame from its features; the frame and these
  /// labels then join the context (the oldest previous frame leaves it beyond `context`).
  Tensor<float> next(const Tensor<float>& features) {
    const Tensor<float> t = detail::unit_rows(check_features(features));
    const index_t N = rows_ * cols_, C = classes_;
    std::vector<const frame*> sources{&first_};
    for (const frame& f : recent_) sources.push_back(&f);
    // cosines of every target patch with every patch of each source frame: [N, N] per source
    std::vector<Tensor<float>> cos;
    cos.reserve(sources.size());
    for (const frame* s : sources) cos.push_back(matmul(t, s->features.t()));
    const index_t r = p_.neighborhood > 0 ? p_.neighborhood : std::max(rows_, cols_);
    auto out = Tensor<float>::zeros({N, C});  // token-major while accumulating
    tbb::parallel_for(
        tbb::blocked_range<index_t>(0, N, 16), [&](const tbb::blocked_range<index_t>& rg) {
          std::vector<float> vals, sorted;  // reused by the block's targets
          std::vector<double> acc(static_cast<std::size_t>(C));
          std::vector<std::pair<std::size_t, index_t>> where;  // (source, patch)
          for (index_t i = rg.begin(); i < rg.end(); ++i) {
            const index_t y = i / cols_, x = i % cols_;
            const index_t y0 = std::max<index_t>(0, y - r), y1 = std::min(rows_ - 1, y + r);
            const index_t x0 = std::max<index_t>(0, x - r), x1 = std::min(cols_ - 1, x + r);
            vals.clear();
            where.clear();
            for (std::size_t s = 0; s < sources.size(); ++s) {
              const float* row = cos[s].data() + i * N;
              for (index_t yy = y0; yy <= y1; ++yy)
                for (index_t xx = x0; xx <= x1; ++xx) {
                  vals.push_back(row[yy * cols_ + xx]);
                  where.emplace_back(s, yy * cols_ + xx);
                }
            }
            // the k-th largest cosine; every source at least as similar is kept
            const std::size_t k = std::min<std::size_t>(std::size_t(p_.topk), vals.size());
            sorted.assign(vals.begin(), vals.end());
            std::nth_element(sorted.begin(), sorted.begin() + std::ptrdiff_t(k - 1), sorted.end(),
                             std::greater<float>());
            const float kth = sorted[k - 1];
            double total = 0;
            std::fill(acc.begin(), acc.end(), 0.0);
            for (std::size_t e = 0; e < vals.size(); ++e) {
              if (vals[e] < kth) continue;
              const double w = std::exp(double(vals[e]) / p_.temperature);
              total += w;
              const float* lab = sources[where[e].first]->labels.data() + where[e].second * C;
              for (index_t c = 0; c < C; ++c) acc[std::size_t(c)] += w * double(lab[c]);
            }
            float* o = out.data() + i * C;
            for (index_t c = 0; c < C; ++c) o[c] = float(acc[std::size_t(c)] / total);
          }
        });
    if (p_.context > 0) {
      if (index_t(recent_.size()) == p_.context) recent_.pop_front();
      recent_.push_back(frame{t, out});
    }
    return out.t().contiguous().view({C, rows_, cols_});
  }

 private:
  struct frame {
    Tensor<float> features;  // [N, D], unit rows
    Tensor<float> labels;    // [N, C]
  };
  const Tensor<float>& check_features(const Tensor<float>& f) const {
    FLSL_CHECK(f.rank() == 2 && f.size(0) == rows_ * cols_ &&
                   (!first_.features.defined() || f.size(1) == first_.features.size(1)),
               "label_propagator: features of shape ", f.shape(), " for a ", rows_, "x", cols_,
               " grid", first_.features.defined() ? " of " : "",
               first_.features.defined() ? std::to_string(first_.features.size(1)) : "",
               first_.features.defined() ? "-dimensional features" : "");
    return f;
  }
  frame make_frame(const Tensor<float>& features, const Tensor<float>& labels) const {
    return frame{detail::unit_rows(check_features(features)),
                 labels.contiguous().view({classes_, rows_ * cols_}).t().contiguous()};
  }

  index_t rows_, cols_, classes_ = 0;
  propagation_params p_;
  frame first_;
  std::deque<frame> recent_;
};

/// Soft labels [C, rows, cols] at patch resolution -> a label per pixel of a width x height
/// image, as DINO does: bilinear upsampling by the patch (align_corners = false) to
/// (rows*patch) x (cols*patch), each class map min-max normalised (when its max is positive), the
/// argmax (the first class on ties), then a nearest-neighbour resize (PIL's) to width x height.
inline std::vector<std::uint8_t> labels_to_mask(const Tensor<float>& soft, index_t patch,
                                                index_t width, index_t height) {
  FLSL_CHECK(soft.rank() == 3 && soft.size(0) >= 1 && soft.size(0) <= 256 && patch >= 1 &&
                 width > 0 && height > 0,
             "labels_to_mask: labels of shape ", soft.shape(), ", patch ", patch, ", image ", width,
             "x", height);
  const Tensor<float> s = soft.contiguous();
  const index_t C = s.size(0), gh = s.size(1), gw = s.size(2), H = gh * patch, W = gw * patch;
  // bilinear source taps of one axis (PyTorch's align_corners = false, negative coordinates -> 0)
  struct tap {
    index_t i0, i1;
    float l1;
  };
  auto taps = [patch](index_t out, index_t in) {
    std::vector<tap> t(static_cast<std::size_t>(out));
    for (index_t o = 0; o < out; ++o) {
      const double src = std::max(0.0, (double(o) + 0.5) / double(patch) - 0.5);
      const index_t i0 = std::min(index_t(src), in - 1);
      t[std::size_t(o)] = {i0, std::min(i0 + 1, in - 1), float(src - double(i0))};
    }
    return t;
  };
  const std::vector<tap> ty = taps(H, gh), tx = taps(W, gw);
  std::vector<float> up(static_cast<std::size_t>(C * H * W));
  tbb::parallel_for(index_t(0), C, [&](index_t c) {
    const float* m = s.data() + c * gh * gw;
    float* u = up.data() + c * H * W;
    for (index_t y = 0; y < H; ++y) {
      const tap& a = ty[std::size_t(y)];
      for (index_t x = 0; x < W; ++x) {
        const tap& b = tx[std::size_t(x)];
        const float top = (1 - b.l1) * m[a.i0 * gw + b.i0] + b.l1 * m[a.i0 * gw + b.i1];
        const float bottom = (1 - b.l1) * m[a.i1 * gw + b.i0] + b.l1 * m[a.i1 * gw + b.i1];
        u[y * W + x] = (1 - a.l1) * top + a.l1 * bottom;
      }
    }
    const auto [lo, hi] = std::minmax_element(u, u + H * W);
    if (*hi > 0) {
      const float mn = *lo, range = *hi - *lo;
      for (index_t j = 0; j < H * W; ++j) u[j] = range > 0 ? (u[j] - mn) / range : 0.0f;
    }
  });
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(width * height));
  tbb::parallel_for(index_t(0), height, [&](index_t y) {
    const index_t sy = std::min(H - 1, index_t((double(y) + 0.5) * double(H) / double(height)));
    for (index_t x = 0; x < width; ++x) {
      const index_t sx = std::min(W - 1, index_t((double(x) + 0.5) * double(W) / double(width)));
      index_t best = 0;
      float bv = up[std::size_t(sy * W + sx)];
      for (index_t c = 1; c < C; ++c) {
        const float v = up[std::size_t((c * H + sy) * W + sx)];
        if (v > bv) bv = v, best = c;
      }
      mask[std::size_t(y * width + x)] = std::uint8_t(best);
    }
  });
  return mask;
}

/// One DAVIS sequence: its frames and their annotations, in frame order.
struct davis_sequence {
  std::string name;
  std::vector<std::filesystem::path> frames, masks;
};

/// The sequences of a DAVIS folder (`root`/JPEGImages/480p/<name>/*.jpg with
/// `root`/Annotations/480p/<name>/*.png of the same stems), sorted by name; `only` (names) selects
/// some. Throws naming the folder or file when one is missing or a frame has no annotation.
inline std::vector<davis_sequence> davis_sequences(const std::filesystem::path& root,
                                                   const std::vector<std::string>& only = {}) {
  namespace fs = std::filesystem;
  const fs::path images = root / "JPEGImages" / "480p", notes = root / "Annotations" / "480p";
  std::error_code ec;
  FLSL_CHECK(fs::is_directory(images, ec), "DAVIS: '", images.string(),
             "' is not a directory (expected <root>/JPEGImages/480p/<sequence>/*.jpg)");
  FLSL_CHECK(fs::is_directory(notes, ec), "DAVIS: '", notes.string(),
             "' is not a directory (expected <root>/Annotations/480p/<sequence>/*.png)");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(images))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const std::string& n : only)
    FLSL_CHECK(std::find(names.begin(), names.end(), n) != names.end(), "DAVIS: no sequence '", n,
               "' in '", images.string(), "'");
  std::vector<davis_sequence> out;
  for (const std::string& n : names) {
    if (!only.empty() && std::find(only.begin(), only.end(), n) == only.end()) continue;
    davis_sequence s;
    s.name = n;
    for (const auto& e : fs::directory_iterator(images / n)) {
      std::string ext = e.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(),
                     [](unsigned char c) { return std::tolower(c); });
      if (e.is_regular_file() && (ext == ".jpg" || ext == ".jpeg")) s.frames.push_back(e.path());
    }
    std::sort(s.frames.begin(), s.frames.end());
    FLSL_CHECK(s.frames.size() >= 2, "DAVIS: sequence '", (images / n).string(), "' has ",
               s.frames.size(), " frames (at least 2 are needed)");
    for (const fs::path& f : s.frames) {
      const fs::path m = notes / n / (f.stem().string() + ".png");
      FLSL_CHECK(fs::is_regular_file(m, ec), "DAVIS: frame '", f.string(), "' has no annotation '",
                 m.string(), "'");
      s.masks.push_back(m);
    }
    out.push_back(std::move(s));
  }
  FLSL_CHECK(!out.empty(), "DAVIS: no sequence in '", images.string(), "'");
  return out;
}

struct davis_params {
  /// Frames are resized as DINO resizes them: the short side to this many pixels (a multiple of
  /// the patch), the long side in proportion, rounded down to a multiple of 64.
  index_t short_side = 480;
  propagation_params propagation;
  /// When not empty: the predicted masks are written there as <sequence>/<frame>.png.
  std::filesystem::path write_masks;
};

struct davis_sequence_score {
  std::string name;
  index_t frames = 0, objects = 0;
  double j = 0, f = 0;  // means over the objects of the frames scored (all but the first and last)
};

struct davis_result {
  std::vector<davis_sequence_score> sequences;
  double j = 0, f = 0, jf = 0;  // means over every object of every sequence; jf = (j + f) / 2
  index_t frames = 0;
  double seconds = 0;
};

namespace detail {
/// An RGB pixel as one number (0: black).
inline std::uint32_t colour_key(const std::uint8_t* p) {
  return std::uint32_t(p[0]) << 16 | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]);
}

/// Colour i of the PASCAL VOC palette that DAVIS 2017's annotations use (1: (128, 0, 0),
/// 2: (0, 128, 0), 3: (128, 128, 0), ...): bit 3j + c of i sets bit 7 - j of channel c.
inline std::uint32_t voc_palette_key(unsigned i) {
  std::uint32_t rgb[3] = {0, 0, 0};
  for (int j = 0; j < 8; ++j)
    for (int c = 0; c < 3; ++c) rgb[c] |= ((i >> (3 * j + c)) & 1u) << (7 - j);
  return rgb[0] << 16 | rgb[1] << 8 | rgb[2];
}

/// The objects of a first-frame annotation decoded to RGB: its non-black colours, each given the
/// class 1, 2, ... in increasing order of its id, and the id written back for it: the colour's
/// index in the VOC palette when every colour is one of its first 255 (DAVIS 2017's objects keep
/// their numbers), else 1, 2, ... in colour order (DAVIS 2016's white object is 1).
struct annotation_objects {
  std::map<std::uint32_t, std::uint8_t> classes;  // colour -> class
  std::vector<unsigned> ids;                      // class - 1 -> object id
};
inline annotation_objects first_frame_objects(const data::ImageU8& first) {
  std::map<std::uint32_t, unsigned> id;  // colour -> object id
  for (std::size_t i = 0; i < first.pixels.size(); i += 3)
    if (const std::uint32_t key = colour_key(first.pixels.data() + i); key != 0) id.emplace(key, 0);
  std::map<std::uint32_t, unsigned> voc;
  for (unsigned k = 1; k < 255; ++k) voc.emplace(voc_palette_key(k), k);
  const bool palette =
      std::all_of(id.begin(), id.end(), [&](auto& kv) { return voc.count(kv.first); });
  unsigned next = 1;
  for (auto& kv : id) kv.second = palette ? voc.at(kv.first) : next++;
  std::vector<std::pair<unsigned, std::uint32_t>> order;  // (id, colour)
  for (const auto& kv : id) order.emplace_back(kv.second, kv.first);
  std::sort(order.begin(), order.end());
  annotation_objects out;
  for (std::size_t k = 0; k < order.size(); ++k) {
    out.classes.emplace(order[k].second, std::uint8_t(k + 1));
    out.ids.push_back(order[k].first);
  }
  return out;
}

/// The class of every pixel of an annotation decoded to RGB: black is 0, `colours` maps the
/// first frame's objects to their classes; a colour not in it counts as background.
inline std::vector<std::uint8_t> annotation_ids(
    const data::ImageU8& img, const std::map<std::uint32_t, std::uint8_t>& colours) {
  std::vector<std::uint8_t> ids(std::size_t(img.width) * std::size_t(img.height));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto it = colours.find(colour_key(img.pixels.data() + 3 * i));
    ids[i] = it == colours.end() ? 0 : it->second;
  }
  return ids;
}

inline data::ImageU8 decode_file(data::Decoder& dec, const std::filesystem::path& p) {
  std::vector<std::uint8_t> bytes;
  data::read_file(p, bytes);
  data::ImageU8 img;
  dec.decode(bytes, p.string(), img);
  return img;
}
}  // namespace detail

/// DAVIS semi-supervised video object segmentation by label propagation with `backbone`'s output
/// tokens (frozen, no gradients): the mean region similarity J, boundary measure F and J&F over
/// the objects of `sequences`, with DAVIS's conventions (the first frame is given, the first and
/// the last are not scored; a mask's objects are its non-black colours).
template <class Backbone>
davis_result davis_label_propagation(const Backbone& backbone, index_t patch,
                                     const std::vector<davis_sequence>& sequences,
                                     const davis_params& p = {}) {
  using T = typename Backbone::var_type::value_type;
  FLSL_CHECK(p.short_side > 0 && p.short_side % patch == 0, "DAVIS: frame size ", p.short_side,
             " is not a positive multiple of the patch ", patch);
  const auto t0 = std::chrono::steady_clock::now();
  no_grad ng;
  data::Decoder dec;
  data::Resampler resampler;
  davis_result res;
  double j_sum = 0, f_sum = 0;
  index_t objects = 0;
  for (const davis_sequence& seq : sequences) {
    davis_sequence_score score;
    score.name = seq.name;
    // the frame size and grid of this sequence (from its first frame)
    index_t rows = 0, cols = 0, th = 0, tw = 0, width = 0, height = 0;
    auto features = [&](const std::filesystem::path& file) {
      const data::ImageU8 img = detail::decode_file(dec, file);
      if (width == 0) {
        width = img.width;
        height = img.height;
        const index_t longer = std::max(width, height) * p.short_side / std::min(width, height);
        const index_t lng = std::max<index_t>(patch, longer / 64 * 64 / patch * patch);
        th = height <= width ? p.short_side : lng;
        tw = height <= width ? lng : p.short_side;
        rows = th / patch;
        cols = tw / patch;
      }
      FLSL_CHECK(img.width == width && img.height == height, "DAVIS: frame '", file.string(),
                 "' is ", img.width, "x", img.height, ", the sequence's first frame ", width, "x",
                 height);
      data::ImageF32 f{int(tw), int(th)};
      resampler.resize(img, data::Box{0, 0, double(img.width), double(img.height)}, f.view());
      data::normalize(f.view());
      Tensor<T> x = Tensor<float>::from_vector(f.values, {1, 3, th, tw}).template to<T>();
      const Tensor<T> z = backbone(x).value();  // [1, rows*cols, D]
      FLSL_CHECK(z.size(1) == rows * cols, "DAVIS: ", z.size(1), " tokens for a ", rows, "x", cols,
                 " grid");
      return z.select(0, 0).template to<float>().contiguous();
    };
    // the first frame: its features and its objects' one-hot labels on the patch grid
    const Tensor<float> f0 = features(seq.frames[0]);
    const data::ImageU8 first = detail::decode_file(dec, seq.masks[0]);
    FLSL_CHECK(first.width == width && first.height == height, "DAVIS: annotation '",
               seq.masks[0].string(), "' is ", first.width, "x", first.height, ", its frame ",
               width, "x", height);
    const detail::annotation_objects found = detail::first_frame_objects(first);
    const auto& colours = found.classes;
    FLSL_CHECK(!colours.empty() && colours.size() < 255, "DAVIS: annotation '",
               seq.masks[0].string(), "' has ", colours.size(), " objects");
    const index_t C = index_t(colours.size()) + 1;
    const std::vector<std::uint8_t> ids0 = detail::annotation_ids(first, colours);
    auto lab0 = Tensor<float>::zeros({C, rows, cols});
    for (index_t y = 0; y < rows; ++y)  // PIL's nearest resize of the mask to the grid
      for (index_t x = 0; x < cols; ++x) {
        const index_t sy =
            std::min(height - 1, index_t((double(y) + 0.5) * double(height) / double(rows)));
        const index_t sx =
            std::min(width - 1, index_t((double(x) + 0.5) * double(width) / double(cols)));
        lab0.data()[(index_t(ids0[std::size_t(sy * width + sx)]) * rows + y) * cols + x] = 1.0f;
      }
    label_propagator prop(f0, lab0, rows, cols, p.propagation);
    const index_t n = index_t(seq.frames.size());
    std::vector<double> j_obj(std::size_t(C - 1), 0.0), f_obj(std::size_t(C - 1), 0.0);
    index_t scored = 0;
    for (index_t t = 1; t < n; ++t) {
      const Tensor<float> soft = prop.next(features(seq.frames[std::size_t(t)]));
      const std::vector<std::uint8_t> pred = labels_to_mask(soft, patch, width, height);
      if (!p.write_masks.empty()) {
        data::ImageU8 out{int(width), int(height)};
        for (std::size_t i = 0; i < pred.size(); ++i) {  // object id k in VOC palette colour k
          const std::uint32_t key =
              pred[i] == 0 ? 0 : detail::voc_palette_key(found.ids[std::size_t(pred[i] - 1)]);
          for (int c = 0; c < 3; ++c)
            out.pixels[3 * i + std::size_t(c)] = std::uint8_t(key >> (16 - 8 * c));
        }
        const std::filesystem::path dir = p.write_masks / seq.name;
        std::filesystem::create_directories(dir);
        data::write_file(dir / (seq.frames[std::size_t(t)].stem().string() + ".png"),
                         data::encode_png(out));
      }
      if (t == n - 1) break;  // DAVIS scores neither the first nor the last frame
      const data::ImageU8 truth_img = detail::decode_file(dec, seq.masks[std::size_t(t)]);
      FLSL_CHECK(truth_img.width == width && truth_img.height == height, "DAVIS: annotation '",
                 seq.masks[std::size_t(t)].string(), "' is ", truth_img.width, "x",
                 truth_img.height, ", its frame ", width, "x", height);
      const std::vector<std::uint8_t> truth = detail::annotation_ids(truth_img, colours);
      std::vector<std::uint8_t> pk(pred.size()), gk(pred.size());
      for (index_t k = 1; k < C; ++k) {
        for (std::size_t i = 0; i < pred.size(); ++i) {
          pk[i] = pred[i] == k;
          gk[i] = truth[i] == k;
        }
        j_obj[std::size_t(k - 1)] += davis_region_similarity(pk.data(), gk.data(), height, width);
        f_obj[std::size_t(k - 1)] += davis_boundary_f_measure(pk.data(), gk.data(), height, width);
      }
      ++scored;
    }
    score.frames = n;
    score.objects = C - 1;
    if (scored > 0) {
      for (index_t k = 0; k + 1 < C; ++k) {
        score.j += j_obj[std::size_t(k)] / double(scored) / double(C - 1);
        score.f += f_obj[std::size_t(k)] / double(scored) / double(C - 1);
        j_sum += j_obj[std::size_t(k)] / double(scored);
        f_sum += f_obj[std::size_t(k)] / double(scored);
        ++objects;
      }
    }
    res.frames += n;
    res.sequences.push_back(score);
  }
  if (objects > 0) {
    res.j = j_sum / double(objects);
    res.f = f_sum / double(objects);
    res.jf = 0.5 * (res.j + res.f);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace flsl::evaluation
