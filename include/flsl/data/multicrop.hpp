// The FLSL multi-crop transform of FLSL_SPEC.md §2: teacher view t from the image, student global
// view and L local views cropped from t, each style-augmented independently, plus the query-token
// indices of every student view.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "dataset.hpp"
#include "decode.hpp"
#include "image.hpp"
#include "query_tokens.hpp"
#include "random_resized_crop.hpp"
#include "resample.hpp"
#include "transforms.hpp"

namespace flsl::data {

/// Everything the transform draws from; defaults are the published recipe.
struct MultiCropParams {
  RandomResizedCropParams teacher{224, 0.8, 1.0};  // from the image
  RandomResizedCropParams student{224, 0.5, 1.0};  // from view t
  RandomResizedCropParams local{96, 0.05, 0.4};    // from view t
  int n_local = 2;
  StyleParams style;
  double flip_p = 0.0;  // horizontal flip per view (not in the recipe)
  int patch = 16;
  int global_window = 3;  // 14x14 grid -> 16 queries
  int local_window = 2;   // 6x6 grid -> 9 queries
  bool random_sampling = false;
  bool dct_downscale = true;  // decode large JPEGs at k/8 scale when the teacher crop allows

  int student_grid() const { return student.size / patch; }
  int local_grid() const { return local.size / patch; }
  int student_queries() const { return query_token_count(student_grid(), global_window); }
  int local_queries() const { return query_token_count(local_grid(), local_window); }

  void validate() const {
    for (const auto* c : {&teacher, &student, &local})
      FLSL_CHECK(c->size > 0, "MultiCropParams: crop size ", c->size, " must be positive");
    FLSL_CHECK(n_local >= 0, "MultiCropParams: n_local ", n_local, " is negative");
    FLSL_CHECK(patch > 0 && student.size % patch == 0 && (n_local == 0 || local.size % patch == 0),
               "MultiCropParams: view sizes ", student.size, " and ", local.size,
               " must be multiples of the patch size ", patch);
    FLSL_CHECK(global_window > 0 && global_window <= student_grid(),
               "MultiCropParams: global window ", global_window, " does not fit the ",
               student_grid(), "x", student_grid(), " grid");
    FLSL_CHECK(n_local == 0 || (local_window > 0 && local_window <= local_grid()),
               "MultiCropParams: local window ", local_window, " does not fit the ", local_grid(),
               "x", local_grid(), " grid");
  }
};

/// Where the views of one image go (contiguous planar memory, e.g. the slots of a batch).
struct MultiCropOutput {
  float* teacher = nullptr;                 // [3, T, T]
  float* student = nullptr;                 // [3, S, S]
  float* locals = nullptr;                  // [L, 3, s, s]
  std::int64_t* student_queries = nullptr;  // [Qg]
  std::int64_t* local_queries = nullptr;    // [L, Ql]
};

/// What the last call drew, for tests and debugging. Crop boxes of the teacher view are in
/// upright full-image pixels; the others in pixels of view t.
struct MultiCropRecord {
  int image_width = 0, image_height = 0;
  double decode_scale = 1.0;   // JPEG DCT scale used for the teacher crop
  std::vector<CropBox> crops;  // teacher, student, locals...
  std::vector<bool> flips;
  std::vector<StyleRecord> styles;
};

/// The random stream of view v of an image: Philox keyed by `seed`, stream mix_stream(stream, v).
/// Views are 0 teacher, 1 student global, 2.. locals. Each stream draws, in order: the crop, the
/// flip (only when flip_p > 0), the style, the query tokens (student views).
class MultiCrop {
 public:
  explicit MultiCrop(MultiCropParams p = {}, DecodeOptions d = {}) : p_(p), decoder_(d) {
    p_.validate();
  }
  const MultiCropParams& params() const { return p_; }
  const MultiCropRecord& record() const { return rec_; }

