// Multi-head scaled-dot-product self-attention as one fused op, flash-style on the CPU: a head's
// [N, N] probabilities live only in a per-thread scratch, in the forward and in the backward.
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <algorithm>
#include <array>
#include <cmath>

#include "../../expr/vector_math.hpp"
#include "../elementwise.hpp"
#include "../gradcheck.hpp"

namespace flsl {

namespace detail {

// ---- per-head CPU kernels (a CUDA version sits beside these with the same arguments) ---------

/// A row-major matrix in memory: element (i, j) at ptr[i * ld + j]. A head's q block inside a
/// [B, N, 3D] qkv tensor is {qkv + b * N * 3D + h * hd, N, hd, 3D}. A null ptr means "not wanted".
template <class T>
struct matrix_ref {
  T* ptr = nullptr;
  index_t rows = 0, cols = 0, ld = 0;
  T* row(index_t i) const { return ptr + i * ld; }
  explicit operator bool() const { return ptr != nullptr; }
};

/// C = alpha op(A) op(B) + beta C on the calling thread, op(X) = X or X^T (a transposed operand is
/// read in place as a column-major matrix). The attention kernels run inside their own parallel
/// loop over heads, so a product is never split over threads here. beta = 0 never reads C.
template <class T>
void head_gemm(matrix_ref<T> c, matrix_ref<T> a, bool trans_a, matrix_ref<T> b, bool trans_b,
               T alpha, T beta) {
  const auto operand = [](matrix_ref<T> x, bool t) {
    return gemm_operand<const T>{x.ptr, t ? x.cols : x.rows, t ? x.rows : x.cols,
                                 matrix_layout{!t, x.ld, true}};
  };
  gemm_dispatch<T>({c.ptr, c.rows, c.cols, matrix_layout{true, c.ld, true}}, operand(a, trans_a),
                   operand(b, trans_b), alpha, beta, 0, c.rows);
}

/// Row primitives of the attention and loss kernels, written so that g++ -O3 vectorises them
/// without -ffast-math: reductions run in a fixed set of lanes (a plain `s += x[j]` loop may not be
/// reordered, and a fixed order keeps results independent of the thread count), and exp is plain
/// arithmetic instead of a libm call per element.
namespace row_math {

/// Independent partial sums: 128 bytes of them (two AVX-512 or four AVX2 registers).
template <class C>
inline constexpr int lanes = int(128 / sizeof(C));

/// sum_j f(j) for j in [0, n), accumulated in C lanes (f is inlined into the vectorised loop).
template <class C, class F>
FLSL_INLINE C sum(index_t n, F&& f) {
  constexpr int L = lanes<C>;
  C acc[L] = {};
  index_t j = 0;
  for (; j + L <= n; j += L)
    for (int k = 0; k < L; ++k) acc[k] += f(j + k);
  C tail = C(0);
  for (; j < n; ++j) tail += f(j);
  for (int w = L / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0] + tail;
}

/// max_j x_j (n > 0).
template <class T>
FLSL_INLINE T max(const T* x, index_t n) {
  constexpr int L = lanes<T>;
  T acc[L];
  for (int k = 0; k < L; ++k) acc[k] = x[0];
  index_t j = 0;
  for (; j + L <= n; j += L)
    for (int k = 0; k < L; ++k) acc[k] = acc[k] < x[j + k] ? x[j + k] : acc[k];
  for (; j < n; ++j) acc[0] = acc[0] < x[j] ? x[j] : acc[0];
  for (int k = 1; k < L; ++k) acc[0] = acc[0] < acc[k] ? acc[k] : acc[0];
  return acc[0];
}

/// e^x in f32 arithmetic that vectorises (expr/vector_math.hpp); the arguments here are x - max
/// <= 0.
FLSL_INLINE float exp(float x) { return detail::exp_f32(x); }
/// f64 is the checking precision: libm's exp.
FLSL_INLINE double exp(double x) { return std::exp(x); }

/// x_j <- e^(x_j - shift) in place; returns sum_j of the new x_j.
template <class T>
FLSL_INLINE T exp_shift(T* __restrict x, index_t n, T shift) {
  return sum<T>(n, [&](index_t j) {
    const T e = row_math::exp(x[j] - shift);
    x[j] = e;
    return e;
  });
}

/// sum_j a_j b_j.
template <class T>
FLSL_INLINE T dot(const T* __restrict a, const T* __restrict b, index_t n) {
  return sum<T>(n, [&](index_t j) { return a[j] * b[j]; });
}

}  // namespace row_math

/// x <- softmax(x) over n elements in place; returns log(sum_j exp(x_j)) of the input (the
/// statistic the backward uses to rebuild the probabilities).
template <class T>
T attention_softmax_row(T* x, index_t n) {
  const T m = row_math::max(x, n);
  const T l = row_math::exp_shift(x, n, m);
  const T inv = T(1) / l;
  for (index_t j = 0; j < n; ++j) x[j] *= inv;
  return m + std::log(l);
}

/// One head's forward. q [Nq, hd], k and v [Nk, hd], o [Nq, hd], lse [Nq], s a scratch [Nq, Nk]:
///   S = scale q k^T,  P = softmax_rows(S) (in s),  o = P v,  lse_i = log sum_j exp(S_ij).
/// 4 Nq Nk hd flops in two GEMMs; only o and lse leave the function.
template <class T>
void attention_forward_head(matrix_ref<T> q, matrix_ref<T> k, matrix_ref<T> v, T scale,
                            matrix_ref<T> o, T* lse, matrix_ref<T> s) {
  head_gemm(s, q, false, k, true, scale, T(0));
  for (index_t i = 0; i < s.rows; ++i) lse[i] = attention_softmax_row(s.row(i), s.cols);
  head_gemm(o, s, false, v, false, T(1), T(0));
}

/// Where one head's backward writes: a null matrix is skipped; beta 0 overwrites, 1 adds. The
/// kernel writes dq, then dk, then dv, so dv may alias dk with beta_v = 1 (keys = values).
template <class T>
struct attention_head_grads {
  matrix_ref<T> dq, dk, dv;
  T beta_q = 0, beta_k = 0, beta_v = 0;
};

/// One head's backward from dO [Nq, hd], the forward's o and lse; p and dp are scratch [Nq, Nk]:
///   P   = exp(scale q k^T - lse)             (recomputed, never stored across heads)
///   dP  = dO v^T,  dS = P * (dP - rowsum(dO * o))   (rowsum(P * dP) = <dO_i, o_i>)
///   dq  = scale dS k,  dk = scale dS^T q,  dv = P^T dO.
/// 10 Nq Nk hd flops in five GEMMs (one recomputes S).
template <class T>
void attention_backward_head(matrix_ref<T> q, matrix_ref<T> k, matrix_ref<T> v, matrix_ref<T> o,
                             matrix_ref<T> dout, const T* lse, T scale,
                             const attention_head_grads<T>& g, matrix_ref<T> p, matrix_ref<T> dp) {
  head_gemm(p, q, false, k, true, scale, T(0));
  for (index_t i = 0; i < p.rows; ++i) row_math::exp_shift(p.row(i), p.cols, lse[i]);
  if (g.dq || g.dk) {
    head_gemm(dp, dout, false, v, true, T(1), T(0));
    for (index_t i = 0; i < dp.rows; ++i) {
      const T delta = row_math::dot(dout.row(i), o.row(i), o.cols);
      const T* __restrict pr = p.row(i);
      T* __restrict ds = dp.row(i);
      for (index_t j = 0; j < dp.cols; ++j) ds[j] = pr[j] * (ds[j] - delta);
    }
    if (g.dq) head_gemm(g.dq, dp, false, k, false, scale, g.beta_q);
    if (g.dk) head_gemm(g.dk, dp, true, q, false, scale, g.beta_k);
  }
  if (g.dv) head_gemm(g.dv, p, true, dout, false, T(1), g.beta_v);
}

// ---- tensor plumbing shared by the attention-like ops -------------------------------------

/// t itself when each matrix of the batch [.., R, C] is row-major with unit column stride (what
/// the kernels address in place), else a contiguous copy.
template <class T>
Tensor<T, cpu> unit_stride_rows(const Tensor<T, cpu>& t) {
  const bool ok = t.stride(-1) == 1 && (t.size(-2) <= 1 || t.stride(-2) >= t.size(-1));
  return ok ? t : t.contiguous();
}
/// Columns [col, col + width) of matrix b of a [B, R, C] tensor from unit_stride_rows.
template <class T>
matrix_ref<T> batch_block(const Tensor<T, cpu>& t, index_t b, index_t col, index_t width) {
  const index_t ld = t.size(1) > 1 ? t.stride(1) : t.size(2);
  return {t.data() + b * t.stride(0) + col, t.size(1), width, ld};
}

/// Runs body(i, scratch) for i in [0, count) in parallel (oneTBB); `scratch` is a per-thread
/// tensor of `scratch_shape`, allocated once per thread and call: the only memory a head uses.
template <class T, class Body>
void parallel_heads(index_t count, const Shape& scratch_shape, Body&& body) {
  tbb::enumerable_thread_specific<Tensor<T, cpu>> scratch(
      [&] { return Tensor<T, cpu>::empty(scratch_shape); });
  tbb::parallel_for(tbb::blocked_range<index_t>(0, count, 1),
                    [&](const tbb::blocked_range<index_t>& r) {
                      Tensor<T, cpu>& s = scratch.local();
                      for (index_t i = r.begin(); i < r.end(); ++i) body(i, s);
                    });
}

/// Installs a freshly computed gradient (no copy) or adds it to the one already accumulated.
template <class T, class D>
void add_fresh_grad(autograd::node<T, D>& n, const Tensor<T, D>& fresh) {
  if (!n.grad.defined())
    n.grad = fresh;
  else
    n.grad.assign(n.grad + fresh);
}

/// The q, k, v blocks of head h of batch b inside qkv [B, N, 3D] (timm's reshape(B, N, 3, H, hd)).
template <class T>
std::array<matrix_ref<T>, 3> qkv_blocks(const Tensor<T, cpu>& qkv, index_t b, index_t h,
                                        index_t hd) {
  const index_t d = qkv.size(2) / 3;
  return {batch_block(qkv, b, h * hd, hd), batch_block(qkv, b, d + h * hd, hd),
          batch_block(qkv, b, 2 * d + h * hd, hd)};
}

/// out [B, N, D] (head h in channels [h hd, (h+1) hd)) and lse [B, H, N] from qkv [B, N, 3D].
template <class T>
void attention_forward(const Tensor<T, cpu>& qkv, index_t heads, T scale, const Tensor<T, cpu>& out,
                       const Tensor<T, cpu>& lse) {
  const index_t n = qkv.size(1), hd = out.size(2) / heads;
  parallel_heads<T>(qkv.size(0) * heads, {n, n}, [&](index_t bh, const Tensor<T, cpu>& s) {
    const index_t b = bh / heads, h = bh % heads;
    const auto [q, k, v] = qkv_blocks(qkv, b, h, hd);
    attention_forward_head(q, k, v, scale, batch_block(out, b, h * hd, hd), lse.data() + bh * n,
                           matrix_ref<T>{s.data(), n, n, n});
  });
}

/// dqkv [B, N, 3D] (every element written once) from dout [B, N, D] and the forward's out, lse.
template <class T>
void attention_backward(const Tensor<T, cpu>& qkv, const Tensor<T, cpu>& out,
                        const Tensor<T, cpu>& dout, const Tensor<T, cpu>& lse, index_t heads,
                        T scale, const Tensor<T, cpu>& dqkv) {
  const index_t n = qkv.size(1), hd = out.size(2) / heads;
  parallel_heads<T>(qkv.size(0) * heads, {2, n, n}, [&](index_t bh, const Tensor<T, cpu>& s) {
    const index_t b = bh / heads, h = bh % heads;
    const auto [q, k, v] = qkv_blocks(qkv, b, h, hd);
    const auto [dq, dk, dv] = qkv_blocks(dqkv, b, h, hd);
    attention_backward_head(q, k, v, batch_block(out, b, h * hd, hd),
                            batch_block(dout, b, h * hd, hd), lse.data() + bh * n, scale,
                            attention_head_grads<T>{dq, dk, dv}, matrix_ref<T>{s.data(), n, n, n},
                            matrix_ref<T>{s.data() + n * n, n, n, n});
  });
}

template <class T, class D>
constexpr void check_attention_types() {
  static_assert(std::is_same_v<D, cpu>,
                "flsl attention ops: only the CPU kernels exist so far (a CUDA version mirrors "
                "attention_forward_head / attention_backward_head)");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "flsl attention ops: f32 or f64 (convert bf16 first)");
}

}  // namespace detail

