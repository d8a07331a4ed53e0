// Video label propagation (eval/label_propagation.hpp): the propagator against a dense reference
// of DINO's algorithm, the upsampling to pixels, and the DAVIS evaluation on a synthetic video
// written in the DAVIS folder layout (no files from outside).
#include <doctest/doctest.h>

#include <flsl/eval/label_propagation.hpp>

#include <cmath>
#include <deque>
#include <string>
#include <vector>

#include "../data/test_images.hpp"
#include "davis_video.hpp"

using namespace flsl;
using evaluation::label_propagator;
using evaluation::propagation_params;

namespace {

/// DINO's label_propagation written densely in double: affinities exp(cos / T) to every source
/// patch, zero outside the neighbourhood, the top-k per target over all sources, normalised.
struct dense_reference {
  index_t rows, cols, C;
  propagation_params p;
  std::vector<std::vector<double>> first_f, first_l;  // [N][D], [N][C]
  std::deque<std::pair<std::vector<std::vector<double>>, std::vector<std::vector<double>>>> queue;

  static std::vector<std::vector<double>> unit(const Tensor<float>& f) {
    std::vector<std::vector<double>> out(std::size_t(f.size(0)));
    for (index_t i = 0; i < f.size(0); ++i) {
      double sq = 0;
      for (index_t d = 0; d < f.size(1); ++d) sq += double(f(i, d)) * double(f(i, d));
      for (index_t d = 0; d < f.size(1); ++d)
        out[std::size_t(i)].push_back(double(f(i, d)) / std::sqrt(sq));
    }
    return out;
  }
  std::vector<std::vector<double>> next(const Tensor<float>& feat) {
    const auto t = unit(feat);
    const index_t N = rows * cols;
    std::vector<const std::vector<std::vector<double>>*> sf{&first_f}, sl{&first_l};
    for (auto& q : queue) sf.push_back(&q.first), sl.push_back(&q.second);
    std::vector<std::vector<double>> out(std::size_t(N), std::vector<double>(std::size_t(C), 0));
    for (index_t i = 0; i < N; ++i) {
      std::vector<double> aff;  // over (source, j)
      for (std::size_t s = 0; s < sf.size(); ++s)
        for (index_t j = 0; j < N; ++j) {
          double c = 0;
          for (std::size_t d = 0; d < t[0].size(); ++d)
            c += t[std::size_t(i)][d] * (*sf[s])[std::size_t(j)][d];
          const bool near = std::abs(i / cols - j / cols) <= p.neighborhood &&
                            std::abs(i % cols - j % cols) <= p.neighborhood;
          aff.push_back(near ? std::exp(c / p.temperature) : 0.0);
        }
      std::vector<double> sorted = aff;
      std::sort(sorted.rbegin(), sorted.rend());
      const double kth = sorted[std::size_t(p.topk - 1)];
      double total = 0;
      for (double& a : aff) {
        if (a < kth) a = 0;
        total += a;
      }
      for (std::size_t e = 0; e < aff.size(); ++e)
        for (index_t c = 0; c < C; ++c)
          out[std::size_t(i)][std::size_t(c)] +=
              aff[e] / total * (*sl[e / std::size_t(N)])[e % std::size_t(N)][std::size_t(c)];
    }
    if (index_t(queue.size()) == p.context) queue.pop_front();
    queue.emplace_back(t, out);
    return out;
  }
};

}  // namespace

TEST_CASE("the propagator equals a dense reference of DINO's label propagation") {
  const index_t rows = 4, cols = 5, N = rows * cols, D = 6, C = 3;
  propagation_params p;
  p.context = 2;
  p.neighborhood = 1;
  p.topk = 3;
  p.temperature = 0.1;
  auto labels = Tensor<float>::zeros({C, rows, cols});
  for (index_t i = 0; i < N; ++i) labels.data()[(i % C) * N + i] = 1.0f;  // class i mod 3
  const auto f0 = Tensor<float>::randn({N, D}, 11);
  label_propagator prop(f0, labels, rows, cols, p);
  dense_reference ref{rows, cols, C, p, dense_reference::unit(f0), {}, {}};
  for (index_t i = 0; i < N; ++i) {
    ref.first_l.emplace_back(std::size_t(C), 0.0);
    ref.first_l.back()[std::size_t(i % C)] = 1.0;
  }
  for (int frame = 1; frame <= 4; ++frame) {  // the context fills (2 frames) and then slides
    CAPTURE(frame);
    // features that drift from the first frame's, so that every source frame matters
    const Tensor<float> f = f0 + 0.5f * Tensor<float>::randn({N, D}, std::uint64_t(20 + frame));
    const Tensor<float> got = prop.next(f);
    const auto want = ref.next(f);
    REQUIRE(got.shape() == Shape{C, rows, cols});
    double worst = 0, mass = 0;
    for (index_t i = 0; i < N; ++i)
      for (index_t c = 0; c < C; ++c) {
        const double g = got.data()[c * N + i];
        worst = std::max(worst, std::abs(g - want[std::size_t(i)][std::size_t(c)]));
        mass += g;
      }
    CHECK(worst < 1e-5);
    CHECK(mass == doctest::Approx(double(N)).epsilon(1e-5));  // every patch's labels sum to 1
  }
}

