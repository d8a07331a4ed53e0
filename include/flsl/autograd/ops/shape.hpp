// Shape ops on Vars: view/reshape, permute/transpose, narrow/select, concat/split, expand,
// unsqueeze/squeeze. The forwards are views of the input's memory (reshape and concat copy, as
// their names say); the backwards route the gradient back into the matching region of the input.
#pragma once

#include <initializer_list>
#include <numeric>
#include <vector>

#include "reduce.hpp"

namespace flsl {

namespace autograd {
/// The input's gradient to add into in place: zeros when nothing has accumulated yet, and made
/// contiguous (an owned copy) if some op left a strided one.
template <class T, class D>
const Tensor<T, D>& grad_to_add_into(node<T, D>& n) {
  if (!n.grad.defined())
    n.grad = Tensor<T, D>::zeros(n.value.shape());
  else if (!n.grad.is_contiguous())
    n.grad = n.grad.clone();
  return n.grad;
}
/// grad(n)[region] += g, where `region(t)` is the view of a tensor of n's shape that the op read.
template <class T, class D, class Region>
void accumulate_into_region(node<T, D>& n, const Tensor<T, D>& g, Region&& region) {
  const Tensor<T, D> r = region(grad_to_add_into(n));
  r.assign(r + g);
}
}  // namespace autograd

namespace detail {
/// The backward of every op that keeps the elements and changes only the shape (view, reshape,
/// unsqueeze, squeeze): the gradient takes the input's shape back.
template <class T, class D>
void reshape_backward(autograd::node<T, D>& out) {
  auto& in = *out.inputs[0];
  in.accumulate(out.grad.reshape_or_copy(in.value.shape()));
}
template <class T, class D>
Var<T, D> reshaped(const Var<T, D>& x, Tensor<T, D> y, const char* op) {
  return Var<T, D>::make_result(std::move(y), op, &reshape_backward<T, D>, x);
}
}  // namespace detail

/// The same elements under a new shape, sharing memory (one extent may be -1). Throws when the
/// strides make that impossible (reshape copies then).
template <class T, class D>
Var<T, D> view(const Var<T, D>& x, const Shape& shape) {
  return detail::reshaped(x, x.value().view(shape), "view");
}
/// `view` when the strides allow it, otherwise a contiguous copy with the new shape.
template <class T, class D>
Var<T, D> reshape(const Var<T, D>& x, const Shape& shape) {
  return detail::reshaped(x, x.value().reshape_or_copy(shape), "reshape");
}
/// Inserts an axis of extent 1 at `axis` (a view).
template <class T, class D>
Var<T, D> unsqueeze(const Var<T, D>& x, int axis) {
  return detail::reshaped(x, x.value().unsqueeze(axis), "unsqueeze");
}
/// Removes `axis`, which must have extent 1 (a view).
template <class T, class D>
Var<T, D> squeeze(const Var<T, D>& x, int axis) {
  return detail::reshaped(x, x.value().squeeze(axis), "squeeze");
}

/// Reorders axes: result axis i is input axis dims[i] (a view). The gradient is permuted back.
template <class T, class D>
Var<T, D> permute(const Var<T, D>& x, const std::vector<int>& dims) {
  Tensor<T, D> y = x.value().permute(dims);
  std::vector<int> inverse(dims.size());
  for (std::size_t i = 0; i < dims.size(); ++i)
    inverse[std::size_t(x.shape().normalize_axis(dims[i]))] = int(i);
  auto backward = [inverse](autograd::node<T, D>& out) {
    out.inputs[0]->accumulate(out.grad.permute(inverse));
  };
  return Var<T, D>::make_result(std::move(y), "permute", backward, x);
}
/// Swaps axes a and b (a view).
template <class T, class D>
Var<T, D> transpose(const Var<T, D>& x, int a, int b) {
  Tensor<T, D> y = x.value().transpose(a, b);
  auto backward = [a, b](autograd::node<T, D>& out) {
    out.inputs[0]->accumulate(out.grad.transpose(a, b));
  };
  return Var<T, D>::make_result(std::move(y), "transpose", backward, x);
}

/// Elements [start, start + length) along axis (a view). The gradient adds into that slice of
/// the input's gradient (zeros elsewhere).
template <class T, class D>
Var<T, D> narrow(const Var<T, D>& x, int axis, index_t start, index_t length) {
  Tensor<T, D> y = x.value().narrow(axis, start, length);
  auto backward = [axis, start, length](autograd::node<T, D>& out) {
    autograd::accumulate_into_region(*out.inputs[0], out.grad, [&](const Tensor<T, D>& t) {
      return t.narrow(axis, start, length);
    });
  };
  return Var<T, D>::make_result(std::move(y), "narrow", backward, x);
}
/// Removes `axis`, keeping element `index` of it (a view; negative index counts from the end).
template <class T, class D>
Var<T, D> select(const Var<T, D>& x, int axis, index_t index) {
  Tensor<T, D> y = x.value().select(axis, index);
  const int a = x.shape().normalize_axis(axis);
  if (index < 0) index += x.shape()[a];
  auto backward = [a, index](autograd::node<T, D>& out) {
    autograd::accumulate_into_region(*out.inputs[0], out.grad,
                                     [&](const Tensor<T, D>& t) { return t.select(a, index); });
  };
  return Var<T, D>::make_result(std::move(y), "select", backward, x);
}

/// Joins Vars along `axis` into new memory; they must agree on every other extent. Input i's
/// gradient is the slice of the output's gradient that it filled.
template <class T, class D>
Var<T, D> concat(const std::vector<Var<T, D>>& xs, int axis) {
  FLSL_CHECK(!xs.empty(), "concat: no inputs");
  const Shape& s0 = xs[0].shape();
  const int a = s0.normalize_axis(axis);
  Shape out_shape = s0;
  out_shape[a] = 0;
  std::vector<index_t> starts;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const Shape& s = xs[i].shape();
    bool same = s.rank() == s0.rank();
    for (int d = 0; same && d < s.rank(); ++d) same = d == a || s[d] == s0[d];
    FLSL_CHECK(same, "concat: input ", i, " has shape ", s, " but input 0 has ", s0,
               " (they may differ only along axis ", a, ")");
    starts.push_back(out_shape[a]);
    out_shape[a] += s[a];
  }
  auto y = Tensor<T, D>::empty(out_shape);
  for (std::size_t i = 0; i < xs.size(); ++i)
    y.narrow(a, starts[i], xs[i].shape()[a]).copy_from(xs[i].value());
  auto backward = [a, starts](autograd::node<T, D>& out) {
    for (std::size_t i = 0; i < out.inputs.size(); ++i) {
      auto& in = *out.inputs[i];
      if (in.requires_grad) in.accumulate(out.grad.narrow(a, starts[i], in.value.shape()[a]));
    }
  };
  return Var<T, D>::make_result_n(std::move(y), "concat", backward, xs);
}
template <class T, class D>
Var<T, D> concat(std::initializer_list<Var<T, D>> xs, int axis) {
  return concat(std::vector<Var<T, D>>(xs), axis);
}
/// Cuts x along `axis` into consecutive pieces of the given extents (views); they must add up to
/// the axis' extent. Each piece's gradient adds into its slice of x's gradient.
template <class T, class D>
std::vector<Var<T, D>> split(const Var<T, D>& x, const std::vector<index_t>& sizes, int axis) {
  const int a = x.shape().normalize_axis(axis);
  const index_t total = std::accumulate(sizes.begin(), sizes.end(), index_t(0));
  FLSL_CHECK(total == x.shape()[a], "split: sizes add up to ", total, " but axis ", a, " of shape ",
             x.shape(), " has extent ", x.shape()[a]);
  std::vector<Var<T, D>> parts;
  index_t start = 0;
  for (index_t n : sizes) {
    FLSL_CHECK(n >= 0, "split: negative size ", n);
    parts.push_back(narrow(x, a, start, n));
    start += n;
  }
  return parts;
}

