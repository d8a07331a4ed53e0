// One FLSL training step (FLSL_SPEC.md §3-§4) as one call: loss, backward, per-tensor clipping,
// last-layer freeze, AdamW, teacher EMA, with every scheduled value taken from the iteration.
#pragma once

#include <cmath>
#include <vector>

#include "../objective/flsl_loss.hpp"
#include "../optim/adamw.hpp"
#include "../optim/grad_scaler.hpp"
#include "../optim/schedule.hpp"

namespace flsl {

/// Where a run is: the next iteration to perform and the seed its random draws derive from. With
/// the schedules this is everything a step depends on besides the weights and optimizer moments.
struct train_state {
  index_t iteration = 0;
  std::uint64_t seed = 0;
};

/// Options of the step that are not scheduled.
struct flsl_step_options {
  double clip_grad = 3.0;       // per-tensor max gradient norm; 0 disables
  double drop_path_rate = 0.1;  // student stochastic depth at the last block
  optim::adamw_options adam{};
  optim::grad_scaler_options loss_scale{};  // for fp16 matmuls (off by default)
};

/// What a step returns: the loss and its parts (computed before the update), the values of the
/// schedules it used, the gradient norms before clipping (parameter order, unscaled), and with
/// loss scaling the scale the backward used and whether the update was skipped (gradients not
/// finite: the weights and moments did not change, the teacher EMA and the iteration advanced).
struct flsl_step_result {
  double total = 0, ms = 0, km = 0, vmr = 0;
  double teacher_entropy = 0, student_entropy = 0;  // mean H(q), H(p) per query (nats)
  optim::scheduled_values schedule;
  std::vector<double> grad_norms;
  double loss_scale = 1.0;
  bool skipped = false;
};

/// Copies every parameter value of `src` into `dst` (same module type; names must match). Not
/// constrained by nn::module: nvcc 13 rejects that concept's generic-lambda requirement.
template <class M>
void copy_parameters(M& dst, M& src) {
  auto d = nn::named_parameters(dst);
  auto s = nn::named_parameters(src);
  FLSL_CHECK(d.size() == s.size(), "copy_parameters: ", d.size(), " vs ", s.size(), " parameters");
  for (std::size_t i = 0; i < d.size(); ++i) {
    FLSL_CHECK(d[i].first == s[i].first && d[i].second.shape() == s[i].second.shape(),
               "copy_parameters: '", d[i].first, "' ", d[i].second.shape(), " vs '", s[i].first,
               "' ", s[i].second.shape());
    d[i].second.value().copy_from(s[i].second.value());
  }
}

/// A batch of views on device D: every tensor copied from the host (host -> device through the
/// backend's pinned staging buffers on cuda; on the CPU the tensors themselves, no copy).
template <class D, class T>
flsl_views<T, D> views_to(const flsl_views<T, cpu>& v) {
  flsl_views<T, D> out;
  auto move = [](const auto& t) {
    using U = typename std::remove_cvref_t<decltype(t)>::value_type;
    return t.defined() ? t.template to<D>() : Tensor<U, D>{};
  };
  out.teacher = move(v.teacher);
  out.global = move(v.global);
  out.local = move(v.local);
  out.query_global = move(v.query_global);
  out.query_local = move(v.query_local);
  out.locals = v.locals;
  return out;
}

/// Trains a student/teacher pair of backbone_with_head modules with FLSL. The teacher starts as a
/// copy of the student and is only ever updated by the EMA. D is cpu or cuda (the modules, the
/// batches and the optimizer live there; the drop-path masks are drawn on the host and copied).
template <class Net, class T, class D = cpu>
class flsl_learner {
 public:
  flsl_learner(Net& student, Net& teacher, const optim::recipe& recipe, flsl_loss_params loss = {},
               flsl_step_options options = {}, train_state state = {})
      : student_(student),
        teacher_(teacher),
        sched_(recipe),
        loss_(loss),
        opt_(options),
        state_(state),
        student_params_(nn::named_parameters(student)),
        teacher_params_(nn::named_parameters(teacher)),
        adam_(student_params_, options.adam),
        scaler_(options.loss_scale) {
    for (auto& [name, p] : teacher_params_) p.set_requires_grad(false);
    if (loss_.center_teacher) center_ = Tensor<T, cpu>::zeros(Shape{out_dim()}).template to<D>();
  }

  /// Makes the teacher an exact copy of the student (the start of a run).
  void sync_teacher() { copy_parameters(teacher_, student_); }

