// DAVIS video-segmentation metrics for one binary mask pair: region similarity J (IoU) and the
// boundary F-measure, with the boundary map they use. They follow the official
// davis2017-evaluation code (davis2017/metrics.py: db_eval_iou, f_measure, _seg2bmap) without
// void pixels: the same boundary pixels, skimage's disk(bound_pix) footprint, cv2.dilate's anchor
// and border, and the same precision/recall edge cases, so the numbers match it exactly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/tensor.hpp"

namespace flsl::evaluation {

namespace detail {

/// One row of a dilation footprint as offsets from the output pixel: the output pixel (y, x) is
/// set when any source pixel of row y + dy, columns x + lo .. x + hi (inclusive), is set.
struct davis_footprint_row {
  index_t dy, lo, hi;
};

/// skimage.morphology.disk(radius) as cv2.dilate applies it to an h*w image, for radius >= 0:
/// the footprint is (X^2 + Y^2 <= radius^2) over X, Y in np.arange(-radius, radius + 1) (numpy's
/// values: start, start + 1, then start + i * delta with delta = (start + 1) - start), the anchor
/// is at index n / 2 of the n-long axis, and cv2 does not reflect the kernel. An integer radius r
/// gives the usual (2r+1)^2 disk centred on the pixel; a fractional one an off-centre, even-sized
/// one, as in the reference. Offsets that cannot reach inside the image (|dy| >= h, |dx| >= w)
/// are clipped away, and rows without a set element are left out.
inline std::vector<davis_footprint_row> davis_disk_footprint(double radius, index_t h, index_t w) {
  FLSL_CHECK(std::isfinite(radius) && radius >= 0 && radius <= 1e9,
             "davis_disk_footprint: radius must be finite, >= 0 and <= 1e9, got ", radius);
  const double start = -radius, stop = radius + 1.0;
  const auto n = static_cast<index_t>(std::ceil(stop - start));  // len(np.arange(...)) >= 1
  const double delta = (start + 1.0) - start;
  const auto value = [&](index_t i) {
    return i == 0 ? start : i == 1 ? start + 1.0 : start + double(i) * delta;
  };
  const index_t anchor = n / 2;
  const double r2 = radius * radius;
  const index_t i0 = std::max<index_t>(0, anchor - (h - 1)), i1 = std::min(n - 1, anchor + h - 1);
  const index_t j0 = std::max<index_t>(0, anchor - (w - 1)), j1 = std::min(n - 1, anchor + w - 1);
  std::vector<davis_footprint_row> rows;
  for (index_t i = i0; i <= i1; ++i) {
    const double y = value(i);
    index_t lo = -1, hi = -1;
    for (index_t j = j0; j <= j1; ++j) {
      const double x = value(j);
      if (x * x + y * y <= r2) {
        if (lo < 0) lo = j;
        hi = j;
      }
    }
    // A row's set of X^2 <= r^2 - Y^2 is contiguous because the values increase along the row.
    if (lo >= 0) rows.push_back({i - anchor, lo - anchor, hi - anchor});
  }
  return rows;
}

/// Row prefix sums of a 0/1 map of h*w values: p[y * (w + 1) + x] = sum of map[y, 0 .. x-1].
inline std::vector<index_t> davis_row_prefix(const std::vector<std::uint8_t>& map, index_t h,
                                             index_t w) {
  std::vector<index_t> p(std::size_t(h * (w + 1)), 0);
  for (index_t y = 0; y < h; ++y) {
    index_t* row = p.data() + y * (w + 1);
    const std::uint8_t* src = map.data() + y * w;
    for (index_t x = 0; x < w; ++x) row[x + 1] = row[x] + src[x];
  }
  return p;
}

/// How many set pixels of `map` are also set in the dilation of another h*w map (given by its
/// row prefix sums) by `footprint`: np.sum(map * cv2.dilate(other, footprint)). Pixels outside
/// the image do not contribute to the dilation (cv2's default border for dilate).
inline index_t davis_count_matched(const std::vector<std::uint8_t>& map,
                                   const std::vector<index_t>& other_prefix,
                                   const std::vector<davis_footprint_row>& footprint, index_t h,
                                   index_t w) {
  index_t matched = 0;
  for (index_t y = 0; y < h; ++y)
    for (index_t x = 0; x < w; ++x) {
      if (map[std::size_t(y * w + x)] == 0) continue;
      for (const auto& row : footprint) {
        const index_t sy = y + row.dy;
        if (sy < 0 || sy >= h) continue;
        const index_t x0 = std::max<index_t>(x + row.lo, 0);
        const index_t x1 = std::min<index_t>(x + row.hi, w - 1);
        if (x0 > x1) continue;
        const index_t* p = other_prefix.data() + sy * (w + 1);
        if (p[x1 + 1] - p[x0] > 0) {
          ++matched;
          break;
        }
      }
    }
  return matched;
}

inline void davis_check_mask(const std::uint8_t* mask, index_t h, index_t w, const char* op,
                             const char* name) {
  FLSL_CHECK(mask != nullptr, op, ": ", name, " is null");
  FLSL_CHECK(h > 0 && w > 0, op, ": mask size must be positive, got ", h, "x", w);
}

}  // namespace detail

/// The boundary map of a binary mask of h*w pixels (row-major, nonzero = object), as davis'
/// _seg2bmap at the mask's own size: h*w values 0/1. A pixel is on the boundary when it differs
/// from its east, south or south-east neighbour; in the last row only the east neighbour counts,
/// in the last column only the south one, and the bottom-right pixel is never on it. The boundary
/// thus lies half a pixel towards the origin from the object's edge.
inline std::vector<std::uint8_t> davis_boundary_map(const std::uint8_t* mask, index_t h,
                                                    index_t w) {
  detail::davis_check_mask(mask, h, w, "davis_boundary_map", "mask");
  std::vector<std::uint8_t> b(std::size_t(h * w), 0);
  const auto at = [&](index_t y, index_t x) { return mask[y * w + x] != 0; };
  for (index_t y = 0; y < h; ++y)
    for (index_t x = 0; x < w; ++x) {
      const bool c = at(y, x);
      bool edge;
      if (y == h - 1 && x == w - 1) {
        edge = false;
      } else if (x == w - 1) {
        edge = c != at(y + 1, x);
      } else if (y == h - 1) {
        edge = c != at(y, x + 1);
      } else {
        edge = c != at(y, x + 1) || c != at(y + 1, x) || c != at(y + 1, x + 1);
      }
      b[std::size_t(y * w + x)] = edge ? 1 : 0;
    }
  return b;
}

/// J: region similarity (IoU) of two binary masks of h*w pixels (row-major, nonzero = object),
/// as davis' db_eval_iou: |prediction & truth| / |prediction | truth|, and 1 when both are empty.
inline double davis_region_similarity(const std::uint8_t* prediction, const std::uint8_t* truth,
                                      index_t h, index_t w) {
  detail::davis_check_mask(prediction, h, w, "davis_region_similarity", "prediction");
  detail::davis_check_mask(truth, h, w, "davis_region_similarity", "truth");
  index_t inter = 0, uni = 0;
  for (index_t i = 0; i < h * w; ++i) {
    const bool p = prediction[i] != 0, t = truth[i] != 0;
    inter += (p && t) ? 1 : 0;
    uni += (p || t) ? 1 : 0;
  }
  return uni == 0 ? 1.0 : double(inter) / double(uni);
}

/// F: boundary F-measure of two binary masks of h*w pixels (row-major, nonzero = object), as
/// davis' f_measure(prediction, truth) without void pixels. The boundaries (davis_boundary_map)
/// match within a disk of radius bound_th pixels when bound_th >= 1, else of
/// ceil(bound_th * sqrt(h^2 + w^2)) pixels (0.008 of the diagonal: 8 px at 480x854). Precision is
/// the fraction of predicted boundary pixels near a true one, recall the converse, F their
/// harmonic mean. Edge cases as the reference: no predicted boundary (but a true one) gives
/// precision 1, recall 0; no true boundary (but a predicted one) precision 0, recall 1; neither
/// gives 1. A mask that is empty or full has no boundary.
inline double davis_boundary_f_measure(const std::uint8_t* prediction, const std::uint8_t* truth,
                                       index_t h, index_t w, double bound_th = 0.008) {
  detail::davis_check_mask(prediction, h, w, "davis_boundary_f_measure", "prediction");
  detail::davis_check_mask(truth, h, w, "davis_boundary_f_measure", "truth");
  FLSL_CHECK(std::isfinite(bound_th) && bound_th >= 0,
             "davis_boundary_f_measure: bound_th must be finite and >= 0, got ", bound_th);
  const double diagonal = std::sqrt(double(h) * double(h) + double(w) * double(w));
  const double bound_pix = bound_th >= 1 ? bound_th : std::ceil(bound_th * diagonal);

  const auto fg = davis_boundary_map(prediction, h, w);
  const auto gt = davis_boundary_map(truth, h, w);
  index_t n_fg = 0, n_gt = 0;
  for (auto v : fg) n_fg += v;
  for (auto v : gt) n_gt += v;

  double precision, recall;
  if (n_fg == 0 && n_gt > 0) {
    precision = 1;
    recall = 0;
  } else if (n_fg > 0 && n_gt == 0) {
    precision = 0;
    recall = 1;
  } else if (n_fg == 0 && n_gt == 0) {
    precision = 1;
    recall = 1;
  } else {
    const auto footprint = detail::davis_disk_footprint(bound_pix, h, w);
    const index_t fg_match =
        detail::davis_count_matched(fg, detail::davis_row_prefix(gt, h, w), footprint, h, w);
    const index_t gt_match =
        detail::davis_count_matched(gt, detail::davis_row_prefix(fg, h, w), footprint, h, w);
    precision = double(fg_match) / double(n_fg);
    recall = double(gt_match) / double(n_gt);
  }
  if (precision + recall == 0) return 0.0;
  return 2 * precision * recall / (precision + recall);
}

}  // namespace flsl::evaluation
