// DAVIS J and F (davis_metrics.hpp) against hand-derived boundary maps and scores, a brute-force
// re-implementation of davis2017's f_measure (plain arrays, naive dilation), and numbers from the
// reference Python itself.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <flsl/eval/davis_metrics.hpp>
#include <limits>
#include <vector>

using namespace flsl;
using namespace flsl::evaluation;
namespace dm = flsl::evaluation::detail;

namespace {

using mask_t = std::vector<std::uint8_t>;

mask_t from_rows(const std::vector<std::vector<int>>& rows) {
  mask_t m;
  for (const auto& r : rows)
    for (int v : r) m.push_back(std::uint8_t(v));
  return m;
}

// Rectangle [y0, y1] x [x0, x1] (inclusive) set in an h x w mask.
mask_t square(index_t h, index_t w, index_t y0, index_t y1, index_t x0, index_t x1) {
  mask_t m(std::size_t(h * w), 0);
  for (index_t y = y0; y <= y1; ++y)
    for (index_t x = x0; x <= x1; ++x) m[std::size_t(y * w + x)] = 1;
  return m;
}

// A union of k random rectangles, from a 64-bit LCG (same generator as the Python cross-check:
// s = s * 6364136223846793005 + 1442695040888963407 mod 2^64, value = s >> 33).
mask_t rect_mask(std::uint64_t seed, index_t h, index_t w, int k) {
  std::uint64_t s = seed;
  const auto next = [&] {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return index_t(s >> 33);
  };
  mask_t m(std::size_t(h * w), 0);
  for (int i = 0; i < k; ++i) {
    const index_t y0 = next() % h, x0 = next() % w;
    const index_t hh = 1 + next() % (h / 3), ww = 1 + next() % (w / 3);
    for (index_t y = y0; y < std::min(h, y0 + hh); ++y)
      for (index_t x = x0; x < std::min(w, x0 + ww); ++x) m[std::size_t(y * w + x)] = 1;
  }
  return m;
}

// --- Brute-force reference, written step by step as davis2017's numpy code. ---

// _seg2bmap: the shifted copies e, s, se, then b = (seg^e)|(seg^s)|(seg^se), then the last row,
// the last column and the corner overwritten in that order.
mask_t naive_seg2bmap(const mask_t& mask, index_t h, index_t w) {
  const auto idx = [&](index_t y, index_t x) { return std::size_t(y * w + x); };
  mask_t seg(mask.size()), e(mask.size(), 0), s(mask.size(), 0), se(mask.size(), 0);
  for (std::size_t i = 0; i < mask.size(); ++i) seg[i] = mask[i] != 0;
  for (index_t y = 0; y < h; ++y)
    for (index_t x = 0; x + 1 < w; ++x) e[idx(y, x)] = seg[idx(y, x + 1)];
  for (index_t y = 0; y + 1 < h; ++y)
    for (index_t x = 0; x < w; ++x) s[idx(y, x)] = seg[idx(y + 1, x)];
  for (index_t y = 0; y + 1 < h; ++y)
    for (index_t x = 0; x + 1 < w; ++x) se[idx(y, x)] = seg[idx(y + 1, x + 1)];
  mask_t b(mask.size());
  for (std::size_t i = 0; i < mask.size(); ++i)
    b[i] = std::uint8_t((seg[i] ^ e[i]) | (seg[i] ^ s[i]) | (seg[i] ^ se[i]));
  for (index_t x = 0; x < w; ++x) b[idx(h - 1, x)] = seg[idx(h - 1, x)] ^ e[idx(h - 1, x)];
  for (index_t y = 0; y < h; ++y) b[idx(y, w - 1)] = seg[idx(y, w - 1)] ^ s[idx(y, w - 1)];
  b[idx(h - 1, w - 1)] = 0;
  return b;
}

// cv2.dilate(src, disk(r)) for an integer radius r: the kernel is (2r+1)^2 with
// X^2 + Y^2 <= r^2, anchored at its centre; pixels outside the image contribute nothing (the
// kernel loops stop at the image's edges).
mask_t naive_dilate(const mask_t& src, index_t h, index_t w, index_t r) {
  mask_t out(src.size(), 0);
  for (index_t y = 0; y < h; ++y)
    for (index_t x = 0; x < w; ++x)
      for (index_t ky = std::max(-r, -y); ky <= std::min(r, h - 1 - y); ++ky)
        for (index_t kx = std::max(-r, -x); kx <= std::min(r, w - 1 - x); ++kx)
          if (kx * kx + ky * ky <= r * r && src[std::size_t((y + ky) * w + x + kx)])
            out[std::size_t(y * w + x)] = 1;
  return out;
}

// f_measure with an integer pixel radius, naive everywhere.
double naive_f(const mask_t& fg_mask, const mask_t& gt_mask, index_t h, index_t w, index_t r) {
  const mask_t fg = naive_seg2bmap(fg_mask, h, w), gt = naive_seg2bmap(gt_mask, h, w);
  const mask_t fg_dil = naive_dilate(fg, h, w, r), gt_dil = naive_dilate(gt, h, w, r);
  long n_fg = 0, n_gt = 0, fg_match = 0, gt_match = 0;
  for (std::size_t i = 0; i < fg.size(); ++i) {
    n_fg += fg[i];
    n_gt += gt[i];
    fg_match += fg[i] * gt_dil[i];
    gt_match += gt[i] * fg_dil[i];
  }
  double precision, recall;
  if (n_fg == 0 && n_gt > 0) {
    precision = 1, recall = 0;
  } else if (n_fg > 0 && n_gt == 0) {
    precision = 0, recall = 1;
  } else if (n_fg == 0 && n_gt == 0) {
    precision = 1, recall = 1;
  } else {
    precision = double(fg_match) / double(n_fg);
    recall = double(gt_match) / double(n_gt);
  }
  return precision + recall == 0 ? 0.0 : 2 * precision * recall / (precision + recall);
}

double F(const mask_t& a, const mask_t& b, index_t h, index_t w, double bound_th) {
  return davis_boundary_f_measure(a.data(), b.data(), h, w, bound_th);
}
double J(const mask_t& a, const mask_t& b, index_t h, index_t w) {
  return davis_region_similarity(a.data(), b.data(), h, w);
}

}  // namespace

