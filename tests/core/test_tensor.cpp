// Tensor core: creation, views without copies, copies, bf16, errors naming op and shapes.
#include <doctest/doctest.h>

#include <flsl/flsl.hpp>

using namespace flsl;

TEST_CASE("creation functions fill shape and values") {
  auto z = Tensor<float>::zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.strides() == Shape{3, 1});
  CHECK(z.numel() == 6);
  for (float v : z.to_vector()) CHECK(v == 0.0f);
  auto f = Tensor<double>::full({4}, 2.5);
  CHECK(f.to_vector() == std::vector<double>{2.5, 2.5, 2.5, 2.5});
  auto a = Tensor<std::int64_t>::arange(5);
  CHECK(a.to_vector() == std::vector<std::int64_t>{0, 1, 2, 3, 4});
  auto b = Tensor<float>::arange(1.0, 2.0, 0.25);
  CHECK(b.to_vector() == std::vector<float>{1.0f, 1.25f, 1.5f, 1.75f});
  auto c = Tensor<int>::from({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(c(1, 2) == 6);
  auto s = Tensor<float>::scalar(3.0f);
  CHECK(s.rank() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.item() == 3.0f);
  auto e = Tensor<float>::empty({0, 4});
  CHECK(e.numel() == 0);
  CHECK(e.to_vector().empty());
  auto r5 = Tensor<float>::ones({1, 2, 1, 2, 3});
  CHECK(r5.rank() == 5);
  CHECK(r5.numel() == 12);
  CHECK(Tensor<bool>::full({3}, true).to_vector() == std::vector<bool>{true, true, true});
}

TEST_CASE("storage is aligned to 64 bytes and shared by copies of the handle") {
  auto t = Tensor<float>::zeros({7, 5});
  CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
  auto u = t;
  u(0, 0) = 5.0f;
  CHECK(t(0, 0) == 5.0f);
  auto c = t.clone();
  c(0, 0) = 1.0f;
  CHECK(t(0, 0) == 5.0f);
}

TEST_CASE("narrow, slice and select view the same memory") {
  auto t = Tensor<int>::from({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
  auto n = t.narrow(1, 1, 2);
  CHECK(n.shape() == Shape{3, 2});
  CHECK(n.to_vector() == std::vector<int>{1, 2, 5, 6, 9, 10});
  CHECK(!n.is_contiguous());
  n(0, 0) = 100;
  CHECK(t(0, 1) == 100);
  auto s = t.slice(1, 0, 4, 2);
  CHECK(s.to_vector() == std::vector<int>{0, 2, 4, 6, 8, 10});
  auto neg = t.slice(0, -2, 3);
  CHECK(neg.shape() == Shape{2, 4});
  CHECK(neg(0, 0) == 4);
  auto row = t.select(0, 2);
  CHECK(row.shape() == Shape{4});
  CHECK(row.to_vector() == std::vector<int>{8, 9, 10, 11});
  auto col = t.select(1, -1);
  CHECK(col.to_vector() == std::vector<int>{3, 7, 11});
  CHECK(t[1](2) == 6);
}

TEST_CASE("permute, transpose, unsqueeze, squeeze and expand are views") {
  auto t = Tensor<int>::from({0, 1, 2, 3, 4, 5}, {2, 3});
  auto tt = t.t();
  CHECK(tt.shape() == Shape{3, 2});
  CHECK(tt.to_vector() == std::vector<int>{0, 3, 1, 4, 2, 5});
  CHECK(tt.shares_storage(t));
  auto x = Tensor<float>::arange(24).view({2, 3, 4});
  auto p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p(3, 1, 2) == x(1, 2, 3));
  auto u = t.unsqueeze(1);
  CHECK(u.shape() == Shape{2, 1, 3});
  CHECK(u.squeeze(1).shape() == Shape{2, 3});
  auto e = Tensor<int>::from({7, 8, 9}).expand({2, 3});
  CHECK(e.strides() == Shape{0, 1});
  CHECK(e.to_vector() == std::vector<int>{7, 8, 9, 7, 8, 9});
  auto e2 = Tensor<int>::from({1, 2}, {2, 1}).broadcast_to({2, 3});
  CHECK(e2.to_vector() == std::vector<int>{1, 1, 1, 2, 2, 2});
  CHECK_THROWS_WITH_AS(Tensor<int>::zeros({2, 3}).expand({4, 3}),
                       doctest::Contains("expand: shapes [2, 3] and [4, 3] do not broadcast"),
                       flsl::error);
}

TEST_CASE("view never copies and refuses what needs a copy; reshape_or_copy copies then") {
  auto x = Tensor<float>::arange(24);
  auto v = x.view({2, -1, 4});
  CHECK(v.shape() == Shape{2, 3, 4});
  CHECK(v.shares_storage(x));
  auto p = v.permute({0, 2, 1});  // [2, 4, 3], not contiguous
  CHECK_THROWS_WITH_AS(p.view({2, 12}), doctest::Contains("cannot be viewed as [2, 12]"),
                       flsl::error);
  CHECK(p.view({2, 4, 3, 1}).shares_storage(x));  // adding unit axes needs no copy
  auto r = p.reshape_or_copy({2, 12});
  CHECK(!r.shares_storage(x));
  CHECK(r(1, 1) == p(1, 0, 1));
  // splitting a strided axis is still a view
  auto s = Tensor<float>::arange(12).view({3, 4}).t();  // [4, 3] strides (1, 4)
  auto sv = s.view({2, 2, 3});
  CHECK(sv.shares_storage(s));
  CHECK(sv(1, 0, 2) == s(2, 2));
  CHECK_THROWS_WITH_AS(x.view({5, 5}), doctest::Contains("[24] (24 elements) cannot become [5, 5]"),
                       flsl::error);
  CHECK(x.flatten().shares_storage(x));
  CHECK(p.flatten(1).shape() == Shape{2, 12});
}

TEST_CASE("contiguous copies only when needed") {
  auto x = Tensor<double>::randn({3, 5}, 1);
  CHECK(x.contiguous().shares_storage(x));
  auto t = x.t().contiguous();
  CHECK(!t.shares_storage(x));
  CHECK(t.is_contiguous());
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) CHECK(t(j, i) == x(i, j));
}

TEST_CASE("bf16 round trips: exact for bf16 values, nearest-even otherwise, NaN kept") {
  for (float v : {0.0f, 1.0f, -2.5f, 3.140625f, 0x1p-100f, 65280.0f})
    CHECK(static_cast<float>(bf16(v)) == v);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1
  CHECK(static_cast<float>(bf16(1.0f + 0x1p-8f)) == 1.0f);
  CHECK(static_cast<float>(bf16(1.0f + 0x1p-8f + 0x1p-12f)) == 1.0f + 0x1p-7f);
  CHECK(std::isnan(static_cast<float>(bf16(std::nanf("")))));
  CHECK(std::isinf(static_cast<float>(bf16(std::numeric_limits<float>::infinity()))));
  auto x = Tensor<float>::randn({1000}, 3);
  auto b = x.to<bf16>();
  auto back = b.to<float>();
  for (index_t i = 0; i < 1000; ++i) {
    const float v = x(i), w = back(i);
    CHECK(std::abs(v - w) <= std::abs(v) * 0x1p-8f);
  }
  CHECK(back.to<bf16>().to<float>().to_vector() == back.to_vector());
}

TEST_CASE("element access and shape errors name the operation and shapes") {
  auto t = Tensor<float>::zeros({2, 3});
  CHECK_THROWS_WITH_AS(
      t(2, 0), doctest::Contains("index 2 out of range for axis 0 of shape [2, 3]"), flsl::error);
  CHECK_THROWS_WITH_AS(t.narrow(1, 2, 2), doctest::Contains("narrow: [2, 4) out of range"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(t.permute({0, 0}), doctest::Contains("permute: axis 0 repeated"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(t.item(), doctest::Contains("item: tensor of shape [2, 3] has 6 elements"),
                       flsl::error);
  CHECK_THROWS_AS(Tensor<float>::from_vector({1, 2, 3}, {2, 2}), flsl::error);
}
