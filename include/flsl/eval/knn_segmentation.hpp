// Dense k-NN segmentation on frozen patch features (FLSL_SPEC.md §7): every patch of a set of
// labelled training images is a memory entry (its L2-normalised feature, the fraction of its pixels
// in each class); a validation patch sums the class fractions of its k most similar entries,
// weighted by exp(cos / T);
// the class scores are upsampled bilinearly to pixels and scored by mIoU with an ignore index.
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "../autograd/var.hpp"
#include "../backend/cpu/gemm.hpp"
#include "../core/tensor.hpp"
#include "../data/color.hpp"
#include "../data/image.hpp"
#include "../data/procedural.hpp"

namespace flsl::evaluation {

/// Labelled images at one size: normalised pixels and a class per pixel.
struct segmentation_set {
  index_t count = 0, size = 0;
  Tensor<float> images;             // [n, 3, S, S], ImageNet-normalised
  std::vector<std::uint8_t> masks;  // [n, S, S], class per pixel (ignore_index: void)
  std::vector<data::ImageU8> rgb;   // the images as rendered (for pictures)
  std::vector<std::vector<std::uint16_t>> instances;  // [n][S*S] instance per pixel (0: none)

  const std::uint8_t* mask(index_t i) const { return masks.data() + i * size * size; }
};

/// Images first..first+count-1 of a procedural split rendered at size x size, with their class
/// and instance masks. The dataset seed is fixed by the caller (the same images for every run).
inline segmentation_set procedural_segmentation_set(std::uint64_t dataset_seed, data::Split split,
                                                    index_t count, index_t size,
                                                    int min_objects = 2, int max_objects = 5,
                                                    index_t first = 0) {
  FLSL_CHECK(count > 0 && size >= 8, "procedural_segmentation_set: ", count, " images of ", size,
             " px");
  segmentation_set s;
  s.count = count;
  s.size = size;
  s.images = Tensor<float>::empty({count, 3, size, size});
  s.masks.resize(std::size_t(count * size * size));
  s.rgb.resize(std::size_t(count));
  s.instances.resize(std::size_t(count));
  data::ProceduralDataset ds({.seed = dataset_seed,
                              .split = split,
                              .size = std::size_t(first + count),
                              .width = int(size),
                              .height = int(size),
                              .min_objects = min_objects,
                              .max_objects = max_objects});
  tbb::parallel_for(index_t(0), count, [&](index_t i) {
    data::ProceduralSample p;
    ds.render(std::size_t(first + i), p);
    data::ImageF32 f;
    data::to_planar(p.image, f);
    data::normalize(f.view());
    std::copy(f.values.begin(), f.values.end(), s.images.data() + i * 3 * size * size);
    std::copy(p.classes.begin(), p.classes.end(), s.masks.begin() + i * size * size);
    s.rgb[std::size_t(i)] = std::move(p.image);
    s.instances[std::size_t(i)] = std::move(p.instances);
  });
  return s;
}

/// L2-normalised output tokens [n, N, D] of `backbone` for images [n, 3, S, S], computed without
/// gradients in batches of `batch` images.
template <class Backbone>
Tensor<float> patch_features(const Backbone& backbone, const Tensor<float>& images,
                             index_t batch = 32) {
  using T = typename Backbone::var_type::value_type;
  no_grad ng;
  Tensor<float> out;
  const index_t n = images.size(0);
  for (index_t b0 = 0; b0 < n; b0 += batch) {
    const index_t nb = std::min(batch, n - b0);
    Tensor<T> x;
    if constexpr (std::is_same_v<T, float>) {
      x = images.narrow(0, b0, nb).contiguous();
    } else {
      x = images.narrow(0, b0, nb).template to<T>();
    }
    const Tensor<T> z = backbone(x).value();  // [nb, N, D]
    if (!out.defined()) out = Tensor<float>::empty({n, z.size(1), z.size(2)});
    const index_t N = z.size(1), D = z.size(2);
    const Tensor<T> zc = z.contiguous();
    tbb::parallel_for(index_t(0), nb * N, [&](index_t r) {
      const T* src = zc.data() + r * D;
      float* dst = out.data() + (b0 * N + r) * D;
      double sq = 0;
      for (index_t c = 0; c < D; ++c) sq += double(src[c]) * double(src[c]);
      const double inv = 1.0 / std::max(std::sqrt(sq), 1e-12);
      for (index_t c = 0; c < D; ++c) dst[c] = float(double(src[c]) * inv);
    });
  }
  return out;
}

/// The fraction of the pixels of each patch in each class: [n * G * G, C] for a set of S px images
/// and patch p (G = S / p); void pixels (class >= C, e.g. the ignore index) count for no class, so
/// a patch's fractions sum to its labelled share.
inline std::vector<float> patch_class_fractions(const segmentation_set& s, index_t patch,
                                                int num_classes) {
  const index_t G = s.size / patch;
  const int C = num_classes;
  std::vector<float> out(static_cast<std::size_t>(s.count * G * G * C), 0.0f);
  const float unit = 1.0f / float(patch * patch);
  tbb::parallel_for(index_t(0), s.count, [&](index_t i) {
    const std::uint8_t* m = s.mask(i);
    for (index_t gy = 0; gy < G; ++gy)
      for (index_t gx = 0; gx < G; ++gx) {
        float* f = out.data() + ((i * G + gy) * G + gx) * C;
        for (index_t y = gy * patch; y < (gy + 1) * patch; ++y)
          for (index_t x = gx * patch; x < (gx + 1) * patch; ++x) {
            const int c = m[y * s.size + x];
            if (c < C) f[c] += unit;
          }
      }
  });
  return out;
}

struct knn_params {
  index_t k = 20;
  double temperature = 0.07;
  int num_classes = data::procedural_num_classes + 1;  // background + 8 object classes
  int ignore_index = 255;
  /// Memory entries vote with the class fractions of their pixels (true) or their majority class.
  bool soft_labels = true;
  index_t query_chunk = 1024;  // validation patches per similarity product
  /// Subtract from every feature the mean memory feature at its grid position (then normalise
  /// again), so that what all images share at a position does not decide the neighbours.
  bool center_positions = false;
  /// Subtract from every feature the mean feature of its own image (then normalise again), so
  /// that what all patches of an image share does not decide the neighbours.
  bool center_images = false;
  /// Also fit and score a linear probe on the same features (linear_probe_segmentation).
  bool linear_probe = false;
};

namespace detail {
/// z = (z - m) / ||z - m|| for one token of D features (in double, stored as float).
inline void subtract_and_normalize(float* z, const double* m, index_t D) {
  double sq = 0;
  for (index_t c = 0; c < D; ++c) {
    z[c] = float(double(z[c]) - m[c]);
    sq += double(z[c]) * double(z[c]);
  }
  const double inv = 1.0 / std::max(std::sqrt(sq), 1e-12);
  for (index_t c = 0; c < D; ++c) z[c] = float(double(z[c]) * inv);
}
}  // namespace detail

/// Subtracts from every token of `f` [n, N, D] the mean token of its image and L2-normalises
/// it again (in place).
inline void center_images(Tensor<float>& f) {
  f = f.contiguous();
  const index_t N = f.size(1), D = f.size(2);
  tbb::parallel_for(index_t(0), f.size(0), [&](index_t i) {
    float* img = f.data() + i * N * D;
    std::vector<double> mean(std::size_t(D), 0.0);
    for (index_t t = 0; t < N; ++t)
      for (index_t c = 0; c < D; ++c) mean[std::size_t(c)] += img[t * D + c];
    for (double& v : mean) v /= double(N);
    for (index_t t = 0; t < N; ++t) detail::subtract_and_normalize(img + t * D, mean.data(), D);
  });
}

/// Subtracts the mean of `memory` [n, N, D] at each of the N positions from `memory` and
/// `queries` [m, N, D] and L2-normalises every token again (in place).
inline void center_positions(Tensor<float>& memory, Tensor<float>& queries) {
  FLSL_CHECK(memory.size(1) == queries.size(1) && memory.size(2) == queries.size(2),
             "center_positions: memory ", memory.shape(), " and queries ", queries.shape(),
             " differ in tokens or features");
  memory = memory.contiguous();
  queries = queries.contiguous();
  const index_t n = memory.size(0), N = memory.size(1), D = memory.size(2);
  std::vector<double> mean(std::size_t(N * D), 0.0);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < N * D; ++j) mean[std::size_t(j)] += memory.data()[i * N * D + j];
  for (double& v : mean) v /= double(n);
  for (Tensor<float>* t : {&memory, &queries})
    tbb::parallel_for(index_t(0), t->size(0) * N, [&](index_t r) {
      detail::subtract_and_normalize(t->data() + r * D, mean.data() + (r % N) * D, D);
    });
}