TEST_CASE("identical frames propagate the first labels unchanged") {
  const index_t rows = 3, cols = 4, N = rows * cols, C = 2;
  auto feats = Tensor<float>::zeros({N, N});  // patch i: unit vector e_i
  for (index_t i = 0; i < N; ++i) feats.data()[i * N + i] = 1.0f;
  auto labels = Tensor<float>::zeros({C, rows, cols});
  for (index_t i = 0; i < N; ++i) labels.data()[(i < 5 ? 1 : 0) * N + i] = 1.0f;
  propagation_params p;
  p.topk = 1;
  p.neighborhood = 0;  // the whole frame
  label_propagator prop(feats, labels, rows, cols, p);
  for (int frame = 1; frame <= 9; ++frame) {  // beyond the 7 frames of context
    const Tensor<float> got = prop.next(feats);
    for (index_t j = 0; j < C * N; ++j) CHECK(got.data()[j] == doctest::Approx(labels.data()[j]));
  }
}

TEST_CASE("the propagator refuses features and labels of the wrong shape") {
  const auto f = Tensor<float>::randn({6, 4}, 1);
  const auto l = Tensor<float>::zeros({2, 2, 3});
  CHECK_THROWS_AS(label_propagator(f, Tensor<float>::zeros({2, 3, 2}), 2, 3), flsl::error);
  CHECK_THROWS_AS(label_propagator(Tensor<float>::randn({5, 4}, 1), l, 2, 3), flsl::error);
  label_propagator prop(f, l, 2, 3);
  CHECK_THROWS_AS(prop.next(Tensor<float>::randn({6, 5}, 2)), flsl::error);  // another width
  CHECK_THROWS_AS(prop.next(Tensor<float>::randn({7, 4}, 2)), flsl::error);
}

TEST_CASE("labels_to_mask: bilinear between patch centres, min-max per class, nearest resize") {
  // 2 x 3 patches of 4 px; class 1 fills the right column of patches
  auto soft = Tensor<float>::zeros({2, 2, 3});
  for (index_t y = 0; y < 2; ++y)
    for (index_t x = 0; x < 3; ++x) soft.data()[(x == 2 ? 1 : 0) * 6 + y * 3 + x] = 1.0f;
  // at the image's own size (8 x 12): pixel x = 7 interpolates 0.375 of class 1, x = 8 0.625
  const auto m = evaluation::labels_to_mask(soft, 4, 12, 8);
  for (index_t y = 0; y < 8; ++y)
    for (index_t x = 0; x < 12; ++x) CHECK(m[std::size_t(y * 12 + x)] == (x >= 8 ? 1 : 0));
  // resized to 6 x 4: PIL's nearest reads source column floor((x + 0.5) * 2) = 2x + 1
  const auto s = evaluation::labels_to_mask(soft, 4, 6, 4);
  for (index_t x = 0; x < 6; ++x) CHECK(s[std::size_t(x)] == (x >= 4 ? 1 : 0));
  // a class whose scores are all small still wins where it is largest after min-max scaling
  auto weak = Tensor<float>::zeros({2, 1, 2});
  weak.data()[0] = 0.9f;  // class 0 at the left patch
  weak.data()[1] = 0.8f;  // class 0 at the right patch
  weak.data()[3] = 0.2f;  // class 1 at the right patch: scaled to 1, class 0 there to 0
  const auto w = evaluation::labels_to_mask(weak, 1, 2, 1);
  CHECK(w[0] == 0);
  CHECK(w[1] == 1);
}

namespace {

/// A stand-in backbone: each patch's feature is its mean (normalised) colour.
struct mean_colour_backbone {
  using var_type = Var<float>;
  index_t patch = 8;
  bool constant = false;  // every patch the same feature: propagation cannot track anything
  Var<float> operator()(const Tensor<float>& images) const {
    const index_t H = images.size(2), W = images.size(3), gh = H / patch, gw = W / patch;
    auto out = Tensor<float>::zeros({1, gh * gw, 3});
    for (index_t c = 0; c < 3; ++c)
      for (index_t y = 0; y < H; ++y)
        for (index_t x = 0; x < W; ++x)
          out.data()[((y / patch) * gw + x / patch) * 3 + c] +=
              constant ? 1.0f : images(0, c, y, x) / float(patch * patch);
    return Var<float>(out);
  }
};

}  // namespace

