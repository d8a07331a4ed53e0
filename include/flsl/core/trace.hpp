// The hook through which a device profiler (backend/cuda/timeline.cuh) learns which autograd op
// launched the work it timed: every op reports when it is done (the forward when its result node
// is made, the backward after the node's closure ran). Null by default: one load and a branch per
// op. CPU-visible; no device header.
#pragma once

namespace flsl::detail {

using op_trace_fn = void (*)(const char* op, bool backward);

inline op_trace_fn& op_trace_hook() {
  static op_trace_fn f = nullptr;
  return f;
}

/// Called by the autograd layer: `op` (its node name) has finished its forward or backward.
inline void trace_op(const char* op, bool backward) {
  if (const op_trace_fn f = op_trace_hook()) f(op, backward);
}

}  // namespace flsl::detail
