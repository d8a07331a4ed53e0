// Losses of the FLSL objective: soft-target cross-entropy through log-softmax (k-means term),
// KL divergence to the uniform distribution (volume maximisation term), entropy.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "../elementwise.hpp"
#include "../gradcheck.hpp"
#include "attention.hpp"  // detail::row_math: lane sums and a vectorisable exp

namespace flsl {

namespace detail {

/// One row of the soft cross-entropy, with y = z / tau:
///   lse = log sum_k exp(y_k),   loss = sum_k q_k (lse - y_k)   (= -sum_k q_k log_softmax(y)_k).
/// Neither softmax nor its log is formed: each lse - y_k >= 0 stays exact for huge logits.
template <class T>
double soft_ce_forward_row(const T* __restrict z, const T* __restrict q, index_t k, T inv_tau,
                           T& lse) {
  const T m = row_math::max(z, k) * inv_tau;  // max_k y_k (inv_tau > 0)
  lse = m +
        std::log(row_math::sum<T>(k, [&](index_t j) { return row_math::exp(z[j] * inv_tau - m); }));
  const T l = lse;
  return row_math::sum<double>(k, [&](index_t j) { return double(q[j] * (l - z[j] * inv_tau)); });
}

/// The gradient of one row's loss, scaled: with p = exp(y - lse) = softmax(y),
///   dz_k = coef_z (q_k - p_k sum_j q_j)   (coef_z = -g / (R tau)),
///   dq_k = coef_q (lse - y_k)             (coef_q = g / R);   a null dz or dq is skipped.
template <class T>
void soft_ce_backward_row(const T* __restrict z, const T* __restrict q, index_t k, T inv_tau, T lse,
                          T coef_z, T* __restrict dz, T coef_q, T* __restrict dq) {
  if (dz) {
    const T sum_q = row_math::sum<T>(k, [&](index_t j) { return q[j]; });
    for (index_t j = 0; j < k; ++j)
      dz[j] = coef_z * (q[j] - row_math::exp(z[j] * inv_tau - lse) * sum_q);
  }
  if (dq)
    for (index_t j = 0; j < k; ++j) dq[j] = coef_q * (lse - z[j] * inv_tau);
}

/// soft_cross_entropy on a device other than the CPU (arguments checked): the CPU rows'
/// formulas as keepdim reductions and expressions, y = z / tau:
///   lse_r = m_r + log sum_k exp(y_rk - m_r) (m_r = max_k y_rk),
///   loss = (1/R) sum_r sum_k q_rk (lse_r - y_rk)   (row sums, then the sum over rows);
/// backward with the upstream gradient g (a rank-0 device tensor, never copied to the host):
///   dz = -(g / (R tau)) (q - exp(y - lse) sum_k q),   dq = (g / R) (lse - y).
/// Saves z, q and lse [R, 1].
template <class T, class D>
Var<T, D> soft_cross_entropy_device(const Var<T, D>& logits, const Var<T, D>& target, double tau) {
  const Tensor<T, D> z = logits.value(), q = target.value();  // [R, K]
  const index_t rows = z.size(0);
  const T inv_tau = T(1.0 / tau);
  const Tensor<T, D> m = flsl::max(z * inv_tau, {1}, true);                      // [R, 1]
  const Tensor<T, D> lse = m + log(flsl::sum(exp(z * inv_tau - m), {1}, true));  // [R, 1]
  const Tensor<T, D> row_loss = flsl::sum(q * (lse - z * inv_tau), {1});         // [R]
  Tensor<T, D> loss = flsl::sum(row_loss) * T(1.0 / double(rows));               // []
  auto backward = [z, q, lse, inv_tau, rows](autograd::node<T, D>& node) {
    auto& nz = *node.inputs[0];
    auto& nq = *node.inputs[1];
    if (nz.requires_grad) {
      const Tensor<T, D> sum_q = flsl::sum(q, {1}, true);                        // [R, 1]
      const Tensor<T, D> coef = node.grad * T(-double(inv_tau) / double(rows));  // []
      add_fresh_grad(nz, Tensor<T, D>(coef * (q - exp(z * inv_tau - lse) * sum_q)));
    }
    if (nq.requires_grad) {  // after nz: logits and target may be the same node
      const Tensor<T, D> coef = node.grad * T(1.0 / double(rows));  // []
      add_fresh_grad(nq, Tensor<T, D>(coef * (lse - z * inv_tau)));
    }
  };
  return Var<T, D>::make_result(std::move(loss), "soft_cross_entropy", backward, logits, target);
}

}  // namespace detail

/// Soft-target cross-entropy: logits [R, K], target probabilities q [R, K], temperature tau ->
/// scalar (rank 0)
///   L = -(1/R) sum_r sum_k q_rk log_softmax(logits_r / tau)_k          (mean over rows).
/// Stable for any logits (log-softmax through the row's logsumexp). Saves the logsumexp per row,
/// not the softmax. The target usually carries no gradient (FLSL's teacher assignments); when it
/// does, dq_rk = -(1/R) log_softmax(logits_r / tau)_k. The row sum of q need not be 1.
template <class T, class D>
Var<T, D> soft_cross_entropy(const Var<T, D>& logits, const Var<T, D>& target, double tau) {
  FLSL_CHECK(logits.rank() == 2 && target.shape() == logits.shape() && logits.numel() > 0,
             "soft_cross_entropy: needs logits and target of the same non-empty shape [R, K], got ",
             logits.shape(), " and ", target.shape());
  FLSL_CHECK(tau > 0, "soft_cross_entropy: temperature ", tau, " is not positive");
  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::soft_cross_entropy_device(logits, target, tau);
  } else {
    const Tensor<T, D> z = logits.value().contiguous(), q = target.value().contiguous();  // [R, K]
    const index_t rows = z.size(0), k = z.size(1);
    const T inv_tau = T(1.0 / tau);
    auto lse = Tensor<T, D>::empty({rows});  // [R]
    std::vector<double> row_loss(static_cast<std::size_t>(rows));
    detail::parallel_rows(rows, k, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r)
        row_loss[std::size_t(r)] = detail::soft_ce_forward_row(z.data() + r * k, q.data() + r * k,
                                                               k, inv_tau, lse.data()[r]);
    });
    double total = 0;  // summed in row order: the same value on every thread count
    for (double l : row_loss) total += l;
    auto backward = [z, q, lse, inv_tau](autograd::node<T, D>& node) {
      const index_t rows = z.size(0), k = z.size(1);
      const double g = convert<double>(node.grad.item()) / double(rows);
      auto& nz = *node.inputs[0];
      auto& nq = *node.inputs[1];
      Tensor<T, D> dz, dq;  // [R, K] each, when wanted
      if (nz.requires_grad) dz = Tensor<T, D>::empty(z.shape());
      if (nq.requires_grad) dq = Tensor<T, D>::empty(q.shape());
      const T coef_z = T(-g * double(inv_tau)), coef_q = T(g);
      detail::parallel_rows(rows, k, [&](index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r)
          detail::soft_ce_backward_row(z.data() + r * k, q.data() + r * k, k, inv_tau,
                                       lse.data()[r], coef_z,
                                       dz.defined() ? dz.data() + r * k : nullptr, coef_q,
                                       dq.defined() ? dq.data() + r * k : nullptr);
      });
      const auto install = [](autograd::node<T, D>& n, const Tensor<T, D>& fresh) {
        if (!fresh.defined()) return;
        if (!n.grad.defined())
          n.grad = fresh;
        else
          n.grad.assign(n.grad + fresh);
      };
      install(nz, dz);
      install(nq, dq);  // after nz: logits and target may be the same node
    };
    return Var<T, D>::make_result(Tensor<T, D>::scalar(T(total / double(rows))),
                                  "soft_cross_entropy", backward, logits, target);
  }
}

