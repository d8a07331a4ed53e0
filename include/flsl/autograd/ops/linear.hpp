// matmul and linear (x W^T + b) on Vars: forward and backward are GEMMs on the CPU backend.
#pragma once

#include "../elementwise.hpp"
#include "../gradcheck.hpp"

namespace flsl {

namespace autograd {
/// grad(n) += a @ b, written by the GEMM itself (beta = 1) once the gradient exists.
template <class T, class D>
void accumulate_product(node<T, D>& n, const Tensor<T, D>& a, const Tensor<T, D>& b) {
  if (!n.grad.defined())
    n.grad = Tensor<T, D>::empty(n.value.shape()), matmul_into(n.grad, a, b);
  else
    matmul_into(n.grad, a, b, 1.0, 1.0);
}
}  // namespace autograd

/// a @ b for [M,K] @ [K,N] or batches [B,M,K] @ [B,K,N] (see flsl::matmul_into). dA = dC B^T,
/// dB = A^T dC, each summed over a broadcast batch.
template <class T, class D>
Var<T, D> matmul(const Var<T, D>& a, const Var<T, D>& b) {
  auto backward = [a, b](autograd::node<T, D>& out) {
    const auto& g = out.grad;
    auto& na = *out.inputs[0];
    auto& nb = *out.inputs[1];
    const Tensor<T, D>& av = a.value();
    const Tensor<T, D>& bv = b.value();
    if (na.requires_grad) {
      if (av.rank() == g.rank())
        autograd::accumulate_product(na, g, bv.t());
      else
        na.accumulate(matmul(g, bv.t()));  // 2-D a, batched b: sum over the batch
    }
    if (nb.requires_grad) {
      if (bv.rank() == g.rank() && bv.size(0) == g.size(0)) {
        autograd::accumulate_product(nb, av.t(), g);
      } else if (bv.rank() == 2 && av.rank() == 3 && av.is_contiguous() && g.is_contiguous()) {
        // shared 2-D b: one tall product over the flattened batch
        autograd::accumulate_product(nb, av.view({-1, av.size(-1)}).t(), g.view({-1, g.size(-1)}));
      } else {
        nb.accumulate(matmul(av.t(), g));
      }
    }
  };
  return Var<T, D>::make_result(matmul(a.value(), b.value()), "matmul", backward, a, b);
}

/// y = x W^T + b over the last axis: x [..., in], W [out, in], b [out] -> [..., out].
template <class T, class D>
Var<T, D> linear(const Var<T, D>& x, const Var<T, D>& w, const Var<T, D>& b = Var<T, D>()) {
  const index_t in = w.size(1), out_f = w.size(0);
  FLSL_CHECK(x.size(-1) == in, "linear: input of shape ", x.shape(), " for a weight of shape ",
             w.shape(), " (last axis must be ", in, ")");
  FLSL_CHECK(!b.defined() || b.shape() == Shape{out_f}, "linear: bias of shape ",
             b.defined() ? b.shape() : Shape{}, " for a weight of shape ", w.shape());
  const Tensor<T, D> x2 = x.value().reshape_or_copy({-1, in});  // [M, in]
  Shape ys = x.shape();
  ys[ys.rank() - 1] = out_f;
  auto y = Tensor<T, D>::empty({x2.size(0), out_f});  // [M, out]
  if (b.defined()) {
    if constexpr (std::is_same_v<D, cpu>) {
      y.assign(b.value());
      matmul_into(y, x2, w.value().t(), 1.0, 1.0);
    } else {
      matmul_bias_into(y, x2, w.value().t(), b.value());  // cuBLASLt's bias epilogue
    }
  } else {
    matmul_into(y, x2, w.value().t());
  }
  auto backward = [x2, w, has_b = b.defined()](autograd::node<T, D>& out) {
    const Tensor<T, D> g = out.grad.view({-1, out.grad.size(-1)});  // [M, out]
    auto& nx = *out.inputs[0];
    if (nx.requires_grad) {
      if (!nx.grad.defined()) {
        nx.grad = Tensor<T, D>::empty(nx.value.shape());
        matmul_into(nx.grad.view({-1, x2.size(1)}), g, w.value());
      } else {
        matmul_into(nx.grad.view({-1, x2.size(1)}), g, w.value(), 1.0, 1.0);
      }
    }
    auto& nw = *out.inputs[1];
    if (nw.requires_grad) autograd::accumulate_product(nw, g.t(), x2);
    if (has_b && out.inputs[2]->requires_grad) out.inputs[2]->accumulate(sum(g, {0}));
  };
  if (b.defined()) return Var<T, D>::make_result(y.view(ys), "linear", backward, x, w, b);
  return Var<T, D>::make_result(y.view(ys), "linear", backward, x, w);
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(matmul) {
  using namespace autograd;
  return gradcheck([](auto& in) { return matmul(in[0], in[1]); },
                   {random_input({4, 5}, 1), random_input({5, 3}, 2)});
}
FLSL_GRADCHECK_ROW(matmul_batched_broadcast) {
  using namespace autograd;
  return gradcheck([](auto& in) { return matmul(in[0], in[1]); },
                   {random_input({3, 4, 5}, 3), random_input({5, 2}, 4)});
}
FLSL_GRADCHECK_ROW(matmul_batched) {
  using namespace autograd;
  return gradcheck([](auto& in) { return matmul(in[0], in[1]); },
                   {random_input({2, 4, 5}, 5), random_input({2, 5, 3}, 6)});
}
FLSL_GRADCHECK_ROW(linear) {
  using namespace autograd;
  return gradcheck([](auto& in) { return linear(in[0], in[1], in[2]); },
                   {random_input({2, 3, 5}, 7), random_input({4, 5}, 8), random_input({4}, 9)});
}
FLSL_GRADCHECK_ROW(linear_no_bias) {
  using namespace autograd;
  return gradcheck([](auto& in) { return linear(in[0], in[1]); },
                   {random_input({6, 5}, 10), random_input({3, 5}, 11)});
}
#endif

}  // namespace flsl
