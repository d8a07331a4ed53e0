// The CUDA kernels of the model's non-GEMM ops, as functions on contiguous Tensor<T, cuda>
// arguments in namespace flsl::cuda_ops (not yet behind the autograd Var ops): LayerNorm, softmax /
// log_softmax, GELU and fused multi-head attention, each forward and backward. Compiled only by
// nvcc; included by <flsl/backend/cuda.cuh>. See docs/cuda.md.
#pragma once

#include "attention.cuh"
#include "gelu.cuh"
#include "layer_norm.cuh"
#include "softmax.cuh"
