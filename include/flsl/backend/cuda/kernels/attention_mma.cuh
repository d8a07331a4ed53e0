// The fused attention of attention.cuh for bf16 tensors on the tensor cores (WMMA, bf16 inputs,
// fp32 accumulation), forward and backward, flash-style: the same arguments, layout, saved lse
// and results up to the roundings below. attention.cuh's attention_forward / attention_backward
// use these kernels for bf16 tensors unless attention_impl::simt is chosen
// (set_attention_impl, or FLSL_CUDA_ATTENTION=simt in the environment).
//
// What is rounded to bf16 besides the inputs and outputs (as FlashAttention-2 does): the
// probabilities P before P V and P^T dO, and dS before dS K and dS^T Q. The row sum l of the
// forward adds the rounded probabilities, so O / l stays a weighted mean of V. Everything else is
// fp32: S, the online softmax, the accumulators, lse, D = rowsum(dO O).
//
// Kernels: 128 threads (4 warps) per CTA; each warp owns 16 rows of its CTA's 64 and computes
// 16 x 16 x 16 WMMA products from bf16 tiles in shared memory (row stride hd + 8 elements, a
// multiple of 16 bytes; every fragment address is 32-byte aligned). The elementwise work on a
// warp's 16 x 64 score block is done by lane pairs: lane l owns row l / 2, columns
// 32 (l % 2) .. + 32, and row sums / maxima combine the pair with one shuffle. Accumulator
// fragments whose rows need rescaling (the forward's O) go through shared memory; the backward's
// dK, dV, dQ stay in fragments.
//   forward  one CTA per (64 queries, head, batch): Q fragments in registers; per tile of 64
//            keys: K, V tiles loaded, S = Q K^T (4 x hd/16 MMAs per warp), the online softmax,
//            P (bf16) V into scratch, O = O alpha + P V in shared memory; then O / l and
//            lse = m + log l stored. Shared memory (hd = 64): 70 KB (dynamic).
//   dK, dV   one CTA per (64 keys, head, batch): the warp's K and V rows as A fragments; per
//            tile of 64 queries: Q, dO, lse, D loaded, S^T = K Q^T and dP^T = V dO^T, P^T and
//            dS^T = P^T (dP^T - D) in bf16, dV += P^T dO, dK += dS^T Q; dK scaled at the end.
//            89 KB.
//   dQ       one CTA per (64 queries, head, batch): Q and dO rows as A fragments; per tile of
//            64 keys: S, dP = dO V^T, dS in bf16, dQ += dS K; scaled at the end. 89 KB.
// D comes from attention.cuh's delta kernel. No atomics: each output element is accumulated by
// one warp in an order fixed by the shapes, so results repeat bit-exactly. hd = 16, 32 or 64.
// Compiled only by nvcc (sm_80 or newer). Not yet run on a GPU (2026-12-04).
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

#include <cstdlib>
#include <string_view>

#include "common.cuh"

namespace flsl {

namespace cuda_ops {

/// Which kernels run the fused attention on bf16 tensors.
enum class attention_impl {
  tensor_cores,  // attention_mma.cuh (the default)
  simt,          // attention.cuh's fp32 kernels (bf16 converted on load)
};

namespace detail {
inline attention_impl& attention_impl_setting() {
  static attention_impl a = [] {
    const char* e = std::getenv("FLSL_CUDA_ATTENTION");
    return e && std::string_view(e) == "simt" ? attention_impl::simt : attention_impl::tensor_cores;
  }();
  return a;
}
}  // namespace detail

inline attention_impl get_attention_impl() { return detail::attention_impl_setting(); }
inline void set_attention_impl(attention_impl a) { detail::attention_impl_setting() = a; }

/// Chooses the bf16 attention kernels for a scope.
class attention_impl_scope {
 public:
  explicit attention_impl_scope(attention_impl a) : prev_(get_attention_impl()) {
    set_attention_impl(a);
  }
  ~attention_impl_scope() { set_attention_impl(prev_); }
  attention_impl_scope(const attention_impl_scope&) = delete;
  attention_impl_scope& operator=(const attention_impl_scope&) = delete;

