// Training schedules (DINO's cosine_scheduler, the per-epoch teacher temperature) and the recipe
// object that gives every scheduled value of FLSL_SPEC.md §3-§4 at one iteration.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <optional>
#include <vector>

#include "../core/error.hpp"
#include "../core/shape.hpp"

namespace flsl::optim {

/// Element i of `np.linspace(start, stop, num)` (endpoint included), in numpy's evaluation order:
/// `i * step + start` with `step = (stop - start) / (num - 1)`, the last element exactly `stop`,
/// and `[start]` when num == 1.
inline double linspace_at(double start, double stop, index_t num, index_t i) {
  FLSL_CHECK(num > 0 && i >= 0 && i < num, "linspace_at: index ", i, " out of range for ", num,
             " points");
  if (num == 1) return start;
  if (i == num - 1) return stop;
  const double div = double(num - 1);
  const double delta = stop - start;
  const double step = delta / div;
  if (step == 0) return double(i) / div * delta + start;  // numpy's branch for a zero step
  return double(i) * step + start;
}

/// DINO's `utils.cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs,
/// start_warmup_value)`, evaluated per iteration instead of stored: the first
/// `warmup_epochs * niter_per_ep` iterations follow `np.linspace(start_warmup_value, base, W)`
/// (so iteration 0 is exactly start_warmup_value and iteration W-1 exactly base); iteration W + i
/// of the remaining T is `final + 0.5 * (base - final) * (1 + cos(pi * i / T))`.
struct cosine_schedule {
  double base = 0;
  double final_value = 0;
  index_t total_iters = 0;   // epochs * niter_per_ep
  index_t warmup_iters = 0;  // warmup_epochs * niter_per_ep
  double start_warmup_value = 0;

  /// The schedule of DINO's signature (integers of epochs and iterations per epoch).
  static cosine_schedule dino(double base, double final_value, index_t epochs, index_t niter_per_ep,
                              index_t warmup_epochs = 0, double start_warmup_value = 0) {
    FLSL_CHECK(epochs >= 0 && niter_per_ep >= 1 && warmup_epochs >= 0 && warmup_epochs <= epochs,
               "cosine_schedule: invalid epochs ", epochs, ", iterations per epoch ", niter_per_ep,
               ", warm-up epochs ", warmup_epochs,
               " (need 0 <= warm-up <= epochs, >= 1 iteration)");
    return {base, final_value, epochs * niter_per_ep, warmup_epochs * niter_per_ep,
            start_warmup_value};
  }
  /// A schedule that stays at `value` for `total_iters` iterations (bit-exact: the cosine term is
  /// multiplied by base - final = 0).
  static cosine_schedule constant(double value, index_t total_iters) {
    return {value, value, total_iters, 0, value};
  }

  index_t size() const { return total_iters; }
  /// The value at iteration `it`, 0 <= it < size().
  double operator()(index_t it) const {
    FLSL_CHECK(it >= 0 && it < total_iters, "cosine_schedule: iteration ", it, " out of range [0, ",
               total_iters, ")");
    if (it < warmup_iters) return linspace_at(start_warmup_value, base, warmup_iters, it);
    const index_t i = it - warmup_iters;
    const double T = double(total_iters - warmup_iters);
    // numpy's order: (pi * i) / T, then final + (0.5 * (base - final)) * (1 + cos(.)).
    return final_value +
           0.5 * (base - final_value) * (1 + std::cos(std::numbers::pi * double(i) / T));
  }
  /// Every value, as DINO's array.
  std::vector<double> values() const {
    std::vector<double> out(static_cast<std::size_t>(total_iters));
    for (index_t i = 0; i < total_iters; ++i) out[std::size_t(i)] = (*this)(i);
    return out;
  }
};

/// DINO's array-returning `cosine_scheduler`, for code that wants the whole schedule.
inline std::vector<double> cosine_scheduler(double base, double final_value, index_t epochs,
                                            index_t niter_per_ep, index_t warmup_epochs = 0,
                                            double start_warmup_value = 0) {
  return cosine_schedule::dino(base, final_value, epochs, niter_per_ep, warmup_epochs,
                               start_warmup_value)
      .values();
}

/// The teacher temperature tau_t, indexed by EPOCH: `np.linspace(warmup, final, warmup_epochs)`
/// for the first warmup_epochs epochs (endpoint included, so epoch warmup_epochs-1 is already at
/// `final`), then `final`. DINO's DINOLoss builds the same array of nepochs values.
struct teacher_temp_schedule {
  double warmup_teacher_temp = 0.04;
  double teacher_temp = 0.07;
  index_t warmup_epochs = 30;

