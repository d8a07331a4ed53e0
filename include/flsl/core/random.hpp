// Counter-based random numbers (Philox4x32-10): the same (seed, offset) gives the same numbers on
// every thread count and on every device.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "config.hpp"

namespace flsl {

/// One Philox4x32-10 block (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11):
/// four 32-bit outputs for a 128-bit counter under a 64-bit key. Pure function, usable on device.
struct philox4x32 {
  static constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  static constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;

  FLSL_HD static std::array<std::uint32_t, 4> block(std::array<std::uint32_t, 4> c,
                                                    std::array<std::uint32_t, 2> k) {
    for (int round = 0; round < 10; ++round) {
      const std::uint64_t p0 = std::uint64_t(m0) * c[0];
      const std::uint64_t p1 = std::uint64_t(m1) * c[2];
      c = {std::uint32_t(p1 >> 32) ^ c[1] ^ k[0], std::uint32_t(p1),
           std::uint32_t(p0 >> 32) ^ c[3] ^ k[1], std::uint32_t(p0)};
      k[0] += w0;
      k[1] += w1;
    }
    return c;
  }
  /// The 32-bit word number `index` of the stream (seed, stream): words 4i..4i+3 come from
  /// counter (i, stream).
  FLSL_HD static std::uint32_t word(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
    const std::uint64_t ctr = index >> 2;
    auto out = block({std::uint32_t(ctr), std::uint32_t(ctr >> 32), std::uint32_t(stream),
                      std::uint32_t(stream >> 32)},
                     {std::uint32_t(seed), std::uint32_t(seed >> 32)});
    return out[index & 3];
  }
};

/// Uniform double in [0, 1) from two 32-bit words (53 random bits).
FLSL_HD inline double u01_from_words(std::uint32_t hi, std::uint32_t lo) {
  const std::uint64_t bits = (std::uint64_t(hi) << 21) ^ (std::uint64_t(lo) >> 11);
  return double(bits & ((std::uint64_t(1) << 53) - 1)) * 0x1.0p-53;
}

/// Standard normal from the element index: element i uses words 4i..4i+3 of the stream (Box-Muller
/// on the first two uniform doubles), so any element can be drawn independently (parallel fill).
FLSL_HD inline double normal_at(std::uint64_t seed, std::uint64_t stream, std::uint64_t i) {
  const std::uint64_t ctr = i;
  auto w = philox4x32::block({std::uint32_t(ctr), std::uint32_t(ctr >> 32), std::uint32_t(stream),
                              std::uint32_t(stream >> 32)},
                             {std::uint32_t(seed), std::uint32_t(seed >> 32)});
  const double u1 = 1.0 - u01_from_words(w[0], w[1]);  // (0, 1]
  const double u2 = u01_from_words(w[2], w[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
}

/// Uniform double in [0, 1) for element i (one Philox block per element, words 0 and 1).
FLSL_HD inline double uniform_at(std::uint64_t seed, std::uint64_t stream, std::uint64_t i) {
  auto w = philox4x32::block({std::uint32_t(i), std::uint32_t(i >> 32), std::uint32_t(stream),
                              std::uint32_t(stream >> 32)},
                             {std::uint32_t(seed), std::uint32_t(seed >> 32)});
  return u01_from_words(w[0], w[1]);
}

/// Mixes several integers into one 64-bit stream id (splitmix64 finaliser per step), for deriving
/// independent streams such as (epoch, image index, view).
inline constexpr std::uint64_t mix_stream(std::uint64_t a) { return a; }
template <class... Rest>
constexpr std::uint64_t mix_stream(std::uint64_t a, std::uint64_t b, Rest... rest) {
  std::uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E5Bull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return mix_stream(z, std::uint64_t(rest)...);
}

/// A sequential stream of random numbers over Philox keyed by (seed, stream). Its whole state is
/// (seed, stream, offset): save offset() in a checkpoint and set_offset() to continue exactly.
class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0, std::uint64_t stream = 0)
      : seed_(seed), stream_(stream) {}

  std::uint32_t next_u32() {
    const std::uint64_t block = offset_ >> 2;
    if (!cached_ || block != cached_block_) refill(block);
    return buf_[offset_++ & 3];
  }
  /// Uniform in [0, 1) with 53 random bits (consumes two words).
  double uniform() {
    const std::uint32_t hi = next_u32();
    return u01_from_words(hi, next_u32());
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [0, n) without modulo bias (Lemire's method, rejection on the low part).
  std::uint32_t uniform_int(std::uint32_t n) {
    std::uint64_t m = std::uint64_t(next_u32()) * n;
    auto low = std::uint32_t(m);
    if (low < n) {
      const std::uint32_t threshold = std::uint32_t(-n) % n;
      while (low < threshold) {
        m = std::uint64_t(next_u32()) * n;
        low = std::uint32_t(m);
      }
    }
    return std::uint32_t(m >> 32);
  }
  /// Standard normal (Box-Muller, consumes four words; the second value is not cached so that the
  /// state stays a single offset).
  double normal() {
    const double u1 = 1.0 - uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
  }

  std::uint64_t seed() const { return seed_; }
  std::uint64_t stream() const { return stream_; }
  std::uint64_t offset() const { return offset_; }
  void set_offset(std::uint64_t offset) { offset_ = offset; }

 private:
  void refill(std::uint64_t block) {
    buf_ = philox4x32::block({std::uint32_t(block), std::uint32_t(block >> 32),
                              std::uint32_t(stream_), std::uint32_t(stream_ >> 32)},
                             {std::uint32_t(seed_), std::uint32_t(seed_ >> 32)});
    cached_block_ = block;
    cached_ = true;
  }

  std::uint64_t seed_, stream_;
  std::uint64_t offset_ = 0;
  std::uint64_t cached_block_ = 0;
  std::array<std::uint32_t, 4> buf_{};
  bool cached_ = false;
};

}  // namespace flsl