TEST_CASE("davis_boundary_map: hand-derived maps") {
  SUBCASE("3x3 square inside a 6x6 image: the outline shifted half a pixel to the origin") {
    const mask_t m = square(6, 6, 1, 3, 1, 3);
    const mask_t want = from_rows({{1, 1, 1, 1, 0, 0},
                                   {1, 0, 0, 1, 0, 0},
                                   {1, 0, 0, 1, 0, 0},
                                   {1, 1, 1, 1, 0, 0},
                                   {0, 0, 0, 0, 0, 0},
                                   {0, 0, 0, 0, 0, 0}});
    CHECK(davis_boundary_map(m.data(), 6, 6) == want);
  }
  SUBCASE("object touching the right and bottom borders (last row/column rules, corner 0)") {
    const mask_t m = from_rows({{0, 0, 0, 0, 0},  //
                                {0, 0, 0, 0, 0},
                                {0, 0, 0, 1, 1},
                                {0, 0, 0, 1, 1}});
    const mask_t want = from_rows({{0, 0, 0, 0, 0},  //
                                   {0, 0, 1, 1, 1},
                                   {0, 0, 1, 0, 0},
                                   {0, 0, 1, 0, 0}});
    CHECK(davis_boundary_map(m.data(), 4, 5) == want);
  }
  SUBCASE("single pixel at the centre of 3x3; nonzero values other than 1 are object") {
    const mask_t m = from_rows({{0, 0, 0}, {0, 255, 0}, {0, 0, 0}});
    CHECK(davis_boundary_map(m.data(), 3, 3) == from_rows({{1, 1, 0}, {1, 1, 0}, {0, 0, 0}}));
  }
  SUBCASE("one row and one column") {
    const mask_t row = from_rows({{0, 1, 1, 0}});
    CHECK(davis_boundary_map(row.data(), 1, 4) == from_rows({{1, 0, 1, 0}}));
    const mask_t col = from_rows({{1}, {1}, {0}, {0}});
    CHECK(davis_boundary_map(col.data(), 4, 1) == from_rows({{0}, {1}, {0}, {0}}));
  }
  SUBCASE("empty and full masks have no boundary") {
    const mask_t empty(12, 0), full(12, 1);
    CHECK(davis_boundary_map(empty.data(), 3, 4) == mask_t(12, 0));
    CHECK(davis_boundary_map(full.data(), 3, 4) == mask_t(12, 0));
  }
  SUBCASE("matches the step-by-step numpy transcription on random masks") {
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
      const index_t h = 5 + index_t(seed % 7), w = 4 + index_t(seed % 5);
      const mask_t m = rect_mask(seed, h, w, 1 + int(seed % 4));
      CHECK(davis_boundary_map(m.data(), h, w) == naive_seg2bmap(m, h, w));
    }
  }
}

