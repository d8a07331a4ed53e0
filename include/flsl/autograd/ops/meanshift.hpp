// Non-parametric mean-shift attention of FLSL (docs/FLSL_SPEC.md §3): each query moves to the
// softmax-weighted mean of the keys, which are also the values. Runs on the attention kernels.
#pragma once

#include "attention.hpp"

namespace flsl {

namespace detail {

/// out [B, Q, D] and lse [B, Q] from queries [B, Q, D] and keys [B, M, D]: per batch element one
/// attention head with v = k and scale beta. Parallel over B.
template <class T>
void meanshift_forward(const Tensor<T, cpu>& q, const Tensor<T, cpu>& k, T beta,
                       const Tensor<T, cpu>& out, const Tensor<T, cpu>& lse) {
  const index_t nq = q.size(1), nk = k.size(1), d = q.size(2);
  parallel_heads<T>(q.size(0), {nq, nk}, [&](index_t b, const Tensor<T, cpu>& s) {
    const auto kb = batch_block(k, b, 0, d);
    attention_forward_head(batch_block(q, b, 0, d), kb, kb, beta, batch_block(out, b, 0, d),
                           lse.data() + b * nq, matrix_ref<T>{s.data(), nq, nk, nk});
  });
}

/// dq [B, Q, D] and dk [B, M, D] (an undefined one is not wanted), each element written once:
///   dq = beta dS k,  dk = beta dS^T q + P^T dout   (the kernel's dk, then its dv added onto it).
template <class T>
void meanshift_backward(const Tensor<T, cpu>& q, const Tensor<T, cpu>& k, const Tensor<T, cpu>& out,
                        const Tensor<T, cpu>& dout, const Tensor<T, cpu>& lse, T beta,
                        const Tensor<T, cpu>& dq, const Tensor<T, cpu>& dk) {
  const index_t nq = q.size(1), nk = k.size(1), d = q.size(2);
  parallel_heads<T>(q.size(0), {2, nq, nk}, [&](index_t b, const Tensor<T, cpu>& s) {
    const auto kb = batch_block(k, b, 0, d);
    attention_head_grads<T> g;
    if (dq.defined()) g.dq = batch_block(dq, b, 0, d);
    if (dk.defined()) {
      g.dk = g.dv = batch_block(dk, b, 0, d);
      g.beta_v = T(1);
    }
    attention_backward_head(batch_block(q, b, 0, d), kb, kb, batch_block(out, b, 0, d),
                            batch_block(dout, b, 0, d), lse.data() + b * nq, beta, g,
                            matrix_ref<T>{s.data(), nq, nk, nk},
                            matrix_ref<T>{s.data() + nq * nk, nq, nk, nk});
  });
}

}  // namespace detail

// The CUDA kernels of meanshift_attention's cuda path, defined in
// flsl/backend/cuda/kernels/mean_shift.cuh (included by <flsl/backend/cuda.cuh>, nvcc only);
// declared here so that this header stays free of CUDA headers.
namespace cuda_ops {
template <class T>
void meanshift_forward(const Tensor<T, cuda>& q, const Tensor<T, cuda>& k, T beta,
                       const Tensor<T, cuda>& out, const Tensor<T, cuda>& lse);
template <class T>
void meanshift_backward(const Tensor<T, cuda>& q, const Tensor<T, cuda>& k,
                        const Tensor<T, cuda>& out, const Tensor<T, cuda>& grad_out,
                        const Tensor<T, cuda>& lse, T beta, const Tensor<T, cuda>& dq,
                        const Tensor<T, cuda>& dk);
}  // namespace cuda_ops

namespace detail {

/// The cuda path of meanshift_attention (shapes checked): the row-wise kernels of cuda_ops on
/// contiguous queries and keys, saving the same statistic as the CPU (lse [B, Q]); the fresh dq
/// and dk are installed or added (queries and keys may be one node).
template <class T>
Var<T, cuda> meanshift_attention_cuda(const Var<T, cuda>& queries, const Var<T, cuda>& keys,
                                      double beta) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "flsl::meanshift_attention on cuda: f32 or f64");
  using Dev = cuda;
  const Tensor<T, Dev> q = queries.value().contiguous();  // [B, Q, D]
  const Tensor<T, Dev> k = keys.value().contiguous();     // [B, M, D]
  auto out = Tensor<T, Dev>::empty(q.shape());
  auto lse = Tensor<T, Dev>::empty({q.size(0), q.size(1)});
  cuda_ops::meanshift_forward(q, k, T(beta), out, lse);
  auto backward = [q, k, lse, b = T(beta)](autograd::node<T, Dev>& node) {
    auto& nq = *node.inputs[0];
    auto& nk = *node.inputs[1];
    Tensor<T, Dev> dq, dk;
    if (nq.requires_grad) dq = Tensor<T, Dev>::empty(q.shape());
    if (nk.requires_grad) dk = Tensor<T, Dev>::empty(k.shape());
    cuda_ops::meanshift_backward(q, k, node.value, node.grad.contiguous(), lse, b, dq, dk);
    if (dq.defined()) add_fresh_grad(nq, dq);
    if (dk.defined()) add_fresh_grad(nk, dk);
  };
  return Var<T, Dev>::make_result(out, "meanshift_attention", backward, queries, keys);
}

}  // namespace detail

