// The Vision Transformer of FLSL_SPEC.md §1 (no class token, fixed sin-cos positions, pre-norm
// blocks, stochastic depth, final LayerNorm) as compile-time configurations.
#pragma once

#include <array>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "layers.hpp"
#include "pos_embed.hpp"

namespace flsl::nn {

/// A ViT's shape: width, depth, heads, patch size, MLP ratio and the image size its position table
/// is built for (224 in the recipe; other input sizes resize the table bicubically).
template <index_t Dim, index_t Depth, index_t Heads, index_t Patch, index_t MlpRatio = 4,
          index_t BaseImage = 224>
struct vit_config {
  static_assert(Dim % Heads == 0, "vit_config: Dim must be a multiple of Heads");
  static_assert(Dim % 4 == 0, "vit_config: the sin-cos table needs Dim % 4 == 0");
  static_assert(BaseImage % Patch == 0, "vit_config: BaseImage must be a multiple of Patch");
  static constexpr index_t dim = Dim, depth = Depth, heads = Heads, patch = Patch;
  static constexpr index_t mlp_hidden = Dim * MlpRatio, base_image = BaseImage;
  static constexpr index_t base_grid = BaseImage / Patch;
  static constexpr double ln_eps = 1e-6;
};
template <index_t P>
using vit_tiny = vit_config<192, 12, 3, P>;
template <index_t P>
using vit_small = vit_config<384, 12, 6, P>;
template <index_t P>
using vit_base = vit_config<768, 12, 12, P>;

/// LayerNorm over the last axis with affine (1, 0) init.
template <index_t D>
struct layer_norm {
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    Var<T, Dev> weight{Tensor<T, Dev>::ones({D}), true}, bias{Tensor<T, Dev>::zeros({D}), true};
    double eps = 1e-6;
    explicit module(init_stream&) {}
    module() = default;
    Var<T, Dev> operator()(const Var<T, Dev>& x) const {
      return flsl::layer_norm(x, weight, bias, eps);
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      f(join_name(prefix, "weight"), weight);
      f(join_name(prefix, "bias"), bias);
    }
  };
};

/// Multi-head self-attention: qkv projection (with bias), fused attention, output projection.
template <index_t D, index_t Heads>
struct attention {
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    typename linear<D, 3 * D>::template module<T, Dev> qkv;
    typename linear<D, D>::template module<T, Dev> proj;
    explicit module(init_stream& init) : qkv(init), proj(init) {}
    Var<T, Dev> operator()(const Var<T, Dev>& x) const { return cast_forward(x); }  // [B, N, D]
    /// Under autocast to A: x in A, the projections and the attention in A (A = T: the plain
    /// forward).
    template <class A>
    Var<A, Dev> cast_forward(const Var<A, Dev>& x) const {
      return proj.cast_forward(multi_head_attention(qkv.cast_forward(x), int(Heads)));
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      qkv.for_each_parameter(f, join_name(prefix, "qkv"));
      proj.for_each_parameter(f, join_name(prefix, "proj"));
    }
  };
};

/// fc1 -> exact GELU -> fc2.
template <index_t D, index_t Hidden>
struct mlp {
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    typename linear<D, Hidden>::template module<T, Dev> fc1;
    typename linear<Hidden, D>::template module<T, Dev> fc2;
    explicit module(init_stream& init) : fc1(init), fc2(init) {}
    Var<T, Dev> operator()(const Var<T, Dev>& x) const { return cast_forward(x); }
    /// Under autocast to A: both products and the GELU in A (GELU computes in f32 and rounds;
    /// A = T: the plain forward).
    template <class A>
    Var<A, Dev> cast_forward(const Var<A, Dev>& x) const {
      return fc2.cast_forward(Var<A, Dev>(flsl::gelu(fc1.cast_forward(x))));
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      fc1.for_each_parameter(f, join_name(prefix, "fc1"));
      fc2.for_each_parameter(f, join_name(prefix, "fc2"));
    }
  };
};

