// Reference-counted, aligned memory blocks that tensors view; allocation statistics for tests.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "config.hpp"
#include "device.hpp"
#include "error.hpp"

namespace flsl {

/// Counts storage allocations process-wide (tests prove that fused expressions allocate nothing).
struct storage_stats {
  static std::atomic<long long>& allocations() {
    static std::atomic<long long> n{0};
    return n;
  }
  static std::atomic<long long>& bytes_live() {
    static std::atomic<long long> n{0};
    return n;
  }
};

template <class Device>
class Storage;

namespace detail {
/// Keeps freed host blocks of 64 KiB and more for reuse, keyed by their exact (page-rounded)
/// size: a training step allocates the same shapes every iteration, and a fresh large block costs
/// an mmap plus a page fault per 4 KiB on first touch. Bounded by `limit` bytes (environment
/// FLSL_HOST_CACHE_MB, default 8192); never destroyed (tensors may outlive static destructors).
class host_block_cache {
 public:
  static constexpr std::size_t min_cached = 64 * 1024;
  static host_block_cache& instance() {
    static host_block_cache* c = new host_block_cache();
    return *c;
  }
  static std::size_t rounded(std::size_t bytes) {
    const std::size_t unit = bytes >= min_cached ? 4096 : storage_alignment;
    return (bytes + unit - 1) / unit * unit;
  }
  void* acquire(std::size_t size) {
    if (size >= min_cached) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        return p;
      }
    }
    void* p = std::aligned_alloc(storage_alignment, size);
    if (!p) {  // out of memory: give the cache back and try once more
      release_all();
      p = std::aligned_alloc(storage_alignment, size);
    }
    return p;
  }
  void release(void* p, std::size_t size) {
    if (size >= min_cached) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + size <= limit_) {
        free_[size].push_back(p);
        cached_ += size;
        return;
      }
    }
    std::free(p);
  }
  /// Frees every cached block (e.g. before a phase that needs the memory elsewhere).
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, v] : free_)
      for (void* p : v) std::free(p);
    free_.clear();
    cached_ = 0;
  }
  std::size_t cached_bytes() const { return cached_; }

 private:
  host_block_cache() {
    if (const char* e = std::getenv("FLSL_HOST_CACHE_MB"))
      limit_ = std::size_t(std::atoll(e)) << 20;
  }
  std::mutex mu_;
  std::map<std::size_t, std::vector<void*>> free_;
  std::size_t cached_ = 0;
  std::size_t limit_ = std::size_t(8192) << 20;
};
}  // namespace detail

/// A block of host memory aligned to storage_alignment, from the host block cache. Not copyable;
/// shared through shared_ptr.
template <>
class Storage<cpu> {
 public:
  explicit Storage(std::size_t bytes) : bytes_(bytes) {
    if (bytes > 0) {
      data_ =
          detail::host_block_cache::instance().acquire(detail::host_block_cache::rounded(bytes));
      if (!data_) fail("Storage<cpu>: out of memory allocating ", bytes, " bytes");
    }
    storage_stats::allocations().fetch_add(1, std::memory_order_relaxed);
    storage_stats::bytes_live().fetch_add(static_cast<long long>(bytes), std::memory_order_relaxed);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (data_)
      detail::host_block_cache::instance().release(data_,
                                                   detail::host_block_cache::rounded(bytes_));
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