 private:
  attention_impl prev_;
};

}  // namespace cuda_ops

namespace cuda_ops::detail {

namespace wm = nvcuda::wmma;
using wbf = __nv_bfloat16;

inline constexpr int mma_warps = 4, mma_threads = 32 * mma_warps;
inline constexpr int mma_rows = 16 * mma_warps;  // rows of a CTA (queries or keys)
inline constexpr int mma_tile = 64;              // columns of a score block (keys or queries)

template <int HD>
struct mma_dims {
  static constexpr int ldb = HD + 8;        // bf16 tiles [64][ldb]
  static constexpr int lds = mma_tile + 4;  // fp32 score blocks per warp [16][lds] (>= HD)
  static constexpr int ldp = mma_tile + 8;  // bf16 P / dS blocks per warp [16][ldp]
  static constexpr int ldo = HD + 4;        // the forward's fp32 O per warp [16][ldo]
  static constexpr int tile_bytes = mma_rows * ldb * 2;
  static constexpr int score_bytes = mma_warps * 16 * lds * 4;
  static constexpr int prob_bytes = mma_warps * 16 * ldp * 2;
  static constexpr int out_bytes = mma_warps * 16 * ldo * 4;
  static constexpr int forward_smem = 3 * tile_bytes + score_bytes + prob_bytes + out_bytes;
  static constexpr int backward_smem =
      4 * tile_bytes + 2 * score_bytes + 2 * prob_bytes + 2 * mma_rows * 4;
  static_assert(HD % 16 == 0 && HD <= mma_tile, "mma attention: hd must be 16, 32 or 64");
  static_assert(tile_bytes % 32 == 0 && score_bytes % 32 == 0 && prob_bytes % 32 == 0 &&
                    out_bytes % 32 == 0,
                "mma attention: every buffer must keep 32-byte alignment");
};

using a_frag = wm::fragment<wm::matrix_a, 16, 16, 16, wbf, wm::row_major>;
using b_row = wm::fragment<wm::matrix_b, 16, 16, 16, wbf, wm::row_major>;
using b_col = wm::fragment<wm::matrix_b, 16, 16, 16, wbf, wm::col_major>;
using c_frag = wm::fragment<wm::accumulator, 16, 16, 16, float>;

/// Rows [row0, row0 + 64) x columns [0, HD) of a row-major bf16 matrix (leading dimension ld,
/// n rows) into dst [64][HD + 8]; rows past n are zeros. 16-byte loads: HD is a multiple of 16
/// and every row start of the packed qkv / dO layouts is 16-byte aligned.
template <int HD>
__device__ __forceinline__ void mma_load_tile(wbf* dst, const bf16* __restrict__ src, index_t ld,
                                              index_t row0, index_t n) {
  constexpr int chunks = HD / 8;  // 8 bf16 per 16-byte chunk
  for (int e = int(threadIdx.x); e < mma_rows * chunks; e += mma_threads) {
    const int r = e / chunks, c = (e % chunks) * 8;
    const index_t i = row0 + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (i < n) v = *reinterpret_cast<const uint4*>(src + i * ld + c);
    *reinterpret_cast<uint4*>(dst + r * mma_dims<HD>::ldb + c) = v;
  }
}

__device__ __forceinline__ wbf to_wbf(float x) { return __float2bfloat16_rn(x); }

/// S (16 x 64, fp32, ld lds) = A (16 x HD, the warp's fragments) times the transpose of the
/// 64 x HD tile `t`: four 16-column blocks, HD / 16 MMAs each.
template <int HD>
__device__ __forceinline__ void mma_times_transpose(float* s, const a_frag (&a)[HD / 16],
                                                    const wbf* t) {
  for (int j = 0; j < mma_tile / 16; ++j) {
    c_frag acc;
    wm::fill_fragment(acc, 0.0f);
    for (int k = 0; k < HD / 16; ++k) {
      b_col bt;  // B(k, n) = t[16 j + n][16 k + k']
      wm::load_matrix_sync(bt, t + j * 16 * mma_dims<HD>::ldb + k * 16, mma_dims<HD>::ldb);
      wm::mma_sync(acc, a[k], bt, acc);
    }
    wm::store_matrix_sync(s + j * 16, acc, mma_dims<HD>::lds, wm::mem_row_major);
  }
}

/// acc[j] += P (16 x 64 bf16, ld ldp) times the 64 x HD tile `t` (row-major B).
template <int HD>
__device__ __forceinline__ void mma_accumulate(c_frag (&acc)[HD / 16], const wbf* p, const wbf* t) {
  for (int j = 0; j < HD / 16; ++j)
    for (int k = 0; k < mma_tile / 16; ++k) {
      a_frag pa;
      b_row tb;
      wm::load_matrix_sync(pa, p + k * 16, mma_dims<HD>::ldp);
      wm::load_matrix_sync(tb, t + k * 16 * mma_dims<HD>::ldb + j * 16, mma_dims<HD>::ldb);
      wm::mma_sync(acc[j], pa, tb, acc[j]);
    }
}

template <int HD>
__device__ __forceinline__ void mma_load_rows(a_frag (&f)[HD / 16], const wbf* tile, int warp) {
  for (int k = 0; k < HD / 16; ++k)
    wm::load_matrix_sync(f[k], tile + warp * 16 * mma_dims<HD>::ldb + k * 16, mma_dims<HD>::ldb);
}

/// Writes the warp's 16 x HD accumulators, times `mul`, as bf16 rows row0 + r < n of dst
/// (leading dimension ld), through the fp32 scratch s [16][lds].
template <int HD>
__device__ __forceinline__ void mma_store_rows(const c_frag (&acc)[HD / 16], float* s, float mul,
                                               bf16* __restrict__ dst, index_t ld, index_t row0,
                                               index_t n) {
  for (int j = 0; j < HD / 16; ++j)
    wm::store_matrix_sync(s + j * 16, acc[j], mma_dims<HD>::lds, wm::mem_row_major);
  __syncwarp();
  const int lane = int(threadIdx.x) % 32, r = lane / 2, half = lane % 2;
  const index_t i = row0 + r;
  if (i < n)
    for (int c = half * (HD / 2); c < (half + 1) * (HD / 2); ++c)
      dst[i * ld + c] = bf16(s[r * mma_dims<HD>::lds + c] * mul);
  __syncwarp();
}

template <int HD>
__global__ void __launch_bounds__(mma_threads)
    attention_forward_mma_kernel(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                                 float* __restrict__ lse, index_t n, int heads, float scale) {
  using L = mma_dims<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  wbf* qs = reinterpret_cast<wbf*>(smem);
  wbf* ks = qs + mma_rows * L::ldb;
  wbf* vs = ks + mma_rows * L::ldb;
  float* sbuf = reinterpret_cast<float*>(vs + mma_rows * L::ldb);
  wbf* pbuf = reinterpret_cast<wbf*>(sbuf + mma_warps * 16 * L::lds);
  float* obuf = reinterpret_cast<float*>(pbuf + mma_warps * 16 * L::ldp);

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int r = lane / 2, half = lane % 2;
  const index_t q0 = index_t(blockIdx.x) * mma_rows;
  const int h = int(blockIdx.y);
  const index_t b = blockIdx.z, d = index_t(heads) * HD, ld = 3 * d;
  const bf16* base = qkv + b * n * ld + index_t(h) * HD;
  float* s = sbuf + warp * 16 * L::lds;
  wbf* p = pbuf + warp * 16 * L::ldp;
  float* o = obuf + warp * 16 * L::ldo;

  mma_load_tile<HD>(qs, base, ld, q0, n);
  for (int c = half * (HD / 2); c < (half + 1) * (HD / 2); ++c) o[r * L::ldo + c] = 0.0f;
  __syncthreads();
  a_frag qf[HD / 16];
  mma_load_rows<HD>(qf, qs, warp);
  float m = -INFINITY, l = 0.0f;  // this lane pair's row: running max and sum
  for (index_t kt = 0; kt < n; kt += mma_tile) {
    __syncthreads();  // every warp is done with the previous K, V tiles
    mma_load_tile<HD>(ks, base + d, ld, kt, n);
    mma_load_tile<HD>(vs, base + 2 * d, ld, kt, n);
    __syncthreads();
    mma_times_transpose<HD>(s, qf, ks);
    __syncwarp();
    float mx = -INFINITY;
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const float v = kt + c < n ? s[r * L::lds + c] * scale : -INFINITY;
      s[r * L::lds + c] = v;
      mx = fmaxf(mx, v);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);  // finite: the tile holds key kt < n
    float sum = 0.0f;
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const wbf pv = to_wbf(expf(s[r * L::lds + c] - m_new));  // masked keys: exp(-inf) = 0
      p[r * L::ldp + c] = pv;
      sum += __bfloat162float(pv);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    const float alpha = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l = l * alpha + sum;
    m = m_new;
    __syncwarp();  // P written, S read by every lane: the scratch takes P V next
    for (int j = 0; j < HD / 16; ++j) {
      c_frag acc;
      wm::fill_fragment(acc, 0.0f);
      for (int k = 0; k < mma_tile / 16; ++k) {
        a_frag pa;
        b_row vb;
        wm::load_matrix_sync(pa, p + k * 16, L::ldp);
        wm::load_matrix_sync(vb, vs + k * 16 * L::ldb + j * 16, L::ldb);
        wm::mma_sync(acc, pa, vb, acc);
      }
      wm::store_matrix_sync(s + j * 16, acc, L::lds, wm::mem_row_major);
    }
    __syncwarp();
    for (int c = half * (HD / 2); c < (half + 1) * (HD / 2); ++c)
      o[r * L::ldo + c] = o[r * L::ldo + c] * alpha + s[r * L::lds + c];
    __syncwarp();
  }
  const index_t i = q0 + warp * 16 + r;
  if (i < n) {
    const float inv = 1.0f / l;
    bf16* orow = out + (b * n + i) * d + index_t(h) * HD;
    for (int c = half * (HD / 2); c < (half + 1) * (HD / 2); ++c)
      orow[c] = bf16(o[r * L::ldo + c] * inv);
    if (half == 0) lse[(b * heads + h) * n + i] = m + logf(l);
  }
}

template <int HD>
__global__ void __launch_bounds__(mma_threads)
    attention_dkdv_mma_kernel(const bf16* __restrict__ qkv, const bf16* __restrict__ dout,
                              const float* __restrict__ lse, const float* __restrict__ delta,
                              bf16* __restrict__ dqkv, index_t n, int heads, float scale) {
  using L = mma_dims<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  wbf* ks = reinterpret_cast<wbf*>(smem);
  wbf* vs = ks + mma_rows * L::ldb;
  wbf* qs = vs + mma_rows * L::ldb;
  wbf* dos = qs + mma_rows * L::ldb;
  float* sbuf = reinterpret_cast<float*>(dos + mma_rows * L::ldb);
  float* dpbuf = sbuf + mma_warps * 16 * L::lds;
  wbf* pbuf = reinterpret_cast<wbf*>(dpbuf + mma_warps * 16 * L::lds);
  wbf* dsbuf = pbuf + mma_warps * 16 * L::ldp;
  float* lse_s = reinterpret_cast<float*>(dsbuf + mma_warps * 16 * L::ldp);
  float* delta_s = lse_s + mma_rows;

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int r = lane / 2, half = lane % 2;
  const index_t k0 = index_t(blockIdx.x) * mma_rows;
  const int h = int(blockIdx.y);
  const index_t b = blockIdx.z, d = index_t(heads) * HD, ld = 3 * d;
  const bf16* base = qkv + b * n * ld + index_t(h) * HD;
  const bf16* gbase = dout + b * n * d + index_t(h) * HD;
  const float* lrow = lse + (b * heads + h) * n;
  const float* drow = delta + (b * heads + h) * n;
  float* s = sbuf + warp * 16 * L::lds;
  float* dp = dpbuf + warp * 16 * L::lds;
  wbf* p = pbuf + warp * 16 * L::ldp;
  wbf* ds = dsbuf + warp * 16 * L::ldp;

  mma_load_tile<HD>(ks, base + d, ld, k0, n);
  mma_load_tile<HD>(vs, base + 2 * d, ld, k0, n);
  __syncthreads();
  a_frag kf[HD / 16], vf[HD / 16];
  mma_load_rows<HD>(kf, ks, warp);
  mma_load_rows<HD>(vf, vs, warp);
  c_frag dk[HD / 16], dv[HD / 16];
  for (int j = 0; j < HD / 16; ++j) wm::fill_fragment(dk[j], 0.0f), wm::fill_fragment(dv[j], 0.0f);
  for (index_t qt = 0; qt < n; qt += mma_tile) {
    __syncthreads();  // every warp is done with the previous query tiles
    mma_load_tile<HD>(qs, base, ld, qt, n);
    mma_load_tile<HD>(dos, gbase, d, qt, n);
    for (int e = int(threadIdx.x); e < mma_rows; e += mma_threads) {
      const bool in = qt + e < n;
      lse_s[e] = in ? lrow[qt + e] : 0.0f;
      delta_s[e] = in ? drow[qt + e] : 0.0f;
    }
    __syncthreads();
    mma_times_transpose<HD>(s, kf, qs);    // S^T = K Q^T   [16 keys, 64 queries]
    mma_times_transpose<HD>(dp, vf, dos);  // dP^T = V dO^T
    __syncwarp();
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const float pv = qt + c < n ? expf(s[r * L::lds + c] * scale - lse_s[c]) : 0.0f;
      p[r * L::ldp + c] = to_wbf(pv);
      ds[r * L::ldp + c] = to_wbf(pv * (dp[r * L::lds + c] - delta_s[c]));
    }
    __syncwarp();
    mma_accumulate<HD>(dv, p, dos);  // dV += P^T dO
    mma_accumulate<HD>(dk, ds, qs);  // dK += dS^T Q
  }
  mma_store_rows<HD>(dk, s, scale, dqkv + b * n * ld + d + index_t(h) * HD, ld, k0 + warp * 16, n);
  mma_store_rows<HD>(dv, s, 1.0f, dqkv + b * n * ld + 2 * d + index_t(h) * HD, ld, k0 + warp * 16,
                     n);
}

