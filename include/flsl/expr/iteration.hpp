// The iteration space of an assignment or reduction: extents plus one stride set per operand,
// with axes reordered and merged so the innermost loop is as long and as contiguous as possible.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "../core/shape.hpp"

namespace flsl::detail {

/// Extents shared by several operands, each with its own strides (pointers into the operands).
struct iteration_space {
  Shape extent;
  std::vector<Shape*> strides;  // strides[0] is the output's

  /// Reorders axes [first, last) by decreasing stride of operand 0 (stable), so that the output is
  /// written in memory order.
  void order_by_output(int first, int last) {
    std::vector<int> perm(std::size_t(last - first));
    std::iota(perm.begin(), perm.end(), first);
    const Shape& s0 = *strides[0];
    std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) {
      const index_t sa = s0[a] == 0 ? 0 : std::abs(s0[a]), sb = s0[b] == 0 ? 0 : std::abs(s0[b]);
      return sa > sb;
    });
    apply_permutation(first, perm);
  }
  /// Merges adjacent axes in [first, last) that every operand walks contiguously, and drops
  /// extent-1 axes. Returns the new `last`.
  int coalesce(int first, int last) {
    // drop extent-1 axes
    int w = first;
    for (int r = first; r < last; ++r) {
      if (extent[r] == 1) continue;
      move_axis(r, w++);
    }
    const int removed = last - w;
    erase_range(w, last);
    last -= removed;
    if (last - first <= 1) return last;
    int out = first;
    for (int r = first + 1; r < last; ++r) {
      bool merge = true;
      for (Shape* s : strides) merge = merge && (*s)[out] == (*s)[r] * extent[r];
      if (merge) {
        for (Shape* s : strides) (*s)[out] = (*s)[r];
        extent[out] *= extent[r];
      } else {
        ++out;
        move_axis(r, out);
      }
    }
    const int new_last = out + 1;
    erase_range(new_last, last);
    return new_last;
  }

 private:
  void move_axis(int from, int to) {
    if (from == to) return;
    extent[to] = extent[from];
    for (Shape* s : strides) (*s)[to] = (*s)[from];
  }
  void erase_range(int first, int last) {
    for (int i = last - 1; i >= first; --i) {
      extent.erase(i);
      for (Shape* s : strides) s->erase(i);
    }
  }
  void apply_permutation(int first, const std::vector<int>& perm) {
    const Shape e = extent;
    std::vector<Shape> old;
    for (Shape* s : strides) old.push_back(*s);
    for (std::size_t i = 0; i < perm.size(); ++i) {
      extent[first + int(i)] = e[perm[i]];
      for (std::size_t k = 0; k < strides.size(); ++k)
        (*strides[k])[first + int(i)] = old[k][perm[i]];
    }
  }
};

/// Odometer over the leading `n` axes of `extent`, starting at linear row `row`.
struct row_counter {
  std::array<index_t, max_rank> idx{};
  const Shape* extent;
  int n;
  row_counter(const Shape& e, int axes, index_t row) : extent(&e), n(axes) {
    for (int d = n - 1; d >= 0; --d) {
      idx[std::size_t(d)] = row % e[d];
      row /= e[d];
    }
  }
  void next() {
    for (int d = n - 1; d >= 0; --d) {
      if (++idx[std::size_t(d)] < (*extent)[d]) return;
      idx[std::size_t(d)] = 0;
    }
  }
};

}  // namespace flsl::detail