// The CUDA kernels of multi_head_attention's cuda path, defined in
// flsl/backend/cuda/kernels/attention.cuh (included by <flsl/backend/cuda.cuh>, nvcc only);
// declared here so that this header stays free of CUDA headers.
namespace cuda_ops {
template <class T>
void attention_forward(const Tensor<T, cuda>& qkv, int heads, const Tensor<T, cuda>& out,
                       const Tensor<float, cuda>& lse);
template <class T>
void attention_backward(const Tensor<T, cuda>& qkv, const Tensor<T, cuda>& out,
                        const Tensor<T, cuda>& grad_out, const Tensor<float, cuda>& lse, int heads,
                        const Tensor<T, cuda>& dqkv);
}  // namespace cuda_ops

namespace detail {

/// The cuda path of multi_head_attention (shapes already checked): the flash-style kernels of
/// cuda_ops on a contiguous qkv, saving the same statistic as the CPU (lse [B, H, N], float);
/// head_dim 16, 32 or 64 (the kernels refuse others, naming the head_dim). f32 only for now.
template <class T>
Var<T, cuda> multi_head_attention_cuda(const Var<T, cuda>& qkv, int heads) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "flsl::multi_head_attention on cuda: f32 or bf16 (fp32 arithmetic either way)");
  using Dev = cuda;
  const index_t b = qkv.size(0), n = qkv.size(1), d = qkv.size(2) / 3;
  const Tensor<T, Dev> x = qkv.value().contiguous();
  auto out = Tensor<T, Dev>::empty({b, n, d});                   // [B, N, D]
  auto lse = Tensor<float, Dev>::empty({b, index_t(heads), n});  // [B, H, N]
  cuda_ops::attention_forward(x, heads, out, lse);
  auto backward = [x, lse, heads](autograd::node<T, Dev>& node) {
    auto& in = *node.inputs[0];
    if (!in.requires_grad) return;
    auto dqkv = Tensor<T, Dev>::empty(x.shape());  // [B, N, 3D], every element written
    cuda_ops::attention_backward(x, node.value, node.grad.contiguous(), lse, heads, dqkv);
    add_fresh_grad(in, dqkv);
  };
  return Var<T, Dev>::make_result(out, "multi_head_attention", backward, qkv);
}

