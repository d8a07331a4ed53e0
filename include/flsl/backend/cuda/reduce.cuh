// Reductions on the GPU (sum, mean, max, min along axes or over everything): a group of threads
// per output element folds a strided share of the reduced values each, then a fixed tree in
// shared memory combines them; column reductions (a bias gradient) get a coalesced two-pass
// kernel instead. The order depends only on the shapes, so results are deterministic
// from run to run. Compiled only by nvcc.
#pragma once

#include <bit>
#include <type_traits>

#include "../../expr/reduce.hpp"
#include "allocator.cuh"
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

/// Column reductions (one kept axis, unit-strided in every operand; one reduced axis): the
/// gradient of a bias, sum(g, {0}) of g [M, N], is the common case. The group-per-output kernel
/// above would read such a column with a warp's lanes 32 rows apart, one memory sector per lane;
/// here consecutive threads take consecutive outputs, so every load of a warp is one contiguous
/// run. Pass 1: thread (o, chunk) folds rows [chunk * rows, (chunk + 1) * rows) of column o in row
/// order into part[chunk][o]; pass 2: one thread per output combines its chunks in chunk order.
/// The chunking depends only on the count (at most 256 chunks of at least 32 rows), so the
/// result is the same on every device and in every run.
template <class View, class Op>
__global__ void reduce_columns_kernel(typename Op::acc* __restrict__ part, View v, index_t n_out,
                                      index_t count, index_t rows, Op op) {
  const index_t o = index_t(blockIdx.x) * block_size + index_t(threadIdx.x);
  if (o >= n_out) return;
  const index_t j0 = index_t(blockIdx.y) * rows, j1 = j0 + rows < count ? j0 + rows : count;
  typename Op::acc a = op.init();
  index_t idx[max_rank] = {};
  idx[0] = o;
  for (index_t j = j0; j < j1; ++j) {
    idx[1] = j;
    op.step(a, v.at(idx, 2), j);
  }
  part[index_t(blockIdx.y) * n_out + o] = a;
}
template <class T, class Op>
__global__ void reduce_columns_finish_kernel(T* __restrict__ out, index_t out_stride,
                                             const typename Op::acc* __restrict__ part,
                                             index_t n_out, index_t chunks, index_t count, Op op) {
  const index_t o = index_t(blockIdx.x) * block_size + index_t(threadIdx.x);
  if (o >= n_out) return;
  typename Op::acc a = part[o];
  for (index_t k = 1; k < chunks; ++k) op.combine(a, part[k * n_out + o]);
  out[o * out_stride] = convert<T>(op.finish(a, count));
}

/// Whether the plan is a column reduction reduce_columns_kernel serves: one kept and one reduced
/// axis, every operand unit-strided (or broadcast) along the kept axis and not along the reduced.
template <class E>
bool is_column_reduction(E& e, const detail::reduce_plan& plan) {
  if (plan.kept != 1 || plan.rank != 2 || plan.count < 2) return false;
  bool ok = true;
  e.for_each_leaf([&](Shape& st, const void*, std::size_t, const Shape&) {
    ok = ok && (st[0] == 1 || st[0] == 0) && st[1] != 1;
  });
  return ok;
}

template <class T, class E, class Op>
void reduce_columns(const Tensor<T, cuda>& out, E& e, const detail::reduce_plan& plan,
                    const Op& op) {
  using acc_type = typename Op::acc;
  const index_t n_out = plan.n_out, count = plan.count;
  const index_t rows = std::max<index_t>(32, (count + 255) / 256);
  const index_t chunks = (count + rows - 1) / rows;
  const std::size_t bytes = std::size_t(chunks * n_out) * sizeof(acc_type);
  auto& alloc = cuda_caching_allocator::instance();
  struct scratch {
    void* p;
    std::size_t n;
    ~scratch() { cuda_caching_allocator::instance().deallocate(p, n); }
  } part{alloc.allocate(bytes), bytes};
  auto* partials = static_cast<acc_type*>(part.p);
  const auto view = e.device_view();
  const unsigned col_blocks = unsigned((n_out + block_size - 1) / block_size);
  reduce_columns_kernel<<<dim3(col_blocks, unsigned(chunks)), block_size, 0, current_stream()>>>(
      partials, view, n_out, count, rows, op);
  check_launch("reduce_columns_kernel");
  reduce_columns_finish_kernel<T><<<col_blocks, block_size, 0, current_stream()>>>(
      out.data(), plan.out_stride[0], partials, n_out, chunks, count, op);
  check_launch("reduce_columns_finish_kernel");
}

/// out = reduce(e) over `axes` with operator `op` (out's shape prepared by flsl::reduce).
template <class T, class E, class Op>
void reduce(const Tensor<T, cuda>& out, E e, const std::vector<int>& axes, const Op& op) {
  static_assert(
      requires(const Op& o, typename Op::acc& x) { o.combine(x, x); },
      "flsl: this reduction (argmax, var) has no CUDA kernel yet");
  const detail::reduce_plan plan = detail::plan_reduction(out, e, axes);
  if (plan.n_out == 0) return;
  if (is_column_reduction(e, plan)) return reduce_columns(out, e, plan, op);
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
