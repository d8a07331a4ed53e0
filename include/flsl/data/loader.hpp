// Batch loader: a producer thread that loads, decodes and multi-crops images into batch tensors
// (in parallel, in a oneTBB arena) in the background while the consumer trains on the previous
// batch; bounded memory, epoch shuffling, drop_last, and batch content that depends only on (seed,
// epoch, index).
#pragma once

#include <tbb/concurrent_queue.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "../core/tensor.hpp"
#include "dataset.hpp"
#include "multicrop.hpp"

namespace flsl::data {

struct LoaderParams {
  std::int64_t batch_size = 64;
  bool shuffle = true;
  bool drop_last = true;
  std::uint64_t seed = 0;
  int threads = 0;    // threads of the loader's task arena; 0: oneTBB's default (all cores)
  int in_flight = 2;  // batches being built at the same time
  int prefetch = 1;   // finished batches waiting for the consumer
  /// Receives warnings about images that failed to load; default: stderr with a "flsl: " prefix.
  std::function<void(const std::string&)> log = {};
};

/// One batch of FLSL views. Shapes (B = samples in this batch, L = local views per image):
/// teacher [B, 3, T, T] (view t), student [B, 3, S, S], local [B*L, 3, s, s] (sample b's views at
/// rows b*L .. b*L+L-1), student_queries [B, Qg], local_queries [B*L, Ql] (row-major token indices
/// of each view's grid), labels [B] (-1: none), indices [B] (dataset index of each sample).
struct Batch {
  std::int64_t epoch = -1;
  std::int64_t index = -1;
  std::int64_t size = 0;
  Tensor<float> teacher, student, local;
  Tensor<std::int64_t> student_queries, local_queries, labels, indices;

  /// Full-capacity storage that the fields above view (allocated once per buffer).
  struct Storage {
    Tensor<float> teacher, student, local;
    Tensor<std::int64_t> student_queries, local_queries, labels, indices;
  } storage;
};

/// A failing image is replaced by the next index, at most this many tries per sample.
inline constexpr std::size_t max_replacements = 16;

/// Stream tags that keep the loader's random streams apart from every other user of the seed.
inline constexpr std::uint64_t loader_sample_tag = 0x666c736c2d696d67ull;   // "flsl-img"
inline constexpr std::uint64_t loader_shuffle_tag = 0x666c736c2d736866ull;  // "flsl-shf"

/// Loads batches of `dataset` (which must outlive the loader). Random streams: the order of epoch
/// e is a Fisher-Yates shuffle from Generator(seed, mix_stream(shuffle_tag, e)); the views of
/// dataset image i in epoch e come from MultiCrop with stream mix_stream(sample_tag, e, i). So a
/// sample's views do not depend on the thread count, the batch size or the position in the batch.
/// An image that fails to load is replaced by the next index (deterministically) with a warning.
/// One consumer thread: start_epoch(), then next() until it returns nullptr.
template <image_dataset D>
class Loader {
 public:
  Loader(const D& dataset, MultiCropParams crop = {}, LoaderParams p = {})
      : data_(dataset),
        crop_(crop),
        p_(std::move(p)),
        arena_(p_.threads > 0 ? p_.threads : tbb::task_arena::automatic) {
    crop_.validate();
    FLSL_CHECK(p_.batch_size > 0, "Loader: batch size ", p_.batch_size, " must be positive");
    FLSL_CHECK(p_.in_flight > 0 && p_.prefetch > 0, "Loader: in_flight ", p_.in_flight,
               " and prefetch ", p_.prefetch, " must be positive");
    FLSL_CHECK(data_.size() > 0, "Loader: the dataset is empty");
    FLSL_CHECK(!p_.drop_last || std::int64_t(data_.size()) >= p_.batch_size,
               "Loader: ", data_.size(), " images make no full batch of ", p_.batch_size,
               " with drop_last");
    const int buffers = p_.in_flight + p_.prefetch + 1;
    for (int i = 0; i < buffers; ++i) buffers_.push_back(std::make_unique<Batch>(new_batch()));
  }
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;
  ~Loader() { stop(); }

  const MultiCropParams& crop_params() const { return crop_; }
  const LoaderParams& params() const { return p_; }

  std::int64_t batches_per_epoch() const {
    const auto n = std::int64_t(data_.size());
    return p_.drop_last ? n / p_.batch_size : (n + p_.batch_size - 1) / p_.batch_size;
  }

  /// Dataset indices of epoch `epoch` in the order they are served.
  std::vector<std::int64_t> epoch_order(std::int64_t epoch) const {
    std::vector<std::int64_t> order(data_.size());
    std::iota(order.begin(), order.end(), std::int64_t(0));
    if (p_.shuffle) {
      Generator g(p_.seed, mix_stream(loader_shuffle_tag, std::uint64_t(epoch)));
      for (std::size_t i = order.size() - 1; i > 0; --i)
        std::swap(order[i], order[g.uniform_int(std::uint32_t(i + 1))]);
    }
    return order;
  }