/// bf16 attention on the CPU with the cuda kernels' semantics: bf16 qkv and output, fp32
/// arithmetic. The forward converts qkv to f32, runs the f32 kernel and rounds the output once;
/// the backward converts qkv, the (rounded) output and its gradient to f32 and rounds dqkv once.
/// Saves the bf16 qkv (half the memory of an f32 copy) and the f32 row statistics.
inline Var<bf16, cpu> multi_head_attention_bf16_cpu(const Var<bf16, cpu>& qkv, int heads) {
  const index_t b = qkv.size(0), n = qkv.size(1), d = qkv.size(2) / 3;
  const float scale = float(1.0 / std::sqrt(double(d / heads)));
  const Tensor<bf16> x = qkv.value();
  auto out = Tensor<float>::empty({b, n, d});      // [B, N, D]
  auto lse = Tensor<float>::empty({b, heads, n});  // [B, H, N]
  attention_forward(x.to<float>(), heads, scale, out, lse);
  auto backward = [x, lse, heads, scale](autograd::node<bf16, cpu>& node) {
    auto& in = *node.inputs[0];
    if (!in.requires_grad) return;
    auto dqkv = Tensor<float>::empty(x.shape());  // [B, N, 3D]
    attention_backward(x.to<float>(), node.value.to<float>(), node.grad.to<float>(), lse,
                       index_t(heads), scale, dqkv);
    add_fresh_grad(in, dqkv.to<bf16>());
  };
  return Var<bf16, cpu>::make_result(out.to<bf16>(), "multi_head_attention", backward, qkv);
}

}  // namespace detail

