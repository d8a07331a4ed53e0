// The ViT configurations of spec §1: parameter counts, token grids, names, drop-path rates and the
// position table.
#include <doctest/doctest.h>

#include <flsl/flsl.hpp>

using namespace flsl;

TEST_CASE("vit_tiny, vit_small and vit_base have the published sizes without a class token") {
  // per block 12 D^2 + 13 D (qkv, proj, fc1, fc2 weights and biases, two LayerNorms)
  auto expected = [](index_t D, index_t p) {
    return 3 * p * p * D + D + 12 * (12 * D * D + 13 * D) + 2 * D;
  };
  nn::model<nn::vision_transformer<nn::vit_tiny<16>>, float> tiny(0);
  CHECK(nn::parameter_count(tiny) == expected(192, 16));
  CHECK(nn::parameter_count(tiny) == 5486400);
  nn::model<nn::vision_transformer<nn::vit_small<8>>, float> small8(0);
  CHECK(nn::parameter_count(small8) == expected(384, 8));
  CHECK(nn::vit_base<16>::dim == 768);
  CHECK(nn::vit_base<16>::heads == 12);
  CHECK(nn::vit_small<16>::base_grid == 14);
}

TEST_CASE("tokens: 196 at 224 px and 36 at 96 px for patch 16; names follow timm") {
  using cfg = nn::vit_config<32, 2, 2, 16>;
  nn::model<nn::vision_transformer<cfg>, float> m(0);
  no_grad ng;
  CHECK(m(Tensor<float>::randn({1, 3, 224, 224}, 1)).shape() == Shape{1, 196, 32});
  CHECK(m(Tensor<float>::randn({2, 3, 96, 96}, 1)).shape() == Shape{2, 36, 32});
  CHECK(m(Tensor<float>::randn({1, 3, 32, 80}, 1)).shape() == Shape{1, 10, 32});  // 2 x 5 grid
  CHECK_THROWS_WITH_AS(m(Tensor<float>::randn({1, 3, 100, 100}, 1)),
                       doctest::Contains("image size 100x100 is not divisible by the patch 16"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(m(Tensor<float>::randn({1, 3, 32, 40}, 1)),
                       doctest::Contains("image size 32x40 is not divisible by the patch 16"),
                       flsl::error);
  std::vector<std::string> names;
  for (auto& [n, v] : nn::named_parameters(m)) names.push_back(n);
  CHECK(names.front() == "patch_embed.proj.weight");
  CHECK(std::find(names.begin(), names.end(), "blocks.1.attn.qkv.bias") != names.end());
  CHECK(std::find(names.begin(), names.end(), "blocks.0.mlp.fc2.weight") != names.end());
  CHECK(names.back() == "norm.bias");
}

TEST_CASE("stochastic depth grows linearly from 0 to the rate over the blocks") {
  using vit = nn::vision_transformer<nn::vit_tiny<16>>::module<float, cpu>;
  CHECK(vit::block_drop_rate(0, 0.1) == 0.0);
  CHECK(vit::block_drop_rate(11, 0.1) == doctest::Approx(0.1));
  CHECK(vit::block_drop_rate(6, 0.1) == doctest::Approx(0.1 * 6 / 11));
}

TEST_CASE("the sin-cos table follows the spec's formula; resizing to the same grid is exact") {
  auto t = nn::sincos_table(8, 3);                                   // q = 2, w = (1, 1/100)
  CHECK(t(1 * 3 + 2, 0) == doctest::Approx(std::sin(2.0)));          // x = 2, k = 0
  CHECK(t(1 * 3 + 2, 1) == doctest::Approx(std::sin(2.0 / 100.0)));  // x = 2, k = 1
  CHECK(t(1 * 3 + 2, 3) == doctest::Approx(std::cos(2.0 / 100.0)));
  CHECK(t(1 * 3 + 2, 4) == doctest::Approx(std::sin(1.0)));  // y = 1
  CHECK(t(1 * 3 + 2, 7) == doctest::Approx(std::cos(1.0 / 100.0)));
  auto same = nn::resize_table_bicubic(t, 3, 3);
  CHECK(same.to_vector() == t.to_vector());
  // a constant table stays constant under the (partition-of-unity) cubic kernel
  auto c = Tensor<double>::full({16, 4}, 2.5);
  for (double v : nn::resize_table_bicubic(c, 4, 7).to_vector()) CHECK(v == doctest::Approx(2.5));
}