/// Mean cosines of the validation features [n, N, D] (L2-normalised): between tokens at the
/// same grid position in different images, between different tokens of the same image, and
/// between any two tokens of different images. Random ViT features are positional (a high
/// same-position cosine); collapsed ones have every cosine near 1; features that group objects
/// have a within-image cosine well below 1 and a same-position cosine near the across-image one.
struct feature_statistics {
  double same_position_cos = 0, within_image_cos = 0, across_image_cos = 0;
};

inline feature_statistics feature_cosines(const Tensor<float>& features) {
  const Tensor<float> f = features.contiguous();
  const index_t n = f.size(0), N = f.size(1), D = f.size(2);
  FLSL_CHECK(n >= 2 && N >= 2, "feature_cosines: need 2+ images of 2+ tokens, got ", f.shape());
  // the mean pairwise cosine of m unit vectors is (||sum||^2 - m) / (m (m - 1))
  auto pair_mean = [](const std::vector<double>& sum, double m, double sq_extra = 0) {
    double sq = 0;
    for (double v : sum) sq += v * v;
    return (sq - sq_extra - m) / (m * (m - 1));
  };
  std::vector<double> total(std::size_t(D), 0.0);
  std::vector<std::vector<double>> per_pos(std::size_t(N),
                                           std::vector<double>(std::size_t(D), 0.0));
  double within = 0, same_image_sq = 0;
  for (index_t i = 0; i < n; ++i) {
    std::vector<double> img(std::size_t(D), 0.0);
    for (index_t t = 0; t < N; ++t) {
      const float* z = f.data() + (i * N + t) * D;
      auto& pp = per_pos[std::size_t(t)];
      for (index_t c = 0; c < D; ++c) {
        img[std::size_t(c)] += z[c];
        pp[std::size_t(c)] += z[c];
      }
    }
    within += pair_mean(img, double(N));
    for (index_t c = 0; c < D; ++c) {
      total[std::size_t(c)] += img[std::size_t(c)];
      same_image_sq += img[std::size_t(c)] * img[std::size_t(c)];
    }
  }
  feature_statistics s;
  s.within_image_cos = within / double(n);
  double same = 0;
  for (const auto& pp : per_pos) same += pair_mean(pp, double(n));
  s.same_position_cos = same / double(N);
  // pairs of tokens of different images: all pairs minus the pairs within one image
  double tsq = 0;
  for (double v : total) tsq += v * v;
  const double M = double(n * N);
  s.across_image_cos = (tsq - same_image_sq) / (M * M - double(n) * double(N) * double(N));
  return s;
}

