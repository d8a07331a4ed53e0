// Applies an EXIF orientation (1..8) to a decoded image: the flips and quarter turns that make the
// stored pixels upright, as PIL's ImageOps.exif_transpose does.
#pragma once

#include <utility>

#include "image.hpp"

namespace flsl::data {

/// True when orientation o swaps width and height (5..8: transpose, rotate 90, transverse, 270).
constexpr bool orientation_swaps_axes(int o) { return o >= 5 && o <= 8; }

/// Where output pixel (x, y) of the upright image reads the stored image of size w x h.
///   1 as stored        2 mirror left-right    3 rotate 180          4 mirror top-bottom
///   5 transpose        6 rotate 90 clockwise  7 transverse          8 rotate 90 counter-clockwise
constexpr std::pair<int, int> oriented_source(int o, int x, int y, int w, int h) {
  switch (o) {
    case 2:
      return {w - 1 - x, y};
    case 3:
      return {w - 1 - x, h - 1 - y};
    case 4:
      return {x, h - 1 - y};
    case 5:
      return {y, x};
    case 6:
      return {y, h - 1 - x};
    case 7:
      return {w - 1 - y, h - 1 - x};
    case 8:
      return {w - 1 - y, x};
    default:
      return {x, y};
  }
}

/// Makes `img` upright for EXIF orientation `o` (values outside 2..8 leave it as it is). `scratch`
/// receives the old pixels (reuse it to avoid allocations).
inline void apply_orientation(ImageU8& img, int o, ImageU8& scratch) {
  if (o < 2 || o > 8 || img.empty()) return;
  const int w = img.width, h = img.height;
  const bool swap = orientation_swaps_axes(o);
  scratch.resize(swap ? h : w, swap ? w : h);
  for (int y = 0; y < scratch.height; ++y) {
    std::uint8_t* d = scratch.row(y);
    for (int x = 0; x < scratch.width; ++x) {
      const auto [sx, sy] = oriented_source(o, x, y, w, h);
      const std::uint8_t* s = img.row(sy) + 3 * sx;
      d[3 * x] = s[0];
      d[3 * x + 1] = s[1];
      d[3 * x + 2] = s[2];
    }
  }
  std::swap(img, scratch);
}

}  // namespace flsl::data
