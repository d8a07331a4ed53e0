// FLSL's non-parametric mean-shift attention on the GPU, forward and backward: the CUDA version
// of include/flsl/autograd/ops/meanshift.hpp (one attention head per batch element, the keys are
// also the values, scale beta; the same saved statistic, the logsumexp per query row).
//
//   cuda_ops::meanshift_forward(q, k, beta, out, lse)
//     q [B, Q, D], k [B, M, D] -> out [B, Q, D], lse [B, Q]:
//     s_ij = beta <q_i, k_j>,  p_ij = softmax_j(s_ij),  out_i = sum_j p_ij k_j,
//     lse_i = log sum_j exp(s_ij).
//   cuda_ops::meanshift_backward(q, k, out, grad_out, lse, beta, dq, dk)
//     with p_ij = exp(s_ij - lse_i) recomputed, delta_i = <dO_i, out_i>, dP_ij = <dO_i, k_j>,
//     dS_ij = p_ij (dP_ij - delta_i):
//     dq_i = beta sum_j dS_ij k_j,   dk_j = beta sum_i dS_ij q_i + sum_i p_ij dO_i
//     (dq, dk written, not added; an undefined one is not wanted).
// All tensors contiguous, T = float or double (arithmetic in T).
//
// The shapes FLSL gives it are few queries per view (Q = 9 or 16 sampled tokens) against all
// tokens of a view (M = 36 to 196, or 784 at patch 8) in the model width (D = 192 to 768): the
// probabilities of a row are M values, so the kernels work row by row and keep a row's logits in
// shared memory; nothing of size [B, Q, M] exists in the forward. 256 threads per block.
//   forward    one block per query row (b, i): q_i staged in shared memory; warp w computes the
//              logits of keys j = w, w + 8, ... (lanes stride over D: coalesced key reads, a
//              shuffle butterfly per key) into shared s [M]; the block's max and sum of exp
//              (kernels/common.cuh group_reduce, fixed order); p = e / l in place; then thread c
//              computes out_ic = sum_j p_j k_jc over j in order (coalesced over c).
//   backward   pass 1, one block per query row: q_i and dO_i staged; delta_i by a block
//              reduction; per key (warp-strided as above) s and dP in one sweep over D, then p
//              and dS; p and dS of the row go to [B, Q, M] scratch (the only buffer, the size of
//              the logits) when dk is wanted; dq_ic = beta sum_j dS_ij k_jc as in the forward.
//              Pass 2 (when dk is wanted), one block per key (b, j): thread c computes
//              dk_jc = beta sum_i dS_ij q_ic + sum_i p_ij dO_ic over i in order.
// Shared memory per block: (D + M) T forward, (2 D + M) T backward (dynamic; at most 48 KB, so
// D + M <= 12288 floats: every ViT of the spec fits; larger shapes are refused with a message).
// Every output element is computed by one thread in an order fixed by the shapes: no atomics,
// bit-exact repeats. exp / log are CUDA's (expf <= 2 ulp). Compiled only by nvcc.
#pragma once

#include <cmath>

#include "common.cuh"

namespace flsl {

namespace cuda_ops::detail {

inline constexpr int ms_warps = threads / 32;
inline constexpr std::size_t ms_max_shared = 48 * 1024;

/// The logits s_j = beta <sq, k_j> (and, with G, dp_j = <sg, k_j>) of keys j < m into ss (sd),
/// one warp per key; sq, sg in shared memory, k_j rows of length d in global memory.
template <bool WithG, class T>
__device__ __forceinline__ void ms_row_logits(const T* sq, const T* sg, const T* __restrict__ kb,
                                              index_t m, index_t d, T beta, T* ss, T* sd) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (index_t j = warp; j < m; j += ms_warps) {
    const T* kj = kb + j * d;
    T a = T(0), b = T(0);
    for (index_t c = lane; c < d; c += 32) {
      const T kv = kj[c];
      a += sq[c] * kv;
      if constexpr (WithG) b += sg[c] * kv;
    }
    a = warp_sum(a);
    if constexpr (WithG) b = warp_sum(b);
    if (lane == 0) {
      ss[j] = beta * a;
      if constexpr (WithG) sd[j] = b;
    }
  }
}

/// Grid: B * Q blocks. Dynamic shared memory: (d + m) T.
template <class T>
__global__ void __launch_bounds__(threads)
    meanshift_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, T* __restrict__ out,
                             T* __restrict__ lse, index_t nq, index_t m, index_t d, T beta) {
  extern __shared__ __align__(16) unsigned char ms_smem[];
  __shared__ T red[ms_warps];
  T* sq = reinterpret_cast<T*>(ms_smem);
  T* ss = sq + d;
  const index_t row = blockIdx.x, b = row / nq;
  const T* qr = q + row * d;
  const T* kb = k + b * m * d;
  for (index_t c = threadIdx.x; c < d; c += threads) sq[c] = qr[c];
  __syncthreads();
  ms_row_logits<false>(sq, sq, kb, m, d, beta, ss, ss);
  __syncthreads();
  T mx = -INFINITY;
  for (index_t j = threadIdx.x; j < m; j += threads) mx = mx < ss[j] ? ss[j] : mx;
  mx = group_reduce<threads, true>(mx, red);
  T l = T(0);
  for (index_t j = threadIdx.x; j < m; j += threads) {
    const T e = dev_exp(ss[j] - mx);
    ss[j] = e;
    l += e;
  }
  l = group_reduce<threads, false>(l, red);  // synchronises: every e is in ss
  const T inv = T(1) / l;
  for (index_t j = threadIdx.x; j < m; j += threads) ss[j] *= inv;
  __syncthreads();
  for (index_t c = threadIdx.x; c < d; c += threads) {
    T acc = T(0);
    for (index_t j = 0; j < m; ++j) acc += ss[j] * kb[j * d + c];
    out[row * d + c] = acc;
  }
  if (threadIdx.x == 0) lse[row] = mx + dev_log(l);
}