/// Per-sample keep masks for one block's two residual branches (undefined = no drop path).
template <class T, class Dev>
struct block_drop {
  Tensor<T, Dev> attn, mlp;
  double rate = 0;
};

/// Pre-norm transformer block: x += DP(attn(LN1 x)); x += DP(mlp(LN2 x)).
template <index_t D, index_t Heads, index_t Hidden>
struct block {
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    typename layer_norm<D>::template module<T, Dev> norm1;
    typename attention<D, Heads>::template module<T, Dev> attn;
    typename layer_norm<D>::template module<T, Dev> norm2;
    typename mlp<D, Hidden>::template module<T, Dev> ffn;
    explicit module(init_stream& init) : norm1(init), attn(init), norm2(init), ffn(init) {}

    Var<T, Dev> operator()(const Var<T, Dev>& x, const block_drop<T, Dev>& drop = {}) const {
      return cast_forward<T>(x, drop);
    }
    /// The block under autocast to A (torch.autocast's placement): LayerNorm, drop path and the
    /// residual stream in T; each branch converts its normalised input to A, runs in A and is
    /// converted back to T (exactly) before the drop path and the add. With A = T every
    /// conversion is the Var itself: the plain block.
    template <class A>
    Var<T, Dev> cast_forward(const Var<T, Dev>& x, const block_drop<T, Dev>& drop = {}) const {
      Var<T, Dev> h = branch(attn.cast_forward(norm1(x).template to<A>()).template to<T>(),
                             drop.attn, drop.rate);
      Var<T, Dev> y = x + h;
      Var<T, Dev> h2 =
          branch(ffn.cast_forward(norm2(y).template to<A>()).template to<T>(), drop.mlp, drop.rate);
      return y + h2;
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      norm1.for_each_parameter(f, join_name(prefix, "norm1"));
      attn.for_each_parameter(f, join_name(prefix, "attn"));
      norm2.for_each_parameter(f, join_name(prefix, "norm2"));
      ffn.for_each_parameter(f, join_name(prefix, "mlp"));
    }

   private:
    static Var<T, Dev> branch(const Var<T, Dev>& b, const Tensor<T, Dev>& keep, double rate) {
      return keep.defined() && rate > 0 ? drop_path(b, keep, rate) : b;
    }
  };
};

/// Conv p x p, stride p, C -> D channels, with bias; PyTorch's Conv2d default initialisation
/// (uniform in +-1/sqrt(C p p) for weight and bias), as in the recipe's code.
template <index_t C, index_t D, index_t P>
struct patch_embedding {
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    Var<T, Dev> weight, bias;
    explicit module(init_stream& init) {
      const double bound = 1.0 / std::sqrt(double(C * P * P));
      weight = Var<T, Dev>(
          Tensor<T, Dev>::rand({D, C, P, P}, init.seed, init.offset, -bound, bound), true);
      init.offset += std::uint64_t(D * C * P * P);
      bias = Var<T, Dev>(Tensor<T, Dev>::rand({D}, init.seed, init.offset, -bound, bound), true);
      init.offset += std::uint64_t(D);
    }
    Var<T, Dev> operator()(const Var<T, Dev>& images) const {  // [B,C,H,W] -> [B, HW/P^2, D]
      return cast_forward(images);
    }
    /// Under autocast to A (images already in A): the embedding's product in A (A = T: plain).
    template <class A>
    Var<A, Dev> cast_forward(const Var<A, Dev>& images) const {
      return flsl::patch_embed(images, weight.template to<A>(), bias.template to<A>(), P);
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      const std::string p = join_name(prefix, "proj");
      f(join_name(p, "weight"), weight);
      f(join_name(p, "bias"), bias);
    }
  };
};

/// The backbone: patch embedding + fixed positions -> depth blocks -> final LayerNorm.
/// Parameter names follow timm's VisionTransformer (patch_embed.proj.weight,
/// blocks.0.attn.qkv.weight, norm.weight, ...).
template <class Cfg>
struct vision_transformer {
  using config = Cfg;
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    using block_t = typename block<Cfg::dim, Cfg::heads, Cfg::mlp_hidden>::template module<T, Dev>;
    typename patch_embedding<3, Cfg::dim, Cfg::patch>::template module<T, Dev> patch_embed;
    std::vector<block_t> blocks;
    typename layer_norm<Cfg::dim>::template module<T, Dev> norm;

