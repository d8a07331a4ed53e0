// Patch embedding of a ViT: a p x p convolution with stride p, computed as unfold + one GEMM.
#pragma once

#include <algorithm>

#include "../elementwise.hpp"
#include "../gradcheck.hpp"

namespace flsl {

namespace detail {

/// Calls f(pixels, pixel_stride, patch_row) for every run of p pixels img[b, c, y p + i, x p + j],
/// j = 0..p-1, and its place in the unfolded matrix cols[(b Gh + y) Gw + x, (c p + i) p + j]
/// (one row per token, columns in the weight's (c, i, j) order). Parallel over (b, y).
template <class T, class F>
void for_each_patch_run(const Tensor<T, cpu>& img, index_t p, const Tensor<T, cpu>& cols, F&& f) {
  const index_t nb = img.size(0), nc = img.size(1), gh = img.size(2) / p, gw = img.size(3) / p;
  const index_t sb = img.stride(0), sc = img.stride(1), sy = img.stride(2), sx = img.stride(3);
  const index_t ld = cols.stride(0);
  T* const pixels = img.data();
  T* const rows = cols.data();
  parallel_rows(nb * gh, gw * nc * p * p, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const index_t b = r / gh, y = r % gh;
      for (index_t x = 0; x < gw; ++x) {
        T* const patch = rows + (r * gw + x) * ld;
        for (index_t c = 0; c < nc; ++c)
          for (index_t i = 0; i < p; ++i)
            f(pixels + b * sb + c * sc + (y * p + i) * sy + x * p * sx, sx,
              patch + (c * p + i) * p);
      }
    }
  });
}

/// cols [B Gh Gw, C p p] = the patches of img [B, C, H, W] (im2col for stride = kernel = p).
template <class T>
void patch_unfold(const Tensor<T, cpu>& img, index_t p, const Tensor<T, cpu>& cols) {
  for_each_patch_run(img, p, cols, [p](const T* px, index_t sx, T* out) {
    if (sx == 1)
      std::copy_n(px, p, out);
    else
      for (index_t j = 0; j < p; ++j) out[j] = px[j * sx];
  });
}
/// The inverse of patch_unfold: img = fold(cols), or img += fold(cols) when `add`. The patches do
/// not overlap and tile the image, so every pixel is written exactly once.
template <class T>
void patch_fold(const Tensor<T, cpu>& cols, index_t p, const Tensor<T, cpu>& img, bool add) {
  for_each_patch_run(img, p, cols, [p, add](T* px, index_t sx, const T* in) {
    if (add) {
      for (index_t j = 0; j < p; ++j)
        px[j * sx] = convert<T>(convert<compute_t<T>>(px[j * sx]) + convert<compute_t<T>>(in[j]));
    } else if (sx == 1) {
      std::copy_n(in, p, px);
    } else {
      for (index_t j = 0; j < p; ++j) px[j * sx] = in[j];
    }
  });
}

/// img [B, C, H, W] viewed as [B, Gh, Gw, C, p, p] (split H and W, then permute; no copy): the
/// element of cols [B Gh Gw, C p p] viewed with that shape that patch_unfold would write.
template <class T>
Tensor<T, cuda> patch_grid_view(const Tensor<T, cuda>& img, index_t p) {
  const index_t nb = img.size(0), nc = img.size(1), gh = img.size(2) / p, gw = img.size(3) / p;
  return img.view({nb, nc, gh, p, gw, p}).permute({0, 2, 4, 1, 3, 5});
}
/// The cuda versions of patch_unfold / patch_fold: the same mapping as one strided copy (one
/// generated expression kernel, flsl/backend/cuda/elementwise.cuh) between the images' grid view
/// and cols viewed as [B, Gh, Gw, C, p, p]. Every pixel is read or written exactly once.
template <class T>
void patch_unfold(const Tensor<T, cuda>& img, index_t p, const Tensor<T, cuda>& cols) {
  const Tensor<T, cuda> v = patch_grid_view(img, p);
  cols.view(v.shape()).assign(v);
}
template <class T>
void patch_fold(const Tensor<T, cuda>& cols, index_t p, const Tensor<T, cuda>& img, bool add) {
  const Tensor<T, cuda> v = patch_grid_view(img, p);
  const Tensor<T, cuda> c = cols.view(v.shape());
  if (add)
    v.assign(v + c);
  else
    v.assign(c);
}

}  // namespace detail

