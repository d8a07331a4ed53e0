// The graph itself: shared subexpressions, a leaf used twice, no_grad, detach, accumulation over
// two backward passes, memory released after backward, fused elementwise nodes.
#include <doctest/doctest.h>

#include <flsl/flsl.hpp>

using namespace flsl;

namespace {
Var<double> leaf(std::initializer_list<double> v, bool grad = true) {
  return Var<double>(Tensor<double>::from(v), grad);
}
}  // namespace

TEST_CASE("a leaf used twice gets both contributions") {
  auto x = leaf({1.0, 2.0, 3.0});
  Var<double> y = x * x + x;  // dy/dx = 2x + 1
  auto s = y * 1.0;
  Var<double> z = s;
  z.backward(Tensor<double>::ones({3}));
  CHECK(x.grad().to_vector() == std::vector<double>{3.0, 5.0, 7.0});
}

TEST_CASE("an elementwise chain is one graph node") {
  auto a = leaf({1.0, 2.0}), b = leaf({3.0, 4.0}), c = leaf({0.5, -1.0});
  Var<double> y = a * b + exp(c) - b / 2.0;
  CHECK(std::string(y.op()) == "elementwise");
  CHECK(y.node()->inputs.size() == 4);  // leaves a, b, c, b: b appears twice
}

TEST_CASE("shared subexpressions: gradients through two paths add up") {
  auto x = leaf({2.0});
  Var<double> h = x * 3.0;  // one node used twice below
  Var<double> u = h * h;    // 9x^2
  Var<double> v = h + 1.0;  // 3x + 1
  Var<double> z = u + v;    // dz/dx = 18x + 3 = 39
  z.backward();
  CHECK(x.grad().item() == doctest::Approx(39.0));
}

TEST_CASE("no_grad records nothing and detach cuts the graph") {
  auto x = leaf({1.0, 2.0});
  {
    no_grad ng;
    Var<double> y = x * 2.0;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.is_leaf());
  }
  CHECK(grad_mode());
  Var<double> y = x * x;
  Var<double> z = y.detach() * x;  // d/dx = y = x^2 (detached factor)
  z.backward(Tensor<double>::ones({2}));
  CHECK(x.grad().to_vector() == std::vector<double>{1.0, 4.0});
  auto c = leaf({1.0}, false);
  Var<double> k = c * 2.0;
  CHECK_FALSE(k.requires_grad());
  CHECK_THROWS_WITH_AS(k.backward(), doctest::Contains("does not require a gradient"), flsl::error);
}

TEST_CASE("gradients accumulate over two backward passes until zero_grad") {
  auto w = leaf({1.5});
  for (int i = 0; i < 2; ++i) {
    Var<double> l = w * w;
    l.backward();
  }
  CHECK(w.grad().item() == doctest::Approx(6.0));
  w.zero_grad();
  CHECK_FALSE(w.grad().defined());
  Var<double> l = w * 4.0;
  l.backward();
  CHECK(w.grad().item() == 4.0);
}

TEST_CASE("backward frees the graph and the tensors it saved") {
  auto x = Var<double>(Tensor<double>::randn({256, 256}, 1), true);
  auto w = Var<double>(Tensor<double>::randn({256, 256}, 2), true);
  const long long before = storage_stats::bytes_live().load();
  Var<double> y = linear(x, w);
  Var<double> z = linear(y, w);
  Var<double> s = z * z;
  CHECK(storage_stats::bytes_live().load() > before);
  s.backward(Tensor<double>::ones(s.shape()));
  CHECK(s.node()->inputs.empty());
  CHECK(!s.node()->backward);
  y = Var<double>();
  z = Var<double>();
  s = Var<double>();
  // only the two leaf gradients remain
  CHECK(storage_stats::bytes_live().load() - before == 2 * 256 * 256 * 8);
}

TEST_CASE("backward needs a scalar or a seed of the right shape") {
  auto x = leaf({1.0, 2.0});
  Var<double> y = x * 2.0;
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("one-element value, got shape [2]"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(y.backward(Tensor<double>::ones({3})),
                       doctest::Contains("seed of shape [3] for a value of shape [2]"),
                       flsl::error);
}

TEST_CASE("broadcast inputs receive gradients summed over the broadcast axes") {
  auto a = Var<double>(Tensor<double>::ones({2, 3}), true);
  auto b = Var<double>(Tensor<double>::from({1.0, 2.0, 3.0}), true);
  Var<double> y = a * b;
  y.backward(Tensor<double>::ones({2, 3}));
  CHECK(b.grad().to_vector() == std::vector<double>{2.0, 2.0, 2.0});
  CHECK(a.grad().to_vector() == std::vector<double>{1, 2, 3, 1, 2, 3});
}

namespace {
std::vector<std::string>& traced() {
  static std::vector<std::string> v;
  return v;
}
void record_op(const char* op, bool backward) {
  traced().push_back(std::string(op) + (backward ? " bwd" : ""));
}
}  // namespace

TEST_CASE(
    "the op trace hook sees each op's forward when it is made and its backward after it ran") {
  traced().clear();
  detail::op_trace_hook() = &record_op;
  auto x = Var<double>(Tensor<double>::randn({4, 3}, 1), true);
  auto w = Var<double>(Tensor<double>::randn({2, 3}, 2), true);
  Var<double> y = linear(x, w);           // "linear"
  Var<float> f = y.to<float>();           // "to_dtype"
  Var<float> s = sum(Var<float>(f * f));  // "elementwise", then "sum"
  s.backward();                           // from the output back to linear
  detail::op_trace_hook() = nullptr;
  Var<double> untraced = x * 2.0;  // no hook: nothing recorded
  CHECK(traced() == std::vector<std::string>{"linear", "to_dtype", "elementwise", "sum", "sum bwd",
                                             "elementwise bwd", "to_dtype bwd", "linear bwd"});
  CHECK(x.grad().defined());
}
