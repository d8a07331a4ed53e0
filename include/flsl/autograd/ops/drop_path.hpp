// Stochastic depth (drop path): a residual branch is kept or dropped per sample as a whole, and
// the kept samples are rescaled by 1 / (1 - rate).
#pragma once

#include "../../core/random.hpp"
#include "../elementwise.hpp"
#include "../gradcheck.hpp"

namespace flsl {

/// keep [batch] of 0/1 with P(keep) = 1 - rate: sample b is kept when the b-th uniform draw of
/// `gen` (one draw per sample, in order) is below 1 - rate, so the caller's generator (its seed,
/// stream and offset) makes the mask reproducible.
template <class T = float>
Tensor<T, cpu> drop_path_mask(index_t batch, double rate, Generator& gen) {
  FLSL_CHECK(rate >= 0 && rate <= 1, "drop_path_mask: rate ", rate, " is outside [0, 1]");
  auto keep = Tensor<T, cpu>::empty({batch});  // [B]
  T* k = keep.data();
  for (index_t b = 0; b < batch; ++b) k[b] = convert<T>(gen.uniform() < 1.0 - rate ? 1.0 : 0.0);
  return keep;
}

/// Drop path: x [B, ...], keep [B] of 0/1 (a constant, e.g. from drop_path_mask) ->
///   y[b, ...] = x[b, ...] keep[b] / (1 - rate),   dx[b, ...] = dy[b, ...] keep[b] / (1 - rate).
/// Returns x itself (no graph node) when rate is 0 or when not training; rate 1 drops every sample.
template <class T, class D>
Var<T, D> drop_path(const Var<T, D>& x, const Tensor<T, D>& keep, double rate,
                    bool training = true) {
  FLSL_CHECK(rate >= 0 && rate <= 1, "drop_path: rate ", rate, " is outside [0, 1]");
  if (!training || rate == 0) return x;
  FLSL_CHECK(x.rank() >= 1 && keep.rank() == 1 && keep.size(0) == x.size(0),
             "drop_path: keep mask of shape ", keep.shape(), " for an input of shape ", x.shape(),
             " (expected [B] with B the input's first extent)");
  Shape per_sample = Shape::filled(x.rank(), 1);
  per_sample[0] = x.size(0);
  auto factor = Tensor<T, D>::empty(per_sample);  // [B, 1, ..., 1]: keep[b] / (1 - rate)
  factor.view({x.size(0)}).assign(keep * (rate < 1 ? 1.0 / (1.0 - rate) : 0.0));
  Tensor<T, D> y = x.value() * factor;
  auto backward = [factor](autograd::node<T, D>& node) {
    node.inputs[0]->accumulate(node.grad * factor);
  };
  return Var<T, D>::make_result(std::move(y), "drop_path", backward, x);
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(drop_path) {
  using namespace autograd;
  const auto keep = Tensor<double>::from({1.0, 0.0, 1.0});
  return gradcheck([keep](auto& in) { return drop_path(in[0], keep, 0.25); },
                   {random_input({3, 2, 4}, 401)});
}
#endif

}  // namespace flsl
