// f32 matrix products on the CPU with a register-blocked FMA micro-kernel (AVX-512 or AVX2 + FMA),
// in the structure of BLIS / GotoBLAS: C = alpha A B + beta C is cut into blocks of KC along K and
// MC rows of A; B's block [KC, NC] is packed once into panels of NR columns and A's block
// [MC, KC] into panels of MR rows (both zero-padded, so the micro-kernel never branches on edges);
// the micro-kernel keeps an MR x NR tile of C in registers and, per k, multiplies one broadcast
// element of each of the MR rows of A with the NR-wide row of B.
//
// | instruction set | MR x NR | accumulators | packed B micro-panel (KC = 256) |
// |---|---|---|---|
// | AVX-512F | 12 x 32 | 24 zmm of 32 | 32 KiB (L1) |
// | AVX2 + FMA | 6 x 16 | 12 ymm of 16 | 16 KiB (L1) |
//
// Packing reads any row- or column-major operand (a transposed view costs nothing extra). A
// product runs on the calling thread, or with `parallel` on the task arena: the panels of B are
// packed by all threads, then the row blocks of A are shared out (MC shrinks so that every thread
// gets about two). Summation order depends only on the shapes and the instruction set, not on
// the thread count, so results repeat bit for bit on a machine whatever the threads.
//
// Compiled only where the translation unit targets AVX2 + FMA or AVX-512F (`FLSL_SGEMM_KERNEL`);
// elsewhere backend/cpu/gemm.hpp uses Eigen for f32 as for f64.
#pragma once

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define FLSL_SGEMM_KERNEL 1

#include <immintrin.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <utility>
#include <vector>

#include "../../core/shape.hpp"

namespace flsl::detail::sgemm {

#if defined(__AVX512F__)
using vec = __m512;
inline constexpr index_t lanes = 16;
inline constexpr index_t mr = 12;
[[gnu::always_inline]] inline vec vzero() { return _mm512_setzero_ps(); }
[[gnu::always_inline]] inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
[[gnu::always_inline]] inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
[[gnu::always_inline]] inline vec vset1(const float* p) { return _mm512_set1_ps(*p); }
[[gnu::always_inline]] inline vec vset1(float x) { return _mm512_set1_ps(x); }
[[gnu::always_inline]] inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
[[gnu::always_inline]] inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
#else
using vec = __m256;
inline constexpr index_t lanes = 8;
inline constexpr index_t mr = 6;
[[gnu::always_inline]] inline vec vzero() { return _mm256_setzero_ps(); }
[[gnu::always_inline]] inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
[[gnu::always_inline]] inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
[[gnu::always_inline]] inline vec vset1(const float* p) { return _mm256_broadcast_ss(p); }
[[gnu::always_inline]] inline vec vset1(float x) { return _mm256_set1_ps(x); }
[[gnu::always_inline]] inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
[[gnu::always_inline]] inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
#endif

inline constexpr index_t nr = 2 * lanes;  // two vectors per row of the C tile
inline constexpr index_t kc_max = 256;    // B's micro-panel (kc x nr floats) stays in L1
inline constexpr index_t mc_max = 144;    // A's block (mc x kc) stays in L2; a multiple of mr
inline constexpr index_t nc_max = 4096;   // B's packed block (kc x nc) in L2 / L3
static_assert(mc_max % mr == 0);

/// Products this small (or this thin) go to Eigen: padding a panel would waste most of the tile.
inline bool worth_it(index_t m, index_t n, index_t k) { return m >= mr && n >= lanes && k >= 8; }

/// 64-byte aligned scratch for packed panels, one per nesting depth of a thread: a thread that
/// waits inside a parallel product may run another product's task (oneTBB's work stealing), which
/// then takes the next buffer instead of the one in use.
class pack_buffers {
 public:
  struct buffer {
    struct free_deleter {
      void operator()(float* p) const { std::free(p); }
    };
    std::unique_ptr<float, free_deleter> data;
    std::size_t floats = 0;
    float* get(std::size_t n) {
      if (n > floats) {
        const std::size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
        data.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
        if (!data) throw std::bad_alloc();
        floats = bytes / sizeof(float);
      }
      return data.get();
    }
  };
  /// Holds buffer `depth` of this thread for the lifetime of the scope.
  class scope {
   public:
    scope() : self_(local()) { ++self_.depth_; }
    ~scope() { --self_.depth_; }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;
    float* get(std::size_t n) {
      auto& bufs = self_.bufs_;
      while (bufs.size() < self_.depth_) bufs.push_back(std::make_unique<buffer>());
      return bufs[self_.depth_ - 1]->get(n);
    }