struct knn_result {
  double miou = 0;  // mean IoU over the classes present in the labels or predictions
  double pixel_accuracy = 0;
  std::vector<double> iou;  // per class; NaN when a class is in neither
  /// IoU of "any object class" against the background class (class 0): whether the features
  /// tell objects from background at all, whatever the class.
  double foreground_iou = 0;
  feature_statistics features;  // of the validation features (the backbone overload fills it)
  /// The linear probe's mIoU and foreground IoU on the same features (the backbone overload,
  /// with knn_params::linear_probe); NaN when not run.
  double probe_miou = std::numeric_limits<double>::quiet_NaN();
  double probe_foreground_iou = std::numeric_limits<double>::quiet_NaN();
  index_t memory_patches = 0, val_images = 0;
  double seconds = 0;
};

/// Per-pixel class scores [C, S, S] from per-patch scores [G*G, C] by bilinear interpolation
/// between patch centres (align_corners = false, edges clamped), then the argmax per pixel.
inline void upsample_argmax(const float* patch_scores, index_t G, int C, index_t S,
                            std::uint8_t* pred) {
  const double scale = double(G) / double(S);
  for (index_t y = 0; y < S; ++y) {
    const double sy = std::clamp(scale * (double(y) + 0.5) - 0.5, 0.0, double(G - 1));
    const index_t y0 = index_t(sy), y1 = std::min(y0 + 1, G - 1);
    const double wy = sy - double(y0);
    for (index_t x = 0; x < S; ++x) {
      const double sx = std::clamp(scale * (double(x) + 0.5) - 0.5, 0.0, double(G - 1));
      const index_t x0 = index_t(sx), x1 = std::min(x0 + 1, G - 1);
      const double wx = sx - double(x0);
      const float w00 = float((1 - wy) * (1 - wx)), w01 = float((1 - wy) * wx),
                  w10 = float(wy * (1 - wx)), w11 = float(wy * wx);
      const float* s00 = patch_scores + (y0 * G + x0) * C;
      const float* s01 = patch_scores + (y0 * G + x1) * C;
      const float* s10 = patch_scores + (y1 * G + x0) * C;
      const float* s11 = patch_scores + (y1 * G + x1) * C;
      int best = 0;
      float best_v = -std::numeric_limits<float>::infinity();
      for (int c = 0; c < C; ++c) {
        const float v = w00 * s00[c] + w01 * s01[c] + w10 * s10[c] + w11 * s11[c];
        if (v > best_v) {
          best_v = v;
          best = c;
        }
      }
      pred[y * S + x] = std::uint8_t(best);
    }
  }
}

