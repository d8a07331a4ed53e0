// Mixed precision through the graph: Var::to<U> (a dtype cast node in a graph of several element
// types), bf16 attention on the CPU, and the ViT under nn::autocast::bf16 (f32 master weights,
// bf16 branches) against the same model in f64.
#include <doctest/doctest.h>

#include <cmath>
#include <flsl/flsl.hpp>
#include <string>
#include <unordered_set>

using namespace flsl;

namespace {

// bf16 keeps 8 significant bits: one rounding moves a value by at most 2^-9 of it.
constexpr double bf16_unit = 1.0 / 512.0;

std::vector<double> as_doubles(const Tensor<float>& t) { return t.to<double>().to_vector(); }
std::vector<double> as_doubles(const Tensor<bf16>& t) { return t.to<double>().to_vector(); }
std::vector<double> as_doubles(const Tensor<double>& t) { return t.contiguous().to_vector(); }

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}
// max |a - b| / max |b|
double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::abs(a[i] - b[i]));
  return e / std::max(max_abs(b), 1e-300);
}

// Counts the graph's nodes reachable from v (through every element type) whose op is `op`.
template <class T>
int count_ops(const Var<T>& v, std::string_view op) {
  std::unordered_set<const autograd::node_base*> seen;
  std::vector<std::shared_ptr<autograd::node_base>> stack{v.node()};
  int n = 0;
  while (!stack.empty()) {
    auto nd = stack.back();
    stack.pop_back();
    if (!seen.insert(nd.get()).second) continue;
    if (op == nd->op) ++n;
    for (std::size_t i = 0; i < nd->input_count(); ++i) stack.push_back(nd->input(i));
  }
  return n;
}

}  // namespace

TEST_CASE("Var::to converts the value, and the gradient back, as one node between dtypes") {
  auto xt = Tensor<float>::randn({3, 5}, 11);
  Var<float> x(xt, true);
  Var<bf16> xb = x.to<bf16>();
  CHECK(std::string(xb.op()) == "to_dtype");
  CHECK(xb.value().to_vector() == xt.to<bf16>().to_vector());  // round to nearest even, once
  CHECK(x.to<float>().node() == x.node());                     // to its own type: itself

  // y = sum(w * x) through the bf16 node: dx = bf16 gradient converted exactly to f32
  auto wt = Tensor<bf16>::from_vector(std::vector<bf16>(15, bf16(0.3f)), {3, 5});
  Var<bf16> y = sum(Var<bf16>(xb * Var<bf16>(wt)));
  y.backward();
  REQUIRE(x.grad().defined());
  for (float g : x.grad().to_vector()) CHECK(g == float(bf16(0.3f)));
  CHECK(xb.node()->input_count() == 0);  // the graph behind the result is freed across dtypes

  // x reaches the loss directly (f32) and through a bf16 branch: the two gradients add
  Var<float> x2(xt, true);
  Var<float> z = sum(Var<float>(x2 * 2.0 + x2.to<bf16>().to<float>() * 3.0));
  z.backward();
  for (float g : x2.grad().to_vector()) CHECK(g == 5.0f);

  // f64 -> f32 -> f64: the gradient w comes back as f32(w), widened
  auto w64 = Tensor<double>::randn({4, 3}, 6);
  Var<double> a(Tensor<double>::randn({4, 3}, 5), true);
  sum(Var<double>(a.to<float>().to<double>() * Var<double>(w64))).backward();
  CHECK(a.grad().to_vector() == w64.to<float>().to<double>().to_vector());

  // under no_grad the cast records nothing
  {
    no_grad ng;
    CHECK_FALSE(x.to<bf16>().requires_grad());
  }
}

TEST_CASE("bf16 attention on the CPU: bf16 in and out, f32 arithmetic") {
  // qkv exactly representable in bf16, so the f32 op sees the same numbers
  auto qkv_b = Tensor<float>::randn({2, 9, 3 * 16}, 21).to<bf16>();
  Var<bf16> xb(qkv_b, true);
  Var<float> xf(qkv_b.to<float>(), true);
  Var<bf16> ob = multi_head_attention(xb, 2);
  Var<float> of = multi_head_attention(xf, 2);
  // the output is the f32 op's, rounded once
  CHECK(ob.value().to_vector() == of.value().to<bf16>().to_vector());
  auto gy = Tensor<float>::randn({2, 9, 16}, 22).to<bf16>();
  sum(Var<bf16>(ob * Var<bf16>(gy))).backward();
  sum(Var<float>(of * Var<float>(gy.to<float>()))).backward();
  // the backward reads the rounded output (as the cuda kernel): dqkv within a few bf16 roundings
  // of the f32 gradient, relative to its largest element
  const double e = rel_error(as_doubles(xb.grad()), as_doubles(xf.grad()));
  CHECK(e < 4 * bf16_unit);
  CHECK(e > 0);  // the gradient was rounded to bf16
  CHECK(xb.grad().shape() == qkv_b.shape());
}