/// Mean-shift attention: queries [B, Q, D], keys [B, M, D] -> [B, Q, D],
///   out_bi = sum_j softmax_j(beta <q_bi, k_bj>) k_bj        (beta: inverse temperature).
/// Gradients flow into queries and keys. FLSL's self version (zhat) passes a token gather of z as
/// queries and z as keys; the cross version (zplus) passes the teacher tokens as keys (then without
/// gradient, and the keys' backward work is skipped). Saves the inputs, the output and the per-row
/// logsumexp [B, Q]; the backward rebuilds the probabilities per batch element.
template <class T, class D>
Var<T, D> meanshift_attention(const Var<T, D>& queries, const Var<T, D>& keys, double beta) {
  FLSL_CHECK(queries.rank() == 3 && keys.rank() == 3 && queries.size(0) == keys.size(0) &&
                 queries.size(2) == keys.size(2),
             "meanshift_attention: needs queries [B, Q, D] and keys [B, M, D], got ",
             queries.shape(), " and ", keys.shape());
  FLSL_CHECK(keys.size(1) > 0, "meanshift_attention: no keys in ", keys.shape());
  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::meanshift_attention_cuda(queries, keys, beta);
  } else {
    detail::check_attention_types<T, D>();
    const Tensor<T, D> q = detail::unit_stride_rows(queries.value());
    const Tensor<T, D> k = detail::unit_stride_rows(keys.value());
    auto out = Tensor<T, D>::empty(q.shape());               // [B, Q, D]
    auto lse = Tensor<T, D>::empty({q.size(0), q.size(1)});  // [B, Q]
    detail::meanshift_forward(q, k, T(beta), out, lse);
    auto backward = [q, k, lse, b = T(beta)](autograd::node<T, D>& node) {
      auto& nq = *node.inputs[0];
      auto& nk = *node.inputs[1];
      Tensor<T, D> dq, dk;
      if (nq.requires_grad) dq = Tensor<T, D>::empty(q.shape());
      if (nk.requires_grad) dk = Tensor<T, D>::empty(k.shape());
      detail::meanshift_backward(q, k, node.value, detail::unit_stride_rows(node.grad), lse, b, dq,
                                 dk);
      // queries and keys may be the same node: the second gradient then adds to the first.
      if (dq.defined()) detail::add_fresh_grad(nq, dq);
      if (dk.defined()) detail::add_fresh_grad(nk, dk);
    };
    return Var<T, D>::make_result(out, "meanshift_attention", backward, queries, keys);
  }
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(meanshift_attention_cross) {
  using namespace autograd;
  return gradcheck([](auto& in) { return meanshift_attention(in[0], in[1], 0.7); },
                   {random_input({2, 3, 4}, 601), random_input({2, 5, 4}, 602)});
}
FLSL_GRADCHECK_ROW(meanshift_attention_constant_keys) {
  using namespace autograd;
  return gradcheck([](auto& in) { return meanshift_attention(in[0], in[1], 1.3); },
                   {random_input({3, 2, 5}, 603), random_input({3, 4, 5}, 604)}, {true, false});
}
FLSL_GRADCHECK_ROW(meanshift_attention_self_same_tokens) {
  using namespace autograd;
  return gradcheck([](auto& in) { return meanshift_attention(in[0], in[0], 0.5); },
                   {random_input({2, 4, 3}, 605)});
}
#endif

}  // namespace flsl
