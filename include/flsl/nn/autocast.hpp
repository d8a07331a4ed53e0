// Autocast: the element type a model's matrix products and the activations between them use,
// like torch.autocast(dtype=torch.bfloat16). The parameters stay in their own type (f32 master
// weights, which the optimizer updates); under bf16 each product's inputs are converted to bf16
// (weights included, as graph nodes whose gradients flow back to the f32 parameters), the product
// accumulates in fp32 and its output is stored in bf16. Which ops run in which type is documented
// where they are composed (nn/vit.hpp); LayerNorm, the residual stream and the FLSL objective stay
// in the parameters' type.
#pragma once

#include <cstdint>
#include <string_view>

#include "../core/error.hpp"

namespace flsl::nn {

enum class autocast : std::uint8_t {
  off,   // every op in the parameters' type
  bf16,  // products, attention and GELU on bf16 activations (fp32 arithmetic inside)
};

inline std::string_view to_string(autocast a) { return a == autocast::bf16 ? "bf16" : "off"; }

/// "off" or "bf16"; anything else throws, naming the value.
inline autocast parse_autocast(std::string_view s) {
  if (s == "off") return autocast::off;
  if (s == "bf16") return autocast::bf16;
  fail("autocast '", s, "' is not one of off, bf16");
}

}  // namespace flsl::nn