/// Broadcasts extent-1 (or missing leading) axes to `shape` with stride 0 (a view). The gradient
/// sums over the broadcast axes.
template <class T, class D>
Var<T, D> expand(const Var<T, D>& x, const Shape& shape) {
  auto backward = [](autograd::node<T, D>& out) { out.inputs[0]->accumulate(out.grad); };
  return Var<T, D>::make_result(x.value().expand(shape), "expand", backward, x);
}
template <class T, class D>
Var<T, D> broadcast_to(const Var<T, D>& x, const Shape& shape) {
  return expand(x, shape);
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(view_and_reshape) {
  using namespace autograd;
  // reshape of a strided input copies; view of its (contiguous) result shares memory
  const Shape s = random_row_shape(11, {{2, 4}, {2, 5}, {1, 3}});
  return gradcheck(
      [s](auto& in) {
        return view(reshape(in[0], {-1}), {s[1], -1});
      },
      {random_input(s, 11)});
}
FLSL_GRADCHECK_ROW(permute_transpose) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) {
        return transpose(permute(in[0], {2, 0, 1}), 0, -1);
      },
      {random_input(random_row_shape(12, {{2, 4}, {2, 4}, {2, 5}}), 12)});
}
FLSL_GRADCHECK_ROW(narrow_select) {
  using namespace autograd;
  // two views of the same input: both add into its gradient, zeros elsewhere
  return gradcheck(
      [](auto& in) {
        return Var(narrow(in[0], 1, 1, 2) * 2.0 + unsqueeze(select(in[0], 1, -1), 1));
      },
      {random_input({3, 5, 4}, 13)});
}
FLSL_GRADCHECK_ROW(concat_split) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) {
        auto parts = split(in[1], {1, 3, 2}, 1);
        return concat({parts[2], in[0], parts[0]}, 1);  // parts[1] unused
      },
      {random_input({3, 2, 4}, 14), random_input({3, 6, 4}, 15)});
}
FLSL_GRADCHECK_ROW(expand_unsqueeze_squeeze) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) {
        return squeeze(expand(unsqueeze(in[0], 0), {3, 4, 1, 5}), 2);
      },
      {random_input({4, 1, 5}, 16)});
}
#endif

}  // namespace flsl
