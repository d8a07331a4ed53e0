// Matrix products on the CPU: f32 through the register-blocked FMA kernel of backend/cpu/sgemm.hpp
// where the target has AVX2 + FMA or AVX-512F, otherwise (and for f64) Eigen's GEMM kernels on
// mapped tensor memory; parallel over the batch and over row blocks of large products with oneTBB.
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <Eigen/Core>

#include "../../core/tensor.hpp"
#include "../../expr/assign.hpp"
#include "../matmul_precision.hpp"
#include "../matmul_shapes.hpp"
#include "sgemm.hpp"

namespace flsl {

namespace detail {

template <class T, int Order>
using mat_map = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Order>,
                           Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T, int Order>
using const_mat_map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Order>,
                                 Eigen::Unaligned, Eigen::OuterStride<>>;

/// A GEMM operand: pointer, extents and layout.
template <class T>
struct gemm_operand {
  T* ptr;
  index_t rows, cols;
  matrix_layout lay;
};

/// C[m0:m1) = alpha * A[m0:m1) B + beta * C[m0:m1), C row-major.
template <class T, int OA, int OB>
void gemm_rows(const gemm_operand<T>& c, const gemm_operand<const T>& a,
               const gemm_operand<const T>& b, T alpha, T beta, index_t m0, index_t m1) {
  const index_t m = m1 - m0;
  const T* ap = OA == Eigen::RowMajor ? a.ptr + m0 * a.lay.ld : a.ptr + m0;
  const_mat_map<T, OA> A(ap, m, a.cols, Eigen::OuterStride<>(a.lay.ld));
  const_mat_map<T, OB> B(b.ptr, b.rows, b.cols, Eigen::OuterStride<>(b.lay.ld));
  mat_map<T, Eigen::RowMajor> C(c.ptr + m0 * c.lay.ld, m, c.cols, Eigen::OuterStride<>(c.lay.ld));
  if (beta == T(0)) {
    C.noalias() = alpha * (A * B);
  } else {
    if (beta != T(1)) C *= beta;
    C.noalias() += alpha * (A * B);
  }
}

template <class T>
void gemm_dispatch(const gemm_operand<T>& c, const gemm_operand<const T>& a,
                   const gemm_operand<const T>& b, T alpha, T beta, index_t m0, index_t m1) {
  constexpr int R = Eigen::RowMajor, Cm = Eigen::ColMajor;
  if (a.lay.row_major) {
    if (b.lay.row_major)
      gemm_rows<T, R, R>(c, a, b, alpha, beta, m0, m1);
    else
      gemm_rows<T, R, Cm>(c, a, b, alpha, beta, m0, m1);
  } else {
    if (b.lay.row_major)
      gemm_rows<T, Cm, R>(c, a, b, alpha, beta, m0, m1);
    else
      gemm_rows<T, Cm, Cm>(c, a, b, alpha, beta, m0, m1);
  }
}

/// Products below this many multiply-adds run on one thread.
inline constexpr double gemm_parallel_flops = 1 << 21;

/// One product C = alpha A B + beta C on mappable operands, C row-major; splits rows over threads
/// when `split` and the product is large.
template <class T>
void gemm_2d(const gemm_operand<T>& c, const gemm_operand<const T>& a,
             const gemm_operand<const T>& b, T alpha, T beta, bool split) {
  const index_t M = c.rows;
  const double work = double(M) * double(c.cols) * double(a.cols);
  const int threads = tbb::this_task_arena::max_concurrency();
#ifdef FLSL_SGEMM_KERNEL
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm::worth_it(M, c.cols, a.cols)) {
      auto strides = [](const auto& x) {
        return x.lay.row_major ? std::pair{x.lay.ld, index_t(1)} : std::pair{index_t(1), x.lay.ld};
      };
      const auto [a_rs, a_cs] = strides(a);
      const auto [b_rs, b_cs] = strides(b);
      sgemm::gemm(M, c.cols, a.cols, alpha, a.ptr, a_rs, a_cs, b.ptr, b_rs, b_cs, beta, c.ptr,
                  c.lay.ld, split && threads > 1 && work >= gemm_parallel_flops);
      return;
    }
  }
#endif
  if (!split || threads <= 1 || work < gemm_parallel_flops || M < 32) {
    gemm_dispatch(c, a, b, alpha, beta, 0, M);
    return;
  }
  // Row blocks: a few per thread for balance, each a multiple of 16 rows (Eigen's micro-panel).
  index_t block = (M + 2 * threads - 1) / (2 * threads);
  block = std::max<index_t>(16, (block + 15) / 16 * 16);
  const index_t nblocks = (M + block - 1) / block;
  tbb::parallel_for(
      tbb::blocked_range<index_t>(0, nblocks, 1), [&](const tbb::blocked_range<index_t>& r) {
        for (index_t i = r.begin(); i < r.end(); ++i)
          gemm_dispatch(c, a, b, alpha, beta, i * block, std::min(M, (i + 1) * block));
      });
}