  double operator()(index_t epoch) const {
    FLSL_CHECK(epoch >= 0 && warmup_epochs >= 0, "teacher_temp_schedule: epoch ", epoch,
               " or warm-up epochs ", warmup_epochs, " negative");
    if (epoch < warmup_epochs)
      return linspace_at(warmup_teacher_temp, teacher_temp, warmup_epochs, epoch);
    return teacher_temp;
  }
  /// Values for epochs 0 .. epochs-1 (DINO's array).
  std::vector<double> values(index_t epochs) const {
    std::vector<double> out(static_cast<std::size_t>(std::max<index_t>(epochs, 0)));
    for (index_t e = 0; e < epochs; ++e) out[std::size_t(e)] = (*this)(e);
    return out;
  }
};

/// The constants of a run that the schedules depend on (FLSL_SPEC.md §3-§4; defaults are the
/// published recipe). `epochs`, `iters_per_epoch` and `total_batch` have no default.
struct recipe {
  index_t epochs = 0;
  index_t iters_per_epoch = 0;
  index_t total_batch = 0;  // images per iteration over all processes
  // learning rate: peak = lr * total_batch / 256, linear warm-up from start_warmup_lr, cosine to
  // min_lr
  double lr = 5e-4;
  double min_lr = 1e-6;
  /// Warm-up epochs; unset means int(0.1 * epochs), the authors' default of 10% of the epochs.
  std::optional<index_t> warmup_epochs{};
  double start_warmup_lr = 0;
  // weight decay (first parameter group) and teacher EMA momentum: cosine, no warm-up
  double weight_decay = 0.04, weight_decay_end = 0.4;
  double momentum_teacher = 0.996, momentum_teacher_end = 1.0;
  // teacher temperature, per epoch
  double warmup_teacher_temp = 0.04, teacher_temp = 0.07;
  index_t warmup_teacher_temp_epochs = 30;
  // mean-shift inverse temperatures and the intra-view coefficient u: constant unless a start value
  // is given, then cosine from the start value to the final one over all iterations. (A start of
  // 0.0 is a real start value, unlike the authors' `x or default`.)
  double b_sa = 0.1 / std::sqrt(384.0), b_ca = 0.2 / std::sqrt(384.0);
  std::optional<double> b_sa_start{}, b_ca_start{};
  double coef_ms = 0.03;
  std::optional<double> start_intraview{};
  // epochs during which the head's last layer gets no update
  index_t freeze_last_layer = 1;

  /// The warm-up epochs actually used.
  index_t resolved_warmup_epochs() const {
    return warmup_epochs ? *warmup_epochs : index_t(0.1 * double(epochs));
  }
  /// lr * total_batch / 256 (evaluated in this order, as DINO does).
  double peak_lr() const { return lr * double(total_batch) / 256.0; }
};

/// Every scheduled value at one iteration.
struct scheduled_values {
  index_t iteration = 0;
  index_t epoch = 0;
  double lr = 0;
  double weight_decay = 0;  // for the first group (rank >= 2); the second group gets 0
  double momentum = 0;      // teacher EMA
  double teacher_temp = 0;
  double b_sa = 0, b_ca = 0;
  double coef_ms = 0;
  bool last_layer_frozen = false;
};

/// The schedules of one run, evaluated on demand (nothing stored per iteration).
class schedules {
 public:
  explicit schedules(const recipe& r) : r_(r) {
    FLSL_CHECK(r.epochs >= 1 && r.iters_per_epoch >= 1 && r.total_batch >= 1,
               "schedules: need epochs, iters_per_epoch and total_batch >= 1, got ", r.epochs, ", ",
               r.iters_per_epoch, ", ", r.total_batch);
    const index_t E = r.epochs, I = r.iters_per_epoch, n = E * I;
    lr_ = cosine_schedule::dino(r.peak_lr(), r.min_lr, E, I, r.resolved_warmup_epochs(),
                                r.start_warmup_lr);
    wd_ = cosine_schedule::dino(r.weight_decay, r.weight_decay_end, E, I);
    momentum_ = cosine_schedule::dino(r.momentum_teacher, r.momentum_teacher_end, E, I);
    b_sa_ = r.b_sa_start ? cosine_schedule::dino(*r.b_sa_start, r.b_sa, E, I)
                         : cosine_schedule::constant(r.b_sa, n);
    b_ca_ = r.b_ca_start ? cosine_schedule::dino(*r.b_ca_start, r.b_ca, E, I)
                         : cosine_schedule::constant(r.b_ca, n);
    coef_ms_ = r.start_intraview ? cosine_schedule::dino(*r.start_intraview, r.coef_ms, E, I)
                                 : cosine_schedule::constant(r.coef_ms, n);
    teacher_temp_ = {r.warmup_teacher_temp, r.teacher_temp, r.warmup_teacher_temp_epochs};
  }

  const recipe& config() const { return r_; }
  index_t total_iterations() const { return r_.epochs * r_.iters_per_epoch; }
  index_t epoch_of(index_t it) const { return it / r_.iters_per_epoch; }

  /// Every value at iteration `it` (0 <= it < total_iterations()).
  scheduled_values at(index_t it) const {
    FLSL_CHECK(it >= 0 && it < total_iterations(), "schedules: iteration ", it,
               " out of range [0, ", total_iterations(), ")");
    scheduled_values v;
    v.iteration = it;
    v.epoch = epoch_of(it);
    v.lr = lr_(it);
    v.weight_decay = wd_(it);
    v.momentum = momentum_(it);
    v.teacher_temp = teacher_temp_(v.epoch);
    v.b_sa = b_sa_(it);
    v.b_ca = b_ca_(it);
    v.coef_ms = coef_ms_(it);
    v.last_layer_frozen = v.epoch < r_.freeze_last_layer;
    return v;
  }

  const cosine_schedule& lr() const { return lr_; }
  const cosine_schedule& weight_decay() const { return wd_; }
  const cosine_schedule& momentum() const { return momentum_; }
  const cosine_schedule& b_sa() const { return b_sa_; }
  const cosine_schedule& b_ca() const { return b_ca_; }
  const cosine_schedule& coef_ms() const { return coef_ms_; }
  const teacher_temp_schedule& teacher_temp() const { return teacher_temp_; }

 private:
  recipe r_;
  cosine_schedule lr_, wd_, momentum_, b_sa_, b_ca_, coef_ms_;
  teacher_temp_schedule teacher_temp_;
};

}  // namespace flsl::optim
