// The CUDA kernels of the model's non-GEMM ops, as functions on contiguous Tensor<T, cuda>
// arguments in namespace flsl::cuda_ops: LayerNorm, softmax / log_softmax, GELU and fused
// multi-head attention, each forward and backward. The Var ops layer_norm and multi_head_attention
// call them on cuda (their headers declare the functions they use, with these signatures; so do
// softmax.hpp, gather.hpp and meanshift.hpp). Compiled only by nvcc; included by
// <flsl/backend/cuda.cuh>. See docs/cuda.md. The FLSL objective's kernels: row gathers and their
// scatter-add (gather.cuh) and mean-shift attention (mean_shift.cuh).
#pragma once

#include "attention.cuh"
#include "gather.cuh"
#include "gelu.cuh"
#include "layer_norm.cuh"
#include "mean_shift.cuh"
#include "optim.cuh"  // fused multi-tensor AdamW, per-tensor clipping, EMA (optim/adamw.hpp)
#include "softmax.cuh"
