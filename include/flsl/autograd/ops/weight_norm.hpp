// Weight normalisation: W = g v / ||v|| row by row (the last layer of FLSL's projection head).
#pragma once

#include "../elementwise.hpp"
#include "../gradcheck.hpp"

namespace flsl {

/// W = g v / ||v||_row: v [out, in], g [out] (an undefined Var: g fixed at 1, as with FLSL's
/// norm_last_layer) -> W [out, in]. With n_r = ||v_r|| and t_r = sum_k dW_rk v_rk:
///   dg_r = t_r / n_r,   dv_rk = (g_r / n_r) (dW_rk - v_rk t_r / n_r^2).
/// A zero row of v has no direction: its output is NaN (as torch's weight_norm).
template <class T, class D>
Var<T, D> weight_norm(const Var<T, D>& v, const Var<T, D>& g = Var<T, D>()) {
  FLSL_CHECK(v.rank() == 2, "weight_norm: v must be [out, in], got ", v.shape());
  const index_t rows = v.size(0);
  FLSL_CHECK(!g.defined() || g.shape() == Shape{rows}, "weight_norm: gain of shape ",
             g.defined() ? g.shape() : Shape{}, " for v of shape ", v.shape());
  const Tensor<T, D> vv = v.value();
  const Tensor<T, D> norm = sqrt(sum(square(vv), {1}, true));  // [out, 1]
  const Tensor<T, D> gain = g.defined() ? Tensor<T, D>(g.value().unsqueeze(1) / norm)
                                        : Tensor<T, D>(1.0 / norm);  // [out, 1]: g / n
  Tensor<T, D> w = vv * gain;                                        // [out, in]
  auto backward = [vv, norm, gain](autograd::node<T, D>& node) {
    const Tensor<T, D> t = sum(node.grad * vv, {1}, true);  // [out, 1]
    auto& nv = *node.inputs[0];
    if (nv.requires_grad) nv.accumulate(gain * (node.grad - vv * (t / square(norm))));
    if (node.inputs.size() > 1 && node.inputs[1]->requires_grad) {
      const Tensor<T, D> dg = t / norm;  // [out, 1]
      node.inputs[1]->accumulate(dg.view({-1}));
    }
  };
  if (g.defined()) return Var<T, D>::make_result(std::move(w), "weight_norm", backward, v, g);
  return Var<T, D>::make_result(std::move(w), "weight_norm", backward, v);
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(weight_norm) {
  using namespace autograd;
  return gradcheck([](auto& in) { return weight_norm(in[0], in[1]); },
                   {random_input({4, 5}, 501), random_input({4}, 502)});
}
FLSL_GRADCHECK_ROW(weight_norm_fixed_gain) {
  using namespace autograd;
  return gradcheck([](auto& in) { return weight_norm(in[0]); }, {random_input({3, 6}, 503)});
}
#endif

}  // namespace flsl