   private:
    pack_buffers& self_;
  };

 private:
  static pack_buffers& local() {
    thread_local pack_buffers b;
    return b;
  }
  std::vector<std::unique_ptr<buffer>> bufs_;
  std::size_t depth_ = 0;
};

/// A [mc, kc] block of A (element (i, k) at a[i * rs + k * cs]) as panels of mr rows, k-major
/// inside a panel (mr values per k), rows past mc zero.
inline void pack_a(const float* a, index_t rs, index_t cs, index_t mc, index_t kc, float* out) {
  for (index_t i0 = 0; i0 < mc; i0 += mr, out += mr * kc) {
    const index_t m = std::min(mr, mc - i0);
    if (cs == 1) {  // row-major: read each row contiguously
      for (index_t r = 0; r < m; ++r) {
        const float* src = a + (i0 + r) * rs;
        for (index_t k = 0; k < kc; ++k) out[k * mr + r] = src[k];
      }
      for (index_t r = m; r < mr; ++r)
        for (index_t k = 0; k < kc; ++k) out[k * mr + r] = 0.0f;
    } else {  // column-major: mr contiguous values per k
      for (index_t k = 0; k < kc; ++k) {
        const float* src = a + k * cs + i0 * rs;
        index_t r = 0;
        for (; r < m; ++r) out[k * mr + r] = src[r * rs];
        for (; r < mr; ++r) out[k * mr + r] = 0.0f;
      }
    }
  }
}

/// Panels [p0, p1) of nr columns of a [kc, nc] block of B (element (k, j) at b[k * rs + j * cs]),
/// k-major inside a panel (nr values per k), columns past nc zero.
inline void pack_b(const float* b, index_t rs, index_t cs, index_t kc, index_t nc, index_t p0,
                   index_t p1, float* out) {
  for (index_t p = p0; p < p1; ++p) {
    const index_t j0 = p * nr, n = std::min(nr, nc - j0);
    float* o = out + p * nr * kc;
    if (cs == 1) {  // row-major: nr contiguous values per k
      for (index_t k = 0; k < kc; ++k) {
        const float* src = b + k * rs + j0;
        if (n == nr) {
          vstore(o + k * nr, vload(src));
          vstore(o + k * nr + lanes, vload(src + lanes));
        } else {
          index_t j = 0;
          for (; j < n; ++j) o[k * nr + j] = src[j];
          for (; j < nr; ++j) o[k * nr + j] = 0.0f;
        }
      }
    } else {  // column-major: read each column contiguously
      for (index_t j = 0; j < n; ++j) {
        const float* src = b + (j0 + j) * cs;
        for (index_t k = 0; k < kc; ++k) o[k * nr + j] = src[k * rs];
      }
      for (index_t j = n; j < nr; ++j)
        for (index_t k = 0; k < kc; ++k) o[k * nr + j] = 0.0f;
    }
  }
}

/// The mr x nr tile sum_k ap[k] (x) bp[k] over kc steps, into acc (2 vectors per row).
template <std::size_t... R>
[[gnu::always_inline]] inline void tile_product(index_t kc, const float* __restrict ap,
                                                const float* __restrict bp, vec* acc,
                                                std::index_sequence<R...>) {
  ((acc[2 * R] = vzero(), acc[2 * R + 1] = vzero()), ...);
#pragma GCC unroll 4
  for (index_t k = 0; k < kc; ++k) {
    const vec b0 = vload(bp), b1 = vload(bp + lanes);
    ((acc[2 * R] = vfma(vset1(ap + R), b0, acc[2 * R]),
      acc[2 * R + 1] = vfma(vset1(ap + R), b1, acc[2 * R + 1])),
     ...);
    ap += mr;
    bp += nr;
  }
}

/// C[0:m, 0:n] = alpha * tile + beta * C (C not read when beta == 0), tile as tile_product left it.
template <std::size_t... R>
[[gnu::always_inline]] inline void store_tile(const vec* acc, float* c, index_t ldc, index_t m,
                                              index_t n, float alpha, float beta,
                                              std::index_sequence<R...>) {
  const vec va = vset1(alpha);
  if (m == mr && n == nr) {
    if (beta == 0.0f) {
      ((vstore(c + R * ldc, vmul(va, acc[2 * R])),
        vstore(c + R * ldc + lanes, vmul(va, acc[2 * R + 1]))),
       ...);
    } else {
      const vec vb = vset1(beta);
      ((vstore(c + R * ldc, vfma(va, acc[2 * R], vmul(vb, vload(c + R * ldc)))),
        vstore(c + R * ldc + lanes,
               vfma(va, acc[2 * R + 1], vmul(vb, vload(c + R * ldc + lanes))))),
       ...);
    }
    return;
  }
  alignas(64) float t[mr * nr];
  ((vstore(t + R * nr, vmul(va, acc[2 * R])), vstore(t + R * nr + lanes, vmul(va, acc[2 * R + 1]))),
   ...);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j)
      c[i * ldc + j] = beta == 0.0f ? t[i * nr + j] : t[i * nr + j] + beta * c[i * ldc + j];
}

