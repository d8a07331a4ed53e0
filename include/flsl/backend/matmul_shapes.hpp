// Shapes and memory layouts of matrix products, shared by the CPU (Eigen) and CUDA (cuBLASLt)
// GEMMs: which strided views a BLAS can read in place, and the checks of matmul's operands.
#pragma once

#include <algorithm>

#include "../core/error.hpp"
#include "../core/shape.hpp"

namespace flsl::detail {

/// How a 2-D strided view maps onto a BLAS matrix: row- or column-major with a leading dimension.
struct matrix_layout {
  bool row_major = true;
  index_t ld = 0;
  bool mappable = false;
};
inline matrix_layout layout_of(index_t rows, index_t cols, index_t rs, index_t cs) {
  if (cols == 1) cs = 1;
  if (rows == 1) rs = std::max<index_t>(cols, 1);
  if (cs == 1 && rs >= cols) return {true, rs, true};
  if (rs == 1 && cs >= rows) return {false, cs, true};
  return {};
}

template <class T>
void check_matmul_shapes(const char* op, const Shape& c, const Shape& a, const Shape& b) {
  FLSL_CHECK(a.rank() >= 2 && b.rank() >= 2, op, ": operands need rank >= 2, got ", a, " and ", b);
  FLSL_CHECK(a.rank() <= 3 && b.rank() <= 3, op, ": operands of rank > 3 must be flattened to a ",
             "batch first, got ", a, " and ", b);
  FLSL_CHECK(a.at(-1) == b.at(-2), op, ": inner dimensions differ: ", a, " @ ", b);
  const index_t batch_a = a.rank() == 3 ? a[0] : 1, batch_b = b.rank() == 3 ? b[0] : 1;
  FLSL_CHECK(batch_a == batch_b || batch_a == 1 || batch_b == 1, op, ": batch sizes differ: ", a,
             " @ ", b);
  Shape want;
  if (a.rank() == 3 || b.rank() == 3) want.push_back(std::max(batch_a, batch_b));
  want.push_back(a.at(-2));
  want.push_back(b.at(-1));
  FLSL_CHECK(c == want, op, ": output shape ", c, " but ", a, " @ ", b, " is ", want);
}

/// The shape of a @ b (operands checked by check_matmul_shapes against it).
inline Shape matmul_result_shape(const Shape& a, const Shape& b) {
  FLSL_CHECK(a.rank() >= 2 && b.rank() >= 2, "matmul: operands need rank >= 2, got ", a, " and ",
             b);
  Shape s;
  if (a.rank() == 3 || b.rank() == 3)
    s.push_back(std::max(a.rank() == 3 ? a[0] : 1, b.rank() == 3 ? b[0] : 1));
  s.push_back(a.at(-2));
  s.push_back(b.at(-1));
  return s;
}

}  // namespace flsl::detail
