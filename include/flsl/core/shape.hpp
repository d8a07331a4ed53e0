// Shape and strides: small fixed-capacity vectors of extents, with broadcasting rules.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <vector>

#include "config.hpp"
#include "error.hpp"

namespace flsl {

using index_t = std::int64_t;

/// Extents (or strides) of a tensor of rank 0..max_rank. A plain value type, copyable to devices.
class Shape {
 public:
  constexpr Shape() = default;
  Shape(std::initializer_list<index_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(std::span<const index_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<index_t>& dims) { assign(dims.begin(), dims.end()); }
  template <class It>
  Shape(It first, It last) {
    assign(first, last);
  }
  /// A shape of `rank` copies of `value`.
  static Shape filled(int rank, index_t value) {
    Shape s;
    FLSL_CHECK(rank >= 0 && rank <= max_rank, "Shape: rank ", rank, " exceeds ", max_rank);
    s.rank_ = rank;
    for (int i = 0; i < rank; ++i) s.d_[i] = value;
    return s;
  }

  FLSL_HD constexpr int size() const { return rank_; }
  FLSL_HD constexpr int rank() const { return rank_; }
  FLSL_HD constexpr index_t operator[](int i) const { return d_[i]; }
  FLSL_HD constexpr index_t& operator[](int i) { return d_[i]; }
  /// Element from the end for negative i (Python style).
  index_t at(int i) const { return d_[normalize_axis(i)]; }
  int normalize_axis(int axis) const {
    const int a = axis < 0 ? axis + rank_ : axis;
    FLSL_CHECK(a >= 0 && a < rank_, "axis ", axis, " out of range for rank ", rank_);
    return a;
  }
  const index_t* begin() const { return d_.data(); }
  const index_t* end() const { return d_.data() + rank_; }
  index_t* begin() { return d_.data(); }
  index_t* end() { return d_.data() + rank_; }
  FLSL_HD index_t numel() const {
    index_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= d_[i];
    return n;
  }
  void push_back(index_t v) {
    FLSL_CHECK(rank_ < max_rank, "Shape: rank exceeds ", max_rank);
    d_[rank_++] = v;
  }
  void erase(int axis) {
    for (int i = axis; i + 1 < rank_; ++i) d_[i] = d_[i + 1];
    --rank_;
  }
  void insert(int axis, index_t v) {
    FLSL_CHECK(rank_ < max_rank, "Shape: rank exceeds ", max_rank);
    for (int i = rank_; i > axis; --i) d_[i] = d_[i - 1];
    d_[axis] = v;
    ++rank_;
  }
  std::vector<index_t> vec() const { return {begin(), end()}; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    os << '[';
    for (int i = 0; i < s.rank_; ++i) os << (i ? ", " : "") << s.d_[i];
    return os << ']';
  }

 private:
  template <class It>
  void assign(It first, It last) {
    rank_ = 0;
    for (; first != last; ++first) {
      FLSL_CHECK(rank_ < max_rank, "Shape: rank exceeds ", max_rank);
      d_[rank_++] = index_t(*first);
    }
  }
  std::array<index_t, max_rank> d_{};
  int rank_ = 0;
};

/// Row-major (C order) strides of a shape, in elements.
inline Shape contiguous_strides(const Shape& shape) {
  Shape s = Shape::filled(shape.rank(), 1);
  index_t acc = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/// NumPy broadcasting of two shapes; throws naming `op` and both shapes when they do not broadcast.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op = "broadcast") {
  const int r = std::max(a.rank(), b.rank());
  Shape out = Shape::filled(r, 1);
  for (int i = 0; i < r; ++i) {
    const int ia = a.rank() - r + i, ib = b.rank() - r + i;
    const index_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    FLSL_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", a, " and ", b,
               " do not broadcast (dimension ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

/// Strides that read a tensor of (shape, strides) as if it had shape `target` (broadcast): missing
/// leading dims and size-1 dims get stride 0. The caller has checked that the shapes broadcast.
inline Shape broadcast_strides(const Shape& shape, const Shape& strides, const Shape& target) {
  Shape out = Shape::filled(target.rank(), 0);
  const int off = target.rank() - shape.rank();
  for (int i = 0; i < shape.rank(); ++i)
    out[off + i] = (shape[i] == 1 && target[off + i] != 1) ? 0 : strides[i];
  return out;
}

}  // namespace flsl