namespace {
using tiny_cfg = nn::vit_config<32, 2, 2, 8, 4, 32>;
using tiny_vit = nn::vision_transformer<tiny_cfg>;

template <class T>
void copy_values(nn::model<tiny_vit, T>& dst, nn::model<tiny_vit, float>& src) {
  auto d = nn::named_parameters(dst);
  auto s = nn::named_parameters(src);
  REQUIRE(d.size() == s.size());
  for (std::size_t i = 0; i < d.size(); ++i) d[i].second.value().assign(s[i].second.value());
}
}  // namespace

TEST_CASE("the ViT under autocast bf16: bf16 branches, f32 residual stream, f32 gradients") {
  nn::model<tiny_vit, float> m(3);
  nn::model<tiny_vit, double> ref(0);
  copy_values(ref, m);
  // 40 px: a 5 x 5 grid, positions resized; drop path on both blocks' branches
  auto images = Tensor<float>::randn({3, 3, 40, 40}, 31);
  std::vector<nn::block_drop<float, cpu>> drop(2);
  std::vector<nn::block_drop<double, cpu>> drop_ref(2);
  for (int i = 0; i < 2; ++i) {
    drop[std::size_t(i)] = {Tensor<float>::from({1.f, 0.f, 1.f}),
                            Tensor<float>::from({1.f, 1.f, 0.f}), 0.25};
    drop_ref[std::size_t(i)] = {drop[std::size_t(i)].attn.to<double>(),
                                drop[std::size_t(i)].mlp.to<double>(), 0.25};
  }
  auto gy = Tensor<float>::randn({3, 25, 32}, 32);

  Var<float> out = m(images, drop, nn::autocast::bf16);
  Var<double> out_ref = ref(images.to<double>(), drop_ref);
  CHECK(out.shape() == Shape{3, 25, 32});

  // Where the casts are (torch.autocast's placement): per block, the two normalised inputs to
  // bf16, the eight weights and biases to bf16, the two branch outputs back to f32; the patch
  // embedding's weight and bias to bf16 and its output back (the images are a leaf, no node).
  CHECK(count_ops(out, "to_dtype") == 2 * (2 + 8 + 2) + 3);
  CHECK(count_ops(out, "layer_norm") == 2 * 2 + 1);

  // The forward is bf16-accurate, not f32-accurate: each branch rounds its input, the products'
  // outputs, the attention and GELU outputs to bf16 (about ten roundings on a path, relative
  // 2^-9 each, through LayerNorms that rescale by up to 1/std). f32 alone would be ~1e-6.
  const double e_out = rel_error(as_doubles(out.value()), as_doubles(out_ref.value()));
  MESSAGE("autocast output error (relative to the largest |output|): ", e_out);
  CHECK(e_out < 8 * bf16_unit);
  CHECK(e_out > 1e-4);

  sum(Var<float>(out * Var<float>(gy))).backward();
  sum(Var<double>(out_ref * Var<double>(gy.to<double>()))).backward();
  auto p = nn::named_parameters(m);
  auto pr = nn::named_parameters(ref);
  double dot = 0, na = 0, nb = 0, worst = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    REQUIRE_MESSAGE(p[i].second.grad().defined(), p[i].first);
    const auto g = as_doubles(p[i].second.grad());  // an f32 gradient (the master weights')
    const auto gr = as_doubles(pr[i].second.grad());
    const double e = rel_error(g, gr);
    CHECK_MESSAGE(e < 16 * bf16_unit, p[i].first, ": relative gradient error ", e);
    worst = std::max(worst, e);
    for (std::size_t k = 0; k < g.size(); ++k)
      dot += g[k] * gr[k], na += g[k] * g[k], nb += gr[k] * gr[k];
  }
  MESSAGE("worst per-tensor gradient error: ", worst, ", cosine ", dot / std::sqrt(na * nb));
  // all gradients together point where f64's do
  CHECK(dot / std::sqrt(na * nb) > 0.99995);

  // autocast off is the plain forward, bit for bit
  no_grad ng;
  CHECK(m(images, drop, nn::autocast::off).value().to_vector() ==
        m(images, drop).value().to_vector());
  CHECK(nn::parse_autocast("bf16") == nn::autocast::bf16);
  CHECK_THROWS_WITH_AS(nn::parse_autocast("fp16"),
                       doctest::Contains("'fp16' is not one of off, bf16"), flsl::error);
  CHECK_THROWS_WITH_AS(ref(images.to<double>(), {}, nn::autocast::bf16),
                       doctest::Contains("autocast bf16 needs an f32 model, this one is f64"),
                       flsl::error);
}