TEST_CASE("davis_region_similarity: IoU with the both-empty rule") {
  const mask_t a = square(4, 4, 0, 1, 0, 3);  // top two rows: 8 pixels
  const mask_t b = square(4, 4, 0, 3, 0, 1);  // left two columns: 8 pixels
  CHECK(J(a, a, 4, 4) == 1.0);
  CHECK(J(a, square(4, 4, 2, 3, 0, 3), 4, 4) == 0.0);  // disjoint
  CHECK(J(mask_t(16, 0), mask_t(16, 0), 4, 4) == 1.0);
  CHECK(J(mask_t(16, 0), a, 4, 4) == 0.0);
  CHECK(J(a, b, 4, 4) == 4.0 / 12.0);  // intersection 2x2, union 12
  mask_t a255 = a;
  for (auto& v : a255) v = v ? 255 : 0;
  CHECK(J(a255, b, 4, 4) == 4.0 / 12.0);
}

TEST_CASE("davis_boundary_f_measure: hand-computed cases") {
  const index_t n = 20;
  const mask_t a = square(n, n, 5, 9, 5, 9);  // boundary: the 6x6 ring rows/cols 4..9, 20 px
  SUBCASE("identical, empty and full masks") {
    CHECK(F(a, a, n, n, 0.008) == 1.0);
    CHECK(F(a, a, n, n, 0.0) == 1.0);
    const mask_t empty(std::size_t(n * n), 0), full(std::size_t(n * n), 1);
    CHECK(F(empty, a, n, n, 0.008) == 0.0);  // precision 1, recall 0
    CHECK(F(a, empty, n, n, 0.008) == 0.0);  // precision 0, recall 1
    CHECK(F(empty, empty, n, n, 0.008) == 1.0);
    CHECK(F(full, full, n, n, 0.008) == 1.0);  // no boundary either
    CHECK(F(full, a, n, n, 0.008) == 0.0);
  }
  SUBCASE("shift by 1 px: within a 1 px tolerance, half the ring coincides exactly") {
    const mask_t b = square(n, n, 5, 9, 6, 10);
    CHECK(F(a, b, n, n, 1.0) == 1.0);
    // bound_th 0: ceil(0) = 0, disk(0) = identity; the rings share their top and bottom rows
    // (5 + 5 of 20 px each): precision = recall = 0.5.
    CHECK(F(a, b, n, n, 0.0) == 0.5);
  }
  SUBCASE("shift by 3 px with a 1 px (plus-shaped) tolerance") {
    // a's ring x 4..9, b's ring x 7..12 (rows 4..9). Matched a pixels: top and bottom rows
    // x 6..9 (4 + 4), the right column's rows 5 and 8 via the corners (4, 9) and (9, 9) of b's
    // top/bottom rows (2), none of the left column: 10 / 20. Symmetrically for b: 10 / 20.
    const mask_t b = square(n, n, 5, 9, 8, 12);
    CHECK(F(a, b, n, n, 1.0) == 0.5);
    CHECK(F(a, b, n, n, 1.0) == F(b, a, n, n, 1.0));
  }
  SUBCASE("bound_th < 1 is a fraction of the diagonal, rounded up") {
    // 100x100: diagonal 141.42; 0.008 -> ceil(1.131) = 2 px, 0.0075 -> ceil(1.06) = 2 px,
    // 0.007 -> ceil(0.99) = 1 px. A shift of 2 px is fully matched within 2 px; within 1 px,
    // 12 of 20 ring pixels on each side (top/bottom rows 5 + 5, two via corners).
    const index_t m = 100;
    const mask_t p = square(m, m, 5, 9, 5, 9), q = square(m, m, 5, 9, 7, 11);
    const double within_1px = 2 * 0.6 * 0.6 / (0.6 + 0.6);
    CHECK(F(p, q, m, m, 0.008) == 1.0);
    CHECK(F(p, q, m, m, 0.0075) == 1.0);
    CHECK(F(p, q, m, m, 2.0) == 1.0);
    CHECK(F(p, q, m, m, 0.007) == within_1px);
    CHECK(F(p, q, m, m, 1.0) == within_1px);
    CHECK(davis_boundary_f_measure(p.data(), q.data(), m, m) == 1.0);  // default 0.008
  }
}

