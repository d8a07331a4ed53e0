// Query-token sampling of FLSL_SPEC.md §2: one token per w x w window of the largest square block
// of whole windows, the block at a random corner of the G x G grid when it does not fill it.
#pragma once

#include <cstdint>
#include <span>

#include "../core/error.hpp"
#include "../core/random.hpp"

namespace flsl::data {

/// Number of query tokens on a grid x grid token grid with window w: (grid div w)^2.
constexpr int query_token_count(int grid, int window) {
  return window > 0 ? (grid / window) * (grid / window) : 0;
}

/// Writes the row-major token indices (y * grid + x) of the queries into `out` (size
/// query_token_count), windows in row-major order. Draws from `g`: when the block of
/// (grid div w) * w tokens is smaller than the grid, one integer picks the corner (0 top-left,
/// 1 top-right, 2 bottom-left, 3 bottom-right); with random_sampling, two integers per window
/// (row, then column inside it); otherwise the window's top-left token.
inline void sample_query_tokens(int grid, int window, bool random_sampling, Generator& g,
                                std::span<std::int64_t> out) {
  FLSL_CHECK(grid > 0 && window > 0 && window <= grid, "query tokens: window ", window,
             " does not fit a ", grid, "x", grid, " token grid");
  const int n = grid / window;
  FLSL_CHECK(out.size() == std::size_t(n) * std::size_t(n), "query tokens: output holds ",
             out.size(), " indices, ", n * n, " needed for grid ", grid, " window ", window);
  const int block = n * window;
  int oy = 0, ox = 0;
  if (block < grid) {
    const std::uint32_t corner = g.uniform_int(4);
    oy = (corner & 2) ? grid - block : 0;
    ox = (corner & 1) ? grid - block : 0;
  }
  std::size_t i = 0;
  for (int wy = 0; wy < n; ++wy) {
    for (int wx = 0; wx < n; ++wx) {
      int y = oy + wy * window, x = ox + wx * window;
      if (random_sampling) {
        y += int(g.uniform_int(std::uint32_t(window)));
        x += int(g.uniform_int(std::uint32_t(window)));
      }
      out[i++] = std::int64_t(y) * grid + x;
    }
  }
}

}  // namespace flsl::data
