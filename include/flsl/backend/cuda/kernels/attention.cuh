// Fused multi-head self-attention on the GPU, flash-style, forward and backward: the CUDA version
// of include/flsl/autograd/ops/attention.hpp (same packed layout, same saved statistic). No
// [B, H, N, N] buffer exists: probabilities live in registers and one shared-memory tile.
//
//   cuda_ops::attention_forward(qkv, heads, out, lse)
//     qkv [B, N, 3D] (timm's (B, N, 3, H, hd): q = channels [0, D), k = [D, 2D), v = [2D, 3D),
//     head h = channels [h hd, (h + 1) hd) of each), out [B, N, D] (head-major channels), lse
//     [B, H, N] float: log sum_j exp(S_ij) per query row, S = scale q k^T, scale = 1 / sqrt(hd).
//   cuda_ops::attention_backward(qkv, out, grad_out, lse, heads, dqkv)
//     dqkv [B, N, 3D], every element written once (dq, dk, dv in qkv's packed layout), from the
//     forward's out and lse: P = exp(S - lse) is recomputed, D_i = rowsum(dO_i * O_i),
//     dS = P * (dO v^T - D), dq = scale dS k, dk = scale dS^T q, dv = P^T dO.
// All tensors contiguous; T = float or bf16 (bf16 is converted to float when a tile is loaded;
// all arithmetic is fp32 with fp32 accumulation; out and dqkv are rounded to T on the store).
// hd = D / heads must be 16, 32 or 64 (a template parameter; others are refused); any N >= 1.
//
// Kernels: 256 threads per CTA seen as a 16 x 16 grid (ty = thread / 16, tx = thread % 16); a
// CTA's tile rows are ty + 16 r, its columns tx + 16 c, so a row's values sit in 16 consecutive
// lanes of one half warp and row reductions are 4 xor-shuffles. Tiles are staged in shared memory
// as fp32 with a row stride of hd + 1 (odd: the 16 rows read at one k hit 16 different banks).
//   forward    one CTA per (64 query rows, head, batch): Q tile [64, hd] loaded once, then for
//              each tile of 32 keys: K, V tiles [32, hd] loaded, S = scale Q K^T as 4 x 2 values
//              per thread, the online softmax (running max m and sum l per row, O rescaled by
//              exp(m_old - m_new)), P through shared memory [64, 33], O += P V with O [64, hd] in
//              registers (4 x hd/16 per thread). Then O / l and lse = m + log l are stored.
//              Shared memory (hd = 64): Q 16.6 KB + K 8.3 + V 8.3 + P 8.4 = 41.7 KB (static).
//   delta      one thread per (b, i, h): D = <dO_i, O_i> into a [B, H, N] scratch.
//   dK, dV     one CTA per (32 keys, head, batch): K, V tiles kept; for each tile of 32 queries
//              Q, dO, lse, D loaded, S^T and dP^T = V dO^T (2 x 2 per thread), P^T and dS^T
//              through shared memory, dV += P^T dO and dK += dS^T Q in registers; dK scaled at
//              the end. 41 KB of shared memory (hd = 64).
//   dQ         one CTA per (32 queries, head, batch): Q, dO tiles kept, rows' lse and D in
//              registers; for each tile of 32 keys K, V loaded, S, dP, dS, dS through shared
//              memory, dQ += dS K in registers; scaled at the end. 37.5 KB (hd = 64).
// Determinism: every output element is computed by one thread, in an order fixed by the shapes;
// no atomics (dQ gets its own pass over the key tiles instead of atomically adding into dq from
// the dK/dV CTAs), so results repeat bit-exactly. exp and log are CUDA's expf / logf (<= 2 ulp).
// bf16 tensors run on the tensor cores instead (attention_mma.cuh: WMMA, P and dS rounded to
// bf16) unless attention_impl::simt is chosen; f32 always runs the kernels above.
// Compiled only by nvcc.
#pragma once

#include <cmath>
#include <cstdint>

#include "attention_mma.cuh"
#include "common.cuh"

