// --export: a trained teacher backbone as a safetensors file that timm's VisionTransformer loads
// with load_state_dict: the backbone's parameter names are already timm's (patch_embed.proj.weight,
// blocks.0.attn.qkv.weight, ..., norm.weight), plus the fixed sin-cos table as `pos_embed`
// [1, N, D] for the 224 px grid, which timm keeps as a parameter. In Python:
//
//   import timm, safetensors.torch
//   m = timm.create_model('vit_small_patch16_224', num_classes=0, class_token=False,
//                         global_pool='avg', fc_norm=False)
//   m.load_state_dict(safetensors.torch.load_file('teacher.safetensors'))
//
// fc_norm=False keeps timm's final LayerNorm on every token (ours) instead of after the pooling.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "../io/safetensors.hpp"
#include "../nn/module.hpp"
#include "../nn/pos_embed.hpp"
#include "checkpoint.hpp"

namespace flsl::train {

/// timm's registered model name for an architecture, or "" when timm has none (then build
/// timm.models.vision_transformer.VisionTransformer with the keyword arguments of timm_kwargs).
inline std::string timm_model_name(const architecture_info& a) {
  const bool known = (a.arch == "tiny" && a.patch == 16) || (a.arch == "small" && a.patch == 16) ||
                     (a.arch == "small" && a.patch == 8) || (a.arch == "base" && a.patch == 16) ||
                     (a.arch == "base" && a.patch == 8);
  return known ? "vit_" + a.arch + "_patch" + std::to_string(a.patch) + "_224" : "";
}

/// The keyword arguments of timm's VisionTransformer that rebuild the backbone, as JSON.
inline nlohmann::ordered_json timm_kwargs(const architecture_info& a, index_t image_size) {
  return {{"img_size", image_size}, {"patch_size", a.patch},
          {"embed_dim", a.dim},     {"depth", a.depth},
          {"num_heads", a.heads},   {"mlp_ratio", double(a.mlp_hidden) / double(a.dim)},
          {"qkv_bias", true},       {"class_token", false},
          {"global_pool", "avg"},   {"fc_norm", false},
          {"num_classes", 0}};
}

/// Writes `backbone` (a vision_transformer module) to `file` with timm's names, pos_embed
/// [1, (base_image / patch)^2, D] included, and metadata describing the model.
template <class Backbone>
void export_backbone_timm(const std::filesystem::path& file, Backbone& backbone,
                          const architecture_info& arch, index_t base_image,
                          const io::metadata_map& extra = {}) {
  using T = typename Backbone::var_type::value_type;
  const index_t grid = base_image / arch.patch;
  std::vector<io::named_tensor> tensors;
  const Tensor<float> pos =
      nn::sincos_table(arch.dim, grid).template to<float>().view({1, grid * grid, arch.dim});
  tensors.push_back({"pos_embed", pos});
  for (auto& [name, p] : nn::named_parameters(backbone)) {
    if constexpr (std::is_same_v<T, float>) {
      tensors.push_back({name, p.value()});
    } else {
      tensors.push_back({name, p.value().template to<float>()});
    }
  }
  io::metadata_map meta = extra;
  meta["format"] = "pt";
  meta["flsl.format"] = "flsl.backbone";
  meta["flsl.architecture"] = arch.to_json().dump();
  meta["timm.model"] = timm_model_name(arch);
  meta["timm.kwargs"] = timm_kwargs(arch, base_image).dump();
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  io::save_safetensors(file, tensors, meta);
}

}  // namespace flsl::train
