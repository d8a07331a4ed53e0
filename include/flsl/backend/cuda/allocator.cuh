// Device memory for cuda tensors: a caching allocator (size-bucketed free lists, no cudaMalloc in
// the steady state), its statistics, and Storage<cuda>. Compiled only by nvcc.
#pragma once

#include <bit>
#include <cstddef>
#include <map>
#include <mutex>
#include <vector>

#include "../../core/storage.hpp"
#include "runtime.cuh"

namespace flsl {

/// Statistics of the caching allocator, in bytes of rounded block sizes.
struct cuda_memory_stats {
  std::size_t in_use = 0;            // held by live storages
  std::size_t cached = 0;            // freed, kept for reuse
  std::size_t peak_in_use = 0;       // largest in_use so far (reset_peak() restarts it)
  long long device_allocations = 0;  // cudaMalloc calls made
  long long reuses = 0;              // allocations served from the cache
};

/// Keeps freed device blocks in free lists keyed by their rounded size and hands them out again:
/// a training step allocates the same shapes every iteration, so after the first step no
/// allocation reaches cudaMalloc (which synchronises the device). A freed block is reusable at once
/// because all flsl work is ordered on one stream (see current_stream()). One device: the one that
/// is current at the first allocation. Never destroyed (tensors may outlive static destructors).
class cuda_caching_allocator {
 public:
  static cuda_caching_allocator& instance() {
    static auto* a = new cuda_caching_allocator();
    return *a;
  }
  /// Bucket size of a request: multiples of 512 bytes up to 1 MiB, then multiples of 1/8 of the
  /// request's power of two (at most 12.5% waste, few distinct buckets).
  static std::size_t rounded(std::size_t bytes) {
    constexpr std::size_t small = 512, large = std::size_t(1) << 20;
    const std::size_t unit = bytes <= large ? small : std::bit_ceil(bytes) / 8;
    return (bytes + unit - 1) / unit * unit;
  }

  void* allocate(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    const std::size_t size = rounded(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = free_.find(size); it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      stats_.cached -= size;
      ++stats_.reuses;
      note_in_use(size);
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {  // give the cache back to the device, then retry once
      (void)cudaGetLastError();
      release_cached_locked();
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      fail("cuda allocator: cannot allocate ", bytes, " bytes (", stats_.in_use, " in use, ",
           stats_.cached, " cached): CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
           ")");
    }
    ++stats_.device_allocations;
    note_in_use(size);
    return p;
  }
  /// Returns a block to its free list (no CUDA call: the block may still be read by enqueued
  /// work, which the next user of the block on the same stream is ordered after).
  void deallocate(void* p, std::size_t bytes) noexcept {
    if (!p) return;
    const std::size_t size = rounded(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    free_[size].push_back(p);
    stats_.in_use -= size;
    stats_.cached += size;
  }
  /// cudaFree of every cached block (waits for the device first).
  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }
  cuda_memory_stats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_in_use = stats_.in_use;
  }

 private:
  cuda_caching_allocator() = default;
  void note_in_use(std::size_t size) {
    stats_.in_use += size;
    stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  }
  void release_cached_locked() {
    if (stats_.cached == 0) return;
    (void)cudaDeviceSynchronize();
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) (void)cudaFree(p);
    free_.clear();
    stats_.cached = 0;
  }

  mutable std::mutex mu_;
  std::map<std::size_t, std::vector<void*>> free_;
  cuda_memory_stats stats_;
};

/// The allocator's statistics (bytes in use, cached, peak; cudaMalloc calls).
inline cuda_memory_stats cuda_memory() { return cuda_caching_allocator::instance().stats(); }

/// A block of device memory from the caching allocator. Not copyable; shared through shared_ptr.
/// Counted in storage_stats like host storage.
template <>
class Storage<cuda> {
 public:
  explicit Storage(std::size_t bytes)
      : data_(cuda_caching_allocator::instance().allocate(bytes)), bytes_(bytes) {
    storage_stats::allocations().fetch_add(1, std::memory_order_relaxed);
    storage_stats::bytes_live().fetch_add(static_cast<long long>(bytes), std::memory_order_relaxed);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    cuda_caching_allocator::instance().deallocate(data_, bytes_);
    storage_stats::bytes_live().fetch_sub(static_cast<long long>(bytes_),
                                          std::memory_order_relaxed);
  }

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace flsl