namespace flsl {

namespace cuda_ops::detail {

/// Rows per tile: forward queries per CTA; the key tile of the forward; both tiles of the backward.
inline constexpr int attn_fwd_rows = 64, attn_fwd_keys = 32, attn_bwd_tile = 32;

/// Copies rows [row0, row0 + Rows) x columns [0, HD) of the row-major matrix src (leading
/// dimension ld, n rows) into dst [Rows][HD + 1] as float; rows past n are zeros.
template <int Rows, int HD, class T>
__device__ __forceinline__ void attn_load_tile(float* dst, const T* __restrict__ src, index_t ld,
                                               index_t row0, index_t n) {
  for (int e = int(threadIdx.x); e < Rows * HD; e += threads) {
    const int r = e / HD, c = e % HD;
    const index_t i = row0 + r;
    dst[r * (HD + 1) + c] = i < n ? convert<float>(src[i * ld + c]) : 0.0f;
  }
}

/// acc[r][c] = sum_k A[ty + 16 r][k] * B[tx + 16 c][k] over k < HD; A, B of row stride HD + 1.
template <int HD, int R, int CC>
__device__ __forceinline__ void attn_tile_dot(float (&acc)[R][CC], const float* A, const float* B,
                                              int ty, int tx) {
  FLSL_UNROLL
  for (int r = 0; r < R; ++r) FLSL_UNROLL
  for (int c = 0; c < CC; ++c) acc[r][c] = 0.0f;
#pragma unroll 8
  for (int k = 0; k < HD; ++k) {
    float a[R], b[CC];
    FLSL_UNROLL
    for (int r = 0; r < R; ++r) a[r] = A[(ty + 16 * r) * (HD + 1) + k];
    FLSL_UNROLL
    for (int c = 0; c < CC; ++c) b[c] = B[(tx + 16 * c) * (HD + 1) + k];
    FLSL_UNROLL
    for (int r = 0; r < R; ++r) FLSL_UNROLL
    for (int c = 0; c < CC; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
  }
}

/// acc[r][c] += sum_j P[ty + 16 r][j] * V[j][tx + 16 c] over j < K; P of row stride ldp, V of
/// row stride HD + 1; acc [R][HD / 16].
template <int HD, int K, int R>
__device__ __forceinline__ void attn_tile_accum(float (&acc)[R][HD / 16], const float* P, int ldp,
                                                const float* V, int ty, int tx) {
#pragma unroll 4
  for (int j = 0; j < K; ++j) {
    float p[R];
    FLSL_UNROLL
    for (int r = 0; r < R; ++r) p[r] = P[(ty + 16 * r) * ldp + j];
    FLSL_UNROLL
    for (int c = 0; c < HD / 16; ++c) {
      const float v = V[j * (HD + 1) + tx + 16 * c];
      FLSL_UNROLL
      for (int r = 0; r < R; ++r) acc[r][c] = fmaf(p[r], v, acc[r][c]);
    }
  }
}

/// Forward: grid (ceil(N / 64), H, B).
template <int HD, class T>
__global__ void __launch_bounds__(threads)
    attention_forward_kernel(const T* __restrict__ qkv, T* __restrict__ out,
                             float* __restrict__ lse, index_t n, int heads, float scale) {
  constexpr int BM = attn_fwd_rows, BN = attn_fwd_keys, LD = HD + 1, R = BM / 16, CS = BN / 16,
                CO = HD / 16, LDP = BN + 1;
  __shared__ float sq[BM * LD], sk[BN * LD], sv[BN * LD], sp[BM * LDP];
  const int tx = int(threadIdx.x) % 16, ty = int(threadIdx.x) / 16;
  const index_t b = blockIdx.z, i0 = index_t(blockIdx.x) * BM;
  const int h = int(blockIdx.y);
  const index_t d = index_t(heads) * HD, ld = 3 * d;
  const T* base = qkv + b * n * ld + index_t(h) * HD;
  attn_load_tile<BM, HD>(sq, base, ld, i0, n);

  float m[R], l[R], o[R][CO];
  FLSL_UNROLL
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    FLSL_UNROLL
    for (int c = 0; c < CO; ++c) o[r][c] = 0.0f;
  }
  for (index_t j0 = 0; j0 < n; j0 += BN) {
    __syncthreads();  // the previous tile's K, V, P are no longer read
    attn_load_tile<BN, HD>(sk, base + d, ld, j0, n);
    attn_load_tile<BN, HD>(sv, base + 2 * d, ld, j0, n);
    __syncthreads();
    float s[R][CS];
    attn_tile_dot<HD>(s, sq, sk, ty, tx);
    FLSL_UNROLL
    for (int r = 0; r < R; ++r) {
      float mx = -INFINITY;
      FLSL_UNROLL
      for (int c = 0; c < CS; ++c) {
        s[r][c] = j0 + tx + 16 * c < n ? s[r][c] * scale : -INFINITY;
        mx = mx < s[r][c] ? s[r][c] : mx;
      }
      // Key j0 < n is in every tile, so the new maximum is finite; the first tile's
      // exp(-inf - m_new) = 0 discards the empty initial state.
      const float m_new = fmaxf(m[r], half_warp_max(mx));
      const float alpha = ::expf(m[r] - m_new);
      float ps = 0.0f;
      FLSL_UNROLL
      for (int c = 0; c < CS; ++c) {
        const float p = ::expf(s[r][c] - m_new);  // masked keys: exp(-inf) = 0
        sp[(ty + 16 * r) * LDP + tx + 16 * c] = p;
        ps += p;
      }
      l[r] = l[r] * alpha + half_warp_sum(ps);
      m[r] = m_new;
      FLSL_UNROLL
      for (int c = 0; c < CO; ++c) o[r][c] *= alpha;
    }
    __syncthreads();
    attn_tile_accum<HD, BN, R>(o, sp, LDP, sv, ty, tx);
  }
  FLSL_UNROLL
  for (int r = 0; r < R; ++r) {
    const index_t i = i0 + ty + 16 * r;
    if (i >= n) continue;
    const float inv = 1.0f / l[r];
    T* orow = out + (b * n + i) * d + index_t(h) * HD;
    FLSL_UNROLL
    for (int c = 0; c < CO; ++c) orow[tx + 16 * c] = convert<T>(o[r][c] * inv);
    if (tx == 0) lse[(b * heads + h) * n + i] = m[r] + ::logf(l[r]);
  }
}

/// D[b, h, i] = sum_c dO[b, i, h hd + c] * O[b, i, h hd + c]; one thread per (b, i, h), h fastest.
template <class T>
__global__ void __launch_bounds__(threads)
    attention_delta_kernel(const T* __restrict__ out, const T* __restrict__ dout,
                           float* __restrict__ delta, index_t n, int heads, int hd, index_t total) {
  const index_t t = index_t(blockIdx.x) * threads + threadIdx.x;
  if (t >= total) return;
  const index_t h = t % heads, bi = t / heads, b = bi / n, i = bi % n;
  const index_t off = bi * heads * hd + h * hd;
  float acc = 0.0f;
  for (int c = 0; c < hd; ++c)
    acc = fmaf(convert<float>(dout[off + c]), convert<float>(out[off + c]), acc);
  delta[(b * heads + h) * n + i] = acc;
}

/// dK and dV: grid (ceil(N / 32), H, B); CTA = 32 keys, looping over all query tiles.
template <int HD, class T>
__global__ void __launch_bounds__(threads)
    attention_dkdv_kernel(const T* __restrict__ qkv, const T* __restrict__ dout,
                          const float* __restrict__ lse, const float* __restrict__ delta,
                          T* __restrict__ dqkv, index_t n, int heads, float scale) {
  constexpr int BK = attn_bwd_tile, BQ = attn_bwd_tile, LD = HD + 1, R = BK / 16, CQ = BQ / 16,
                CO = HD / 16, LDP = BQ + 1;
  __shared__ float sk[BK * LD], sv[BK * LD], sq[BQ * LD], sdo[BQ * LD], sp[BK * LDP], sds[BK * LDP],
      slse[BQ], sdel[BQ];
  const int tx = int(threadIdx.x) % 16, ty = int(threadIdx.x) / 16;
  const index_t b = blockIdx.z, j0 = index_t(blockIdx.x) * BK;
  const int h = int(blockIdx.y);
  const index_t d = index_t(heads) * HD, ld = 3 * d;
  const T* base = qkv + b * n * ld + index_t(h) * HD;
  const T* dobase = dout + b * n * d + index_t(h) * HD;
  const float* lrow = lse + (b * heads + h) * n;
  const float* drow = delta + (b * heads + h) * n;
  attn_load_tile<BK, HD>(sk, base + d, ld, j0, n);
  attn_load_tile<BK, HD>(sv, base + 2 * d, ld, j0, n);

  float dk[R][CO], dv[R][CO];
  FLSL_UNROLL
  for (int r = 0; r < R; ++r) FLSL_UNROLL
  for (int c = 0; c < CO; ++c) dk[r][c] = dv[r][c] = 0.0f;
  for (index_t i0 = 0; i0 < n; i0 += BQ) {
    __syncthreads();  // the previous tile's Q, dO, P, dS are no longer read
    attn_load_tile<BQ, HD>(sq, base, ld, i0, n);
    attn_load_tile<BQ, HD>(sdo, dobase, d, i0, n);
    if (threadIdx.x < BQ) {
      const index_t i = i0 + threadIdx.x;
      slse[threadIdx.x] = i < n ? lrow[i] : INFINITY;  // P = exp(s - inf) = 0 for missing rows
      sdel[threadIdx.x] = i < n ? drow[i] : 0.0f;
    }
    __syncthreads();
    float s[R][CQ], dp[R][CQ];
    attn_tile_dot<HD>(s, sk, sq, ty, tx);    // s[r][c] = <k_j, q_i>, j = ty + 16 r, i = tx + 16 c
    attn_tile_dot<HD>(dp, sv, sdo, ty, tx);  // dp[r][c] = <v_j, dO_i>
    FLSL_UNROLL
    for (int r = 0; r < R; ++r) FLSL_UNROLL
    for (int c = 0; c < CQ; ++c) {
      const int il = tx + 16 * c;
      const float p = ::expf(s[r][c] * scale - slse[il]);
      sp[(ty + 16 * r) * LDP + il] = p;
      sds[(ty + 16 * r) * LDP + il] = p * (dp[r][c] - sdel[il]);
    }
    __syncthreads();
    attn_tile_accum<HD, BQ, R>(dv, sp, LDP, sdo, ty, tx);  // dV_j += sum_i P_ij dO_i
    attn_tile_accum<HD, BQ, R>(dk, sds, LDP, sq, ty, tx);  // dK_j += sum_i dS_ij q_i
  }
  FLSL_UNROLL
  for (int r = 0; r < R; ++r) {
    const index_t j = j0 + ty + 16 * r;
    if (j >= n) continue;
    T* row = dqkv + (b * n + j) * ld + index_t(h) * HD;
    FLSL_UNROLL
    for (int c = 0; c < CO; ++c) {
      row[d + tx + 16 * c] = convert<T>(dk[r][c] * scale);
      row[2 * d + tx + 16 * c] = convert<T>(dv[r][c]);
    }
  }
}

/// dQ: grid (ceil(N / 32), H, B); CTA = 32 queries, looping over all key tiles.
template <int HD, class T>
__global__ void __launch_bounds__(threads)
    attention_dq_kernel(const T* __restrict__ qkv, const T* __restrict__ dout,
                        const float* __restrict__ lse, const float* __restrict__ delta,
                        T* __restrict__ dqkv, index_t n, int heads, float scale) {
  constexpr int BQ = attn_bwd_tile, BK = attn_bwd_tile, LD = HD + 1, R = BQ / 16, CK = BK / 16,
                CO = HD / 16, LDS = BK + 1;
  __shared__ float sq[BQ * LD], sdo[BQ * LD], sk[BK * LD], sv[BK * LD], sds[BQ * LDS];
  const int tx = int(threadIdx.x) % 16, ty = int(threadIdx.x) / 16;
  const index_t b = blockIdx.z, i0 = index_t(blockIdx.x) * BQ;
  const int h = int(blockIdx.y);
  const index_t d = index_t(heads) * HD, ld = 3 * d;
  const T* base = qkv + b * n * ld + index_t(h) * HD;
  attn_load_tile<BQ, HD>(sq, base, ld, i0, n);
  attn_load_tile<BQ, HD>(sdo, dout + b * n * d + index_t(h) * HD, d, i0, n);
  float rl[R], rd[R], dq[R][CO];
  FLSL_UNROLL
  for (int r = 0; r < R; ++r) {
    const index_t i = i0 + ty + 16 * r;
    rl[r] = i < n ? lse[(b * heads + h) * n + i] : INFINITY;
    rd[r] = i < n ? delta[(b * heads + h) * n + i] : 0.0f;
    FLSL_UNROLL
    for (int c = 0; c < CO; ++c) dq[r][c] = 0.0f;
  }
  for (index_t j0 = 0; j0 < n; j0 += BK) {
    __syncthreads();  // the previous tile's K, V, dS are no longer read
    attn_load_tile<BK, HD>(sk, base + d, ld, j0, n);
    attn_load_tile<BK, HD>(sv, base + 2 * d, ld, j0, n);
    __syncthreads();
    float s[R][CK], dp[R][CK];
    attn_tile_dot<HD>(s, sq, sk, ty, tx);    // s[r][c] = <q_i, k_j>, i = ty + 16 r, j = tx + 16 c
    attn_tile_dot<HD>(dp, sdo, sv, ty, tx);  // dp[r][c] = <dO_i, v_j>
    FLSL_UNROLL
    for (int r = 0; r < R; ++r) FLSL_UNROLL
    for (int c = 0; c < CK; ++c) {
      const bool valid = j0 + tx + 16 * c < n;
      const float p = valid ? ::expf(s[r][c] * scale - rl[r]) : 0.0f;
      sds[(ty + 16 * r) * LDS + tx + 16 * c] = p * (dp[r][c] - rd[r]);
    }
    __syncthreads();
    attn_tile_accum<HD, BK, R>(dq, sds, LDS, sk, ty, tx);  // dQ_i += sum_j dS_ij k_j
  }
  FLSL_UNROLL
  for (int r = 0; r < R; ++r) {
    const index_t i = i0 + ty + 16 * r;
    if (i >= n) continue;
    T* row = dqkv + (b * n + i) * ld + index_t(h) * HD;
    FLSL_UNROLL
    for (int c = 0; c < CO; ++c) row[tx + 16 * c] = convert<T>(dq[r][c] * scale);
  }
}

/// The shapes of the attention arguments: batch, tokens, model width, head dim.
struct attention_dims {
  index_t b, n, d;
  int hd;
};
inline attention_dims check_attention_shapes(const Shape& qkv, int heads, const char* op) {
  FLSL_CHECK(qkv.rank() == 3 && qkv[2] % 3 == 0, op, ": qkv must be [B, N, 3D], got ", qkv);
  const index_t d = qkv[2] / 3;
  FLSL_CHECK(heads > 0 && d % heads == 0, op, ": ", heads, " heads do not divide D = ", d,
             " of qkv ", qkv);
  const index_t hd = d / heads;
  FLSL_CHECK(hd == 16 || hd == 32 || hd == 64, op, ": head_dim ", hd, " (D = ", d, ", ", heads,
             " heads) is not supported on cuda; the kernels are built for head_dim 16, 32 or 64");
  FLSL_CHECK(qkv[1] > 0, op, ": no tokens in qkv ", qkv);
  FLSL_CHECK(qkv[0] < 65536 && heads < 65536 && (qkv[1] + 15) / 16 < (index_t(1) << 31), op,
             ": qkv ", qkv, " with ", heads, " heads exceeds the launch grid");
  return {qkv[0], qkv[1], d, int(hd)};
}

template <class T>
constexpr void check_attention_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "cuda_ops attention: f32 or bf16 tensors (fp32 arithmetic inside)");
}

