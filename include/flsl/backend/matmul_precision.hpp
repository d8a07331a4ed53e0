// The precision of f32 matrix products, a library-wide setting like PyTorch's
// torch.set_float32_matmul_precision: f32 tensors stay f32 in memory, and `matmul` / `matmul_into`
// on them may round their inputs to TF32, bf16 or fp16 and accumulate in fp32 (the tensor-core
// paths of cuBLASLt: CUBLAS_COMPUTE_32F_FAST_TF32, _FAST_16BF, _FAST_16F). The CPU backend
// emulates the same input rounding (round to nearest even) on Eigen's fp32 GEMM, so that what a
// reduced precision does to a training step can be tested without a GPU; on the CPU it is slower
// than `exact`, never faster. f64 and bf16 tensors ignore the setting.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "../core/error.hpp"

namespace flsl {

/// How f32 matrix products treat their inputs.
enum class matmul_precision : std::uint8_t {
  exact,  // fp32 inputs and arithmetic (the default)
  tf32,   // inputs rounded to TF32: 8 exponent bits, 10 mantissa bits
  bf16,   // inputs rounded to bfloat16: 8 exponent bits, 7 mantissa bits
  fp16,   // inputs rounded to IEEE half: 5 exponent bits, 10 mantissa bits (overflows past 65504)
};

inline std::string_view to_string(matmul_precision p) {
  switch (p) {
    case matmul_precision::exact:
      return "exact";
    case matmul_precision::tf32:
      return "tf32";
    case matmul_precision::bf16:
      return "bf16";
    case matmul_precision::fp16:
      return "fp16";
  }
  return "?";
}

/// "exact", "tf32", "bf16" or "fp16"; anything else throws, naming the value.
inline matmul_precision parse_matmul_precision(std::string_view s) {
  for (auto p : {matmul_precision::exact, matmul_precision::tf32, matmul_precision::bf16,
                 matmul_precision::fp16})
    if (s == to_string(p)) return p;
  fail("matmul precision '", s, "' is not one of exact, tf32, bf16, fp16");
}

namespace detail {
inline std::atomic<matmul_precision>& matmul_precision_setting() {
  static std::atomic<matmul_precision> p{matmul_precision::exact};
  return p;
}
}  // namespace detail

/// The precision every f32 matmul uses from now on, on every thread and device.
inline void set_matmul_precision(matmul_precision p) {
  detail::matmul_precision_setting().store(p, std::memory_order_relaxed);
}
inline matmul_precision get_matmul_precision() {
  return detail::matmul_precision_setting().load(std::memory_order_relaxed);
}

/// Sets the precision for a scope and restores the previous one at its end. The setting is
/// global: scopes on several threads at once do not nest.
class matmul_precision_scope {
 public:
  explicit matmul_precision_scope(matmul_precision p) : prev_(get_matmul_precision()) {
    set_matmul_precision(p);
  }
  ~matmul_precision_scope() { set_matmul_precision(prev_); }
  matmul_precision_scope(const matmul_precision_scope&) = delete;
  matmul_precision_scope& operator=(const matmul_precision_scope&) = delete;

 private:
  matmul_precision prev_;
};

namespace detail {

/// Rounds x to nearest (ties to even), keeping `keep` of float's 23 mantissa bits; the exponent
/// range stays float's. Infinities and NaNs pass unchanged.
inline float round_mantissa(float x, int keep) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return x;
  const int drop = 23 - keep;
  const std::uint32_t half = (std::uint32_t(1) << (drop - 1)) - 1;
  u += half + ((u >> drop) & 1u);  // a carry into the exponent is the correct round-up
  u &= ~((std::uint32_t(1) << drop) - 1);
  std::memcpy(&x, &u, 4);
  return x;
}

/// x rounded to IEEE half (and back to float): nearest, ties to even, subnormals below 2^-14 in
/// steps of 2^-24, +-inf from 65520 on (the tie between 65504 and 2^16 goes to the even 2^16).
inline float round_to_fp16(float x) {
  const float a = std::fabs(x);
  if (!(a < 65520.0f)) return std::isnan(x) ? x : std::copysign(INFINITY, x);
  if (a < 6.103515625e-05f)  // 2^-14: scale by 2^24 (exact), round to an integer, scale back
    return std::copysign(std::nearbyint(a * 16777216.0f) * 5.9604644775390625e-08f, x);
  return round_mantissa(x, 10);
}

/// One value rounded as precision p rounds a GEMM input.
inline float round_for_matmul(float x, matmul_precision p) {
  switch (p) {
    case matmul_precision::exact:
      return x;
    case matmul_precision::tf32:
      return round_mantissa(x, 10);
    case matmul_precision::bf16:
      return round_mantissa(x, 7);
    case matmul_precision::fp16:
      return round_to_fp16(x);
  }
  return x;
}

}  // namespace detail
}  // namespace flsl
