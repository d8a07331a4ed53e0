// The parameter update of a training step (FLSL_SPEC.md §4): AdamW with the two weight-decay
// groups and per-parameter state by name, per-tensor gradient clipping, last-layer freezing and
// the EMA teacher update. On the CPU every tensor update is one fused expression pass, and no
// tensor memory is allocated after the optimizer's construction. On cuda each of the three updates
// is a fused multi-tensor kernel over all parameters at once (backend/multi_tensor.hpp,
// backend/cuda/kernels/optim.cuh) with the same arithmetic; the cuda branches below only gather
// the tensors' addresses and scalars.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../autograd/var.hpp"
#include "../backend/multi_tensor.hpp"
#include "../expr/reduce.hpp"
#include "../nn/module.hpp"

namespace flsl::optim {

/// Parameters under their names (what nn::named_parameters returns).
template <class T, class D = cpu>
using named_vars = std::vector<std::pair<std::string, Var<T, D>>>;

namespace detail {

/// ||g||_2 accumulated in double, into a scratch scalar allocated once per thread.
template <class T>
double l2_norm(const Tensor<T, cpu>& g) {
  thread_local const auto out = Tensor<double, cpu>::empty(Shape{});
  const auto x = cast<double>(g);
  const auto sq = x * x;
  flsl::detail::reduce_cpu(out, sq, flsl::detail::reduce_axes(sq.shape(), {}),
                           flsl::detail::sum_op<double>{});
  return std::sqrt(out.data()[0]);
}

/// Index of `name` in `params`: `hint` when the name is there (lists in the same order), else a
/// search; -1 when absent.
template <class T, class D>
std::ptrdiff_t find_param(const named_vars<T, D>& params, const std::string& name,
                          std::size_t hint) {
  if (hint < params.size() && params[hint].first == name) return std::ptrdiff_t(hint);
  for (std::size_t i = 0; i < params.size(); ++i)
    if (params[i].first == name) return std::ptrdiff_t(i);
  return -1;
}

/// The cuda branches hand contiguous memory to the fused kernels: `t` itself, or a contiguous
/// copy that is remembered in `copies` (with `t`) so that the caller writes it back after the
/// kernel (parameters and gradients are contiguous in practice; a strided view costs a copy).
template <class T, class D>
Tensor<T, D> contiguous_for_kernel(const Tensor<T, D>& t,
                                   std::vector<std::pair<Tensor<T, D>, Tensor<T, D>>>& copies) {
  if (t.is_contiguous()) return t;
  Tensor<T, D> c = t.contiguous();
  copies.emplace_back(t, c);
  return c;
}

}  // namespace detail

/// Adam's constants (torch.optim.AdamW's defaults except the weight decay, which the schedule
/// gives at each step).
struct adamw_options {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

/// AdamW exactly as torch.optim.AdamW's single-tensor path, with two groups: parameters of rank
/// >= 2 get the scheduled weight decay, biases and norm parameters (rank <= 1) get none. Each
/// parameter has its own step count t, advanced only when it has a gradient; a parameter whose
/// gradient is undefined (e.g. the frozen last layer) is skipped entirely. For each other
/// parameter p with gradient g, in this order:
///
///     t += 1
///     p  = p * (1 - lr * wd)
///     m  = m * beta1 + (1 - beta1) * g
///     v  = v * beta2 + (1 - beta2) * g * g
///     p  = p + (-(lr / (1 - beta1^t)) * m) / (sqrt(v) / sqrt(1 - beta2^t) + eps)
///
/// Scalars are computed in double and then rounded to T's compute type, as torch does. The state
/// (m = "exp_avg.<name>", v = "exp_avg_sq.<name>", t = "step.<name>") is allocated at
/// construction and can be enumerated, saved and restored by name.
template <class T, class D = cpu>
class adamw {
 public:
  using value_type = compute_t<T>;

  struct param_state {
    std::string name;
    Var<T, D> param;
    Tensor<T, D> exp_avg;     // m, same shape as the parameter
    Tensor<T, D> exp_avg_sq;  // v
    std::int64_t step = 0;    // updates this parameter has received
    bool decay = false;       // rank >= 2: in the weight-decay group
  };

  explicit adamw(const named_vars<T, D>& params, adamw_options options = {}) : opt_(options) {
    FLSL_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1 &&
                   options.eps >= 0,
               "adamw: invalid betas (", options.beta1, ", ", options.beta2, ") or eps ",
               options.eps);
    states_.reserve(params.size());
    for (const auto& [name, v] : params) {
      FLSL_CHECK(v.defined(), "adamw: parameter '", name, "' is undefined");
      FLSL_CHECK(index_.emplace(name, states_.size()).second, "adamw: parameter name '", name,
                 "' appears twice");
      param_state s;
      s.name = name;
      s.param = v;
      s.exp_avg = Tensor<T, D>::zeros(v.shape());
      s.exp_avg_sq = Tensor<T, D>::zeros(v.shape());
      s.decay = v.rank() >= 2;
      states_.push_back(std::move(s));
    }
  }
  /// All parameters of a module (see nn::module), under their state_dict names.
  template <nn::module M>
  explicit adamw(M& model, adamw_options options = {})
      : adamw(nn::named_parameters(model), options) {}

