// The CUDA kernels of the model's non-GEMM ops, as functions on contiguous Tensor<T, cuda>
// arguments in namespace flsl::cuda_ops: LayerNorm, softmax / log_softmax, GELU and fused
// multi-head attention, each forward and backward. The Var ops layer_norm and multi_head_attention
// call them on cuda (their headers declare the functions they use, with these signatures; softmax
// is not dispatched yet). Compiled only by nvcc; included by <flsl/backend/cuda.cuh>. See
// docs/cuda.md.
#pragma once

#include "attention.cuh"
#include "gelu.cuh"
#include "layer_norm.cuh"
#include "softmax.cuh"
