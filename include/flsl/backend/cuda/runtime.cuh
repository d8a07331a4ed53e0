// CUDA runtime basics for the backend: error checks that throw flsl::error, the device presence
// query, the stream every flsl kernel runs on, and launch geometry. Compiled only by nvcc.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "../../core/error.hpp"
#include "../../core/shape.hpp"
#include "timeline.cuh"

namespace flsl {

namespace cuda_detail {
/// Throws flsl::error naming the CUDA error, the call and where it was made.
inline void check(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so later calls do not report it again
  fail("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") in ", call, " at ", file,
       ":", line);
}
}  // namespace cuda_detail

/// Checks the cudaError_t of a runtime call: FLSL_CUDA_CHECK(cudaMemcpy(...)).
#define FLSL_CUDA_CHECK(...) \
  ::flsl::cuda_detail::check((__VA_ARGS__), #__VA_ARGS__, __FILE__, __LINE__)

/// True when the CUDA runtime reports at least one usable device (false without a driver or GPU).
/// Queried once per process.
inline bool cuda_available() {
  static const bool available = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return available;
}

namespace cuda_detail {
inline cudaStream_t& stream_slot() {
  static cudaStream_t s = nullptr;  // the legacy default stream
  return s;
}
}  // namespace cuda_detail

/// The stream on which every flsl kernel, copy and GEMM is enqueued (the default stream unless
/// set). The caching allocator reuses a freed block for the next allocation at once, which is
/// correct because all work is ordered on this one stream; switching streams while tensors from
/// the old one are still in use needs a synchronisation first.
inline cudaStream_t current_stream() { return cuda_detail::stream_slot(); }
inline void set_current_stream(cudaStream_t s) { cuda_detail::stream_slot() = s; }
/// Waits for all work enqueued on the current stream.
inline void synchronize() { FLSL_CUDA_CHECK(cudaStreamSynchronize(current_stream())); }

namespace cuda_detail {
/// Threads per block of the elementwise and reduction kernels.
inline constexpr int block_size = 256;

inline int multiprocessor_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    FLSL_CUDA_CHECK(cudaGetDevice(&dev));
    FLSL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}
/// Blocks for a grid-stride loop over `n` items of `per_block` each: enough to fill the device
/// (16 blocks per multiprocessor), no more than the items need.
inline unsigned grid_for(index_t n, index_t per_block = block_size) {
  const index_t want = (n + per_block - 1) / per_block;
  return unsigned(std::clamp<index_t>(want, 1, index_t(multiprocessor_count()) * 16));
}
/// Reports a failed kernel launch (bad configuration, no device) as flsl::error.
/// Also marks the launch on a recording cuda_timeline (timeline.cuh).
inline void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    fail("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") launching ", kernel);
  timeline_mark(kernel, current_stream());
}
}  // namespace cuda_detail

}  // namespace flsl
