// The multi-crop transform: wiring of the views (student and locals cut from view t), seeds and
// streams, query tokens per view, DCT-scaled decoding equivalent to full decoding.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <flsl/data/encode.hpp>
#include <flsl/data/multicrop.hpp>

#include "test_images.hpp"

using namespace flsl::data;
using flsl::data::testing::smooth_image;

namespace {

/// Memory for the views of one image.
struct Views {
  explicit Views(const MultiCropParams& p)
      : teacher(3 * std::size_t(p.teacher.size) * std::size_t(p.teacher.size)),
        student(3 * std::size_t(p.student.size) * std::size_t(p.student.size)),
        locals(std::size_t(p.n_local) * 3 * std::size_t(p.local.size) * std::size_t(p.local.size)),
        sq(std::size_t(p.student_queries())),
        lq(std::size_t(p.n_local) * std::size_t(p.local_queries())) {}
  MultiCropOutput out() {
    return {teacher.data(), student.data(), locals.data(), sq.data(), lq.data()};
  }
  std::vector<float> teacher, student, locals;
  std::vector<std::int64_t> sq, lq;
};

MultiCropParams no_style(MultiCropParams p) {
  p.style.jitter_p = p.style.grayscale_p = p.style.blur_p_a = p.style.blur_p_b =
      p.style.solarize_p = 0;
  p.style.normalize = false;
  return p;
}

SourceImage decoded(const ImageU8& img) {
  SourceImage s;
  s.encoded = false;
  s.pixels = img;
  s.name = "test image";
  return s;
}

}  // namespace

TEST_CASE("multi-crop: spec defaults give 224/224/2x96 views with 16 and 9 query tokens") {
  const MultiCropParams p;
  CHECK(p.teacher.size == 224);
  CHECK(p.teacher.scale_min == 0.8);
  CHECK(p.student.scale_min == 0.5);
  CHECK(p.local.size == 96);
  CHECK(p.local.scale_max == 0.4);
  CHECK(p.n_local == 2);
  CHECK(p.student_queries() == 16);
  CHECK(p.local_queries() == 9);
  CHECK(p.flip_p == 0.0);
  MultiCrop mc(p);
  Views v(p);
  mc(decoded(smooth_image(300, 200)), 1, 2, v.out());
  const float lo = (0 - 0.485f) / 0.229f, hi = (1 - 0.406f) / 0.225f;
  for (float x : v.teacher) REQUIRE((x >= lo - 1e-4f && x <= hi + 1e-4f));
  for (auto q : v.sq) CHECK((q >= 0 && q < 14 * 14));
  for (auto q : v.lq) CHECK((q >= 0 && q < 6 * 6));
  CHECK(v.lq.size() == 18);
  MultiCropParams bad = p;
  bad.local.size = 90;  // not a multiple of the patch
  CHECK_THROWS_AS(MultiCrop{bad}, flsl::error);
}

TEST_CASE("multi-crop: student and local views are crops of view t, not of the image") {
  MultiCropParams p = no_style({});
  p.teacher = {32, 1.0, 1.0, 1.0, 1.0};  // the whole (square) image, at its own size: a copy
  p.student = {32, 1.0, 1.0, 1.0, 1.0};  // the whole view t: a copy of t
  p.local = {16, 0.2, 0.3};
  p.patch = 8;
  p.global_window = 2;
  p.local_window = 2;
  const ImageU8 img = smooth_image(32, 32, 3);
  MultiCrop mc(p);
  Views v(p);
  mc(decoded(img), 5, 6, v.out());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 32; ++y)
      for (int x = 0; x < 32; ++x) {
        const std::size_t i = std::size_t((c * 32 + y) * 32 + x);
        REQUIRE(v.teacher[i] == doctest::Approx(img.at(y, x, c) / 255.0).epsilon(1e-5));
        REQUIRE(v.student[i] == doctest::Approx(v.teacher[i]).epsilon(1e-5));
      }
  // a local view equals the resampled crop of view t recorded for it
  const CropBox crop = mc.record().crops[2];
  CHECK(crop.width * crop.height >= int(0.2 * 32 * 32 * 0.9));
  ImageF32 t(32, 32), expect(16, 16);
  std::copy(v.teacher.begin(), v.teacher.end(), t.values.begin());
  Resampler rs;
  rs.resize(t.view(), crop.box(), expect.view());
  for (std::size_t i = 0; i < expect.values.size(); ++i)
    REQUIRE(v.locals[i] == doctest::Approx(expect.values[i]));
}

