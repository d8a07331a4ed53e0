// Loss scaling for fp16 matrix products (matmul_precision::fp16), as torch.cuda.amp.GradScaler:
// the backward starts from S instead of 1 so that small gradients survive fp16's range (normal
// values from 2^-14, subnormals from 2^-24), the gradients are divided by S before clipping, and a
// step whose gradients are not finite (an fp16 overflow past 65504) is skipped. A dynamic scale
// halves on every skipped step and doubles after `growth_interval` good steps in a row. bf16 and
// tf32 have fp32's exponent range and need no scaling.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "adamw.hpp"

namespace flsl::optim {

/// How a grad_scaler behaves (torch's GradScaler defaults).
struct grad_scaler_options {
  bool enabled = false;
  bool dynamic = true;          // false: the scale stays init_scale
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;   // after growth_interval finite steps in a row
  double backoff_factor = 0.5;  // after a step with non-finite gradients
  index_t growth_interval = 2000;
};

/// What a checkpoint keeps of a scaler: with the options, everything its future depends on.
struct grad_scaler_state {
  double scale = 1.0;
  index_t good_steps = 0;  // finite steps since the last change of the scale
};

class grad_scaler {
 public:
  /// A dynamic scale below this (2^-20) means the gradients are not finite for another reason.
  static constexpr double min_scale = 1.0 / (1 << 20);

  grad_scaler() = default;
  explicit grad_scaler(const grad_scaler_options& o) : opt_(o) {
    FLSL_CHECK(!o.enabled || (std::isfinite(o.init_scale) && o.init_scale > 0),
               "grad_scaler: the initial loss scale must be a positive number, got ", o.init_scale);
    FLSL_CHECK(o.growth_factor > 1 && o.backoff_factor > 0 && o.backoff_factor < 1 &&
                   o.growth_interval >= 1,
               "grad_scaler: need growth_factor > 1, 0 < backoff_factor < 1 and growth_interval "
               ">= 1, got ",
               o.growth_factor, ", ", o.backoff_factor, ", ", o.growth_interval);
    state_.scale = o.enabled ? o.init_scale : 1.0;
  }

  bool enabled() const { return opt_.enabled; }
  /// The factor the backward starts from (1 when disabled).
  double scale() const { return state_.scale; }
  const grad_scaler_options& options() const { return opt_; }
  const grad_scaler_state& state() const { return state_; }
  void set_state(const grad_scaler_state& s) {
    FLSL_CHECK(std::isfinite(s.scale) && s.scale > 0 && s.good_steps >= 0,
               "grad_scaler: invalid state (scale ", s.scale, ", good steps ", s.good_steps, ")");
    state_ = s;
  }

  /// Divides every defined gradient by the scale, in place (nothing when the scale is 1).
  template <class T, class D>
  void unscale(const named_vars<T, D>& params) const {
    if (state_.scale == 1.0) return;
    const auto inv = static_cast<compute_t<T>>(1.0 / state_.scale);
    for (const auto& [name, p] : params) {
      const Tensor<T, D>& g = p.grad();
      if (g.defined()) g.assign(g * inv);
    }
  }

  /// True when every gradient norm of a defined gradient is finite (undefined gradients have NaN
  /// norms in clip_grad_per_tensor's output and are ignored).
  template <class T, class D>
  static bool all_finite(const named_vars<T, D>& params, std::span<const double> norms) {
    for (std::size_t i = 0; i < params.size(); ++i)
      if (params[i].second.grad().defined() && !std::isfinite(norms[i])) return false;
    return true;
  }

  /// Advances the dynamic scale after a step: back off when the step's gradients were not finite,
  /// grow after growth_interval finite steps in a row.
  void update(bool finite) {
    if (!opt_.enabled || !opt_.dynamic) return;
    if (!finite) {
      state_.scale *= opt_.backoff_factor;
      state_.good_steps = 0;
      FLSL_CHECK(state_.scale >= min_scale, "grad_scaler: the loss scale fell to ", state_.scale,
                 " after steps whose gradients were not finite: they are not an fp16 overflow");
      return;
    }
    if (++state_.good_steps >= opt_.growth_interval) {
      const double grown = state_.scale * opt_.growth_factor;
      if (std::isfinite(grown) && grown <= double(std::numeric_limits<float>::max()))
        state_.scale = grown;
      state_.good_steps = 0;
    }
  }

 private:
  grad_scaler_options opt_{};
  grad_scaler_state state_{};
};

}  // namespace flsl::optim