template <class T>
gemm_operand<const T> operand(const Tensor<T, cpu>& m) {
  const auto lay = layout_of(m.size(-2), m.size(-1), m.stride(-2), m.stride(-1));
  return {m.data(), m.size(-2), m.size(-1), lay};
}

/// A contiguous copy of x with every value rounded as precision p rounds a GEMM input.
inline Tensor<float, cpu> rounded_for_matmul(const Tensor<float, cpu>& x, matmul_precision p) {
  Tensor<float, cpu> r = x.clone();
  float* d = r.data();
  tbb::parallel_for(tbb::blocked_range<index_t>(0, r.numel(), index_t(1) << 14),
                    [&](const tbb::blocked_range<index_t>& rg) {
                      for (index_t i = rg.begin(); i < rg.end(); ++i)
                        d[i] = round_for_matmul(d[i], p);
                    });
  return r;
}

/// matmul_into with exact f32 / f64 arithmetic (the shapes are checked by the caller).
template <class T>
void matmul_exact(const Tensor<T, cpu>& c, const Tensor<T, cpu>& a, const Tensor<T, cpu>& b,
                  double alpha, double beta) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if (c.numel() == 0) return;
  const index_t K = a.size(-1);
  if (K == 0) {  // empty sum
    if (beta == 0.0)
      c.fill(T(0));
    else
      c.assign(c * T(beta));
    return;
  }
  // Operands the layouts cannot express are copied to contiguous memory.
  auto fix = [](const Tensor<T, cpu>& m) {
    return detail::layout_of(m.size(-2), m.size(-1), m.stride(-2), m.stride(-1)).mappable
               ? m
               : m.clone();
  };
  const Tensor<T, cpu> A = fix(a), B = fix(b);
  // The output must be row-major; otherwise compute c^T = b^T a^T, or go through a temporary.
  const auto cl = detail::layout_of(c.size(-2), c.size(-1), c.stride(-2), c.stride(-1));
  if (!cl.mappable || !cl.row_major) {
    if (cl.mappable) {
      matmul_exact(c.t(), B.t(), A.t(), alpha, beta);
    } else {
      auto tmp = beta == 0.0 ? Tensor<T, cpu>::empty(c.shape()) : c.clone();
      matmul_exact(tmp, A, B, alpha, beta);
      c.copy_from(tmp);
    }
    return;
  }
  const T al = T(alpha), be = T(beta);
  if (c.rank() == 2) {
    detail::gemm_2d<T>({c.data(), c.size(0), c.size(1), cl}, detail::operand(A), detail::operand(B),
                       al, be, true);
    return;
  }
  const index_t batch = c.size(0);
  // A 3-D A whose batch rows are contiguous times a shared 2-D B is one tall product.
  if (B.rank() == 2 || B.size(0) == 1) {
    const auto B2 = B.rank() == 2 ? B : B.select(0, 0);
    const bool a_tall = A.rank() == 3 && A.size(0) == batch && A.stride(2) == 1 &&
                        A.stride(0) == A.size(1) * A.stride(1);
    const bool c_tall = c.stride(0) == c.size(1) * c.stride(1);
    if (a_tall && c_tall) {
      const index_t M = batch * A.size(1);
      detail::gemm_2d<T>({c.data(), M, c.size(2), cl},
                         {A.data(), M, A.size(2), {true, A.stride(1), true}}, detail::operand(B2),
                         al, be, true);
      return;
    }
  }
  auto mat = [](const Tensor<T, cpu>& x, index_t i) {
    return x.rank() == 2 ? x : x.select(0, x.size(0) == 1 ? 0 : i);
  };
  const int threads = tbb::this_task_arena::max_concurrency();
  const bool over_batch = batch >= 2 * threads;
  auto one = [&](index_t i, bool split) {
    auto ci = c.select(0, i);
    detail::gemm_2d<T>({ci.data(), ci.size(0), ci.size(1), cl}, detail::operand(mat(A, i)),
                       detail::operand(mat(B, i)), al, be, split);
  };
  if (over_batch) {
    tbb::parallel_for(tbb::blocked_range<index_t>(0, batch, 1),
                      [&](const tbb::blocked_range<index_t>& r) {
                        for (index_t i = r.begin(); i < r.end(); ++i) one(i, false);
                      });
  } else {
    for (index_t i = 0; i < batch; ++i) one(i, true);
  }
}

}  // namespace detail