    explicit module(init_stream& init) : patch_embed(init) {
      blocks.reserve(std::size_t(Cfg::depth));
      for (index_t i = 0; i < Cfg::depth; ++i) blocks.emplace_back(init);
    }
    explicit module(init_stream&& init) : module(init) {}
    explicit module(std::uint64_t seed = 0) : module(init_stream{seed, 0}) {}

    /// Stochastic-depth rate of block i: linear from 0 (first) to `rate` (last).
    static double block_drop_rate(index_t i, double rate) {
      return Cfg::depth > 1 ? rate * double(i) / double(Cfg::depth - 1) : 0.0;
    }

    /// Output tokens [B, N, D] of images [B, 3, H, W] (H and W divisible by the patch; tokens in
    /// row-major grid order, N = (H/p)(W/p)). `drop` has one entry per block or is empty (no
    /// stochastic depth: the teacher, evaluation). With `cast` = autocast::bf16 (f32 models
    /// only) the patch embedding and every block's branches run on bf16 activations (see
    /// block::cast_forward); the position add, the residual stream, LayerNorm and the output
    /// stay f32.
    Var<T, Dev> operator()(const Tensor<T, Dev>& images,
                           const std::vector<block_drop<T, Dev>>& drop = {},
                           autocast cast = autocast::off) const {
      FLSL_CHECK(images.rank() == 4 && images.size(1) == 3, "vision_transformer: images of shape ",
                 images.shape(), " (expected [B, 3, H, W])");
      FLSL_CHECK(images.size(2) % Cfg::patch == 0 && images.size(3) % Cfg::patch == 0 &&
                     images.size(2) > 0 && images.size(3) > 0,
                 "vision_transformer: image size ", images.size(2), "x", images.size(3),
                 " is not divisible by the patch ", Cfg::patch);
      FLSL_CHECK(drop.empty() || index_t(drop.size()) == Cfg::depth,
                 "vision_transformer: ", drop.size(), " drop-path entries for ", Cfg::depth,
                 " blocks");
      if (cast == autocast::off) return forward<T>(images, drop);
      if constexpr (std::is_same_v<T, float>) {
        return forward<bf16>(images, drop);
      } else {
        fail("vision_transformer: autocast bf16 needs an f32 model, this one is ",
             dtype_name(dtype_of<T>));
      }
    }
    /// The position table for a rows x cols token grid, [rows*cols, D] (the base table resized
    /// bicubically), built once per grid.
    const Tensor<T, Dev>& positions(index_t rows, index_t cols) const {
      std::lock_guard<std::mutex> lock(*pos_mutex_);
      const auto key = std::make_pair(rows, cols);
      auto it = pos_cache_->find(key);
      if (it == pos_cache_->end()) {
        auto base = sincos_table(Cfg::dim, Cfg::base_grid);
        auto table = resize_table_bicubic(base, Cfg::base_grid, rows, cols);
        it = pos_cache_->emplace(key, table.template to<T>().template to<Dev>()).first;
      }
      return it->second;
    }
    /// The position table of a square grid x grid.
    const Tensor<T, Dev>& positions(index_t grid) const { return positions(grid, grid); }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      patch_embed.for_each_parameter(f, join_name(prefix, "patch_embed"));
      for (std::size_t i = 0; i < blocks.size(); ++i)
        blocks[i].for_each_parameter(f, join_name(join_name(prefix, "blocks"), std::to_string(i)));
      norm.for_each_parameter(f, join_name(prefix, "norm"));
    }

   private:
    /// The backbone with its branches in A (A = T: no conversion anywhere).
    template <class A>
    Var<T, Dev> forward(const Tensor<T, Dev>& images,
                        const std::vector<block_drop<T, Dev>>& drop) const {
      Var<A, Dev> x;
      if constexpr (std::is_same_v<A, T>)
        x = patch_embed(Var<T, Dev>(images));
      else
        x = patch_embed.cast_forward(Var<A, Dev>(images.template to<A>()));
      Var<T, Dev> h = x.template to<T>() + Var<T, Dev>(positions(images.size(2) / Cfg::patch,
                                                                 images.size(3) / Cfg::patch));
      for (std::size_t i = 0; i < blocks.size(); ++i)
        h = blocks[i].template cast_forward<A>(h, drop.empty() ? block_drop<T, Dev>{} : drop[i]);
      return norm(h);
    }

    std::shared_ptr<std::map<std::pair<index_t, index_t>, Tensor<T, Dev>>> pos_cache_ =
        std::make_shared<std::map<std::pair<index_t, index_t>, Tensor<T, Dev>>>();
    std::shared_ptr<std::mutex> pos_mutex_ = std::make_shared<std::mutex>();
  };
};

