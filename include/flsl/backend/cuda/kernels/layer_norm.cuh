// LayerNorm over the last axis on the GPU, forward and backward, with the CPU op's arithmetic
// (include/flsl/autograd/ops/layer_norm.hpp): the corrected two-pass variance in the compute type,
// the mean kept in two parts, the biased variance combined in double, and dweight / dbias summed
// over the CPU's own row chunks, then over the chunks in chunk order in double.
//
//   cuda_ops::layer_norm_forward(x, weight, bias, eps, y, mean, rstd)
//     x, y [rows, d] (any shape [..., d], contiguous); weight, bias [d] or undefined (no scale /
//     no shift); mean [rows, 2] holds (m0, shift) with mean = m0 + shift (two parts, as the CPU:
//     x - mean is evaluated as (x - m0) - shift, exact for rows far from zero); rstd [rows] =
//     1 / sqrt(var + eps). mean and rstd are in the compute type (float for f32 and bf16).
//   cuda_ops::layer_norm_backward(x, weight, mean, rstd, grad_y, dx, accumulate, dweight, dbias)
//     dx [.., d] written (accumulate = false) or added to (true); dweight, dbias [d] written.
//     Any of dx, dweight, dbias may be undefined (not wanted).
//
// Kernels (256 threads per block):
//   forward, dx   one warp per row when d <= 1024 (8 rows per block), else one block per row;
//                 lanes stride over the row; three reads of the row (mean, centred sums, output;
//                 the row sits in L1/L2 after the first), sums by a shuffle butterfly, then across
//                 warps in warp order (kernels/common.cuh). No shared memory beyond 8 partials.
//   dw/db pass 1  one block per chunk of c = max(32, ceil(rows / 256)) rows (the CPU's chunks);
//                 thread t owns columns t, t + 256, ... and adds g * xhat and g over the chunk's
//                 rows in row order into partials [chunks, d] (coalesced over columns).
//   dw/db pass 2  one thread per column sums the chunk partials in chunk order, in double.
// No float atomics anywhere: the results repeat bit-exactly run to run. Compiled only by nvcc.
#pragma once

#include "common.cuh"