  /// One update of every parameter that has a gradient, with learning rate `lr` for both groups
  /// and weight decay `weight_decay` for the first group (rank >= 2).
  void step(double lr, double weight_decay) {
    if constexpr (!std::is_same_v<D, cpu>) {
      step_fused(lr, weight_decay);
    } else {
      const double b1 = opt_.beta1, b2 = opt_.beta2;
      for (param_state& s : states_) {
        const Tensor<T, D>& g = s.param.grad();
        if (!g.defined()) continue;  // no gradient: no decay, no moments, no step count
        const Tensor<T, D>& p = s.param.value();
        FLSL_CHECK(g.shape() == p.shape(), "adamw: gradient of shape ", g.shape(),
                   " for parameter '", s.name, "' of shape ", p.shape());
        s.step += 1;
        const double wd = s.decay ? weight_decay : 0.0;
        const double bc1 = 1 - std::pow(b1, double(s.step));
        const double bc2_sqrt = std::sqrt(1 - std::pow(b2, double(s.step)));
        const auto c = [](double x) { return static_cast<value_type>(x); };
        const Tensor<T, D>& m = s.exp_avg;
        const Tensor<T, D>& v = s.exp_avg_sq;
        m.assign(m * c(b1) + c(1 - b1) * g);
        v.assign(v * c(b2) + c(1 - b2) * g * g);
        p.assign(p * c(1 - lr * wd) + (c(-(lr / bc1)) * m) / (sqrt(v) / c(bc2_sqrt) + c(opt_.eps)));
      }
    }
  }

  const adamw_options& options() const { return opt_; }
  std::size_t size() const { return states_.size(); }
  const std::vector<param_state>& states() const { return states_; }
  /// The state of parameter `name`.
  const param_state& state(const std::string& name) const { return states_[find(name)]; }
  std::int64_t step_count(const std::string& name) const { return state(name).step; }
  void set_step_count(const std::string& name, std::int64_t step) {
    FLSL_CHECK(step >= 0, "adamw: negative step count ", step, " for parameter '", name, "'");
    states_[find(name)].step = step;
  }

  /// Calls f(state_name, tensor) for every state tensor: "exp_avg.<param>" and
  /// "exp_avg_sq.<param>", in parameter order. The tensors are the optimizer's own memory (write
  /// into them with assign/copy_from to restore).
  template <class F>
  void for_each_state_tensor(F&& f) const {
    for (const param_state& s : states_) {
      f("exp_avg." + s.name, s.exp_avg);
      f("exp_avg_sq." + s.name, s.exp_avg_sq);
    }
  }
  /// (state_name, tensor) of every state tensor (see for_each_state_tensor).
  std::vector<std::pair<std::string, Tensor<T, D>>> state_tensors() const {
    std::vector<std::pair<std::string, Tensor<T, D>>> out;
    for_each_state_tensor(
        [&](std::string n, const Tensor<T, D>& t) { out.emplace_back(std::move(n), t); });
    return out;
  }
  /// ("step.<param>", t) for every parameter.
  std::vector<std::pair<std::string, std::int64_t>> step_counts() const {
    std::vector<std::pair<std::string, std::int64_t>> out;
    for (const param_state& s : states_) out.emplace_back("step." + s.name, s.step);
    return out;
  }
  /// Copies `value` into the state tensor `state_name` ("exp_avg.<param>" or
  /// "exp_avg_sq.<param>"); the shape must match exactly.
  template <class U>
  void load_state_tensor(const std::string& state_name, const Tensor<U, D>& value) {
    const Tensor<T, D>* dst = nullptr;
    for (const char* prefix : {"exp_avg.", "exp_avg_sq."}) {
      const std::string_view pre(prefix);
      if (state_name.size() > pre.size() && state_name.compare(0, pre.size(), pre) == 0) {
        const param_state& s = states_[find(state_name.substr(pre.size()))];
        dst = pre == "exp_avg." ? &s.exp_avg : &s.exp_avg_sq;
      }
    }
    FLSL_CHECK(dst, "adamw: '", state_name,
               "' is not a state tensor name (exp_avg.<param> or exp_avg_sq.<param>)");
    FLSL_CHECK(value.shape() == dst->shape(), "adamw: state '", state_name, "' has shape ",
               dst->shape(), ", the value to load has shape ", value.shape());
    dst->assign(cast<T>(value));
  }

