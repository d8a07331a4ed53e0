// GELU (exact, erf form) on the GPU. On the CPU, GELU is an elementwise expression
// (include/flsl/expr/ops.hpp: gelu(a) = 0.5 a (1 + erf(a / sqrt 2)), gelu_grad its derivative),
// and the autograd op's backward is g * gelu_grad(x) (include/flsl/autograd/elementwise.hpp). Both
// already run on cuda tensors as one generated kernel per assignment (backend/cuda/elementwise.cuh,
// CUDA's erff); these two functions only name the forward and backward for the later autograd
// dispatch, with the same argument conventions as the other cuda_ops.
//
//   cuda_ops::gelu_forward(x, y)                    y = gelu(x)
//   cuda_ops::gelu_backward(x, grad_y, dx, accumulate)  dx (=, or +=) grad_y * gelu'(x)
// Tensors of one shape (views allowed: the expression kernels take strides). Compiled only by nvcc.
#pragma once

#include "../../../expr/ops.hpp"
#include "common.cuh"

namespace flsl {

namespace cuda_ops {

template <class T>
void gelu_forward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& y) {
  FLSL_CHECK(x.defined() && y.defined() && x.shape() == y.shape(),
             "cuda_ops::gelu_forward: x and y must be defined and of one shape");
  y.assign(gelu(x));
}

template <class T>
void gelu_backward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& grad_y,
                   const Tensor<T, cuda>& dx, bool accumulate = false) {
  FLSL_CHECK(x.defined() && grad_y.defined() && dx.defined() && x.shape() == grad_y.shape() &&
                 x.shape() == dx.shape(),
             "cuda_ops::gelu_backward: x, grad_y and dx must be defined and of one shape");
  if (accumulate)
    dx.assign(dx + grad_y * gelu_grad(x));
  else
    dx.assign(grad_y * gelu_grad(x));
}

}  // namespace cuda_ops

}  // namespace flsl