/// IoU per class and their mean from a confusion matrix [C, C] (rows: truth, columns: prediction).
inline void score_confusion(const std::vector<std::int64_t>& conf, int C, knn_result& r) {
  r.iou.assign(std::size_t(C), std::numeric_limits<double>::quiet_NaN());
  double sum = 0, correct = 0, total = 0;
  int present = 0;
  for (int c = 0; c < C; ++c) {
    double tp = double(conf[std::size_t(c * C + c)]), fn = 0, fp = 0;
    for (int o = 0; o < C; ++o) {
      if (o == c) continue;
      fn += double(conf[std::size_t(c * C + o)]);
      fp += double(conf[std::size_t(o * C + c)]);
    }
    correct += tp;
    total += tp + fn;
    if (tp + fn + fp > 0) {
      r.iou[std::size_t(c)] = tp / (tp + fn + fp);
      sum += r.iou[std::size_t(c)];
      ++present;
    }
  }
  r.miou = present ? sum / present : 0.0;
  r.pixel_accuracy = total > 0 ? correct / total : 0.0;
  // foreground (classes 1..C-1) against background (class 0)
  double fg_tp = 0, fg_fn = 0, fg_fp = 0;
  for (int t = 0; t < C; ++t)
    for (int o = 0; o < C; ++o) {
      const double v = double(conf[std::size_t(t * C + o)]);
      if (t > 0 && o > 0) fg_tp += v;
      if (t > 0 && o == 0) fg_fn += v;
      if (t == 0 && o > 0) fg_fp += v;
    }
  r.foreground_iou = fg_tp + fg_fn + fg_fp > 0 ? fg_tp / (fg_tp + fg_fn + fg_fp) : 0.0;
}