/// Backward pass 1. Grid: B * Q blocks. Dynamic shared memory: (2 d + m) T (dP shares ss's
/// slot with dS: dS_j overwrites dP_j in place). p, ds: [B, Q, M] or null; dq or null.
template <class T>
__global__ void __launch_bounds__(threads)
    meanshift_backward_rows_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                   const T* __restrict__ out, const T* __restrict__ g,
                                   const T* __restrict__ lse, T* __restrict__ p, T* __restrict__ ds,
                                   T* __restrict__ dq, index_t nq, index_t m, index_t d, T beta) {
  extern __shared__ __align__(16) unsigned char ms_smem[];
  __shared__ T red[ms_warps];
  T* sq = reinterpret_cast<T*>(ms_smem);
  T* sg = sq + d;
  T* sd = sg + d;  // [m]: dP, then dS
  const index_t row = blockIdx.x, b = row / nq;
  const T* kb = k + b * m * d;
  T delta = T(0);
  for (index_t c = threadIdx.x; c < d; c += threads) {
    sq[c] = q[row * d + c];
    const T gv = g[row * d + c];
    sg[c] = gv;
    delta += gv * out[row * d + c];
  }
  delta = group_reduce<threads, false>(delta, red);  // synchronises: sq, sg are complete
  const T lse_i = lse[row];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (index_t j = warp; j < m; j += ms_warps) {
    const T* kj = kb + j * d;
    T a = T(0), bb = T(0);
    for (index_t c = lane; c < d; c += 32) {
      const T kv = kj[c];
      a += sq[c] * kv;
      bb += sg[c] * kv;
    }
    a = warp_sum(a);
    bb = warp_sum(bb);
    if (lane == 0) {
      const T pj = dev_exp(beta * a - lse_i);
      const T dsj = pj * (bb - delta);
      sd[j] = dsj;
      if (p) {
        p[row * m + j] = pj;
        ds[row * m + j] = dsj;
      }
    }
  }
  if (!dq) return;
  __syncthreads();
  for (index_t c = threadIdx.x; c < d; c += threads) {
    T acc = T(0);
    for (index_t j = 0; j < m; ++j) acc += sd[j] * kb[j * d + c];
    dq[row * d + c] = beta * acc;
  }
}

/// Backward pass 2: dk. Grid: B * M blocks.
template <class T>
__global__ void __launch_bounds__(threads)
    meanshift_backward_keys_kernel(const T* __restrict__ q, const T* __restrict__ g,
                                   const T* __restrict__ p, const T* __restrict__ ds,
                                   T* __restrict__ dk, index_t nq, index_t m, index_t d, T beta) {
  const index_t key = blockIdx.x, b = key / m, j = key % m;
  const T* qb = q + b * nq * d;
  const T* gb = g + b * nq * d;
  const T* pb = p + b * nq * m + j;
  const T* dsb = ds + b * nq * m + j;
  for (index_t c = threadIdx.x; c < d; c += threads) {
    T aq = T(0), ag = T(0);
    for (index_t i = 0; i < nq; ++i) {
      aq += dsb[i * m] * qb[i * d + c];
      ag += pb[i * m] * gb[i * d + c];
    }
    dk[key * d + c] = beta * aq + ag;
  }
}

inline unsigned ms_blocks(index_t n, const char* op) {
  FLSL_CHECK(n < index_t(1) << 31, op, ": ", n, " rows is too many for one grid");
  return unsigned(n);
}

template <class T>
std::size_t ms_shared_bytes(index_t vectors, index_t d, index_t m, const char* op) {
  const std::size_t bytes = std::size_t(vectors * d + m) * sizeof(T);
  FLSL_CHECK(bytes <= ms_max_shared, op, ": D = ", d, " features and M = ", m, " keys need ", bytes,
             " bytes of shared memory per block (at most ", ms_max_shared, ")");
  return bytes;
}

}  // namespace cuda_ops::detail