/// Multi-head self-attention from one fused qkv projection, as timm computes it:
///   qkv [B, N, 3D] viewed as (B, N, 3, H, hd): q = channels [0, D), k = [D, 2D), v = [2D, 3D),
///   head h = the h-th block of hd = D / H channels within each;
///   out[b, i, h hd + c] = sum_j softmax_j(<q_bhi, k_bhj> / sqrt(hd)) v_bhj[c]   -> [B, N, D]
/// (channels head-major, as timm's transpose(1, 2).reshape(B, N, D)). Parallel over (b, h).
/// Saves qkv, its output and the per-row logsumexp [B, H, N]; the backward rebuilds each head's
/// probabilities in a per-thread [N, N] scratch (never a [B, H, N, N] buffer). The output must not
/// be modified in place before the backward.
template <class T, class D>
Var<T, D> multi_head_attention(const Var<T, D>& qkv, int heads) {
  FLSL_CHECK(qkv.rank() == 3 && qkv.size(2) % 3 == 0,
             "multi_head_attention: qkv must be [B, N, 3D], got ", qkv.shape());
  const index_t b = qkv.size(0), n = qkv.size(1), d = qkv.size(2) / 3;
  FLSL_CHECK(heads > 0 && d % heads == 0, "multi_head_attention: ", heads,
             " heads do not divide D = ", d, " of qkv ", qkv.shape());
  FLSL_CHECK(n > 0, "multi_head_attention: no tokens in qkv ", qkv.shape());
  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::multi_head_attention_cuda(qkv, heads);
  } else if constexpr (std::is_same_v<T, bf16>) {
    return detail::multi_head_attention_bf16_cpu(qkv, heads);
  } else {
    detail::check_attention_types<T, D>();
    const T scale = T(1.0 / std::sqrt(double(d / heads)));
    const Tensor<T, D> x = detail::unit_stride_rows(qkv.value());
    auto out = Tensor<T, D>::empty({b, n, d});      // [B, N, D]
    auto lse = Tensor<T, D>::empty({b, heads, n});  // [B, H, N]
    detail::attention_forward(x, heads, scale, out, lse);
    auto backward = [x, lse, heads, scale](autograd::node<T, D>& node) {
      auto& in = *node.inputs[0];
      if (!in.requires_grad) return;
      auto dqkv = Tensor<T, D>::empty(x.shape());  // [B, N, 3D]
      detail::attention_backward(x, node.value, detail::unit_stride_rows(node.grad), lse,
                                 index_t(heads), scale, dqkv);
      detail::add_fresh_grad(in, dqkv);
    };
    return Var<T, D>::make_result(out, "multi_head_attention", backward, qkv);
  }
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(multi_head_attention) {
  using namespace autograd;
  return gradcheck([](auto& in) { return multi_head_attention(in[0], 3); },
                   {random_input({2, 5, 18}, 301)});
}
FLSL_GRADCHECK_ROW(multi_head_attention_one_head_contiguous) {
  using namespace autograd;
  return gradcheck([](auto& in) { return multi_head_attention(in[0], 1); },
                   {random_input({3, 4, 9}, 302, false, 2.0)});
}
#endif

}  // namespace flsl