TEST_CASE("multi-crop: the same (seed, stream) gives the same views; another stream does not") {
  const MultiCropParams p;
  MultiCrop a(p), b(p);
  Views va(p), vb(p);
  const SourceImage src = decoded(smooth_image(120, 90));
  a(src, 42, 7, va.out());
  b(src, 42, 7, vb.out());
  CHECK(va.teacher == vb.teacher);
  CHECK(va.locals == vb.locals);
  CHECK(va.sq == vb.sq);
  b(src, 42, 8, vb.out());
  CHECK(va.teacher != vb.teacher);
  b(src, 43, 7, vb.out());
  CHECK(va.student != vb.student);
}

TEST_CASE("multi-crop: flips are drawn per view when enabled") {
  MultiCropParams p;
  p.flip_p = 0.5;
  MultiCrop mc(p);
  Views v(p);
  const SourceImage src = decoded(smooth_image(64, 64));
  int flips = 0;
  for (int i = 0; i < 200; ++i) {
    mc(src, 1, std::uint64_t(i), v.out());
    for (bool f : mc.record().flips) flips += f;
  }
  CHECK(flips / 800.0 == doctest::Approx(0.5).epsilon(0.15));
}

TEST_CASE("multi-crop: a large JPEG decoded at k/8 scale gives nearly the views of a full decode") {
  MultiCropParams p = no_style({});
  p.n_local = 1;
  const ImageU8 img = smooth_image(1200, 900, 1);
  SourceImage src;
  src.bytes = encode_jpeg(img, 95, TJSAMP_444);
  src.name = "big.jpg";
  MultiCrop scaled(p);
  MultiCropParams full_p = p;
  full_p.dct_downscale = false;
  MultiCrop full(full_p);
  Views a(p), b(p);
  double worst_mean = 0;
  for (std::uint64_t s = 0; s < 4; ++s) {
    scaled(src, 9, s, a.out());
    full(src, 9, s, b.out());
    CHECK(scaled.record().decode_scale < 0.5);  // 224 px from >= 720 px crops: 1/4 or 3/8
    CHECK(full.record().decode_scale == 1.0);
    CHECK(scaled.record().crops[0].width == full.record().crops[0].width);  // same draws
    double diff = 0;
    for (std::size_t i = 0; i < a.teacher.size(); ++i)
      diff += std::abs(a.teacher[i] - b.teacher[i]);
    worst_mean = std::max(worst_mean, diff / double(a.teacher.size()));
  }
  CHECK(worst_mean < 1.5 / 255);
}

TEST_CASE("multi-crop: ViT-S/8 grids and random sampling in the views' query tokens") {
  MultiCropParams p;
  p.patch = 8;  // 28x28 global grid: 9x9 windows of 3 -> 81; 12x12 local grid, w 2 -> 36
  p.random_sampling = true;
  CHECK(p.student_queries() == 81);
  CHECK(p.local_queries() == 36);
  MultiCrop mc(p);
  Views v(p);
  mc(decoded(smooth_image(100, 80)), 3, 4, v.out());
  REQUIRE(v.sq.size() == 81);
  REQUIRE(v.lq.size() == 72);
  for (std::size_t k = 0; k < 81; ++k) {  // window k of the 27x27 block (the grid is 28)
    const auto y = v.sq[k] / 28, x = v.sq[k] % 28;
    CHECK(((y - std::int64_t(k / 9) * 3) >= 0 && (y - std::int64_t(k / 9) * 3) <= 3));
    CHECK(((x - std::int64_t(k % 9) * 3) >= 0 && (x - std::int64_t(k % 9) * 3) <= 3));
  }
  for (std::size_t k = 0; k < 72; ++k) {  // two local views, 6x6 windows of 2 on the 12x12 grid
    const std::size_t w = k % 36;
    CHECK(v.lq[k] / 12 / 2 == std::int64_t(w / 6));
    CHECK(v.lq[k] % 12 / 2 == std::int64_t(w % 6));
  }
}