namespace cuda_ops {

/// out [B, Q, D] and lse [B, Q] of mean-shift attention of queries q [B, Q, D] over keys (= values)
/// k [B, M, D] with inverse temperature beta.
template <class T>
void meanshift_forward(const Tensor<T, cuda>& q, const Tensor<T, cuda>& k, T beta,
                       const Tensor<T, cuda>& out, const Tensor<T, cuda>& lse) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "cuda_ops::meanshift_forward: f32 or f64");
  constexpr const char* op = "cuda_ops::meanshift_forward";
  FLSL_CHECK(q.defined() && k.defined() && q.rank() == 3 && k.rank() == 3 &&
                 q.size(0) == k.size(0) && q.size(2) == k.size(2) && k.size(1) > 0,
             op, ": needs q [B, Q, D] and k [B, M, D] with M > 0, got ",
             q.defined() ? q.shape() : Shape{}, " and ", k.defined() ? k.shape() : Shape{});
  const index_t bsz = q.size(0), nq = q.size(1), m = k.size(1), d = q.size(2);
  detail::check_tensor(q, q.shape(), op, "q");
  detail::check_tensor(k, k.shape(), op, "k");
  detail::check_tensor(out, q.shape(), op, "out");
  detail::check_tensor(lse, Shape{bsz, nq}, op, "lse");
  if (bsz * nq == 0) return;
  const std::size_t shared = detail::ms_shared_bytes<T>(1, d, m, op);
  detail::meanshift_forward_kernel<T>
      <<<detail::ms_blocks(bsz * nq, op), detail::threads, shared, current_stream()>>>(
          q.data(), k.data(), out.data(), lse.data(), nq, m, d, beta);
  cuda_detail::check_launch("meanshift_forward_kernel");
}

/// dq [B, Q, D] and dk [B, M, D] (each written; an undefined one is not wanted) from the
/// forward's out and lse and the output's gradient grad_out [B, Q, D].
template <class T>
void meanshift_backward(const Tensor<T, cuda>& q, const Tensor<T, cuda>& k,
                        const Tensor<T, cuda>& out, const Tensor<T, cuda>& grad_out,
                        const Tensor<T, cuda>& lse, T beta, const Tensor<T, cuda>& dq,
                        const Tensor<T, cuda>& dk) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "cuda_ops::meanshift_backward: f32 or f64");
  constexpr const char* op = "cuda_ops::meanshift_backward";
  FLSL_CHECK(q.defined() && k.defined() && q.rank() == 3 && k.rank() == 3 &&
                 q.size(0) == k.size(0) && q.size(2) == k.size(2) && k.size(1) > 0,
             op, ": needs q [B, Q, D] and k [B, M, D] with M > 0, got ",
             q.defined() ? q.shape() : Shape{}, " and ", k.defined() ? k.shape() : Shape{});
  const index_t bsz = q.size(0), nq = q.size(1), m = k.size(1), d = q.size(2);
  detail::check_tensor(q, q.shape(), op, "q");
  detail::check_tensor(k, k.shape(), op, "k");
  detail::check_tensor(out, q.shape(), op, "out");
  detail::check_tensor(grad_out, q.shape(), op, "grad_out");
  detail::check_tensor(lse, Shape{bsz, nq}, op, "lse");
  T* dqp = detail::optional_data(dq, q.shape(), op, "dq");
  T* dkp = detail::optional_data(dk, k.shape(), op, "dk");
  if (!dqp && !dkp) return;
  if (bsz * nq == 0) {
    if (dkp) dk.fill(T(0));  // no queries: nothing moves the keys
    return;
  }
  Tensor<T, cuda> p, ds;  // [B, Q, M] when dk is wanted
  if (dkp) {
    p = Tensor<T, cuda>::empty({bsz, nq, m});
    ds = Tensor<T, cuda>::empty({bsz, nq, m});
  }
  const std::size_t shared = detail::ms_shared_bytes<T>(2, d, m, op);
  detail::meanshift_backward_rows_kernel<T>
      <<<detail::ms_blocks(bsz * nq, op), detail::threads, shared, current_stream()>>>(
          q.data(), k.data(), out.data(), grad_out.data(), lse.data(), dkp ? p.data() : nullptr,
          dkp ? ds.data() : nullptr, dqp, nq, m, d, beta);
  cuda_detail::check_launch("meanshift_backward_rows_kernel");
  if (!dkp) return;
  detail::meanshift_backward_keys_kernel<T>
      <<<detail::ms_blocks(bsz * m, op), detail::threads, 0, current_stream()>>>(
          q.data(), grad_out.data(), p.data(), ds.data(), dkp, nq, m, d, beta);
  cuda_detail::check_launch("meanshift_backward_keys_kernel");
}

}  // namespace cuda_ops

}  // namespace flsl