TEST_CASE("davis_boundary_f_measure equals a brute-force f_measure on random masks") {
  const index_t h = 40, w = 60;  // diagonal 72.11
  // bound_th -> pixels: 0 -> 0, 0.008 -> 1, 0.03 -> 3, 0.05 -> 4, 0.1 -> 8; >= 1 as is.
  const std::vector<std::pair<double, index_t>> bounds = {{0.0, 0},  {0.008, 1}, {0.03, 3},
                                                          {0.05, 4}, {0.1, 8},   {1.0, 1},
                                                          {2.0, 2},  {5.0, 5},   {100.0, 100}};
  for (std::uint64_t seed = 1; seed <= 8; ++seed) {
    const mask_t a = rect_mask(seed, h, w, 1 + int(seed % 5));
    const mask_t b = rect_mask(seed + 100, h, w, 1 + int((seed + 2) % 5));
    for (const auto& [th, px] : bounds) {
      CAPTURE(seed);
      CAPTURE(th);
      CHECK(std::abs(F(a, b, h, w, th) - naive_f(a, b, h, w, px)) <= 1e-12);
      CHECK(std::abs(F(a, a, h, w, th) - 1.0) <= 1e-12);
    }
  }
}

TEST_CASE("davis J and F match davis2017-evaluation's Python") {
  // Produced by running davis2017/metrics.py's db_eval_iou, f_measure and _seg2bmap (np.bool
  // replaced by bool, no void pixels) with opencv-python-headless 5.1.0, scikit-image 0.26.0 and
  // numpy 2.4.6 on rect_mask(seed_a) (prediction) and rect_mask(seed_b) (truth), the masks built
  // by the same LCG in Python. bound_th 1.5 and 2.3 use skimage's even-sized, off-centre disks.
  struct expected {
    std::uint64_t seed_a, seed_b;
    index_t h, w;
    int k;
    double j;
    std::vector<std::pair<double, double>> f;  // (bound_th, F)
  };
  const std::vector<expected> cases = {
      {1,
       2,
       40,
       60,
       4,
       0.08285714285714285,
       {{0.008, 0.1967799642218247},
        {0.02, 0.3060869565217391},
        {0.05, 0.4211175020542317},
        {1, 0.1967799642218247},
        {1.5, 0.14076433121019108},
        {2.3, 0.25471698113207547},
        {3, 0.37259953161592513}}},
      {3,
       4,
       40,
       60,
       6,
       0.1205564142194745,
       {{0.008, 0.14566565509961735},
        {0.02, 0.24217625217852543},
        {0.05, 0.43418223912683973},
        {1, 0.14566565509961735},
        {1.5, 0.08066581306017927},
        {2.3, 0.2015844230218574},
        {3, 0.36424906951010966}}},
      {5,
       6,
       48,
       85,
       3,
       0.10126582278481013,
       {{0.008, 0.15283188492658079},
        {0.02, 0.23720102787112077},
        {0.05, 0.5176663927691043},
        {1, 0.15283188492658079},
        {1.5, 0.09302325581395349},
        {2.3, 0.20289855072463767},
        {3, 0.4817690417690418}}},
  };
  for (const auto& c : cases) {
    const mask_t a = rect_mask(c.seed_a, c.h, c.w, c.k), b = rect_mask(c.seed_b, c.h, c.w, c.k);
    CAPTURE(c.seed_a);
    CHECK(std::abs(J(a, b, c.h, c.w) - c.j) <= 1e-12);
    for (const auto& [th, f] : c.f) {
      CAPTURE(th);
      CHECK(std::abs(F(a, b, c.h, c.w, th) - f) <= 1e-12);
    }
  }
}