 private:
  /// The cuda step: the same per-parameter scalars as the CPU loop (in double, then rounded),
  /// gathered into one descriptor per parameter with a gradient, then one multi-tensor launch.
  /// The shapes are checked before any state changes.
  void step_fused(double lr, double weight_decay) {
    const double b1 = opt_.beta1, b2 = opt_.beta2;
    const auto c = [](double x) { return static_cast<value_type>(x); };
    for (const param_state& s : states_) {
      const Tensor<T, D>& g = s.param.grad();
      FLSL_CHECK(!g.defined() || g.shape() == s.param.value().shape(), "adamw: gradient of shape ",
                 g.shape(), " for parameter '", s.name, "' of shape ", s.param.value().shape());
      FLSL_CHECK(s.exp_avg.is_contiguous() && s.exp_avg_sq.is_contiguous(),
                 "adamw: the moments of '", s.name, "' are not contiguous");
    }
    std::vector<cuda_ops::adamw_tensor<T>> list;
    list.reserve(states_.size());
    std::vector<std::pair<Tensor<T, D>, Tensor<T, D>>> params_copied, grads_copied;
    for (param_state& s : states_) {
      const Tensor<T, D>& g = s.param.grad();
      if (!g.defined()) continue;  // no gradient: no decay, no moments, no step count
      s.step += 1;
      const double wd = s.decay ? weight_decay : 0.0;
      const double bc1 = 1 - std::pow(b1, double(s.step));
      const double bc2_sqrt = std::sqrt(1 - std::pow(b2, double(s.step)));
      const Tensor<T, D> p = detail::contiguous_for_kernel(s.param.value(), params_copied);
      const Tensor<T, D> gc = detail::contiguous_for_kernel(g, grads_copied);
      list.push_back({p.data(), gc.data(), s.exp_avg.data(), s.exp_avg_sq.data(), p.numel(),
                      c(1 - lr * wd), c(-(lr / bc1)), c(bc2_sqrt)});
    }
    cuda_ops::multi_tensor_adamw<T>(std::span<const cuda_ops::adamw_tensor<T>>(list),
                                    {c(b1), c(1 - b1), c(b2), c(1 - b2), c(opt_.eps)});
    for (const auto& [orig, copy] : params_copied) orig.assign(copy);
  }

  std::size_t find(const std::string& name) const {
    auto it = index_.find(name);
    FLSL_CHECK(it != index_.end(), "adamw: no parameter named '", name, "'");
    return it->second;
  }