namespace flsl {

namespace cuda_ops::detail {

/// Forward: G threads per row (see the header comment). w, b may be null.
template <int G, class T, class C>
__global__ void __launch_bounds__(threads)
    layer_norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w,
                              const T* __restrict__ b, T* __restrict__ y, C* __restrict__ mean2,
                              C* __restrict__ rstd, index_t rows, index_t d, double eps) {
  __shared__ C scratch[threads / 32];
  const index_t row = index_t(blockIdx.x) * (threads / G) + int(threadIdx.x) / G;
  const int lane = int(threadIdx.x) % G;
  if (row >= rows) return;  // whole warps (G = 32) or never (G = threads: one row per block)
  const T* xr = x + row * d;
  T* yr = y + row * d;
  C s0 = C(0);
  for (index_t j = lane; j < d; j += G) s0 += convert<C>(xr[j]);
  const C m0 = group_reduce<G, false>(s0, scratch) / C(d);
  C s1 = C(0), s2 = C(0);
  for (index_t j = lane; j < d; j += G) {
    const C c = convert<C>(xr[j]) - m0;
    s1 += c;
    s2 += c * c;
  }
  s1 = group_reduce<G, false>(s1, scratch);
  s2 = group_reduce<G, false>(s2, scratch);
  const double var = ::fmax(0.0, (double(s2) - double(s1) * double(s1) / double(d)) / double(d));
  const C shift = s1 / C(d);
  const C rs = C(1.0 / ::sqrt(var + eps));
  for (index_t j = lane; j < d; j += G) {
    const C xhat = ((convert<C>(xr[j]) - m0) - shift) * rs;
    const C wj = w ? convert<C>(w[j]) : C(1), bj = b ? convert<C>(b[j]) : C(0);
    yr[j] = convert<T>(xhat * wj + bj);
  }
  if (lane == 0) {
    mean2[2 * row] = m0;
    mean2[2 * row + 1] = shift;
    rstd[row] = rs;
  }
}

/// dx = rstd * (gy - mean_j(gy) - xhat * mean_j(gy * xhat)), gy = g * w; written or added.
template <int G, class T, class C>
__global__ void __launch_bounds__(threads)
    layer_norm_dx_kernel(const T* __restrict__ x, const T* __restrict__ w,
                         const C* __restrict__ mean2, const C* __restrict__ rstd,
                         const T* __restrict__ g, T* __restrict__ dx, bool add, index_t rows,
                         index_t d) {
  __shared__ C scratch[threads / 32];
  const index_t row = index_t(blockIdx.x) * (threads / G) + int(threadIdx.x) / G;
  const int lane = int(threadIdx.x) % G;
  if (row >= rows) return;
  const T* xr = x + row * d;
  const T* gr = g + row * d;
  T* dxr = dx + row * d;
  const C m0 = mean2[2 * row], shift = mean2[2 * row + 1], rs = rstd[row];
  C sg = C(0), sgx = C(0);
  for (index_t j = lane; j < d; j += G) {
    const C gy = convert<C>(gr[j]) * (w ? convert<C>(w[j]) : C(1));
    const C xhat = ((convert<C>(xr[j]) - m0) - shift) * rs;
    sg += gy;
    sgx += gy * xhat;
  }
  const C mean_gy = group_reduce<G, false>(sg, scratch) / C(d);
  const C mean_gyx = group_reduce<G, false>(sgx, scratch) / C(d);
  for (index_t j = lane; j < d; j += G) {
    const C gy = convert<C>(gr[j]) * (w ? convert<C>(w[j]) : C(1));
    const C xhat = ((convert<C>(xr[j]) - m0) - shift) * rs;
    const C v = rs * (gy - mean_gy - xhat * mean_gyx);
    dxr[j] = convert<T>(add ? convert<C>(dxr[j]) + v : v);
  }
}

/// Pass 1 of dweight / dbias: block c sums rows [c chunk, min(rows, (c + 1) chunk)) in row order
/// into pw[c, :] (sum g * xhat) and pb[c, :] (sum g); either may be null.
template <class T, class C>
__global__ void __launch_bounds__(threads)
    layer_norm_wb_partials_kernel(const T* __restrict__ x, const C* __restrict__ mean2,
                                  const C* __restrict__ rstd, const T* __restrict__ g,
                                  C* __restrict__ pw, C* __restrict__ pb, index_t rows, index_t d,
                                  index_t chunk) {
  const index_t c = blockIdx.x;
  const index_t r0 = c * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
  for (index_t j = threadIdx.x; j < d; j += threads) {
    C aw = C(0), ab = C(0);
    for (index_t r = r0; r < r1; ++r) {
      const C gv = convert<C>(g[r * d + j]);
      if (pw) aw += gv * (((convert<C>(x[r * d + j]) - mean2[2 * r]) - mean2[2 * r + 1]) * rstd[r]);
      ab += gv;
    }
    if (pw) pw[c * d + j] = aw;
    if (pb) pb[c * d + j] = ab;
  }
}

/// Pass 2: out[j] = sum over chunks of part[c, j], in chunk order, in double.
template <class T, class C>
__global__ void __launch_bounds__(threads)
    layer_norm_wb_sum_kernel(const C* __restrict__ part, T* __restrict__ out, index_t chunks,
                             index_t d) {
  const index_t j = index_t(blockIdx.x) * threads + threadIdx.x;
  if (j >= d) return;
  double acc = 0.0;
  for (index_t c = 0; c < chunks; ++c) acc += double(part[c * d + j]);
  out[j] = convert<T>(acc);
}

/// Rows per chunk of the weight / bias reduction: the CPU's layer_norm_chunk_rows (at least 32
/// rows, at most 256 chunks), so both devices add the same rows in the same groups.
inline index_t layer_norm_chunk_rows(index_t rows) {
  return std::max<index_t>(32, (rows + 255) / 256);
}

}  // namespace cuda_ops::detail

namespace cuda_ops {

/// LayerNorm forward over the last axis (see the header comment for the arguments).
template <class T>
void layer_norm_forward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& weight,
                        const Tensor<T, cuda>& bias, double eps, const Tensor<T, cuda>& y,
                        const Tensor<compute_t<T>, cuda>& mean,
                        const Tensor<compute_t<T>, cuda>& rstd) {
  using C = compute_t<T>;
  constexpr const char* op = "cuda_ops::layer_norm_forward";
  FLSL_CHECK(x.defined() && x.rank() >= 1 && x.size(-1) > 0, op, ": input of shape ",
             x.defined() ? x.shape() : Shape{}, " has no last axis to normalise");
  const index_t d = x.size(-1), rows = x.numel() / d;
  detail::check_tensor(x, x.shape(), op, "x");
  detail::check_tensor(y, x.shape(), op, "y");
  detail::check_tensor(mean, Shape{rows, 2}, op, "mean");
  detail::check_tensor(rstd, Shape{rows}, op, "rstd");
  const T* w = detail::optional_data(weight, Shape{d}, op, "weight");
  const T* b = detail::optional_data(bias, Shape{d}, op, "bias");
  if (rows == 0) return;
  const auto lp = detail::plan_rows(rows, d);
  if (lp.group == 32)
    detail::layer_norm_forward_kernel<32, T, C>
        <<<lp.blocks, detail::threads, 0, current_stream()>>>(x.data(), w, b, y.data(), mean.data(),
                                                              rstd.data(), rows, d, eps);
  else
    detail::layer_norm_forward_kernel<detail::threads, T, C>
        <<<lp.blocks, detail::threads, 0, current_stream()>>>(x.data(), w, b, y.data(), mean.data(),
                                                              rstd.data(), rows, d, eps);
  cuda_detail::check_launch("layer_norm_forward_kernel");
}

