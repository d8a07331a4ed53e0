// Reductions on the GPU (sum, mean, max, min along axes or over everything): a group of threads
// per output element folds a strided share of the reduced values each, then a fixed tree in
// shared memory combines them. The order depends only on the shapes, so results are deterministic
// from run to run. Compiled only by nvcc.
#pragma once

#include <bit>
#include <type_traits>

#include "../../expr/reduce.hpp"
#include "runtime.cuh"

namespace flsl {

namespace cuda_detail {

/// The reduce_plan as a kernel argument.
struct reduce_dims {
  int kept, rank;
  index_t extent[max_rank];
  index_t out_stride[max_rank];
  index_t n_out, count;
};

/// Each block of block_size threads serves block_size / group outputs; output o is folded by the
/// `group` threads of its group (thread `lane` takes reduced elements lane, lane + group, ...).
template <class T, class View, class Op>
__global__ void reduce_kernel(T* __restrict__ out, View v, reduce_dims d, Op op, int group) {
  using acc_type = typename Op::acc;
  __shared__ acc_type partial[block_size];
  const int lane = int(threadIdx.x) % group;
  const index_t per_block = block_size / group;
  // Every thread of the block runs the same number of iterations (the barriers below need it).
  for (index_t first = index_t(blockIdx.x) * per_block; first < d.n_out;
       first += index_t(gridDim.x) * per_block) {
    const index_t o = first + int(threadIdx.x) / group;
    acc_type a = op.init();
    index_t out_off = 0;
    if (o < d.n_out) {
      index_t idx[max_rank];
      index_t rem = o;
      FLSL_UNROLL
      for (int k = max_rank - 1; k >= 0; --k) {
        if (k < d.kept) {
          idx[k] = rem % d.extent[k];
          rem /= d.extent[k];
          out_off += idx[k] * d.out_stride[k];
        }
      }
      for (index_t j = lane; j < d.count; j += group) {
        rem = j;
        FLSL_UNROLL
        for (int k = max_rank - 1; k >= 0; --k) {
          if (k >= d.kept && k < d.rank) {
            idx[k] = rem % d.extent[k];
            rem /= d.extent[k];
          }
        }
        op.step(a, v.at(idx, d.rank), j);
      }
    }
    partial[threadIdx.x] = a;
    __syncthreads();
    for (int s = group / 2; s > 0; s /= 2) {
      if (lane < s) op.combine(partial[threadIdx.x], partial[threadIdx.x + s]);
      __syncthreads();
    }
    if (lane == 0 && o < d.n_out)
      out[out_off] = convert<T>(op.finish(partial[threadIdx.x], d.count));
    __syncthreads();
  }
}

/// out = reduce(e) over `axes` with operator `op` (out's shape prepared by flsl::reduce).
template <class T, class E, class Op>
void reduce(const Tensor<T, cuda>& out, E e, const std::vector<int>& axes, const Op& op) {
  static_assert(
      requires(const Op& o, typename Op::acc& x) { o.combine(x, x); },
      "flsl: this reduction (argmax, var) has no CUDA kernel yet");
  const detail::reduce_plan plan = detail::plan_reduction(out, e, axes);
  if (plan.n_out == 0) return;
  reduce_dims d{plan.kept, plan.rank, {}, {}, plan.n_out, plan.count};
  for (int k = 0; k < plan.rank; ++k) {
    d.extent[k] = plan.extent[k];
    d.out_stride[k] = plan.out_stride[k];
  }
  // Threads per output: the power of two covering the count, at most a block.
  const int group = int(std::min<index_t>(
      block_size, std::bit_ceil(std::uint64_t(std::max<index_t>(plan.count, 1)))));
  const auto view = e.device_view();
  reduce_kernel<<<grid_for(plan.n_out, block_size / group), block_size, 0, current_stream()>>>(
      out.data(), view, d, op, group);
  check_launch("reduce_kernel");
}

}  // namespace cuda_detail

}  // namespace flsl