/// Calls f(std::integral_constant<int, hd>) for the supported head dims.
template <class F>
void dispatch_head_dim(int hd, F&& f) {
  switch (hd) {
    case 16:
      f(std::integral_constant<int, 16>{});
      break;
    case 32:
      f(std::integral_constant<int, 32>{});
      break;
    default:
      f(std::integral_constant<int, 64>{});
      break;
  }
}

/// Whether bf16 attention runs on the tensor cores (attention_mma.cuh): bf16 tensors, the
/// tensor-core kernels chosen (the default), and 16-byte aligned data (the kernels' vector loads).
template <class... Tensors>
bool use_attention_mma(const Tensors&... t) {
  return get_attention_impl() == attention_impl::tensor_cores &&
         ((reinterpret_cast<std::uintptr_t>(t.data()) % 16 == 0) && ...);
}

}  // namespace cuda_ops::detail

namespace cuda_ops {

/// out [B, N, D] and lse [B, H, N] from qkv [B, N, 3D] (see the header comment).
template <class T>
void attention_forward(const Tensor<T, cuda>& qkv, int heads, const Tensor<T, cuda>& out,
                       const Tensor<float, cuda>& lse) {
  detail::check_attention_type<T>();
  constexpr const char* op = "cuda_ops::attention_forward";
  const auto dm = detail::check_attention_shapes(qkv.shape(), heads, op);
  detail::check_tensor(qkv, qkv.shape(), op, "qkv");
  detail::check_tensor(out, Shape{dm.b, dm.n, dm.d}, op, "out");
  detail::check_tensor(lse, Shape{dm.b, index_t(heads), dm.n}, op, "lse");
  if (dm.b == 0) return;
  const float scale = float(1.0 / std::sqrt(double(dm.hd)));  // as the CPU op: T(1 / sqrt(hd))
  // the model's FLOPs (timeline.cuh): Q K^T and P V, 2 N^2 hd each, per head and image
  cuda_work().attention_flops += 4.0 * double(dm.b) * heads * double(dm.n) * double(dm.n) * dm.hd;
  if constexpr (std::is_same_v<T, bf16>) {
    if (detail::use_attention_mma(qkv, out)) {
      detail::dispatch_head_dim(dm.hd, [&](auto hd) {
        detail::attention_forward_mma<decltype(hd)::value>(qkv.data(), out.data(), lse.data(), dm.b,
                                                           dm.n, heads, scale);
      });
      return;
    }
  }
  const dim3 grid(unsigned((dm.n + detail::attn_fwd_rows - 1) / detail::attn_fwd_rows),
                  unsigned(heads), unsigned(dm.b));
  detail::dispatch_head_dim(dm.hd, [&](auto hd) {
    detail::attention_forward_kernel<decltype(hd)::value, T>
        <<<grid, detail::threads, 0, current_stream()>>>(qkv.data(), out.data(), lse.data(), dm.n,
                                                         heads, scale);
  });
  cuda_detail::check_launch("attention_forward_kernel");
}

/// dqkv [B, N, 3D] from the forward's out and lse and the output gradient (see the header
/// comment). Allocates a [B, H, N] float scratch for D = rowsum(dO * O).
template <class T>
void attention_backward(const Tensor<T, cuda>& qkv, const Tensor<T, cuda>& out,
                        const Tensor<T, cuda>& grad_out, const Tensor<float, cuda>& lse, int heads,
                        const Tensor<T, cuda>& dqkv) {
  detail::check_attention_type<T>();
  constexpr const char* op = "cuda_ops::attention_backward";
  const auto dm = detail::check_attention_shapes(qkv.shape(), heads, op);
  detail::check_tensor(qkv, qkv.shape(), op, "qkv");
  detail::check_tensor(out, Shape{dm.b, dm.n, dm.d}, op, "out");
  detail::check_tensor(grad_out, Shape{dm.b, dm.n, dm.d}, op, "grad_out");
  detail::check_tensor(lse, Shape{dm.b, index_t(heads), dm.n}, op, "lse");
  detail::check_tensor(dqkv, qkv.shape(), op, "dqkv");
  FLSL_CHECK(!dqkv.shares_storage(qkv) && !dqkv.shares_storage(grad_out), op,
             ": dqkv must not share memory with qkv or grad_out");
  if (dm.b == 0) return;
  const float scale = float(1.0 / std::sqrt(double(dm.hd)));
  auto delta = Tensor<float, cuda>::empty({dm.b, index_t(heads), dm.n});  // [B, H, N]
  const index_t rows = dm.b * dm.n * heads;
  detail::attention_delta_kernel<T>
      <<<unsigned((rows + detail::threads - 1) / detail::threads), detail::threads, 0,
         current_stream()>>>(out.data(), grad_out.data(), delta.data(), dm.n, heads, dm.hd, rows);
  cuda_detail::check_launch("attention_delta_kernel");
  // dV, dP, dQ and dK: 8 N^2 hd per head and image (the recomputation of S not counted)
  cuda_work().attention_flops += 8.0 * double(dm.b) * heads * double(dm.n) * double(dm.n) * dm.hd;
  if constexpr (std::is_same_v<T, bf16>) {
    if (detail::use_attention_mma(qkv, out, grad_out, dqkv)) {
      detail::dispatch_head_dim(dm.hd, [&](auto hd) {
        detail::attention_backward_mma<decltype(hd)::value>(qkv.data(), grad_out.data(), lse.data(),
                                                            delta.data(), dqkv.data(), dm.b, dm.n,
                                                            heads, scale);
      });
      return;
    }
  }
  const dim3 grid(unsigned((dm.n + detail::attn_bwd_tile - 1) / detail::attn_bwd_tile),
                  unsigned(heads), unsigned(dm.b));
  detail::dispatch_head_dim(dm.hd, [&](auto hd) {
    constexpr int HD = decltype(hd)::value;
    detail::attention_dkdv_kernel<HD, T><<<grid, detail::threads, 0, current_stream()>>>(
        qkv.data(), grad_out.data(), lse.data(), delta.data(), dqkv.data(), dm.n, heads, scale);
    cuda_detail::check_launch("attention_dkdv_kernel");
    detail::attention_dq_kernel<HD, T><<<grid, detail::threads, 0, current_stream()>>>(
        qkv.data(), grad_out.data(), lse.data(), delta.data(), dqkv.data(), dm.n, heads, scale);
    cuda_detail::check_launch("attention_dq_kernel");
  });
}

}  // namespace cuda_ops

}  // namespace flsl
