// A 16-lane float vector type for the pixel loops (GCC/Clang vector extensions: one AVX-512
// register, two AVX2 registers, or whatever the target offers).
#pragma once

namespace flsl::data::simd {

inline constexpr int lanes = 16;
/// Use only for local variables, loaded and stored with std::memcpy: passing it by value across a
/// function boundary has an ABI that depends on -march (GCC warns with -Wpsabi).
typedef float vf16 __attribute__((vector_size(64)));

}  // namespace flsl::data::simd
