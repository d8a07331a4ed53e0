// LayerNorm over the last axis on Vars: fused row kernels for the forward (mean, rstd, affine) and
// the backward (dx, and dweight/dbias summed deterministically over rows).
#pragma once

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <cmath>
#include <vector>

#include "reduce.hpp"

namespace flsl {

namespace detail {

/// What the forward saves per row for the backward. The mean is m0 + shift: m0 a first estimate,
/// shift the mean of the deviations from it. x - mean is evaluated as (x - m0) - shift, where
/// x - m0 is exact for x near m0: a float mean rounded to one number would cost a row far from
/// zero (|x| ~ 1000) about ulp(1000) = 6e-5 of absolute error in xhat.
template <class C>
struct layer_norm_row_stats {
  C m0, shift, rstd;
  FLSL_INLINE C xhat(C x) const { return ((x - m0) - shift) * rstd; }
};

/// Rows [r0, r1) of y = (x - mean) * rstd * w + b over rows of length d, rstd = 1 / sqrt(var +
/// eps) with the biased variance. Two passes over the row (in cache), the corrected two-pass
/// algorithm: m0 = mean(x), then s1 = sum(x - m0) and s2 = sum((x - m0)^2) give
/// mean = m0 + s1 / d and var = (s2 - s1^2 / d) / d, stable for rows far from zero. x, y
/// contiguous; w, b of length d (ones / zeros stand in for a missing affine parameter).
template <class T, class C>
void layer_norm_forward_rows(const T* x, const T* w, const T* b, T* y,
                             layer_norm_row_stats<C>* stats, index_t r0, index_t r1, index_t d,
                             double eps) {
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * d;
    T* __restrict yr = y + r * d;
    const C m0 = row_sum<C>(d, [&](index_t j) { return convert<C>(xr[j]); }) / C(d);
    const C s1 = row_sum<C>(d, [&](index_t j) { return convert<C>(xr[j]) - m0; });
    const C s2 = row_sum<C>(d, [&](index_t j) {
      const C c = convert<C>(xr[j]) - m0;
      return c * c;
    });
    const double var =
        std::max(0.0, (double(s2) - double(s1) * double(s1) / double(d)) / double(d));
    const layer_norm_row_stats<C> st{m0, s1 / C(d), C(1.0 / std::sqrt(var + eps))};
    for (index_t j = 0; j < d; ++j)
      yr[j] = convert<T>(st.xhat(convert<C>(xr[j])) * convert<C>(w[j]) + convert<C>(b[j]));
    stats[r] = st;
  }
}

/// Rows [r0, r1) of the backward, with xhat = (x - mean) * rstd and gy = g * w:
///   dx = rstd * (gy - mean_j(gy) - xhat * mean_j(gy * xhat))   written, or added when `add`
///   dw += g * xhat,  db += g                                    into this chunk's partials
/// dx, dw, db may each be null (that gradient is not needed).
template <class T, class C>
void layer_norm_backward_rows(const T* x, const T* w, const T* g,
                              const layer_norm_row_stats<C>* stats, T* dx, bool add, C* dw, C* db,
                              index_t r0, index_t r1, index_t d) {
  for (index_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * d;
    const T* __restrict gr = g + r * d;
    const layer_norm_row_stats<C> st = stats[r];
    const auto xhat = [&](index_t j) { return st.xhat(convert<C>(xr[j])); };
    if (dx) {
      const auto gy = [&](index_t j) { return convert<C>(gr[j]) * convert<C>(w[j]); };
      const C mean_gy = row_sum<C>(d, gy) / C(d);
      const C mean_gyx = row_sum<C>(d, [&](index_t j) { return gy(j) * xhat(j); }) / C(d);
      const C rs = st.rstd;
      T* __restrict dxr = dx + r * d;
      if (add) {
        for (index_t j = 0; j < d; ++j)
          dxr[j] = convert<T>(convert<C>(dxr[j]) + rs * (gy(j) - mean_gy - xhat(j) * mean_gyx));
      } else {
        for (index_t j = 0; j < d; ++j)
          dxr[j] = convert<T>(rs * (gy(j) - mean_gy - xhat(j) * mean_gyx));
      }
    }
    if (dw)
      for (index_t j = 0; j < d; ++j) dw[j] += convert<C>(gr[j]) * xhat(j);
    if (db)
      for (index_t j = 0; j < d; ++j) db[j] += convert<C>(gr[j]);
  }
}

/// Rows per chunk of the weight/bias reduction: fixed by the row count alone (at least 32 rows,
/// at most 256 chunks), so the summation order, and the result, do not depend on the threads.
inline index_t layer_norm_chunk_rows(index_t rows) {
  return std::max<index_t>(32, (rows + 255) / 256);
}

/// Sums `chunks` partial rows of length d in chunk order (in double) into a new tensor [d].
template <class T, class C>
Tensor<T, cpu> sum_chunk_partials(const std::vector<C>& part, index_t chunks, index_t d) {
  auto out = Tensor<T, cpu>::empty({d});
  std::vector<double> acc(std::size_t(d), 0.0);
  for (index_t c = 0; c < chunks; ++c)
    for (index_t j = 0; j < d; ++j) acc[std::size_t(j)] += double(part[std::size_t(c * d + j)]);
  for (index_t j = 0; j < d; ++j) out.data()[j] = convert<T>(acc[std::size_t(j)]);
  return out;
}

}  // namespace detail