/// c = alpha * a @ b + beta * c for matrices ([M,K] @ [K,N]) or batches ([B,M,K] @ [B,K,N], a
/// batch of 1 or a 2-D operand broadcasts). Transposed operands are views (`x.t()`), read in place.
/// f32 runs backend/cpu/sgemm.hpp's kernel (Eigen on targets without AVX2 + FMA, and for
/// products thinner than one register tile), f64 Eigen; bf16 is converted to f32 and back. f32
/// products follow get_matmul_precision(): other than `exact`, a and b are first rounded as the
/// GPU's tensor cores round them (an emulation, for tests: it costs two extra passes).
template <class T>
void matmul_into(const Tensor<T, cpu>& c, const Tensor<T, cpu>& a, const Tensor<T, cpu>& b,
                 double alpha = 1.0, double beta = 0.0) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>,
                "flsl::matmul supports f32, f64 and bf16");
  detail::check_matmul_shapes<T>("matmul", c.shape(), a.shape(), b.shape());
  if constexpr (std::is_same_v<T, bf16>) {
    auto cf = c.template to<float>();
    detail::matmul_exact(cf, a.template to<float>(), b.template to<float>(), alpha, beta);
    c.assign(cast<bf16>(cf));
  } else if constexpr (std::is_same_v<T, float>) {
    const matmul_precision p = get_matmul_precision();
    if (p == matmul_precision::exact || c.numel() == 0 || a.size(-1) == 0)
      detail::matmul_exact(c, a, b, alpha, beta);
    else
      detail::matmul_exact(c, detail::rounded_for_matmul(a, p), detail::rounded_for_matmul(b, p),
                           alpha, beta);
  } else {
    detail::matmul_exact(c, a, b, alpha, beta);
  }
}

/// a @ b into a new tensor (see matmul_into for the shapes).
template <class T>
Tensor<T, cpu> matmul(const Tensor<T, cpu>& a, const Tensor<T, cpu>& b) {
  FLSL_CHECK(a.rank() >= 2 && b.rank() >= 2, "matmul: operands need rank >= 2, got ", a.shape(),
             " and ", b.shape());
  Shape s;
  if (a.rank() == 3 || b.rank() == 3)
    s.push_back(std::max(a.rank() == 3 ? a.size(0) : 1, b.rank() == 3 ? b.size(0) : 1));
  s.push_back(a.size(-2));
  s.push_back(b.size(-1));
  auto c = Tensor<T, cpu>::empty(s);
  matmul_into(c, a, b);
  return c;
}

}  // namespace flsl