/// mIoU of per-patch class scores [val.count * G * G, C] (G = val.size / patch): upsampled
/// bilinearly to pixels, argmax, confusion against the masks (ignore_index skipped).
inline knn_result score_patch_predictions(const std::vector<float>& scores,
                                          const segmentation_set& val, index_t patch, int C,
                                          int ignore_index) {
  const index_t S = val.size, G = S / patch;
  std::vector<std::vector<std::int64_t>> conf_per(static_cast<std::size_t>(val.count),
                                                  std::vector<std::int64_t>(std::size_t(C * C)));
  tbb::parallel_for(index_t(0), val.count, [&](index_t i) {
    std::vector<std::uint8_t> pred(static_cast<std::size_t>(S * S));
    upsample_argmax(scores.data() + i * G * G * C, G, C, S, pred.data());
    const std::uint8_t* truth = val.mask(i);
    auto& conf = conf_per[std::size_t(i)];
    for (index_t j = 0; j < S * S; ++j) {
      const int t = truth[j];
      if (t == ignore_index || t >= C) continue;
      ++conf[std::size_t(t * C + pred[std::size_t(j)])];
    }
  });
  std::vector<std::int64_t> conf(std::size_t(C * C), 0);
  for (const auto& c : conf_per)
    for (std::size_t j = 0; j < c.size(); ++j) conf[j] += c[j];
  knn_result r;
  score_confusion(conf, C, r);
  r.val_images = val.count;
  return r;
}

/// k-NN segmentation of `val` with `train` as the memory. `train_features` and `val_features` are
/// L2-normalised patch features [n, G*G, D] (patch_features); `patch` is the backbone's patch.
inline knn_result knn_segmentation(const Tensor<float>& train_features,
                                   const segmentation_set& train, const Tensor<float>& val_features,
                                   const segmentation_set& val, index_t patch,
                                   const knn_params& p = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  const int C = p.num_classes;
  const index_t G = val.size / patch, D = train_features.size(2);
  FLSL_CHECK(train_features.size(1) == (train.size / patch) * (train.size / patch) &&
                 val_features.size(1) == G * G && val_features.size(2) == D,
             "knn_segmentation: features ", train_features.shape(), " and ", val_features.shape(),
             " do not match ", train.size, " and ", val.size, " px images with patch ", patch);
  // memory: the labelled training patches, each with the fraction of its pixels in each class
  // (soft labels: a patch on an object's edge votes for both sides) or its majority class
  const std::vector<float> fractions = patch_class_fractions(train, patch, C);
  std::vector<index_t> keep;
  for (index_t i = 0; i < index_t(fractions.size()) / C; ++i) {
    float labelled = 0;
    for (int c = 0; c < C; ++c) labelled += fractions[std::size_t(i * C + c)];
    if (labelled > 0) keep.push_back(i);
  }
  const index_t M = index_t(keep.size());
  FLSL_CHECK(M > 0, "knn_segmentation: no labelled training patch");
  auto memory = Tensor<float>::empty({M, D});        // [M, D]
  std::vector<float> mem_votes(std::size_t(M * C));  // [M, C]: what each entry votes for
  const Tensor<float> tf = train_features.contiguous();
  for (index_t i = 0; i < M; ++i) {
    const index_t src = keep[std::size_t(i)];
    std::copy_n(tf.data() + src * D, D, memory.data() + i * D);
    const float* f = fractions.data() + src * C;
    float* v = mem_votes.data() + i * C;
    if (p.soft_labels) {
      std::copy_n(f, C, v);
    } else {
      std::fill_n(v, C, 0.0f);
      v[std::max_element(f, f + C) - f] = 1.0f;  // ties: the lower class
    }
  }
  const index_t k = std::min(p.k, M);
  // queries: every validation patch, in chunks
  const index_t Q = val.count * G * G;
  const Tensor<float> queries = val_features.contiguous().view({Q, D});
  std::vector<float> scores(std::size_t(Q * C), 0.0f);  // [Q, C]
  for (index_t q0 = 0; q0 < Q; q0 += p.query_chunk) {
    const index_t nq = std::min(p.query_chunk, Q - q0);
    const Tensor<float> sim = matmul(queries.narrow(0, q0, nq), memory.t());  // [nq, M]
    tbb::parallel_for(index_t(0), nq, [&](index_t r) {
      const float* row = sim.data() + r * M;
      std::vector<index_t> idx(static_cast<std::size_t>(M));
      std::iota(idx.begin(), idx.end(), index_t(0));
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](index_t a, index_t b) {
        return row[a] > row[b] || (row[a] == row[b] && a < b);
      });
      float* out = scores.data() + (q0 + r) * C;
      for (index_t j = 0; j < k; ++j) {
        const index_t m = idx[std::size_t(j)];
        const float w = float(std::exp(double(row[m]) / p.temperature));
        const float* v = mem_votes.data() + m * C;
        for (int c = 0; c < C; ++c) out[c] += w * v[c];
      }
    });
  }
  knn_result r = score_patch_predictions(scores, val, patch, C, p.ignore_index);
  r.memory_patches = M;
  r.val_images = val.count;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

