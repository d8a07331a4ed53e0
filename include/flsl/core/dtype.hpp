// Element types: bf16 storage type, the run-time dtype tag and the traits that map between them.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "config.hpp"

namespace flsl {

/// bfloat16 storage: the upper 16 bits of an IEEE float. Arithmetic happens in float; conversion
/// from float rounds to nearest even and keeps NaN a NaN.
struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  FLSL_HD explicit bf16(float f) : bits(from_float(f)) {}
  FLSL_HD explicit operator float() const { return to_float(bits); }

  FLSL_HD static std::uint16_t from_float(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7FFFu + ((u >> 16) & 1u);
    return std::uint16_t(u >> 16);
  }
  FLSL_HD static float to_float(std::uint16_t b) {
    const std::uint32_t u = std::uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  friend bool operator==(bf16 a, bf16 b) { return a.bits == b.bits; }
};

/// Run-time dtype tag, used where types meet files (npy, safetensors) and in error messages.
enum class dtype : std::uint8_t { f32, f64, bf16, i32, i64, u8, boolean };

template <class T>
struct dtype_traits;
template <>
struct dtype_traits<float> {
  static constexpr dtype tag = dtype::f32;
  using compute = float;
};
template <>
struct dtype_traits<double> {
  static constexpr dtype tag = dtype::f64;
  using compute = double;
};
template <>
struct dtype_traits<bf16> {
  static constexpr dtype tag = dtype::bf16;
  using compute = float;
};
template <>
struct dtype_traits<std::int32_t> {
  static constexpr dtype tag = dtype::i32;
  using compute = std::int32_t;
};
template <>
struct dtype_traits<std::int64_t> {
  static constexpr dtype tag = dtype::i64;
  using compute = std::int64_t;
};
template <>
struct dtype_traits<std::uint8_t> {
  static constexpr dtype tag = dtype::u8;
  using compute = std::int32_t;
};
template <>
struct dtype_traits<bool> {
  static constexpr dtype tag = dtype::boolean;
  using compute = bool;
};

template <class T>
concept element = requires {
  dtype_traits<T>::tag;
};
/// The type arithmetic on T happens in (float for bf16, T otherwise).
template <class T>
using compute_t = typename dtype_traits<T>::compute;
template <class T>
inline constexpr dtype dtype_of = dtype_traits<T>::tag;
template <class T>
inline constexpr bool is_floating =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>;

constexpr std::string_view dtype_name(dtype d) {
  switch (d) {
    case dtype::f32:
      return "f32";
    case dtype::f64:
      return "f64";
    case dtype::bf16:
      return "bf16";
    case dtype::i32:
      return "i32";
    case dtype::i64:
      return "i64";
    case dtype::u8:
      return "u8";
    case dtype::boolean:
      return "bool";
  }
  return "?";
}
constexpr std::size_t dtype_size(dtype d) {
  switch (d) {
    case dtype::f32:
    case dtype::i32:
      return 4;
    case dtype::f64:
    case dtype::i64:
      return 8;
    case dtype::bf16:
      return 2;
    case dtype::u8:
    case dtype::boolean:
      return 1;
  }
  return 0;
}

/// Converts between element types through their compute types (bf16 via float).
template <class To, class From>
FLSL_HD constexpr To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, bf16>) {
    return convert<To>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bf16>) {
    return bf16(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

}  // namespace flsl