  adamw_options opt_;
  std::vector<param_state> states_;
  std::map<std::string, std::size_t> index_;
};

/// Per-tensor gradient clipping (FLSL_SPEC.md §4): every gradient whose L2 norm n exceeds
/// `max_norm` is scaled by max_norm / (n + 1e-6). Writes each norm (before clipping; NaN for an
/// undefined gradient) to `norms`. max_norm = 0 disables the scaling (norms are still computed).
template <class T, class D>
void clip_grad_per_tensor(const named_vars<T, D>& params, double max_norm,
                          std::span<double> norms) {
  FLSL_CHECK(max_norm >= 0, "clip_grad_per_tensor: max_norm ", max_norm, " is negative");
  FLSL_CHECK(norms.size() == params.size(), "clip_grad_per_tensor: ", norms.size(),
             " norm slots for ", params.size(), " parameters");
  if constexpr (!std::is_same_v<D, cpu>) {
    // cuda: every defined gradient in one fused norm / decide / scale sequence (the clip scale is
    // computed on the device), then one copy of all norms to the host.
    std::vector<cuda_ops::clip_tensor<T>> list;
    std::vector<std::size_t> slot;
    std::vector<std::pair<Tensor<T, D>, Tensor<T, D>>> copied;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Tensor<T, D>& g = params[i].second.grad();
      if (!g.defined()) {
        norms[i] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      const Tensor<T, D> gc = detail::contiguous_for_kernel(g, copied);
      list.push_back({gc.data(), gc.numel()});
      slot.push_back(i);
    }
    std::vector<double> got(list.size());
    cuda_ops::multi_tensor_clip_per_tensor<T>(std::span<const cuda_ops::clip_tensor<T>>(list),
                                              max_norm, std::span<double>(got));
    for (std::size_t k = 0; k < slot.size(); ++k) norms[slot[k]] = got[k];
    for (const auto& [orig, copy] : copied) orig.assign(copy);
  } else {
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Tensor<T, D>& g = params[i].second.grad();
      if (!g.defined()) {
        norms[i] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      const double n = detail::l2_norm(g);
      norms[i] = n;
      if (max_norm > 0 && n > max_norm)
        g.assign(g * static_cast<compute_t<T>>(max_norm / (n + 1e-6)));
    }
  }
}
/// As above, returning the norms in parameter order.
template <class T, class D>
std::vector<double> clip_grad_per_tensor(const named_vars<T, D>& params, double max_norm) {
  std::vector<double> norms(params.size());
  clip_grad_per_tensor(params, max_norm, std::span<double>(norms));
  return norms;
}

/// True for the parameters of the projection head's last layer ("...last_layer...", as DINO).
inline bool is_last_layer(std::string_view name) {
  return name.find("last_layer") != std::string_view::npos;
}

/// During the first `freeze_epochs` epochs (epoch < freeze_epochs), drops the gradient of every
/// parameter whose name satisfies `pred` (Var::zero_grad), so that AdamW skips it: DINO's
/// cancel_gradients_last_layer. Call it after clipping. Returns how many gradients were dropped.
template <class T, class D, class Pred>
std::size_t cancel_last_layer_gradients(const named_vars<T, D>& params, Pred&& pred, index_t epoch,
                                        index_t freeze_epochs) {
  if (epoch >= freeze_epochs) return 0;
  std::size_t n = 0;
  for (const auto& [name, v] : params) {
    if (!std::invoke(pred, std::string_view(name))) continue;
    n += v.grad().defined() ? 1 : 0;
    v.zero_grad();
  }
  return n;
}
/// The same for the head's last layer (names containing "last_layer").
template <class T, class D>
std::size_t cancel_last_layer_gradients(const named_vars<T, D>& params, index_t epoch,
                                        index_t freeze_epochs) {
  return cancel_last_layer_gradients(params, is_last_layer, epoch, freeze_epochs);
}

/// The EMA teacher update `t = t * m + (1 - m) * s` for every parameter, matched by name
/// (FLSL_SPEC.md §4). Both lists must hold the same names with the same shapes; otherwise an error
/// names the parameter.
template <class T, class D>
void ema_update(const named_vars<T, D>& teacher, const named_vars<T, D>& student, double m) {
  FLSL_CHECK(m >= 0 && m <= 1, "ema_update: momentum ", m, " outside [0, 1]");
  if (teacher.size() != student.size()) {
    // Name one parameter that only one side has.
    for (std::size_t i = 0; i < student.size(); ++i)
      FLSL_CHECK(detail::find_param(teacher, student[i].first, i) >= 0,
                 "ema_update: student parameter '", student[i].first,
                 "' has no teacher parameter of that name (teacher ", teacher.size(),
                 " parameters, student ", student.size(), ")");
    fail("ema_update: the teacher has ", teacher.size(), " parameters, the student ",
         student.size());
  }
  using V = compute_t<T>;
  // cuda: the pairs are checked and gathered here, then updated by one multi-tensor launch.
  std::vector<cuda_ops::ema_tensor<T>> list;
  std::vector<std::pair<Tensor<T, D>, Tensor<T, D>>> teachers_copied, students_copied;
  for (std::size_t i = 0; i < teacher.size(); ++i) {
    const std::string& name = teacher[i].first;
    const std::ptrdiff_t j = detail::find_param(student, name, i);
    FLSL_CHECK(j >= 0, "ema_update: teacher parameter '", name,
               "' has no student parameter of that name");
    const Tensor<T, D>& t = teacher[i].second.value();
    const Tensor<T, D>& s = student[std::size_t(j)].second.value();
    FLSL_CHECK(t.shape() == s.shape(), "ema_update: parameter '", name, "' has shape ", t.shape(),
               " in the teacher and ", s.shape(), " in the student");
    if constexpr (std::is_same_v<D, cpu>) {
      t.assign(t * static_cast<V>(m) + static_cast<V>(1 - m) * s);
    } else {
      const Tensor<T, D> tc = detail::contiguous_for_kernel(t, teachers_copied);
      const Tensor<T, D> sc = detail::contiguous_for_kernel(s, students_copied);
      list.push_back({tc.data(), sc.data(), tc.numel()});
    }
  }
  if constexpr (!std::is_same_v<D, cpu>) {
    cuda_ops::multi_tensor_ema<T>(std::span<const cuda_ops::ema_tensor<T>>(list), static_cast<V>(m),
                                  static_cast<V>(1 - m));
    for (const auto& [orig, copy] : teachers_copied) orig.assign(copy);
  }
}
/// The same for two modules (teacher and student of one architecture).
template <nn::module MT, nn::module MS>
void ema_update(MT& teacher, MS& student, double m) {
  ema_update(nn::named_parameters(teacher), nn::named_parameters(student), m);
}

}  // namespace flsl::optim