TEST_CASE("detail::davis_disk_footprint: skimage disk(r) with cv2's anchor") {
  using row = dm::davis_footprint_row;
  const auto same = [](const std::vector<row>& got, const std::vector<row>& want) {
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      CHECK(got[i].dy == want[i].dy);
      CHECK(got[i].lo == want[i].lo);
      CHECK(got[i].hi == want[i].hi);
    }
  };
  same(dm::davis_disk_footprint(0.0, 50, 50), {{0, 0, 0}});
  same(dm::davis_disk_footprint(1.0, 50, 50), {{-1, 0, 0}, {0, -1, 1}, {1, 0, 0}});
  // disk(1.5) and disk(1.3) are 4x4 with a 2x2 block at indices 1..2; the anchor is index 2.
  same(dm::davis_disk_footprint(1.5, 50, 50), {{-1, -1, 0}, {0, -1, 0}});
  same(dm::davis_disk_footprint(1.3, 50, 50), {{-1, -1, 0}, {0, -1, 0}});
  // disk(2.3) is 6x6: rows 1..3 set at columns 1..4, row 4 at columns 1..3; anchor index 3.
  same(dm::davis_disk_footprint(2.3, 50, 50), {{-2, -2, 1}, {-1, -2, 1}, {0, -2, 1}, {1, -2, 0}});
  // disk(8), the DAVIS default at 480x854: every row against X^2 + Y^2 <= 64 on integers.
  const auto d8 = dm::davis_disk_footprint(8.0, 480, 854);
  REQUIRE(d8.size() == 17);
  for (index_t dy = -8; dy <= 8; ++dy) {
    index_t half = 0;
    while ((half + 1) * (half + 1) + dy * dy <= 64) ++half;
    CHECK(d8[std::size_t(dy + 8)].dy == dy);
    CHECK(d8[std::size_t(dy + 8)].lo == -half);
    CHECK(d8[std::size_t(dy + 8)].hi == half);
  }
  // Offsets that cannot reach inside a 3x4 image are clipped away.
  same(dm::davis_disk_footprint(8.0, 3, 4),
       {{-2, -3, 3}, {-1, -3, 3}, {0, -3, 3}, {1, -3, 3}, {2, -3, 3}});
}

TEST_CASE("davis_boundary_f_measure at DAVIS resolution") {
  const index_t h = 480, w = 854;  // bound_th 0.008 -> ceil(7.84) = 8 px
  const mask_t a = rect_mask(7, h, w, 5), b = rect_mask(8, h, w, 5);
  CHECK(F(a, a, h, w, 0.008) == 1.0);
  const double f = F(a, b, h, w, 0.008);
  CHECK(f == F(a, b, h, w, 8.0));
  CHECK(f == F(b, a, h, w, 0.008));
  CHECK(std::abs(f - naive_f(a, b, h, w, 8)) <= 1e-12);
  // From davis2017's Python, as in the test case above (0.004 -> ceil(3.92) = 4 px).
  CHECK(std::abs(f - 0.18933421698209008) <= 1e-12);
  CHECK(std::abs(F(a, b, h, w, 0.004) - 0.09464575446187129) <= 1e-12);
  CHECK(std::abs(J(a, b, h, w) - 0.0075427826062298845) <= 1e-12);
}

TEST_CASE("davis metrics: argument errors") {
  const mask_t m(12, 1);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(davis_region_similarity(nullptr, m.data(), 3, 4), flsl::error);
  CHECK_THROWS_AS(davis_region_similarity(m.data(), nullptr, 3, 4), flsl::error);
  CHECK_THROWS_AS(davis_region_similarity(m.data(), m.data(), 0, 4), flsl::error);
  CHECK_THROWS_AS(davis_boundary_f_measure(nullptr, m.data(), 3, 4), flsl::error);
  CHECK_THROWS_AS(davis_boundary_f_measure(m.data(), nullptr, 3, 4), flsl::error);
  CHECK_THROWS_AS(davis_boundary_f_measure(m.data(), m.data(), 3, -1), flsl::error);
  CHECK_THROWS_AS(davis_boundary_f_measure(m.data(), m.data(), 3, 4, -0.5), flsl::error);
  CHECK_THROWS_AS(davis_boundary_f_measure(m.data(), m.data(), 3, 4, nan), flsl::error);
  CHECK_THROWS_AS(davis_boundary_map(nullptr, 3, 4), flsl::error);
  CHECK_THROWS_AS(davis_boundary_map(m.data(), 0, 0), flsl::error);
}