template <int HD>
__global__ void __launch_bounds__(mma_threads)
    attention_dq_mma_kernel(const bf16* __restrict__ qkv, const bf16* __restrict__ dout,
                            const float* __restrict__ lse, const float* __restrict__ delta,
                            bf16* __restrict__ dqkv, index_t n, int heads, float scale) {
  using L = mma_dims<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  wbf* qs = reinterpret_cast<wbf*>(smem);
  wbf* dos = qs + mma_rows * L::ldb;
  wbf* ks = dos + mma_rows * L::ldb;
  wbf* vs = ks + mma_rows * L::ldb;
  float* sbuf = reinterpret_cast<float*>(vs + mma_rows * L::ldb);
  float* dpbuf = sbuf + mma_warps * 16 * L::lds;
  wbf* dsbuf = reinterpret_cast<wbf*>(dpbuf + mma_warps * 16 * L::lds);

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int r = lane / 2, half = lane % 2;
  const index_t q0 = index_t(blockIdx.x) * mma_rows;
  const int h = int(blockIdx.y);
  const index_t b = blockIdx.z, d = index_t(heads) * HD, ld = 3 * d;
  const bf16* base = qkv + b * n * ld + index_t(h) * HD;
  float* s = sbuf + warp * 16 * L::lds;
  float* dp = dpbuf + warp * 16 * L::lds;
  wbf* ds = dsbuf + warp * 16 * L::ldp;
  const index_t i = q0 + warp * 16 + r;  // this lane pair's query
  const float lse_i = i < n ? lse[(b * heads + h) * n + i] : 0.0f;
  const float delta_i = i < n ? delta[(b * heads + h) * n + i] : 0.0f;

  mma_load_tile<HD>(qs, base, ld, q0, n);
  mma_load_tile<HD>(dos, dout + b * n * d + index_t(h) * HD, d, q0, n);
  __syncthreads();
  a_frag qf[HD / 16], dof[HD / 16];
  mma_load_rows<HD>(qf, qs, warp);
  mma_load_rows<HD>(dof, dos, warp);
  c_frag dq[HD / 16];
  for (int j = 0; j < HD / 16; ++j) wm::fill_fragment(dq[j], 0.0f);
  for (index_t kt = 0; kt < n; kt += mma_tile) {
    __syncthreads();
    mma_load_tile<HD>(ks, base + d, ld, kt, n);
    mma_load_tile<HD>(vs, base + 2 * d, ld, kt, n);
    __syncthreads();
    mma_times_transpose<HD>(s, qf, ks);    // S = Q K^T
    mma_times_transpose<HD>(dp, dof, vs);  // dP = dO V^T
    __syncwarp();
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const float pv = kt + c < n ? expf(s[r * L::lds + c] * scale - lse_i) : 0.0f;
      ds[r * L::ldp + c] = to_wbf(pv * (dp[r * L::lds + c] - delta_i));
    }
    __syncwarp();
    mma_accumulate<HD>(dq, ds, ks);  // dQ += dS K
  }
  mma_store_rows<HD>(dq, s, scale, dqkv + b * n * ld + index_t(h) * HD, ld, q0 + warp * 16, n);
}