  void operator()(const SourceImage& src, std::uint64_t seed, std::uint64_t stream,
                  const MultiCropOutput& out) {
    const int views = 2 + p_.n_local;
    gens_.clear();
    for (int v = 0; v < views; ++v) gens_.emplace_back(seed, mix_stream(stream, std::uint64_t(v)));
    rec_.crops.assign(std::size_t(views), {});
    rec_.flips.assign(std::size_t(views), false);
    rec_.styles.assign(std::size_t(views), {});

    const PlanarView teacher{out.teacher, p_.teacher.size, p_.teacher.size};
    make_teacher(src, teacher);
    for (int v = 1; v < views; ++v) {
      const bool global = v == 1;
      const auto& cp = global ? p_.student : p_.local;
      Generator& g = gens_[std::size_t(v)];
      const CropBox crop = sample_crop(teacher.width, teacher.height, cp, g);
      const bool flip = draw_flip(g);
      rec_.crops[std::size_t(v)] = crop;
      rec_.flips[std::size_t(v)] = flip;
      resampler_.resize(teacher, crop.box(), view(out, v), flip);
    }
    for (int v = 0; v < views; ++v)
      rec_.styles[std::size_t(v)] = style_(view(out, v), p_.style, gens_[std::size_t(v)]);
    sample_query_tokens(p_.student_grid(), p_.global_window, p_.random_sampling, gens_[1],
                        {out.student_queries, std::size_t(p_.student_queries())});
    for (int l = 0; l < p_.n_local; ++l) {
      const std::size_t q = std::size_t(p_.local_queries());
      sample_query_tokens(p_.local_grid(), p_.local_window, p_.random_sampling,
                          gens_[std::size_t(2 + l)], {out.local_queries + std::size_t(l) * q, q});
    }
  }

 private:
  bool draw_flip(Generator& g) const { return p_.flip_p > 0 && g.uniform() < p_.flip_p; }

  PlanarView view(const MultiCropOutput& out, int v) const {
    if (v == 0) return {out.teacher, p_.teacher.size, p_.teacher.size};
    if (v == 1) return {out.student, p_.student.size, p_.student.size};
    const std::size_t s = std::size_t(p_.local.size);
    return {out.locals + std::size_t(v - 2) * 3 * s * s, p_.local.size, p_.local.size};
  }

  /// View t: the crop is drawn on the upright full-size image; a JPEG is then decoded at the
  /// smallest k/8 scale that keeps the crop at least as large as the output (like PIL's draft
  /// mode), and the crop box is mapped into the decoded pixels.
  void make_teacher(const SourceImage& src, PlanarView teacher) {
    Generator& g = gens_[0];
    const ImageU8* img = &src.pixels;
    CropBox crop;
    double scale = 1.0;
    if (src.encoded) {
      const ImageHeader h = decoder_.header(src.bytes, src.name);
      rec_.image_width = h.width;
      rec_.image_height = h.height;
      crop = sample_crop(h.width, h.height, p_.teacher, g);
      double min_scale = 1.0;
      if (p_.dct_downscale)
        min_scale =
            std::max(double(teacher.width) / crop.width, double(teacher.height) / crop.height);
      scale = decoder_.decode(src.bytes, src.name, h, decoded_, min_scale).scale_x;
      img = &decoded_;
    } else {
      FLSL_CHECK(!src.pixels.empty(), "multi-crop: image '", src.name, "' is empty");
      rec_.image_width = src.pixels.width;
      rec_.image_height = src.pixels.height;
      crop = sample_crop(src.pixels.width, src.pixels.height, p_.teacher, g);
    }
    const bool flip = draw_flip(g);
    rec_.crops[0] = crop;
    rec_.flips[0] = flip;
    rec_.decode_scale = scale;
    Box box = crop.box();
    if (scale != 1.0) {
      box = {box.x0 * scale, box.y0 * scale, std::min(box.x1 * scale, double(img->width)),
             std::min(box.y1 * scale, double(img->height))};
    }
    resampler_.resize(*img, box, teacher, flip);
  }

  MultiCropParams p_;
  Decoder decoder_;
  ImageU8 decoded_;
  Resampler resampler_;
  StyleAugment style_;
  std::vector<Generator> gens_;
  MultiCropRecord rec_;
};

}  // namespace flsl::data
