// Fused multi-tensor kernels of the parameter update (optim/adamw.hpp on cuda): per-tensor
// gradient L2 norms and clipping, AdamW, and the EMA teacher update, each over a whole list of
// parameter tensors in one launch (the pattern of PyTorch's multi_tensor_apply / apex), with the
// CPU path's arithmetic. The descriptors and the declarations are in backend/multi_tensor.hpp.
//
//   cuda_ops::multi_tensor_adamw(tensors, constants)
//   cuda_ops::multi_tensor_clip_per_tensor(tensors, max_norm, norms)
//   cuda_ops::multi_tensor_ema(tensors, m, one_minus_m)
//
// Launch layout: every tensor is cut into chunks of mt_chunk = 16384 elements (the last chunk of
// a tensor may be shorter); one block of 256 threads per chunk, thread k taking elements k,
// k + 256, ... of its chunk (coalesced). The host writes, per call, a descriptor per tensor
// (pointers, numel and the tensor's scalars) and a {tensor, chunk} pair per block into pinned
// staging memory, and copies them with one cudaMemcpyAsync into a device buffer; block b reads
// pair b, then its tensor's descriptor. Staging and device buffers belong to one workspace per
// kind of launch, allocated at the first call and grown (doubling) only when a longer list comes:
// a training loop over the same parameters makes no cudaMalloc / cudaMallocHost after its first
// step. Before the host rewrites the staging memory it waits for the event recorded after the
// previous copy out of it (normally long done: the host may run one step ahead, not more).
//
// Arithmetic: every operation of the CPU expressions is rounded as written, through the _rn
// intrinsics (no FMA contraction), in the compute type (float for f32 and bf16, double for f64);
// moments are rounded to T before the parameter update reads them, as the CPU's assign does. The
// per-tensor scalars come from the host, computed in double and rounded, as on the CPU.
//
// Clipping: pass 1, one block per chunk, sums the squares of its elements in double (per thread,
// then a warp butterfly, then the warps in order: kernels/common.cuh) into partials[chunk];
// pass 2, one thread per tensor, adds its chunks' partials in chunk order, takes the square
// root, writes the norm and decides on the device whether to clip (n > max_norm) and by which
// factor (compute_t<T>(max_norm / (n + 1e-6)), in double); pass 3, one block per chunk, scales
// the gradients of the clipped tensors. The norms come back with one device-to-host copy (the
// API returns them on the host). No atomics: results repeat bit-exactly from run to run.
// Compiled only by nvcc.
#pragma once

#include <climits>
#include <cstddef>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../../multi_tensor.hpp"
#include "common.cuh"

namespace flsl {

namespace cuda_ops::detail {

/// Elements per block of the multi-tensor kernels.
inline constexpr index_t mt_chunk = 16384;

/// Block b of a multi-tensor launch works on chunk `chunk` of tensor `tensor`.
struct mt_chunk_ref {
  int tensor;
  int chunk;
};

/// Chunks of a tensor of n elements.
inline index_t mt_chunks_of(index_t n) { return (n + mt_chunk - 1) / mt_chunk; }

/// Pinned staging memory and a device buffer for the descriptors of one kind of multi-tensor
/// launch (see the header comment). Never destroyed, like the allocator.
class mt_workspace {
 public:
  std::mutex mu;  // held for a whole call (staging, upload, launches)

  /// Host staging of at least `bytes`, free to write: the previous upload from it has finished.
  std::byte* host(std::size_t bytes) {
    wait_upload();
    if (bytes > host_bytes_) {
      if (host_) FLSL_CUDA_CHECK(cudaFreeHost(host_));
      host_ = nullptr;
      const std::size_t want = std::max(bytes, 2 * host_bytes_);
      void* p = nullptr;
      FLSL_CUDA_CHECK(cudaMallocHost(&p, want));
      host_ = static_cast<std::byte*>(p);
      host_bytes_ = want;
    }
    return host_;
  }
  /// Device buffer of at least `bytes` (from the caching allocator; a smaller old buffer goes back
  /// to it, safe because all work is ordered on the current stream).
  std::byte* device(std::size_t bytes) {
    if (bytes > dev_bytes_) {
      auto& a = cuda_caching_allocator::instance();
      if (dev_) a.deallocate(dev_, dev_bytes_);
      dev_ = nullptr;
      const std::size_t want = std::max(bytes, 2 * dev_bytes_);
      dev_ = static_cast<std::byte*>(a.allocate(want));
      dev_bytes_ = want;
    }
    return dev_;
  }
  /// Copies the first `bytes` of the staging memory to the device buffer on the current stream
  /// and records the event that the next host() waits for.
  void upload(std::size_t bytes) {
    if (!uploaded_) FLSL_CUDA_CHECK(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming));
    FLSL_CUDA_CHECK(cudaMemcpyAsync(dev_, host_, bytes, cudaMemcpyHostToDevice, current_stream()));
    cuda_detail::timeline_mark("memcpy h2d (tensor lists)", current_stream());
    FLSL_CUDA_CHECK(cudaEventRecord(uploaded_, current_stream()));
    pending_ = true;
  }

