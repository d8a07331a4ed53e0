// exp and erf for f32 as straight-line arithmetic (no calls; selects, not branches), so that the
// CPU's elementwise loops over them vectorise: GELU and its derivative, whose libm erff and expf
// calls were about 10% of the ViT training step on the CPU (perf, bench_flsl_step). Host code only;
// the CUDA paths keep CUDA's erff / expf.
//
// exp_f32 also serves softmax (autograd/ops/softmax.hpp); its test is in
// tests/autograd/test_ops_a.cpp, erf_f32's and GELU's in tests/core/test_vector_math.cpp.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../core/config.hpp"

namespace flsl::detail {

/// c ? a : b, as a blend of the bits by a mask made from c. Under GCC's default -ftrapping-math, a
/// float ?: (or std::min / std::max) in a loop stays a branch on AVX2 targets, and the loop stays
/// scalar (only AVX-512's masked operations let GCC if-convert it): exp_f32 and erf_f32 then ran
/// one element at a time on AVX2 machines. The mask and two ands trap on nothing and vectorise.
FLSL_INLINE float select_f32(bool c, float a, float b) {
  const std::int32_t m = -std::int32_t(c);
  return std::bit_cast<float>((std::bit_cast<std::int32_t>(a) & m) |
                              (std::bit_cast<std::int32_t>(b) & ~m));
}

/// e^x in f32 in straight-line code that the compiler vectorises (std::exp is one library call
/// per element, ~10x slower here). Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by a
/// degree-6 polynomial, times 2^n built in the exponent bits (as two factors, so n = 128 works).
/// Within 1.03 ulp of e^x on [-87.3, 88.7] (checked over every float there); 0 below, where e^x
/// is subnormal (< 1.2e-38); inf above; NaN stays NaN; exp_f32(0) = 1 exactly.
FLSL_INLINE float exp_f32(float x) {
  constexpr float hi = 88.72283935546875f, lo = -87.33654022216797f;
  constexpr float round_magic = 12582912.0f;   // 1.5 * 2^23: adding it rounds to an integer
  const float xl = select_f32(x < lo, lo, x);  // NaN stays NaN
  const float xc = select_f32(xl > hi, hi, xl);
  const float t = xc * 1.44269504088896341f + round_magic;
  const float n = t - round_magic;                                // round(x / ln2)
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;  // x - n ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t ni = std::bit_cast<std::int32_t>(t) - std::bit_cast<std::int32_t>(round_magic);
  const std::int32_t h = ni >> 1;
  const float res =
      p * std::bit_cast<float>((h + 127) << 23) * std::bit_cast<float>((ni - h + 127) << 23);
  return select_f32(x < lo, 0.0f, select_f32(x > hi, std::numeric_limits<float>::infinity(), res));
}
/// erf(x) (coefficients from tools/fit_erf_f32.py). For |x| < 1, x P(x^2) with P of degree 6;
/// for 1 <= |x| < 4, 1 - e^(-x^2) Q(1 / |x|) with Q of degree 10 fitting erfc(t) e^(t^2); beyond 4,
/// +-1 (erfc(4) = 1.5e-8 is below half an ulp of 1). P and Q are relative minimax fits (iteratively
/// reweighted least squares, in f64; max relative error 1.2e-9 and 2.2e-9 before rounding to f32).
FLSL_INLINE float erf_f32(float x) {
  const float ax = std::fabs(x);
  const float t = select_f32(ax < 4.0f, ax, 4.0f);
  const float z = t * t;
  float a = 7.854205426e-05f;
  a = a * z + -8.010306955e-04f;
  a = a * z + 5.188342056e-03f;
  a = a * z + -2.685382069e-02f;
  a = a * z + 1.128358541e-01f;
  a = a * z + -3.761262586e-01f;
  a = a * z + 1.128379166e+00f;
  const float near_zero = t * a;
  const float s = 1.0f / select_f32(t < 1.0f, 1.0f, t);
  float b = -3.674801691e-02f;
  b = b * s + 2.556074982e-01f;
  b = b * s + -7.860177992e-01f;
  b = b * s + 1.385315375e+00f;
  b = b * s + -1.485027095e+00f;
  b = b * s + 8.731492370e-01f;
  b = b * s + -5.724008626e-02f;
  b = b * s + -2.888541100e-01f;
  b = b * s + 3.729580897e-03f;
  b = b * s + 5.636390954e-01f;
  b = b * s + 2.989619159e-05f;
  const float tail = 1.0f - exp_f32(-z) * b;
  const float r = std::copysign(select_f32(t < 1.0f, near_zero, tail), x);
  return select_f32(x != x, x, r);
}

}  // namespace flsl::detail