  /// A batch with freshly allocated full-size storage (for make_batch).
  Batch new_batch() const {
    const std::int64_t B = p_.batch_size, L = crop_.n_local;
    const std::int64_t T = crop_.teacher.size, S = crop_.student.size, s = crop_.local.size;
    Batch b;
    b.storage.teacher = Tensor<float>::empty({B, 3, T, T});
    b.storage.student = Tensor<float>::empty({B, 3, S, S});
    b.storage.local = Tensor<float>::empty({B * L, 3, s, s});
    b.storage.student_queries = Tensor<std::int64_t>::empty({B, crop_.student_queries()});
    b.storage.local_queries = Tensor<std::int64_t>::empty({B * L, crop_.local_queries()});
    b.storage.labels = Tensor<std::int64_t>::empty({B});
    b.storage.indices = Tensor<std::int64_t>::empty({B});
    return b;
  }

  /// Builds batch `index` of epoch `epoch` in the calling thread (using the loader's threads):
  /// the same content next() serves for it.
  void make_batch(std::int64_t epoch, std::int64_t index, Batch& out) {
    FLSL_CHECK(index >= 0 && index < batches_per_epoch(), "Loader::make_batch: batch ", index,
               " out of range (", batches_per_epoch(), " per epoch)");
    if (!out.storage.teacher.defined()) out = new_batch();
    const auto order = epoch_order(epoch);
    arena_.execute([&] { fill(epoch, index, order, out); });
  }

  /// Starts producing the batches first_batch.. of `epoch` in the background (stopping a running
  /// epoch first). first_batch > 0 resumes an epoch exactly where a checkpoint left it.
  void start_epoch(std::int64_t epoch, std::int64_t first_batch = 0) {
    stop();
    FLSL_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch(),
               "Loader::start_epoch: ", "first batch ", first_batch, " out of range (",
               batches_per_epoch(), " per epoch)");
    order_ = epoch_order(epoch);
    ready_ = std::make_unique<tbb::concurrent_bounded_queue<Batch*>>();
    ready_->set_capacity(p_.prefetch);
    free_.clear();
    for (auto& b : buffers_) free_.push(b.get());
    current_ = nullptr;
    error_ = nullptr;
    stop_ = false;
    done_ = false;
    producer_ = std::thread([this, epoch, first_batch] { produce(epoch, first_batch); });
  }

  /// The next batch of the epoch (blocks until ready), or nullptr at its end. The batch stays
  /// valid until the next call of next(), start_epoch() or stop(). Rethrows a failure of the
  /// pipeline (after the batches finished before it).
  const Batch* next() {
    FLSL_CHECK(ready_ != nullptr, "Loader::next: call start_epoch() first");
    if (current_) {
      free_.push(current_);
      current_ = nullptr;
    }
    if (!producer_.joinable()) return nullptr;
    Batch* b = nullptr;
    ready_->pop(b);
    if (b == nullptr) {
      producer_.join();
      if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
      return nullptr;
    }
    current_ = b;
    return b;
  }

