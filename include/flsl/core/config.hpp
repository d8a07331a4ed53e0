// Compiler and device portability macros shared by every layer.
#pragma once

#include <cstddef>

#if defined(__CUDACC__)
#define FLSL_HD __host__ __device__
#define FLSL_CUDA_COMPILER 1
#else
#define FLSL_HD
#define FLSL_CUDA_COMPILER 0
#endif

#define FLSL_INLINE inline __attribute__((always_inline))

// Fully unrolls the next loop in device code (so that small index arrays stay in registers);
// nothing on the host compiler, whose -Wall would flag an unknown pragma.
#if defined(__CUDA_ARCH__)
#define FLSL_UNROLL _Pragma("unroll")
#else
#define FLSL_UNROLL
#endif

namespace flsl {
/// Largest tensor rank the library supports (shapes live in fixed-size arrays).
inline constexpr int max_rank = 8;
/// Alignment of every storage allocation in bytes (one cache line, one AVX-512 vector).
inline constexpr std::size_t storage_alignment = 64;
}  // namespace flsl