struct linear_probe_params {
  int num_classes = data::procedural_num_classes + 1;
  int ignore_index = 255;
  index_t iterations = 300;  // full-batch Adam steps
  double lr = 0.05;
  double weight_decay = 1e-4;  // L2 penalty on the weights (not the bias)
};

/// Linear probe segmentation (FLSL_SPEC.md §7): a softmax regression from a patch's feature
/// (standardised with the memory's per-channel mean and deviation) to the class fractions of its
/// pixels, fitted on every labelled training patch by full-batch Adam from zeros (deterministic),
/// then scored like the k-NN (class scores of the validation patches upsampled to pixels).
inline knn_result linear_probe_segmentation(const Tensor<float>& train_features,
                                            const segmentation_set& train,
                                            const Tensor<float>& val_features,
                                            const segmentation_set& val, index_t patch,
                                            const linear_probe_params& p = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  const int C = p.num_classes;
  const index_t D = train_features.size(2), G = val.size / patch;
  FLSL_CHECK(train_features.size(1) == (train.size / patch) * (train.size / patch) &&
                 val_features.size(1) == G * G && val_features.size(2) == D,
             "linear_probe_segmentation: features ", train_features.shape(), " and ",
             val_features.shape(), " do not match ", train.size, " and ", val.size,
             " px images with patch ", patch);
  const std::vector<float> fractions = patch_class_fractions(train, patch, C);
  const Tensor<float> tf = train_features.contiguous(), vf = val_features.contiguous();
  const index_t Mall = tf.size(0) * tf.size(1);
  // standardisation from the memory
  std::vector<double> mu(std::size_t(D), 0.0), sd(std::size_t(D), 0.0);
  for (index_t i = 0; i < Mall; ++i)
    for (index_t c = 0; c < D; ++c) mu[std::size_t(c)] += tf.data()[i * D + c];
  for (double& v : mu) v /= double(Mall);
  for (index_t i = 0; i < Mall; ++i)
    for (index_t c = 0; c < D; ++c) {
      const double d = tf.data()[i * D + c] - mu[std::size_t(c)];
      sd[std::size_t(c)] += d * d;
    }
  for (double& v : sd) v = std::max(std::sqrt(v / double(Mall)), 1e-6);
  auto standardise = [&](const Tensor<float>& f) {
    const index_t rows = f.size(0) * f.size(1);
    auto x = Tensor<float>::empty({rows, D + 1});  // the last column is 1 (bias)
    tbb::parallel_for(index_t(0), rows, [&](index_t i) {
      for (index_t c = 0; c < D; ++c)
        x.data()[i * (D + 1) + c] =
            float((f.data()[i * D + c] - mu[std::size_t(c)]) / sd[std::size_t(c)]);
      x.data()[i * (D + 1) + D] = 1.0f;
    });
    return x;
  };
  // the labelled memory patches and their targets (fractions renormalised to sum 1)
  const Tensor<float> xall = standardise(tf);
  std::vector<index_t> keep;
  for (index_t i = 0; i < Mall; ++i) {
    float labelled = 0;
    for (int c = 0; c < C; ++c) labelled += fractions[std::size_t(i * C + c)];
    if (labelled > 0) keep.push_back(i);
  }
  const index_t M = index_t(keep.size());
  FLSL_CHECK(M > 0, "linear_probe_segmentation: no labelled training patch");
  auto x = Tensor<float>::empty({M, D + 1});
  auto y = Tensor<float>::empty({M, C});
  for (index_t i = 0; i < M; ++i) {
    const index_t src = keep[std::size_t(i)];
    std::copy_n(xall.data() + src * (D + 1), D + 1, x.data() + i * (D + 1));
    float labelled = 0;
    for (int c = 0; c < C; ++c) labelled += fractions[std::size_t(src * C + c)];
    for (int c = 0; c < C; ++c)
      y.data()[i * C + c] = fractions[std::size_t(src * C + c)] / labelled;
  }
  // softmax regression by full-batch Adam: W [D + 1, C]
  auto W = Tensor<float>::zeros({D + 1, C});
  std::vector<double> m1(std::size_t((D + 1) * C), 0.0), m2(m1.size(), 0.0);
  const Tensor<float> xt = x.t().contiguous();  // [D + 1, M]
  for (index_t it = 1; it <= p.iterations; ++it) {
    Tensor<float> logits = matmul(x, W);  // [M, C]
    tbb::parallel_for(index_t(0), M, [&](index_t i) {
      float* l = logits.data() + i * C;
      const float mx = *std::max_element(l, l + C);
      double z = 0;
      for (int c = 0; c < C; ++c) z += std::exp(double(l[c] - mx));
      for (int c = 0; c < C; ++c)  // d(mean soft cross-entropy) / d logits
        l[c] = float((std::exp(double(l[c] - mx)) / z - y.data()[i * C + c]) / double(M));
    });
    const Tensor<float> grad = matmul(xt, logits);  // [D + 1, C]
    const double b1 = 0.9, b2 = 0.999, bc1 = 1 - std::pow(b1, double(it)),
                 bc2 = 1 - std::pow(b2, double(it));
    for (index_t j = 0; j < (D + 1) * C; ++j) {
      const bool is_bias = j / C == D;
      const double g = double(grad.data()[j]) + (is_bias ? 0.0 : p.weight_decay * W.data()[j]);
      m1[std::size_t(j)] = b1 * m1[std::size_t(j)] + (1 - b1) * g;
      m2[std::size_t(j)] = b2 * m2[std::size_t(j)] + (1 - b2) * g * g;
      W.data()[j] -=
          float(p.lr * (m1[std::size_t(j)] / bc1) / (std::sqrt(m2[std::size_t(j)] / bc2) + 1e-8));
    }
  }
  const Tensor<float> logits = matmul(standardise(vf), W);  // [Q, C]
  std::vector<float> scores(logits.data(), logits.data() + logits.numel());
  knn_result r = score_patch_predictions(scores, val, patch, C, p.ignore_index);
  r.memory_patches = M;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

/// Features and k-NN in one call for a backbone (teacher or student).
template <class Backbone>
knn_result knn_segmentation(const Backbone& backbone, const segmentation_set& train,
                            const segmentation_set& val, index_t patch, const knn_params& p = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  Tensor<float> ft = patch_features(backbone, train.images);
  Tensor<float> fv = patch_features(backbone, val.images);
  const feature_statistics stats = feature_cosines(fv);
  if (p.center_images) {
    center_images(ft);
    center_images(fv);
  }
  if (p.center_positions) center_positions(ft, fv);
  knn_result r = knn_segmentation(ft, train, fv, val, patch, p);
  r.features = stats;
  if (p.linear_probe) {
    linear_probe_params lp;
    lp.num_classes = p.num_classes;
    lp.ignore_index = p.ignore_index;
    const knn_result probe = linear_probe_segmentation(ft, train, fv, val, patch, lp);
    r.probe_miou = probe.miou;
    r.probe_foreground_iou = probe.foreground_iou;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace flsl::evaluation