  /// Stops the background work (without finishing the epoch); next() then returns nullptr.
  void stop() {
    if (!producer_.joinable()) return;
    stop_ = true;
    while (!done_.load()) {
      Batch* b = nullptr;
      while (ready_->try_pop(b))
        if (b) free_.push(b);
      ready_->abort();
      free_.abort();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    producer_.join();
  }

  /// Distinct images that failed to load (each replaced by the next index), so far.
  std::int64_t replaced_images() const { return replaced_.load(); }

 private:
  struct Worker {
    explicit Worker(const MultiCropParams& p) : crop(p) {}
    MultiCrop crop;
    SourceImage src;
  };

  // The producer thread's loop. Every wait (for a free buffer, for room in the ready queue) is
  // on this thread, outside any oneTBB task: a task that blocks holds its thread, and with one
  // worker on two cores that was the worker the training step needed (the step's products then
  // ran on the main thread alone; the default run used 1.37 of its 2 cores). The arena runs only
  // the filling, in_flight batches at a time, and its threads return as soon as they are built.
  void produce(std::int64_t epoch, std::int64_t first) {
    std::vector<Batch*> group;
    try {
      const std::int64_t end = batches_per_epoch();
      for (std::int64_t next_index = first; next_index < end && !stop_.load();) {
        // in_flight + prefetch + 1 buffers: the consumer's, prefetch ready ones, this group
        Batch* b = nullptr;
        free_.pop(b);  // returns once the consumer hands one back (stop() aborts the wait)
        group.push_back(b);
        while (std::int64_t(group.size()) <
                   std::min<std::int64_t>(p_.in_flight, end - next_index) &&
               free_.try_pop(b))
          group.push_back(b);
        if (stop_.load()) break;
        std::vector<std::exception_ptr> failed(group.size());
        arena_.execute([&] {
          tbb::parallel_for(std::size_t(0), group.size(), [&](std::size_t g) {
            try {
              fill(epoch, next_index + std::int64_t(g), order_, *group[g]);
            } catch (...) {
              failed[g] = std::current_exception();
            }
          });
        });
        next_index += std::int64_t(group.size());
        // in order; a failure is reported after the batches before it are served
        for (std::size_t g = 0; !group.empty(); ++g) {
          if (failed[g]) std::rethrow_exception(failed[g]);
          ready_->push(group.front());
          group.erase(group.begin());
        }
      }
    } catch (const tbb::user_abort&) {
      // stop(): nothing to report
    } catch (...) {
      error_ = std::current_exception();
    }
    for (Batch* b : group) free_.push(b);
    try {
      if (!stop_.load()) ready_->push(nullptr);  // end of epoch (stop() drains while waiting)
    } catch (const tbb::user_abort&) {
    }
    done_ = true;
  }

  /// Fills `b` with batch `index` of the epoch whose order is `order` (parallel over samples).
  void fill(std::int64_t epoch, std::int64_t index, const std::vector<std::int64_t>& order,
            Batch& b) {
    const std::int64_t B = p_.batch_size, L = crop_.n_local;
    const std::int64_t begin = index * B;
    const std::int64_t n = std::min<std::int64_t>(B, std::int64_t(order.size()) - begin);
    b.epoch = epoch;
    b.index = index;
    b.size = n;
    auto& s = b.storage;
    b.teacher = s.teacher.narrow(0, 0, n);
    b.student = s.student.narrow(0, 0, n);
    b.local = s.local.narrow(0, 0, n * L);
    b.student_queries = s.student_queries.narrow(0, 0, n);
    b.local_queries = s.local_queries.narrow(0, 0, n * L);
    b.labels = s.labels.narrow(0, 0, n);
    b.indices = s.indices.narrow(0, 0, n);
    // a failure names the batch's first failing sample, whatever the threads' timing
    std::vector<std::exception_ptr> failed(static_cast<std::size_t>(n));
    tbb::parallel_for(std::int64_t(0), n, [&](std::int64_t k) {
      try {
        sample(epoch, std::size_t(order[std::size_t(begin + k)]), b, k);
      } catch (...) {
        failed[std::size_t(k)] = std::current_exception();
      }
    });
    for (const auto& e : failed)
      if (e) std::rethrow_exception(e);
  }

  /// Views of dataset image `idx` into slot k of `b`; a failing image is replaced by the next.
  void sample(std::int64_t epoch, std::size_t idx, Batch& b, std::int64_t k) {
    auto& slot = workers_.local();
    if (!slot) slot = std::make_unique<Worker>(crop_);
    Worker& w = *slot;
    const std::int64_t L = crop_.n_local;
    const std::int64_t T = crop_.teacher.size, S = crop_.student.size, s = crop_.local.size;
    const MultiCropOutput out{
        b.storage.teacher.data() + k * 3 * T * T,
        b.storage.student.data() + k * 3 * S * S,
        b.storage.local.data() + k * L * 3 * s * s,
        b.storage.student_queries.data() + k * crop_.student_queries(),
        b.storage.local_queries.data() + k * L * crop_.local_queries(),
    };
    const std::uint64_t stream = mix_stream(loader_sample_tag, std::uint64_t(epoch), idx);
    const std::size_t n = data_.size();
    std::string last;
    for (std::size_t attempt = 0; attempt < std::min<std::size_t>(n, max_replacements); ++attempt) {
      const std::size_t j = (idx + attempt) % n;
      try {
        data_.load(j, w.src);
        w.crop(w.src, p_.seed, stream, out);
        b.storage.labels.data()[k] = w.src.label;
        b.storage.indices.data()[k] = std::int64_t(j);
        return;
      } catch (const flsl::error& e) {
        last = e.what();
        report_failure(j, last);
      }
    }
    fail("Loader: image ", idx, " and the ", max_replacements - 1,
         " next ones could not be loaded; last error: ", last);
  }

  void report_failure(std::size_t j, const std::string& what) {
    std::lock_guard lock(failed_mutex_);
    if (!failed_.insert(j).second) return;
    ++replaced_;
    const std::string msg =
        "warning: image " + std::to_string(j) + " replaced by the next one: " + what;
    if (p_.log) {
      p_.log(msg);
    } else {
      std::cerr << "flsl: " << msg << '\n';
    }
  }

  const D& data_;
  MultiCropParams crop_;
  LoaderParams p_;
  tbb::task_arena arena_;
  tbb::enumerable_thread_specific<std::unique_ptr<Worker>> workers_;
  std::vector<std::unique_ptr<Batch>> buffers_;
  std::vector<std::int64_t> order_;
  std::unique_ptr<tbb::concurrent_bounded_queue<Batch*>> ready_;
  tbb::concurrent_bounded_queue<Batch*> free_;
  Batch* current_ = nullptr;
  std::thread producer_;
  std::atomic<bool> stop_{false}, done_{false};
  std::exception_ptr error_;
  std::mutex failed_mutex_;
  std::set<std::size_t> failed_;
  std::atomic<std::int64_t> replaced_{0};
};

}  // namespace flsl::data