/// Raises a kernel's dynamic shared memory limit to `bytes` (once per kernel).
template <class Kernel>
void allow_shared_memory(Kernel k, int bytes) {
  FLSL_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <int HD>
void attention_forward_mma(const bf16* qkv, bf16* out, float* lse, index_t b, index_t n, int heads,
                           float scale) {
  using L = mma_dims<HD>;
  static const bool ready =
      (allow_shared_memory(attention_forward_mma_kernel<HD>, L::forward_smem), true);
  (void)ready;
  const dim3 grid(unsigned((n + mma_rows - 1) / mma_rows), unsigned(heads), unsigned(b));
  attention_forward_mma_kernel<HD>
      <<<grid, mma_threads, L::forward_smem, current_stream()>>>(qkv, out, lse, n, heads, scale);
  cuda_detail::check_launch("attention_forward_mma_kernel");
}

template <int HD>
void attention_backward_mma(const bf16* qkv, const bf16* dout, const float* lse, const float* delta,
                            bf16* dqkv, index_t b, index_t n, int heads, float scale) {
  using L = mma_dims<HD>;
  static const bool ready =
      (allow_shared_memory(attention_dkdv_mma_kernel<HD>, L::backward_smem),
       allow_shared_memory(attention_dq_mma_kernel<HD>, L::backward_smem), true);
  (void)ready;
  const dim3 grid(unsigned((n + mma_rows - 1) / mma_rows), unsigned(heads), unsigned(b));
  attention_dkdv_mma_kernel<HD><<<grid, mma_threads, L::backward_smem, current_stream()>>>(
      qkv, dout, lse, delta, dqkv, n, heads, scale);
  cuda_detail::check_launch("attention_dkdv_mma_kernel");
  attention_dq_mma_kernel<HD><<<grid, mma_threads, L::backward_smem, current_stream()>>>(
      qkv, dout, lse, delta, dqkv, n, heads, scale);
  cuda_detail::check_launch("attention_dq_mma_kernel");
}

}  // namespace cuda_ops::detail

}  // namespace flsl