 private:
  void wait_upload() {
    if (!pending_) return;
    FLSL_CUDA_CHECK(cudaEventSynchronize(uploaded_));
    pending_ = false;
  }

  std::byte* host_ = nullptr;
  std::size_t host_bytes_ = 0;
  std::byte* dev_ = nullptr;
  std::size_t dev_bytes_ = 0;
  cudaEvent_t uploaded_ = nullptr;
  bool pending_ = false;
};

enum class mt_kind { adamw, clip, ema };

template <mt_kind K>
mt_workspace& mt_workspace_of() {
  static auto* w = new mt_workspace();
  return *w;
}

/// Offset rounded up to 256 bytes (every array of the descriptor buffers starts aligned).
inline std::size_t mt_align(std::size_t off) { return (off + 255) / 256 * 256; }

/// Counts the chunks of a list of tensors and refuses lists a launch cannot address.
template <class Desc>
index_t mt_count_chunks(std::span<const Desc> tensors, const char* op) {
  FLSL_CHECK(tensors.size() < std::size_t(INT_MAX), op, ": ", tensors.size(),
             " tensors is too many for one launch");
  index_t chunks = 0;
  for (const Desc& t : tensors) {
    FLSL_CHECK(t.numel >= 0, op, ": negative element count ", t.numel);
    chunks += mt_chunks_of(t.numel);
  }
  FLSL_CHECK(chunks < index_t(INT_MAX), op, ": ", chunks, " chunks is too many for one launch");
  return chunks;
}

/// Writes the {tensor, chunk} pair of every block, tensor by tensor, and calls
/// first(i, first_chunk, chunks) for each tensor.
template <class Desc, class F>
void mt_fill_chunks(std::span<const Desc> tensors, mt_chunk_ref* out, F&& first) {
  int b = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const int n = int(mt_chunks_of(tensors[i].numel));
    first(i, b, n);
    for (int c = 0; c < n; ++c) out[b++] = {int(i), c};
  }
}

/// Arithmetic rounded once per operation, never contracted into an FMA.
template <class C>
__device__ __forceinline__ C add_rn(C a, C b) {
  if constexpr (std::is_same_v<C, float>)
    return __fadd_rn(a, b);
  else
    return __dadd_rn(a, b);
}
template <class C>
__device__ __forceinline__ C mul_rn(C a, C b) {
  if constexpr (std::is_same_v<C, float>)
    return __fmul_rn(a, b);
  else
    return __dmul_rn(a, b);
}
template <class C>
__device__ __forceinline__ C div_rn(C a, C b) {
  if constexpr (std::is_same_v<C, float>)
    return __fdiv_rn(a, b);
  else
    return __ddiv_rn(a, b);
}
template <class C>
__device__ __forceinline__ C sqrt_rn(C a) {
  if constexpr (std::is_same_v<C, float>)
    return __fsqrt_rn(a);
  else
    return __dsqrt_rn(a);
}

/// The element range [begin, end) of a block's chunk in a tensor of n elements.
struct mt_range {
  index_t begin, end;
};
__device__ __forceinline__ mt_range mt_range_of(int chunk, index_t n) {
  const index_t begin = index_t(chunk) * mt_chunk;
  return {begin, begin + mt_chunk < n ? begin + mt_chunk : n};
}

