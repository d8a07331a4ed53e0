// Philox against the Random123 known-answer vectors; determinism of random tensors.
#include <doctest/doctest.h>

#include <cmath>
#include <flsl/flsl.hpp>

using namespace flsl;

TEST_CASE("philox4x32-10 matches the Random123 known-answer test vectors") {
  // kat_vectors from Random123: philox4x32 10 rounds.
  auto a = philox4x32::block({0, 0, 0, 0}, {0, 0});
  CHECK(a == std::array<std::uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  auto b = philox4x32::block({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                             {0xffffffffu, 0xffffffffu});
  CHECK(b == std::array<std::uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  auto c = philox4x32::block({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                             {0xa4093822u, 0x299f31d0u});
  CHECK(c == std::array<std::uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("Generator resumes exactly from its offset") {
  Generator g(42, 7);
  for (int i = 0; i < 5; ++i) g.next_u32();
  const auto off = g.offset();
  std::vector<double> a;
  for (int i = 0; i < 10; ++i) a.push_back(g.uniform());
  Generator h(42, 7);
  h.set_offset(off);
  for (int i = 0; i < 10; ++i) CHECK(h.uniform() == a[std::size_t(i)]);
  Generator other(42, 8);
  CHECK(other.next_u32() != Generator(42, 7).next_u32());
}

TEST_CASE("uniform_int is unbiased and in range") {
  Generator g(1);
  std::array<int, 7> counts{};
  for (int i = 0; i < 70000; ++i) {
    const auto v = g.uniform_int(7);
    REQUIRE(v < 7);
    ++counts[v];
  }
  for (int c : counts) CHECK(std::abs(c - 10000) < 500);
}

TEST_CASE("randn has mean 0, variance 1 and depends only on (seed, offset)") {
  auto t = Tensor<double>::randn({200000}, 123);
  CHECK(std::abs(mean(t).item()) < 0.01);
  CHECK(std::abs(var(t).item() - 1.0) < 0.01);
  // element i of a tensor at offset k equals element i + k of a tensor at offset 0
  auto u = Tensor<double>::randn({100}, 123, 50);
  CHECK(u(0) == t(50));
  CHECK(u(99) == t(149));
  auto f = Tensor<float>::randn({100}, 123);
  CHECK(f(3) == float(t(3)));
}

TEST_CASE("trunc_normal stays in its bounds with the truncated moments") {
  auto t = Tensor<double>::trunc_normal({100000}, 9, 0, 0.0, 1.0, -2.0, 2.0);
  CHECK(min(t).item() >= -2.0);
  CHECK(max(t).item() <= 2.0);
  // variance of N(0,1) truncated to [-2, 2]: 1 - 2*2*phi(2)/(Phi(2)-Phi(-2)) = 0.7737
  CHECK(std::abs(var(t).item() - 0.7737) < 0.01);
  auto s = Tensor<float>::trunc_normal({1000}, 9, 0, 0.0, 0.02, -2.0, 2.0);
  CHECK(std::abs(std::sqrt(var(s).item()) - 0.02f) < 0.002f);
}

TEST_CASE("rand is uniform in [lo, hi)") {
  auto t = Tensor<double>::rand({100000}, 5, 0, -1.0, 3.0);
  CHECK(min(t).item() >= -1.0);
  CHECK(max(t).item() < 3.0);
  CHECK(std::abs(mean(t).item() - 1.0) < 0.02);
}
