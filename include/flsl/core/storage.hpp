// Reference-counted, aligned memory blocks that tensors view; allocation statistics for tests.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

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

/// A block of host memory aligned to storage_alignment. Not copyable; shared through shared_ptr.
template <>
class Storage<cpu> {
 public:
  explicit Storage(std::size_t bytes) : bytes_(bytes) {
    const std::size_t rounded =
        (bytes + storage_alignment - 1) / storage_alignment * storage_alignment;
    if (rounded > 0) {
      data_ = std::aligned_alloc(storage_alignment, rounded);
      if (!data_) fail("Storage<cpu>: out of memory allocating ", bytes, " bytes");
    }
    storage_stats::allocations().fetch_add(1, std::memory_order_relaxed);
    storage_stats::bytes_live().fetch_add(static_cast<long long>(bytes), std::memory_order_relaxed);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    std::free(data_);
    storage_stats::bytes_live().fetch_sub(static_cast<long long>(bytes_), std::memory_order_relaxed);
  }

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace flsl