/// The projection head g of FLSL (DINO's head): Linear(In, Hidden) GELU Linear(Hidden, Hidden) GELU
/// Linear(Hidden, Bottleneck) -> L2-normalise -> weight-normalised Linear(Bottleneck, K) without
/// bias, W = g V / ||V||_row. With NormLastLayer, g is fixed at 1 (not a parameter).
template <index_t In, index_t K, index_t Hidden = 2048, index_t Bottleneck = 256,
          bool NormLastLayer = true>
struct projection_head {
  static constexpr index_t out_dim = K;
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    typename linear<In, Hidden>::template module<T, Dev> mlp0;
    typename linear<Hidden, Hidden>::template module<T, Dev> mlp2;
    typename linear<Hidden, Bottleneck>::template module<T, Dev> mlp4;
    Var<T, Dev> weight_v, weight_g;

    explicit module(init_stream& init) : mlp0(init), mlp2(init), mlp4(init) {
      // nn.Linear's default init (the head's last layer is created after DINO's trunc-normal pass)
      const double bound = 1.0 / std::sqrt(double(Bottleneck));
      weight_v = Var<T, Dev>(
          Tensor<T, Dev>::rand({K, Bottleneck}, init.seed, init.offset, -bound, bound), true);
      init.offset += std::uint64_t(K * Bottleneck);
      if constexpr (!NormLastLayer) weight_g = Var<T, Dev>(Tensor<T, Dev>::ones({K}), true);
    }
    Var<T, Dev> operator()(const Var<T, Dev>& x) const {  // [..., In] -> [..., K]
      Var<T, Dev> h = mlp0(x);
      h = mlp2(Var<T, Dev>(flsl::gelu(h)));
      h = mlp4(Var<T, Dev>(flsl::gelu(h)));
      h = l2_normalize(h, -1, 1e-12);
      return flsl::linear(h, weight_norm(weight_v, weight_g));
    }
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      mlp0.for_each_parameter(f, join_name(prefix, "mlp.0"));
      mlp2.for_each_parameter(f, join_name(prefix, "mlp.2"));
      mlp4.for_each_parameter(f, join_name(prefix, "mlp.4"));
      f(join_name(prefix, "last_layer.weight_v"), weight_v);
      if constexpr (!NormLastLayer) f(join_name(prefix, "last_layer.weight_g"), weight_g);
    }
  };
};

/// Backbone and head as one module: backbone parameters at the top level, the head under "head.".
template <class Backbone, class Head>
struct backbone_with_head {
  template <class T, class Dev>
  struct module {
    using var_type = Var<T, Dev>;
    typename Backbone::template module<T, Dev> backbone;
    typename Head::template module<T, Dev> head;
    explicit module(init_stream& init) : backbone(init), head(init) {}
    explicit module(init_stream&& init) : module(init) {}
    explicit module(std::uint64_t seed = 0) : module(init_stream{seed, 0}) {}
    template <class F>
    void for_each_parameter(F&& f, std::string_view prefix) {
      backbone.for_each_parameter(f, prefix);
      head.for_each_parameter(f, join_name(prefix, "head"));
    }
  };
};

}  // namespace flsl::nn