TEST_CASE("DAVIS evaluation of a synthetic video: a trackable object is followed exactly") {
  data::testing::TempDir dir;
  evaluation::testing::write_video(dir.path(), "square", 6);
  const auto seqs = evaluation::davis_sequences(dir.path());
  REQUIRE(seqs.size() == 1);
  CHECK(seqs[0].frames.size() == 6);
  evaluation::davis_params p;
  p.short_side = 64;  // 64 x 128: a 8 x 16 grid at patch 8
  p.write_masks = dir / "masks";
  const auto r = evaluation::davis_label_propagation(mean_colour_backbone{}, 8, seqs, p);
  CHECK(r.frames == 6);
  REQUIRE(r.sequences.size() == 1);
  CHECK(r.sequences[0].objects == 1);
  // Every patch gets its true label; the bilinear upsampling then rounds each corner of the
  // 32 x 32 square off by the 6 pixels where the product of the two interpolation weights is below
  // 1/2 (0.5625 and 0.6875 at the first two pixels), so J = (1024 - 24) / 1024 in every frame.
  CHECK(r.j == doctest::Approx(1000.0 / 1024.0).epsilon(1e-12));
  CHECK(r.f > 0.98);  // the rounded corners stay within the 2 px boundary tolerance but for a few
  CHECK(r.jf == doctest::Approx(0.5 * (r.j + r.f)));
  // the written masks: frames 1..5, the square in DAVIS's colour 1 (128, 0, 0)
  for (int t = 1; t < 6; ++t) {
    char stem[16];
    std::snprintf(stem, sizeof stem, "%05d.png", t);
    const auto path = dir / "masks" / "square" / stem;
    REQUIRE(std::filesystem::exists(path));
    std::vector<std::uint8_t> bytes;
    data::read_file(path, bytes);
    const data::ImageU8 m = data::decode_image(bytes);
    CHECK(m.at(32, 32 + 8 * t, 0) == 128);
    CHECK(m.at(32, 32 + 8 * t, 1) == 0);
    CHECK(m.at(5, 5, 0) == 0);
  }
  // the same video with features that say nothing: the square cannot be followed
  mean_colour_backbone blind;
  blind.constant = true;
  p.write_masks.clear();
  const auto b = evaluation::davis_label_propagation(blind, 8, seqs, p);
  CHECK(b.j < 0.5);
  CHECK(b.f < 0.5);
}

TEST_CASE("DAVIS 2017 palette masks: two objects, each followed, ids kept in the output") {
  data::testing::TempDir dir;
  evaluation::testing::write_video(dir.path(), "two", 6, true);
  evaluation::davis_params p;
  p.short_side = 64;
  p.write_masks = dir / "masks";
  const auto r = evaluation::davis_label_propagation(mean_colour_backbone{}, 8,
                                                     evaluation::davis_sequences(dir.path()), p);
  REQUIRE(r.sequences.size() == 1);
  CHECK(r.sequences[0].objects == 2);
  // the 32 x 32 square loses its 4 x 6 corner pixels (J = 1000 / 1024); the 16 x 8 bar, whose
  // bottom edge is the image's, loses the 6 pixels of each top corner (J = 116 / 128)
  CHECK(r.j == doctest::Approx(0.5 * (1000.0 / 1024.0 + 116.0 / 128.0)).epsilon(1e-12));
  CHECK(r.f > 0.95);
  std::vector<std::uint8_t> bytes;
  data::read_file(dir / "masks" / "two" / "00002.png", bytes);
  const data::ImageU8 m = data::decode_image(bytes);
  CHECK(m.at(32, 48, 1) == 128);  // the red square: object 2, (0, 128, 0)
  CHECK(m.at(32, 48, 0) == 0);
  CHECK(m.at(60, 88, 0) == 128);  // the green bar: object 1, (128, 0, 0)
  CHECK(m.at(60, 88, 1) == 0);
}

TEST_CASE("DAVIS folders: missing annotations, corrupt frames and bad sizes are named") {
  data::testing::TempDir dir;
  CHECK_THROWS_WITH_AS(evaluation::davis_sequences(dir.path()),
                       doctest::Contains("JPEGImages/480p' is not a directory"), flsl::error);
  evaluation::testing::write_video(dir.path(), "a", 3);
  evaluation::testing::write_video(dir.path(), "b", 3);
  CHECK(evaluation::davis_sequences(dir.path()).size() == 2);
  CHECK(evaluation::davis_sequences(dir.path(), {"b"}).at(0).name == "b");
  CHECK_THROWS_WITH_AS(evaluation::davis_sequences(dir.path(), {"c"}),
                       doctest::Contains("no sequence 'c'"), flsl::error);
  std::filesystem::remove(dir / "Annotations/480p/b/00001.png");
  CHECK_THROWS_WITH_AS(evaluation::davis_sequences(dir.path()),
                       doctest::Contains("Annotations/480p/b/00001.png"), flsl::error);
  // a truncated frame: the error names it
  const auto frame = dir / "JPEGImages/480p/a/00001.jpg";
  std::vector<std::uint8_t> bytes;
  data::read_file(frame, bytes);
  bytes.resize(bytes.size() / 3);
  data::write_file(frame, bytes);
  evaluation::davis_params p;
  p.short_side = 64;
  const auto seqs = evaluation::davis_sequences(dir.path(), {"a"});
  CHECK_THROWS_WITH_AS(evaluation::davis_label_propagation(mean_colour_backbone{}, 8, seqs, p),
                       doctest::Contains("a/00001.jpg"), flsl::error);
  p.short_side = 60;  // not a multiple of the patch
  CHECK_THROWS_WITH_AS(evaluation::davis_label_propagation(mean_colour_backbone{}, 8, seqs, p),
                       doctest::Contains("multiple of the patch"), flsl::error);
}