  /// One step on a batch; stochastic-depth masks are drawn from (seed, iteration).
  flsl_step_result step(const flsl_views<T, D>& batch) {
    const flsl_drop_paths<T, D> drop = draw_drop_paths(batch);
    detail::trace_op("flsl_step: drop-path masks", false);
    return step(batch, drop);
  }
  /// One step with explicit stochastic-depth masks (tests and fixtures).
  flsl_step_result step(const flsl_views<T, D>& batch, const flsl_drop_paths<T, D>& drop) {
    flsl_step_result res;
    res.schedule = sched_.at(state_.iteration);
    const auto& s = res.schedule;
    flsl_loss_params lp = loss_;
    lp.b_sa = s.b_sa;
    lp.b_ca = s.b_ca;
    lp.coef_ms = s.coef_ms;
    auto r = flsl_loss(student_, teacher_, batch, s.teacher_temp, lp, drop, {}, center_);
    res.total = double(r.total.value().item());
    res.ms = double(r.ms.value().item());
    res.km = double(r.km.value().item());
    res.vmr = double(r.vmr.value().item());
    res.teacher_entropy = double(r.teacher_entropy.item());
    res.student_entropy = double(r.student_entropy.item());
    detail::trace_op("flsl_step: read the loss", false);  // (a device profiler's label)
    FLSL_CHECK(std::isfinite(res.total), "flsl step ", state_.iteration, " (epoch ", s.epoch,
               "): the loss is not finite: total ", res.total, ", L_ms ", res.ms, ", L_km ", res.km,
               ", L_vmr ", res.vmr, "; the weights were not updated");
    for (auto& [name, p] : student_params_) p.zero_grad();
    res.loss_scale = scaler_.scale();
    if (res.loss_scale == 1.0)
      r.total.backward();
    else
      r.total.backward(Tensor<T, D>::full(r.total.shape(), convert<T>(float(res.loss_scale))));
    scaler_.unscale(student_params_);
    detail::trace_op("flsl_step: unscale", false);
    res.grad_norms = optim::clip_grad_per_tensor(student_params_, opt_.clip_grad);
    detail::trace_op("flsl_step: clip", false);
    if (s.last_layer_frozen)
      for (auto& [name, p] : student_params_)
        if (optim::is_last_layer(name)) p.zero_grad();
    if (scaler_.enabled()) {
      const bool finite =
          optim::grad_scaler::all_finite(student_params_, std::span<const double>(res.grad_norms));
      res.skipped = !finite;
      scaler_.update(finite);
    }
    if (!res.skipped) adam_.step(s.lr, s.weight_decay);
    detail::trace_op("flsl_step: adamw", false);
    optim::ema_update(teacher_params_, student_params_, s.momentum);
    detail::trace_op("flsl_step: ema", false);
    if (loss_.center_teacher) {  // center = m * center + (1 - m) * mean of this batch's logits
      no_grad ng;
      const double m = loss_.center_momentum;
      Var<T, D> batch_mean = mean(Var<T, D>(r.teacher_logits), {0});
      center_ = Var<T, D>(m * Var<T, D>(center_) + (1.0 - m) * batch_mean).value();
    }
    for (auto& [name, p] : student_params_) p.zero_grad();
    ++state_.iteration;
    return res;
  }

  /// Per-block keep masks for the two student forwards of the current iteration.
  flsl_drop_paths<T, D> draw_drop_paths(const flsl_views<T, D>& batch) const {
    flsl_drop_paths<T, D> d;
    using backbone_t = std::remove_cvref_t<decltype(student_.backbone)>;
    const index_t depth = index_t(student_.backbone.blocks.size());
    auto fill = [&](std::vector<nn::block_drop<T, D>>& out, index_t batch_size,
                    std::uint64_t view) {
      out.resize(std::size_t(depth));
      for (index_t i = 0; i < depth; ++i) {
        const double rate = backbone_t::block_drop_rate(i, opt_.drop_path_rate);
        out[std::size_t(i)].rate = rate;
        if (rate <= 0) continue;
        Generator ga(state_.seed, mix_stream(0xD20Bu, std::uint64_t(state_.iteration), view, i, 0));
        Generator gm(state_.seed, mix_stream(0xD20Bu, std::uint64_t(state_.iteration), view, i, 1));
        // drawn on the host (the same masks on every device), copied to D (a no-op on the CPU)
        out[std::size_t(i)].attn = drop_path_mask<T>(batch_size, rate, ga).template to<D>();
        out[std::size_t(i)].mlp = drop_path_mask<T>(batch_size, rate, gm).template to<D>();
      }
    };
    fill(d.global, batch.global.size(0), 0);
    if (batch.locals > 0) fill(d.local, batch.local.size(0), 1);
    return d;
  }

  /// The teacher center [K] (teacher centering: zeros at construction, then updated after every
  /// step; undefined when centering is off). Checkpoints save and restore it.
  const Tensor<T, D>& teacher_center() const { return center_; }
  void set_teacher_center(Tensor<T, D> c) {
    FLSL_CHECK(c.rank() == 1 && c.size(0) == out_dim(), "flsl_learner: a teacher center of shape ",
               c.shape(), " for ", out_dim(), " prototypes");
    center_ = std::move(c);
  }
  /// K, the number of prototypes (the head's output width).
  index_t out_dim() const { return student_.head.weight_v.size(0); }

  train_state& state() { return state_; }
  const optim::schedules& schedules() const { return sched_; }
  optim::adamw<T, D>& optimizer() { return adam_; }
  /// The loss scaler (disabled unless flsl_step_options::loss_scale enables it); checkpoints save
  /// and restore its state.
  optim::grad_scaler& loss_scaler() { return scaler_; }
  const optim::named_vars<T, D>& student_parameters() const { return student_params_; }
  const optim::named_vars<T, D>& teacher_parameters() const { return teacher_params_; }

 private:
  Net& student_;
  Net& teacher_;
  optim::schedules sched_;
  flsl_loss_params loss_;
  flsl_step_options opt_;
  train_state state_;
  optim::named_vars<T, D> student_params_, teacher_params_;
  optim::adamw<T, D> adam_;
  optim::grad_scaler scaler_;
  Tensor<T, D> center_;  // teacher centering's running mean of the teacher logits
};

}  // namespace flsl
