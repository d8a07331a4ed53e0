// Expression evaluation on the GPU: `out = expr` is one generated kernel (a grid-stride loop over
// the output elements of the coalesced iteration space), and the Philox random fills. Compiled
// only by nvcc.
#pragma once

#include <type_traits>

#include "../../expr/assign.hpp"
#include "runtime.cuh"

namespace flsl {

namespace cuda_detail {

/// Extents and output strides of a coalesced iteration space (a kernel argument).
struct iteration_dims {
  int rank;
  index_t extent[max_rank];
  index_t out_stride[max_rank];
};

/// out[i] = v(i) for every element i (row-major over the iteration space). A rank-1 space (every
/// contiguous or uniformly strided expression) reads element i directly; otherwise i is split into
/// a multi-index by the extents, from which each leaf computes its own offset (broadcast axes
/// have stride 0).
template <class T, class View>
__global__ void assign_kernel(T* __restrict__ out, View v, iteration_dims dims, index_t n) {
  const index_t step = index_t(blockDim.x) * gridDim.x;
  index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (dims.rank == 1) {
    const index_t os = dims.out_stride[0];
    for (; i < n; i += step) out[i * os] = convert<T>(v.at1(i));
    return;
  }
  for (; i < n; i += step) {
    index_t idx[max_rank];
    index_t rem = i, off = 0;
    FLSL_UNROLL
    for (int d = max_rank - 1; d >= 0; --d) {
      if (d < dims.rank) {
        idx[d] = rem % dims.extent[d];
        rem /= dims.extent[d];
        off += idx[d] * dims.out_stride[d];
      }
    }
    out[off] = convert<T>(v.at(idx, dims.rank));
  }
}

/// The CUDA evaluation of `out = e` (shapes checked and aliasing handled by assign_expr).
template <class T, class E>
void evaluate(const Tensor<T, cuda>& out, E e) {
  const index_t n = out.numel();
  if (n == 0) return;
  Shape out_strides = out.strides();
  const Shape extent = detail::coalesce_assignment(out.shape(), out_strides, e);
  iteration_dims dims{std::max(extent.rank(), 1), {}, {}};
  dims.extent[0] = 1;  // a single element (rank 0) runs as a rank-1 space of extent 1
  for (int d = 0; d < extent.rank(); ++d) {
    dims.extent[d] = extent[d];
    dims.out_stride[d] = out_strides[d];
  }
  const auto view = e.device_view();
  static_assert(std::is_trivially_copyable_v<decltype(view)>,
                "flsl: an expression's device view must be trivially copyable");
  assign_kernel<<<grid_for(n), block_size, 0, current_stream()>>>(out.data(), view, dims, n);
  check_launch("assign_kernel");
}

/// p[i] = gen(i) for a contiguous tensor (gen: a FLSL_HD functor of the element index).
template <class T, class Gen>
__global__ void generate_kernel(T* __restrict__ p, index_t n, Gen gen) {
  const index_t step = index_t(blockDim.x) * gridDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    p[i] = convert<T>(gen(i));
}
template <class T, class Gen>
void generate(const Tensor<T, cuda>& t, Gen gen) {
  const index_t n = t.numel();
  if (n == 0) return;
  generate_kernel<<<grid_for(n), block_size, 0, current_stream()>>>(t.data(), n, gen);
  check_launch("generate_kernel");
}

}  // namespace cuda_detail

}  // namespace flsl
