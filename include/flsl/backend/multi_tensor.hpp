// The fused multi-tensor kernels of the parameter update on cuda (per-tensor gradient norms and
// clipping, AdamW, the EMA teacher update): the plain descriptors the host fills for each tensor
// and the declarations of the host entry points in flsl::cuda_ops. This header includes no CUDA
// header, so that optim/adamw.hpp (compiled by g++ too) can call the entry points from its cuda
// branches; the definitions are in backend/cuda/kernels/optim.cuh (nvcc only, included by
// <flsl/backend/cuda.cuh>), with exactly these signatures. See docs/cuda.md.
#pragma once

#include <span>

#include "../core/dtype.hpp"
#include "../core/shape.hpp"

namespace flsl::cuda_ops {

/// One parameter tensor of a fused AdamW update: contiguous device arrays of `numel` elements and
/// the scalars of its update, computed in double on the host and rounded to the compute type C
/// (as the CPU path does).
template <class T>
struct adamw_tensor {
  T* param = nullptr;
  const T* grad = nullptr;
  T* exp_avg = nullptr;     // m
  T* exp_avg_sq = nullptr;  // v
  index_t numel = 0;
  compute_t<T> decay{};      // 1 - lr * wd
  compute_t<T> step_size{};  // -(lr / (1 - beta1^t))
  compute_t<T> bc2_sqrt{};   // sqrt(1 - beta2^t)
};

/// The scalars shared by every tensor of an AdamW update (rounded to the compute type).
template <class C>
struct adamw_constants {
  C beta1{}, one_minus_beta1{}, beta2{}, one_minus_beta2{}, eps{};
};

/// One tensor of a fused EMA update `teacher = teacher * m + (1 - m) * student` (contiguous).
template <class T>
struct ema_tensor {
  T* teacher = nullptr;
  const T* student = nullptr;
  index_t numel = 0;
};

/// One gradient of a fused per-tensor clipping (contiguous, updated in place).
template <class T>
struct clip_tensor {
  T* grad = nullptr;
  index_t numel = 0;
};

/// For every tensor (the host has advanced its step count and rounded its scalars): m = m * beta1
/// + (1 - beta1) * g; v = v * beta2 + (1 - beta2) * g * g; p = p * decay + (step_size * m) /
/// (sqrt(v) / bc2_sqrt + eps), each operation rounded as written (no contraction). One launch.
template <class T>
void multi_tensor_adamw(std::span<const adamw_tensor<T>> tensors,
                        const adamw_constants<compute_t<T>>& k);

/// Per-tensor L2 norms (squares summed in double: per chunk, then per tensor in chunk order) into
/// `norms` (host memory, one slot per tensor), and, when max_norm > 0, every gradient whose norm
/// n exceeds max_norm scaled in place by compute_t<T>(max_norm / (n + 1e-6)), the scale computed
/// on the device. Three launches and one device-to-host copy of all norms (the call waits for it).
template <class T>
void multi_tensor_clip_per_tensor(std::span<const clip_tensor<T>> tensors, double max_norm,
                                  std::span<double> norms);

/// teacher = teacher * m + one_minus_m * student for every tensor, in one launch.
template <class T>
void multi_tensor_ema(std::span<const ema_tensor<T>> tensors, compute_t<T> m,
                      compute_t<T> one_minus_m);

}  // namespace flsl::cuda_ops