/// LayerNorm backward from the forward's mean and rstd (see the header comment).
template <class T>
void layer_norm_backward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& weight,
                         const Tensor<compute_t<T>, cuda>& mean,
                         const Tensor<compute_t<T>, cuda>& rstd, const Tensor<T, cuda>& grad_y,
                         const Tensor<T, cuda>& dx, bool accumulate, const Tensor<T, cuda>& dweight,
                         const Tensor<T, cuda>& dbias) {
  using C = compute_t<T>;
  constexpr const char* op = "cuda_ops::layer_norm_backward";
  FLSL_CHECK(x.defined() && x.rank() >= 1 && x.size(-1) > 0, op, ": input of shape ",
             x.defined() ? x.shape() : Shape{}, " has no last axis");
  const index_t d = x.size(-1), rows = x.numel() / d;
  detail::check_tensor(x, x.shape(), op, "x");
  detail::check_tensor(grad_y, x.shape(), op, "grad_y");
  detail::check_tensor(mean, Shape{rows, 2}, op, "mean");
  detail::check_tensor(rstd, Shape{rows}, op, "rstd");
  const T* w = detail::optional_data(weight, Shape{d}, op, "weight");
  T* dxp = detail::optional_data(dx, x.shape(), op, "dx");
  T* dwp = detail::optional_data(dweight, Shape{d}, op, "dweight");
  T* dbp = detail::optional_data(dbias, Shape{d}, op, "dbias");
  if (dxp && rows > 0) {
    const auto lp = detail::plan_rows(rows, d);
    if (lp.group == 32)
      detail::layer_norm_dx_kernel<32, T, C><<<lp.blocks, detail::threads, 0, current_stream()>>>(
          x.data(), w, mean.data(), rstd.data(), grad_y.data(), dxp, accumulate, rows, d);
    else
      detail::layer_norm_dx_kernel<detail::threads, T, C>
          <<<lp.blocks, detail::threads, 0, current_stream()>>>(
              x.data(), w, mean.data(), rstd.data(), grad_y.data(), dxp, accumulate, rows, d);
    cuda_detail::check_launch("layer_norm_dx_kernel");
  }
  if (!dwp && !dbp) return;
  if (rows == 0) {  // no rows: the sums are zero
    if (dwp) dweight.fill(T(0));
    if (dbp) dbias.fill(T(0));
    return;
  }
  const index_t chunk = detail::layer_norm_chunk_rows(rows);
  const index_t chunks = (rows + chunk - 1) / chunk;  // <= 256
  const Tensor<C, cuda> pw = dwp ? Tensor<C, cuda>::empty({chunks, d}) : Tensor<C, cuda>{};
  const Tensor<C, cuda> pb = dbp ? Tensor<C, cuda>::empty({chunks, d}) : Tensor<C, cuda>{};
  detail::layer_norm_wb_partials_kernel<T, C>
      <<<unsigned(chunks), detail::threads, 0, current_stream()>>>(
          x.data(), mean.data(), rstd.data(), grad_y.data(), dwp ? pw.data() : nullptr,
          dbp ? pb.data() : nullptr, rows, d, chunk);
  cuda_detail::check_launch("layer_norm_wb_partials_kernel");
  const unsigned col_blocks = unsigned((d + detail::threads - 1) / detail::threads);
  if (dwp) {
    detail::layer_norm_wb_sum_kernel<T, C>
        <<<col_blocks, detail::threads, 0, current_stream()>>>(pw.data(), dwp, chunks, d);
    cuda_detail::check_launch("layer_norm_wb_sum_kernel");
  }
  if (dbp) {
    detail::layer_norm_wb_sum_kernel<T, C>
        <<<col_blocks, detail::threads, 0, current_stream()>>>(pb.data(), dbp, chunks, d);
    cuda_detail::check_launch("layer_norm_wb_sum_kernel");
  }
}

}  // namespace cuda_ops

}  // namespace flsl