/// AdamW on one chunk per block, the CPU's expressions in their order:
///   m = m * b1 + (1 - b1) * g;  v = v * b2 + ((1 - b2) * g) * g;
///   p = p * decay + (step_size * m) / (sqrt(v) / bc2_sqrt + eps)   (m, v as stored)
template <class T>
__global__ void __launch_bounds__(threads)
    adamw_kernel(const adamw_tensor<T>* __restrict__ tensors,
                 const mt_chunk_ref* __restrict__ chunks, adamw_constants<compute_t<T>> k) {
  using C = compute_t<T>;
  const mt_chunk_ref ref = chunks[blockIdx.x];
  const adamw_tensor<T> t = tensors[ref.tensor];
  const mt_range r = mt_range_of(ref.chunk, t.numel);
  for (index_t i = r.begin + index_t(threadIdx.x); i < r.end; i += threads) {
    const C g = convert<C>(t.grad[i]);
    const T m =
        convert<T>(add_rn(mul_rn(convert<C>(t.exp_avg[i]), k.beta1), mul_rn(k.one_minus_beta1, g)));
    const T v = convert<T>(add_rn(mul_rn(convert<C>(t.exp_avg_sq[i]), k.beta2),
                                  mul_rn(mul_rn(k.one_minus_beta2, g), g)));
    t.exp_avg[i] = m;
    t.exp_avg_sq[i] = v;
    const C denom = add_rn(div_rn(sqrt_rn(convert<C>(v)), t.bc2_sqrt), k.eps);
    const C p = add_rn(mul_rn(convert<C>(t.param[i]), t.decay),
                       div_rn(mul_rn(t.step_size, convert<C>(m)), denom));
    t.param[i] = convert<T>(p);
  }
}

/// A gradient of a clipping launch with its place in the chunk list.
template <class T>
struct clip_desc {
  T* grad;
  index_t numel;
  int first_chunk;
  int chunks;
};
/// What pass 2 decided for a tensor.
template <class C>
struct clip_decision {
  C scale;
  int apply;
};