// The CUDA kernels of the cuda path below, defined in flsl/backend/cuda/kernels/layer_norm.cuh
// (included by <flsl/backend/cuda.cuh>, nvcc only); declared here so that this header stays free
// of CUDA headers. Only a Var<T, cuda> instantiates a call to them.
namespace cuda_ops {
template <class T>
void layer_norm_forward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& weight,
                        const Tensor<T, cuda>& bias, double eps, const Tensor<T, cuda>& y,
                        const Tensor<compute_t<T>, cuda>& mean,
                        const Tensor<compute_t<T>, cuda>& rstd);
template <class T>
void layer_norm_backward(const Tensor<T, cuda>& x, const Tensor<T, cuda>& weight,
                         const Tensor<compute_t<T>, cuda>& mean,
                         const Tensor<compute_t<T>, cuda>& rstd, const Tensor<T, cuda>& grad_y,
                         const Tensor<T, cuda>& dx, bool accumulate, const Tensor<T, cuda>& dweight,
                         const Tensor<T, cuda>& dbias);
}  // namespace cuda_ops

namespace detail {

/// The cuda path of layer_norm (arguments already checked): the same saved statistics as the CPU
/// (mean in two parts, rstd), computed by cuda_ops::layer_norm_forward; the backward writes dx
/// straight into the input's gradient when it is new or contiguous (adding to it otherwise through
/// node::accumulate), and dweight / dbias into fresh tensors that the parameters take over.
template <class T>
Var<T, cuda> layer_norm_cuda(const Var<T, cuda>& x, const Var<T, cuda>& weight,
                             const Var<T, cuda>& bias, double eps) {
  using C = compute_t<T>;
  using Dev = cuda;
  const index_t d = x.size(-1), rows = x.numel() / d;
  const Tensor<T, Dev> xc = x.value().contiguous();  // [rows, d]
  const Tensor<T, Dev> w = weight.defined() ? weight.value().contiguous() : Tensor<T, Dev>();
  const Tensor<T, Dev> b = bias.defined() ? bias.value().contiguous() : Tensor<T, Dev>();
  auto y = Tensor<T, Dev>::empty(x.shape());
  auto mean = Tensor<C, Dev>::empty({rows, 2});  // (m0, shift) per row
  auto rstd = Tensor<C, Dev>::empty({rows});
  cuda_ops::layer_norm_forward(xc, w, b, eps, y, mean, rstd);

  const bool has_w = weight.defined(), has_b = bias.defined();
  auto backward = [xc, w, mean, rstd, d, has_w, has_b](autograd::node<T, Dev>& out) {
    const Tensor<T, Dev> g = out.grad.contiguous();  // [.., d]
    auto& nx = *out.inputs[0];
    autograd::node<T, Dev>* nw = has_w ? out.inputs[1].get() : nullptr;
    autograd::node<T, Dev>* nb = has_b ? out.inputs[has_w ? 2 : 1].get() : nullptr;
    const Tensor<T, Dev> dw =
        nw && nw->requires_grad ? Tensor<T, Dev>::empty({d}) : Tensor<T, Dev>();
    const Tensor<T, Dev> db =
        nb && nb->requires_grad ? Tensor<T, Dev>::empty({d}) : Tensor<T, Dev>();
    Tensor<T, Dev> dx, fresh;  // dx: where the kernel writes; fresh: a new tensor to accumulate
    bool add = false;
    if (nx.requires_grad) {
      if (!nx.grad.defined()) {
        nx.grad = Tensor<T, Dev>::empty(nx.value.shape());
        dx = nx.grad;
      } else if (nx.grad.is_contiguous()) {
        dx = nx.grad;
        add = true;
      } else {
        fresh = Tensor<T, Dev>::empty(nx.value.shape());
        dx = fresh;
      }
    }
    cuda_ops::layer_norm_backward(xc, w, mean, rstd, g, dx, add, dw, db);
    if (fresh.defined()) nx.accumulate(std::move(fresh));
    if (dw.defined()) nw->accumulate(dw);
    if (db.defined()) nb->accumulate(db);
  };
  std::vector<Var<T, Dev>> ins{x};
  if (has_w) ins.push_back(weight);
  if (has_b) ins.push_back(bias);
  return Var<T, Dev>::make_result_n(std::move(y), "layer_norm", std::move(backward), ins);
}

}  // namespace detail

/// LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * weight + bias, for x [..., D]
/// and weight, bias [D]; either may be an undefined Var (no scale / no shift). As
/// torch.nn.functional.layer_norm (biased variance).
template <class T, class D>
Var<T, D> layer_norm(const Var<T, D>& x, const Var<T, D>& weight = Var<T, D>(),
                     const Var<T, D>& bias = Var<T, D>(), double eps = 1e-5) {
  FLSL_CHECK(x.rank() >= 1 && x.size(-1) > 0, "layer_norm: input of shape ", x.shape(),
             " has no last axis to normalise");
  const index_t d = x.size(-1), rows = x.numel() / d;
  for (const Var<T, D>* p : {&weight, &bias})
    FLSL_CHECK(!p->defined() || p->shape() == Shape{d},
               "layer_norm: ", p == &weight ? "weight" : "bias", " of shape ", p->shape(),
               " for input of shape ", x.shape(), " (expected [", d, "])");
  if constexpr (!std::is_same_v<D, cpu>) {
    return detail::layer_norm_cuda(x, weight, bias, eps);
  } else {
    using C = compute_t<T>;
    const Tensor<T, D> xc = x.value().contiguous();  // [rows, d]
    const Tensor<T, D> w = weight.defined() ? weight.value().contiguous() : Tensor<T, D>::ones({d});
    const Tensor<T, D> b = bias.defined() ? bias.value().contiguous() : Tensor<T, D>::zeros({d});
    auto y = Tensor<T, D>::empty(x.shape());
    std::vector<detail::layer_norm_row_stats<C>> stats(static_cast<std::size_t>(rows));  // [rows]
    detail::parallel_rows(rows, d, [&](index_t r0, index_t r1) {
      detail::layer_norm_forward_rows(xc.data(), w.data(), b.data(), y.data(), stats.data(), r0, r1,
                                      d, eps);
    });

    const bool has_w = weight.defined(), has_b = bias.defined();
    auto backward = [xc, w, stats = std::move(stats), d, rows, has_w,
                     has_b](autograd::node<T, D>& out) {
      const Tensor<T, D> g = out.grad.contiguous();  // [rows, d]
      auto& nx = *out.inputs[0];
      autograd::node<T, D>* nw = has_w ? out.inputs[1].get() : nullptr;
      autograd::node<T, D>* nb = has_b ? out.inputs[has_w ? 2 : 1].get() : nullptr;
      const bool need_w = nw && nw->requires_grad, need_b = nb && nb->requires_grad;
      const index_t chunk = detail::layer_norm_chunk_rows(rows);
      const index_t chunks = (rows + chunk - 1) / chunk;
      std::vector<C> dw(std::size_t(need_w ? chunks * d : 0), C(0));  // [chunks, d]
      std::vector<C> db(std::size_t(need_b ? chunks * d : 0), C(0));  // [chunks, d]
      const auto run = [&](T* dx, bool add) {
        tbb::parallel_for(
            tbb::blocked_range<index_t>(0, chunks, 1), [&](const tbb::blocked_range<index_t>& cr) {
              for (index_t c = cr.begin(); c < cr.end(); ++c)
                detail::layer_norm_backward_rows(xc.data(), w.data(), g.data(), stats.data(), dx,
                                                 add, need_w ? dw.data() + c * d : nullptr,
                                                 need_b ? db.data() + c * d : nullptr, c * chunk,
                                                 std::min(rows, (c + 1) * chunk), d);
            });
      };
      if (nx.requires_grad)
        detail::accumulate_rows_grad(nx, nx.value.shape(), -1, run);
      else
        run(nullptr, false);
      if (need_w) nw->accumulate(detail::sum_chunk_partials<T>(dw, chunks, d));
      if (need_b) nb->accumulate(detail::sum_chunk_partials<T>(db, chunks, d));
    };
    std::vector<Var<T, D>> ins{x};
    if (has_w) ins.push_back(weight);
    if (has_b) ins.push_back(bias);
    return Var<T, D>::make_result_n(std::move(y), "layer_norm", std::move(backward), ins);
  }
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(layer_norm_affine) {
  using namespace autograd;
  const Shape s = random_row_shape(31, {{2, 3}, {2, 4}, {3, 9}});
  return gradcheck([](auto& in) { return layer_norm(in[0], in[1], in[2], 1e-5); },
                   {random_input(s, 31), random_input({s[2]}, 32), random_input({s[2]}, 33)});
}
FLSL_GRADCHECK_ROW(layer_norm_plain) {
  using namespace autograd;
  auto x = random_input(random_row_shape(34, {{3, 6}, {4, 9}}), 34, true, 3.0);
  x.assign(x + 5.0);  // far from zero: the mean matters
  return gradcheck([](auto& in) { return layer_norm(in[0], Var<double>(), Var<double>(), 1e-3); },
                   {x});
}
FLSL_GRADCHECK_ROW(layer_norm_weight_only_input_reused) {
  using namespace autograd;
  // x also feeds the product: layer_norm's backward adds into a gradient that already exists
  return gradcheck([](auto& in) { return Var(layer_norm(in[0], in[1]) * in[0]); },
                   {random_input({4, 7}, 35), random_input({7}, 36)});
}
#endif

}  // namespace flsl