/// Patch embedding: images [B, C, H, W], weight [D, C, p, p], bias [D] (an undefined Var: none)
/// -> tokens [B, (H/p) (W/p), D], token index y (W/p) + x:
///   out[b, y W/p + x, d] = bias[d] + sum_{c,i,j} weight[d, c, i, j] images[b, c, y p + i, x p + j]
/// The forward unfolds the images into cols [B L, C p p] (kept for d weight) and runs one GEMM
/// cols weight^T; the backward gives d weight = dout^T cols, d bias = column sums of dout, and
/// d images = fold(dout weight) only when the images require a gradient.
template <class T, class D>
Var<T, D> patch_embed(const Var<T, D>& images, const Var<T, D>& weight, const Var<T, D>& bias,
                      index_t p) {
  FLSL_CHECK(images.rank() == 4 && weight.rank() == 4, "patch_embed: needs images [B, C, H, W] ",
             "and weight [D, C, p, p], got ", images.shape(), " and ", weight.shape());
  FLSL_CHECK(p > 0, "patch_embed: patch size ", p, " is not positive");
  const index_t nb = images.size(0), nc = images.size(1), h = images.size(2), w = images.size(3);
  const index_t d = weight.size(0), k = nc * p * p;
  const Shape want_weight{d, nc, p, p};
  FLSL_CHECK(weight.shape() == want_weight, "patch_embed: weight of shape ", weight.shape(),
             " for patch size ", p, " and images ", images.shape(), " (expected [D, ", nc, ", ", p,
             ", ", p, "])");
  FLSL_CHECK(h % p == 0 && w % p == 0, "patch_embed: images of shape ", images.shape(),
             " are not divisible into ", p, " x ", p, " patches (H and W must be multiples of ", p,
             ")");
  FLSL_CHECK(!bias.defined() || bias.shape() == Shape{d}, "patch_embed: bias of shape ",
             bias.defined() ? bias.shape() : Shape{}, " for a weight of shape ", weight.shape());
  const index_t tokens = (h / p) * (w / p);
  auto cols = Tensor<T, D>::empty({nb * tokens, k});  // [B L, C p p]
  detail::patch_unfold(images.value(), p, cols);
  const Tensor<T, D> w2 = weight.value().reshape_or_copy({d, k});  // [D, C p p]
  auto y = Tensor<T, D>::empty({nb * tokens, d});                  // [B L, D]
  if (bias.defined()) {
    if constexpr (std::is_same_v<D, cpu>) {
      y.assign(bias.value());
      matmul_into(y, cols, w2.t(), 1.0, 1.0);
    } else {
      matmul_bias_into(y, cols, w2.t(), bias.value());  // cuBLASLt's bias epilogue
    }
  } else {
    matmul_into(y, cols, w2.t());
  }
  auto backward = [cols, w2, p, has_bias = bias.defined()](autograd::node<T, D>& node) {
    const Tensor<T, D> g = node.grad.reshape_or_copy({-1, w2.size(0)});  // [B L, D]
    auto& ni = *node.inputs[0];
    auto& nw = *node.inputs[1];
    if (nw.requires_grad) {
      const bool add = nw.grad.defined();
      if (!add) nw.grad = Tensor<T, D>::empty(nw.value.shape());
      matmul_into(nw.grad.view(w2.shape()), g.t(), cols, 1.0, add ? 1.0 : 0.0);
    }
    if (has_bias && node.inputs[2]->requires_grad) node.inputs[2]->accumulate(sum(g, {0}));
    if (ni.requires_grad) {
      const bool add = ni.grad.defined();
      if (!add) ni.grad = Tensor<T, D>::empty(ni.value.shape());
      detail::patch_fold(matmul(g, w2), p, ni.grad, add);  // fold([B L, C p p])
    }
  };
  const Tensor<T, D> out = y.view({nb, tokens, d});
  if (bias.defined())
    return Var<T, D>::make_result(out, "patch_embed", backward, images, weight, bias);
  return Var<T, D>::make_result(out, "patch_embed", backward, images, weight);
}

/// Patch embedding without a bias.
template <class T, class D>
Var<T, D> patch_embed(const Var<T, D>& images, const Var<T, D>& weight, index_t p) {
  return patch_embed(images, weight, Var<T, D>(), p);
}

#ifdef FLSL_GRADCHECK_ROWS
FLSL_GRADCHECK_ROW(patch_embed) {
  using namespace autograd;
  return gradcheck(
      [](auto& in) { return patch_embed(in[0], in[1], in[2], 2); },
      {random_input({2, 2, 4, 6}, 201), random_input({3, 2, 2, 2}, 202), random_input({3}, 203)});
}
FLSL_GRADCHECK_ROW(patch_embed_constant_images_no_bias) {
  using namespace autograd;
  return gradcheck([](auto& in) { return patch_embed(in[0], in[1], 3); },
                   {random_input({1, 3, 6, 3}, 204, false), random_input({2, 3, 3, 3}, 205)},
                   {false, true});
}
#endif

}  // namespace flsl