/// soft_cross_entropy with a constant target.
template <class T, class D>
Var<T, D> soft_cross_entropy(const Var<T, D>& logits, const Tensor<T, D>& target, double tau) {
  return soft_cross_entropy(logits, Var<T, D>(target, false), tau);
}

/// Entropy along `axis`: p [..., K, ...] (p >= 0) -> p's shape without `axis`,
///   H = -sum_k p_k log p_k   with 0 log 0 = 0,    dH/dp_k = -(log p_k + 1).
/// In the gradient p_k is clamped to the smallest normal number, so an exact zero gets a large
/// finite slope instead of infinity.
template <class T, class D>
Var<T, D> entropy(const Var<T, D>& p, int axis = -1) {
  const int a = p.shape().normalize_axis(axis);
  const Tensor<T, D> pv = p.value();
  Tensor<T, D> h = sum(where(pv > T(0), -(pv * log(pv)), T(0)), {a});
  auto backward = [pv, a](autograd::node<T, D>& node) {
    const T tiny = std::numeric_limits<T>::min();
    node.inputs[0]->accumulate(node.grad.unsqueeze(a) * -(log(maximum(pv, tiny)) + T(1)));
  };
  return Var<T, D>::make_result(std::move(h), "entropy", backward, p);
}

/// KL divergence of p to the uniform distribution over its last axis (FLSL's volume maximisation
/// on the batch-mean probability pbar [K]): p [..., K] -> p's shape without the last axis,
///   KL(p || 1/K) = sum_k p_k log p_k + log K   (0 log 0 = 0; gradient log p_k + 1, see entropy).
template <class T, class D>
Var<T, D> kl_to_uniform(const Var<T, D>& p) {
  FLSL_CHECK(p.rank() >= 1 && p.size(-1) > 0, "kl_to_uniform: needs p [..., K] with K > 0, got ",
             p.shape());
  return Var<T, D>(std::log(double(p.size(-1))) - entropy(p, -1));
}

#ifdef FLSL_GRADCHECK_ROWS
namespace detail {
/// A random positive test input (a non-contiguous view), for ops defined on probabilities.
inline Tensor<double> random_positive_input(const Shape& shape, std::uint64_t seed) {
  auto t = autograd::random_input(shape, seed);
  t.assign(abs(t) + 0.1);
  return t;
}
}  // namespace detail
FLSL_GRADCHECK_ROW(soft_cross_entropy) {
  using namespace autograd;
  const auto target = detail::random_positive_input({3, 5}, 702);
  return gradcheck([target](auto& in) { return soft_cross_entropy(in[0], target, 0.5); },
                   {random_input({3, 5}, 701, true, 3.0)});
}
FLSL_GRADCHECK_ROW(soft_cross_entropy_target_gradient) {
  using namespace autograd;
  return gradcheck([](auto& in) { return soft_cross_entropy(in[0], in[1], 0.1); },
                   {random_input({4, 3}, 703), detail::random_positive_input({4, 3}, 704)});
}
FLSL_GRADCHECK_ROW(kl_to_uniform) {
  using namespace autograd;
  return gradcheck([](auto& in) { return kl_to_uniform(in[0]); },
                   {detail::random_positive_input({6}, 705)});
}
FLSL_GRADCHECK_ROW(entropy_inner_axis) {
  using namespace autograd;
  return gradcheck([](auto& in) { return entropy(in[0], 0); },
                   {detail::random_positive_input({3, 4}, 706)});
}
#endif

}  // namespace flsl