/// One mr x nr tile of C from packed panels.
inline void micro_kernel(index_t kc, const float* ap, const float* bp, float* c, index_t ldc,
                         index_t m, index_t n, float alpha, float beta) {
  constexpr auto rows = std::make_index_sequence<std::size_t(mr)>{};
  vec acc[2 * mr];
  tile_product(kc, ap, bp, acc, rows);
  store_tile(acc, c, ldc, m, n, alpha, beta, rows);
}

/// C = alpha A B + beta C for A [M, K] (element (i, k) at a[i * a_rs + k * a_cs]), B [K, N]
/// (b[k * b_rs + j * b_cs]) and row-major C [M, N] (leading dimension ldc). One of each operand's
/// strides is 1. beta == 0 never reads C. `parallel`: run on the current task arena.
inline void gemm(index_t M, index_t N, index_t K, float alpha, const float* a, index_t a_rs,
                 index_t a_cs, const float* b, index_t b_rs, index_t b_cs, float beta, float* c,
                 index_t ldc, bool parallel) {
  const int threads = parallel ? tbb::this_task_arena::max_concurrency() : 1;
  // about two row blocks per thread, each a multiple of mr rows
  index_t mc = mc_max;
  if (threads > 1) {
    const index_t per_block = (M + 2 * threads - 1) / (2 * threads);
    mc = std::clamp((per_block + mr - 1) / mr * mr, mr, mc_max);
  }
  // K in near-equal blocks of at most kc_max
  const index_t kblocks = (K + kc_max - 1) / kc_max, kc = (K + kblocks - 1) / kblocks;
  const index_t mblocks = (M + mc - 1) / mc;
  pack_buffers::scope bscope;
  const index_t nc_alloc = std::min(nc_max, (N + nr - 1) / nr * nr);
  float* bp = bscope.get(std::size_t(kc * nc_alloc));
  for (index_t jc = 0; jc < N; jc += nc_max) {
    const index_t nc = std::min(nc_max, N - jc), panels = (nc + nr - 1) / nr;
    for (index_t pc = 0; pc < K; pc += kc) {
      const index_t kcur = std::min(kc, K - pc);
      const float beta_k = pc == 0 ? beta : 1.0f;
      const float* bsrc = b + pc * b_rs + jc * b_cs;
      if (threads > 1 && panels > 1) {
        tbb::parallel_for(tbb::blocked_range<index_t>(0, panels),
                          [&](const tbb::blocked_range<index_t>& r) {
                            pack_b(bsrc, b_rs, b_cs, kcur, nc, r.begin(), r.end(), bp);
                          });
      } else {
        pack_b(bsrc, b_rs, b_cs, kcur, nc, 0, panels, bp);
      }
      auto row_block = [&](index_t blk) {
        const index_t ic = blk * mc, mcur = std::min(mc, M - ic);
        pack_buffers::scope ascope;
        float* ap = ascope.get(std::size_t(((mcur + mr - 1) / mr) * mr * kcur));
        pack_a(a + ic * a_rs + pc * a_cs, a_rs, a_cs, mcur, kcur, ap);
        for (index_t p = 0; p < panels; ++p) {
          const index_t j0 = p * nr, n = std::min(nr, nc - j0);
          const float* bpanel = bp + p * nr * kcur;
          for (index_t i0 = 0; i0 < mcur; i0 += mr)
            micro_kernel(kcur, ap + i0 * kcur, bpanel, c + (ic + i0) * ldc + jc + j0, ldc,
                         std::min(mr, mcur - i0), n, alpha, beta_k);
        }
      };
      if (threads > 1 && mblocks > 1) {
        tbb::parallel_for(tbb::blocked_range<index_t>(0, mblocks, 1),
                          [&](const tbb::blocked_range<index_t>& r) {
                            for (index_t blk = r.begin(); blk < r.end(); ++blk) row_block(blk);
                          });
      } else {
        for (index_t blk = 0; blk < mblocks; ++blk) row_block(blk);
      }
    }
  }
}

}  // namespace flsl::detail::sgemm

#endif