/// Pass 1: sum of squares of one chunk, in double, into partials[block].
template <class T>
__global__ void __launch_bounds__(threads)
    sq_sum_partials_kernel(const clip_desc<T>* __restrict__ tensors,
                           const mt_chunk_ref* __restrict__ chunks, double* __restrict__ partials) {
  __shared__ double scratch[threads / 32];
  const mt_chunk_ref ref = chunks[blockIdx.x];
  const clip_desc<T> t = tensors[ref.tensor];
  const mt_range r = mt_range_of(ref.chunk, t.numel);
  double s = 0;
  for (index_t i = r.begin + index_t(threadIdx.x); i < r.end; i += threads) {
    const double x = double(convert<compute_t<T>>(t.grad[i]));
    s = __dadd_rn(s, __dmul_rn(x, x));
  }
  s = group_reduce<threads, false>(s, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

/// Pass 2: one thread per tensor: norm = sqrt(sum of its partials in chunk order), and whether
/// and by how much to scale (as the CPU: n > max_norm, max_norm > 0, max_norm / (n + 1e-6)).
template <class T>
__global__ void __launch_bounds__(threads)
    clip_decide_kernel(const clip_desc<T>* __restrict__ tensors, int n,
                       const double* __restrict__ partials, double max_norm,
                       double* __restrict__ norms,
                       clip_decision<compute_t<T>>* __restrict__ decisions) {
  using C = compute_t<T>;
  const int i = int(blockIdx.x) * threads + int(threadIdx.x);
  if (i >= n) return;
  const clip_desc<T> t = tensors[i];
  double s = 0;
  for (int c = 0; c < t.chunks; ++c) s = __dadd_rn(s, partials[t.first_chunk + c]);
  const double norm = __dsqrt_rn(s);
  norms[i] = norm;
  const bool apply = max_norm > 0 && norm > max_norm;
  decisions[i] = {apply ? C(__ddiv_rn(max_norm, __dadd_rn(norm, 1e-6))) : C(1), apply ? 1 : 0};
}

/// Pass 3: g = g * scale for the chunks of the tensors pass 2 chose.
template <class T>
__global__ void __launch_bounds__(threads)
    clip_scale_kernel(const clip_desc<T>* __restrict__ tensors,
                      const mt_chunk_ref* __restrict__ chunks,
                      const clip_decision<compute_t<T>>* __restrict__ decisions) {
  using C = compute_t<T>;
  const mt_chunk_ref ref = chunks[blockIdx.x];
  const clip_decision<C> d = decisions[ref.tensor];
  if (!d.apply) return;
  const clip_desc<T> t = tensors[ref.tensor];
  const mt_range r = mt_range_of(ref.chunk, t.numel);
  for (index_t i = r.begin + index_t(threadIdx.x); i < r.end; i += threads)
    t.grad[i] = convert<T>(mul_rn(convert<C>(t.grad[i]), d.scale));
}

/// teacher = teacher * m + one_minus_m * student, one chunk per block.
template <class T>
__global__ void __launch_bounds__(threads)
    ema_kernel(const ema_tensor<T>* __restrict__ tensors, const mt_chunk_ref* __restrict__ chunks,
               compute_t<T> m, compute_t<T> one_minus_m) {
  using C = compute_t<T>;
  const mt_chunk_ref ref = chunks[blockIdx.x];
  const ema_tensor<T> t = tensors[ref.tensor];
  const mt_range r = mt_range_of(ref.chunk, t.numel);
  for (index_t i = r.begin + index_t(threadIdx.x); i < r.end; i += threads)
    t.teacher[i] = convert<T>(
        add_rn(mul_rn(convert<C>(t.teacher[i]), m), mul_rn(one_minus_m, convert<C>(t.student[i]))));
}

/// Stages `tensors` (a trivially copyable descriptor per tensor) and their chunk list, uploads
/// both, and returns the device addresses; nullptrs when there is no chunk.
template <class Desc>
struct mt_uploaded {
  const Desc* tensors = nullptr;
  const mt_chunk_ref* chunks = nullptr;
  unsigned blocks = 0;
};
template <class Desc>
mt_uploaded<Desc> mt_upload(mt_workspace& ws, std::span<const Desc> tensors, const char* op) {
  const index_t chunks = mt_count_chunks(tensors, op);
  if (chunks == 0) return {};
  const std::size_t off_chunks = mt_align(tensors.size() * sizeof(Desc));
  const std::size_t bytes = off_chunks + std::size_t(chunks) * sizeof(mt_chunk_ref);
  std::byte* h = ws.host(bytes);
  std::memcpy(h, tensors.data(), tensors.size() * sizeof(Desc));
  mt_fill_chunks(tensors, reinterpret_cast<mt_chunk_ref*>(h + off_chunks), [](auto...) {});
  std::byte* d = ws.device(bytes);
  ws.upload(bytes);
  return {reinterpret_cast<const Desc*>(d), reinterpret_cast<const mt_chunk_ref*>(d + off_chunks),
          unsigned(chunks)};
}

}  // namespace cuda_ops::detail

namespace cuda_ops {

template <class T>
void multi_tensor_adamw(std::span<const adamw_tensor<T>> tensors,
                        const adamw_constants<compute_t<T>>& k) {
  static_assert(is_floating<T>, "multi_tensor_adamw: floating-point parameters only");
  auto& ws = detail::mt_workspace_of<detail::mt_kind::adamw>();
  const std::lock_guard<std::mutex> lock(ws.mu);
  const auto up = detail::mt_upload(ws, tensors, "multi_tensor_adamw");
  if (up.blocks == 0) return;
  detail::adamw_kernel<T>
      <<<up.blocks, detail::threads, 0, current_stream()>>>(up.tensors, up.chunks, k);
  cuda_detail::check_launch("multi_tensor_adamw");
}

template <class T>
void multi_tensor_ema(std::span<const ema_tensor<T>> tensors, compute_t<T> m,
                      compute_t<T> one_minus_m) {
  static_assert(is_floating<T>, "multi_tensor_ema: floating-point parameters only");
  auto& ws = detail::mt_workspace_of<detail::mt_kind::ema>();
  const std::lock_guard<std::mutex> lock(ws.mu);
  const auto up = detail::mt_upload(ws, tensors, "multi_tensor_ema");
  if (up.blocks == 0) return;
  detail::ema_kernel<T>
      <<<up.blocks, detail::threads, 0, current_stream()>>>(up.tensors, up.chunks, m, one_minus_m);
  cuda_detail::check_launch("multi_tensor_ema");
}

template <class T>
void multi_tensor_clip_per_tensor(std::span<const clip_tensor<T>> tensors, double max_norm,
                                  std::span<double> norms) {
  static_assert(is_floating<T>, "multi_tensor_clip_per_tensor: floating-point gradients only");
  using C = compute_t<T>;
  using detail::mt_align;
  const char* op = "multi_tensor_clip_per_tensor";
  FLSL_CHECK(max_norm >= 0, op, ": max_norm ", max_norm, " is negative");
  FLSL_CHECK(norms.size() == tensors.size(), op, ": ", norms.size(), " norm slots for ",
             tensors.size(), " tensors");
  const std::size_t n = tensors.size();
  if (n == 0) return;
  const index_t chunks = detail::mt_count_chunks(tensors, op);

  // Uploaded: [descriptors | chunk list]; device only: [partials | norms | decisions]; host only
  // (pinned, after the uploaded part): the norms copied back.
  const std::size_t off_chunks = mt_align(n * sizeof(detail::clip_desc<T>));
  const std::size_t up_bytes = off_chunks + std::size_t(chunks) * sizeof(detail::mt_chunk_ref);
  const std::size_t off_partials = mt_align(up_bytes);
  const std::size_t off_norms = mt_align(off_partials + std::size_t(chunks) * sizeof(double));
  const std::size_t off_decisions = mt_align(off_norms + n * sizeof(double));
  const std::size_t dev_bytes = off_decisions + n * sizeof(detail::clip_decision<C>);
  const std::size_t off_host_norms = mt_align(up_bytes);
  const std::size_t host_bytes = off_host_norms + n * sizeof(double);

  auto& ws = detail::mt_workspace_of<detail::mt_kind::clip>();
  const std::lock_guard<std::mutex> lock(ws.mu);
  std::byte* h = ws.host(host_bytes);
  auto* hd = reinterpret_cast<detail::clip_desc<T>*>(h);
  detail::mt_fill_chunks(tensors, reinterpret_cast<detail::mt_chunk_ref*>(h + off_chunks),
                         [&](std::size_t i, int first, int count) {
                           hd[i] = {tensors[i].grad, tensors[i].numel, first, count};
                         });
  std::byte* d = ws.device(dev_bytes);
  ws.upload(up_bytes);
  const auto* d_tensors = reinterpret_cast<const detail::clip_desc<T>*>(d);
  const auto* d_chunks = reinterpret_cast<const detail::mt_chunk_ref*>(d + off_chunks);
  auto* d_partials = reinterpret_cast<double*>(d + off_partials);
  auto* d_norms = reinterpret_cast<double*>(d + off_norms);
  auto* d_decisions = reinterpret_cast<detail::clip_decision<C>*>(d + off_decisions);
  const cudaStream_t s = current_stream();
  if (chunks > 0) {
    detail::sq_sum_partials_kernel<T>
        <<<unsigned(chunks), detail::threads, 0, s>>>(d_tensors, d_chunks, d_partials);
    cuda_detail::check_launch("multi_tensor_clip_per_tensor (sums of squares)");
  }
  const unsigned decide_blocks = unsigned((n + detail::threads - 1) / detail::threads);
  detail::clip_decide_kernel<T><<<decide_blocks, detail::threads, 0, s>>>(
      d_tensors, int(n), d_partials, max_norm, d_norms, d_decisions);
  cuda_detail::check_launch("multi_tensor_clip_per_tensor (norms)");
  if (chunks > 0 && max_norm > 0) {
    detail::clip_scale_kernel<T>
        <<<unsigned(chunks), detail::threads, 0, s>>>(d_tensors, d_chunks, d_decisions);
    cuda_detail::check_launch("multi_tensor_clip_per_tensor (scaling)");
  }
  double* h_norms = reinterpret_cast<double*>(h + off_host_norms);
  FLSL_CUDA_CHECK(cudaMemcpyAsync(h_norms, d_norms, n * sizeof(double), cudaMemcpyDeviceToHost, s));
  cuda_detail::timeline_mark("memcpy d2h (norms)", s);
  FLSL_CUDA_CHECK(cudaStreamSynchronize(s));
  std::memcpy(norms.data(), h_norms, n * sizeof(double));
}

}  // namespace cuda_ops

}  // namespace flsl
