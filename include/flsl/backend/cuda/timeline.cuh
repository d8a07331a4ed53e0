// Where the GPU's time goes, without an external profiler: while a timeline is recording, every
// kernel launch, cuBLASLt call and copy that flsl enqueues records a CUDA event after itself, and
// the autograd ops say when they are done (core/trace.hpp), so each event is attributed to the op
// that enqueued it ("linear (backward) | cublasLt bf16"). stop() waits for the device and
// returns, per (op, kernel) pair, the number of launches and the time between each launch's event
// and the previous one on the stream. On one stream that is the launch's run time, plus any time
// the device sat idle before it (the host was behind, e.g. right after a synchronisation); the
// report gives the total so that the idle share can be judged against the step's wall time.
// Recording costs one cudaEventRecord per launch (a few microseconds of host time).
//
// Also the work counters: the FLOPs of every cuBLASLt product (2 M N K per matrix) and of the
// fused attention (the model's 4 N^2 hd per head forward, 8 N^2 hd backward, without the
// backward's recomputation), counted on the host whether or not a timeline records, so that a
// benchmark can report achieved TFLOP/s.
//
// Compiled only by nvcc. One timeline per process; host-thread-unsafe (flsl enqueues from one
// thread).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/trace.hpp"

namespace flsl {

/// FLOPs enqueued so far (host-side counts; see the header comment).
struct cuda_work_counters {
  double gemm_flops = 0;
  double attention_flops = 0;
};
inline cuda_work_counters& cuda_work() {
  static cuda_work_counters c;
  return c;
}

/// One line of a timeline report.
struct cuda_timeline_entry {
  std::string op;      // the autograd op ("linear", "layer_norm (backward)", "(no op)")
  std::string kernel;  // the launch ("assign_kernel", "cublasLt bf16", "memcpy h2d")
  long long launches = 0;
  double ms = 0;
};

class cuda_timeline {
 public:
  static cuda_timeline& instance() {
    static cuda_timeline t;
    return t;
  }
  cuda_timeline(const cuda_timeline&) = delete;
  cuda_timeline& operator=(const cuda_timeline&) = delete;

  bool recording() const { return on_; }

  /// Starts recording (after waiting for earlier work, so that it is not counted).
  void start() {
    FLSL_CHECK(!on_, "cuda_timeline: already recording");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    marks_.clear();
    pending_ = 0;
    on_ = true;
    mark("(start)");
    detail::op_trace_hook() = &cuda_timeline::on_op;
  }

  /// Records that `kernel` was just enqueued on `stream` (only the current stream is timed).
  void mark(const char* kernel, cudaStream_t stream = nullptr) {
    if (!on_) return;
    if (marks_.size() == events_.size()) {
      cudaEvent_t e = nullptr;
      check(cudaEventCreate(&e), "cudaEventCreate");
      events_.push_back(e);
    }
    check(cudaEventRecord(events_[marks_.size()], stream), "cudaEventRecord");
    marks_.push_back({kernel, std::string()});
  }

  /// Stops recording; the report, largest time first.
  std::vector<cuda_timeline_entry> stop() {
    FLSL_CHECK(on_, "cuda_timeline: not recording");
    detail::op_trace_hook() = nullptr;
    on_ = false;
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    std::map<std::pair<std::string, std::string>, cuda_timeline_entry> by;
    for (std::size_t i = 1; i < marks_.size(); ++i) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, events_[i - 1], events_[i]), "cudaEventElapsedTime");
      const std::string op = marks_[i].op.empty() ? "(no op)" : marks_[i].op;
      auto& e = by[{op, marks_[i].kernel}];
      e.op = op;
      e.kernel = marks_[i].kernel;
      e.launches += 1;
      e.ms += double(ms);
    }
    std::vector<cuda_timeline_entry> out;
    for (auto& [key, e] : by) out.push_back(std::move(e));
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.ms > b.ms; });
    return out;
  }

  /// The report as CSV (op, kernel, launches, ms, share of the total).
  static std::string csv(const std::vector<cuda_timeline_entry>& r) {
    double total = 0;
    for (const auto& e : r) total += e.ms;
    std::string s = "op,kernel,launches,ms,share\n";
    char buf[64];
    for (const auto& e : r) {
      std::snprintf(buf, sizeof buf, ",%lld,%.4f,%.4f\n", e.launches, e.ms,
                    total > 0 ? e.ms / total : 0.0);
      s += '"' + e.op + "\",\"" + e.kernel + '"' + buf;
    }
    return s;
  }

  ~cuda_timeline() {
    for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);
  }

 private:
  cuda_timeline() = default;
  struct mark_t {
    std::string kernel, op;
  };
  static void check(cudaError_t e, const char* call) {
    if (e != cudaSuccess) fail("cuda_timeline: ", call, " failed: ", cudaGetErrorString(e));
  }
  /// An op finished: the launches since the previous op's end were its own.
  static void on_op(const char* op, bool backward) {
    cuda_timeline& t = instance();
    const std::string name = backward ? std::string(op) + " (backward)" : std::string(op);
    for (std::size_t i = t.pending_; i < t.marks_.size(); ++i) t.marks_[i].op = name;
    t.pending_ = t.marks_.size();
  }

  bool on_ = false;
  std::vector<cudaEvent_t> events_;  // reused from one recording to the next
  std::vector<mark_t> marks_;
  std::size_t pending_ = 0;  // the first mark not yet attributed to an op
};

namespace cuda_detail {
/// Called after every flsl launch, copy and cuBLASLt call on the current stream.
inline void timeline_mark(const char* kernel, cudaStream_t stream) {
  cuda_timeline& t = cuda_timeline::instance();
  if (t.recording()) t.mark(kernel, stream);
}
}  // namespace cuda_detail

}  // namespace flsl
