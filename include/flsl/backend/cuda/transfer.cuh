// Host <-> device copies of tensors: host -> device through pinned staging buffers (the copy of
// an input batch overlaps the host's memcpy of the next chunk), device -> host directly.
// Compiled only by nvcc.
#pragma once

#include <cstring>
#include <mutex>

#include "../../core/tensor.hpp"
#include "allocator.cuh"

namespace flsl {

namespace cuda_detail {

/// Two pinned (page-locked) host buffers used in turn to copy host memory to the device: chunk k
/// is memcpy'd into buffer k % 2 while the DMA of chunk k - 1 runs; an event per buffer says when
/// its last DMA finished. to_device returns once `src` may be reused (the last DMA may still run,
/// ordered before later work on the current stream). 2 x 8 MiB of pinned memory, allocated on
/// first use and kept.
class pinned_staging {
 public:
  static constexpr std::size_t chunk = std::size_t(8) << 20;
  static pinned_staging& instance() {
    static auto* s = new pinned_staging();
    return *s;
  }
  void to_device(void* dst, const void* src, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto* d = static_cast<char*>(dst);
    const auto* h = static_cast<const char*>(src);
    for (std::size_t done = 0; done < bytes; done += chunk) {
      slot& s = slots_[next_];
      next_ ^= 1;
      if (!s.ptr) {
        FLSL_CUDA_CHECK(cudaMallocHost(&s.ptr, chunk));
        FLSL_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
      } else {
        FLSL_CUDA_CHECK(cudaEventSynchronize(s.done));  // its previous DMA has finished
      }
      const std::size_t n = std::min(chunk, bytes - done);
      std::memcpy(s.ptr, h + done, n);
      FLSL_CUDA_CHECK(
          cudaMemcpyAsync(d + done, s.ptr, n, cudaMemcpyHostToDevice, current_stream()));
      cuda_detail::timeline_mark("memcpy h2d", current_stream());
      FLSL_CUDA_CHECK(cudaEventRecord(s.done, current_stream()));
    }
  }

 private:
  struct slot {
    void* ptr = nullptr;
    cudaEvent_t done = nullptr;
  };
  pinned_staging() = default;
  std::mutex mu_;
  slot slots_[2];
  int next_ = 0;
};

/// A contiguous device copy of a host tensor (non-contiguous views are made contiguous first).
template <class T>
Tensor<T, cuda> to_device(const Tensor<T, cpu>& t) {
  FLSL_CHECK(t.defined(), "to<cuda>: the tensor is undefined");
  const Tensor<T, cpu> src = t.contiguous();
  auto out = Tensor<T, cuda>::empty(t.shape());
  if (t.numel() > 0)
    pinned_staging::instance().to_device(out.data(), src.data(),
                                         std::size_t(t.numel()) * sizeof(T));
  return out;
}
/// A contiguous host copy of a device tensor; returns when the values are on the host.
template <class T>
Tensor<T, cpu> to_host(const Tensor<T, cuda>& t) {
  FLSL_CHECK(t.defined(), "to<cpu>: the tensor is undefined");
  const Tensor<T, cuda> src = t.contiguous();  // a kernel when t is a strided view
  auto out = Tensor<T, cpu>::empty(t.shape());
  if (t.numel() > 0) {
    FLSL_CUDA_CHECK(cudaMemcpyAsync(out.data(), src.data(), std::size_t(t.numel()) * sizeof(T),
                                    cudaMemcpyDeviceToHost, current_stream()));
    cuda_detail::timeline_mark("memcpy d2h", current_stream());
    synchronize();
  }
  return out;
}

}  // namespace cuda_detail

}  // namespace flsl
