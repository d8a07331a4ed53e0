// custom_graph: a network and a loss composed at compile time, trained for a few hundred steps.
//
// The network is a type: a flat list of layer specs whose dimensions are template arguments.
// The loss is written with ordinary operators on Vars; each elementwise chain becomes one graph
// node whose backward is derived at compile time. Run: ./custom_graph
#include <cstdio>
#include <flsl/flsl.hpp>
#include <sstream>

using namespace flsl;

// 2 inputs -> 3 classes, two hidden layers of 64 with exact GELU.
using classifier =
    nn::sequential<nn::linear<2, 64>, nn::gelu, nn::linear<64, 64>, nn::gelu, nn::linear<64, 3>>;

// Three interleaved spirals: N points per class, [3N, 2] coordinates and their labels.
struct spirals {
  Tensor<float> x;
  Tensor<float> onehot;
  std::vector<int> label;
};
spirals make_spirals(index_t n, std::uint64_t seed) {
  spirals s{Tensor<float>::empty({3 * n, 2}), Tensor<float>::zeros({3 * n, 3}), {}};
  Generator g(seed);
  for (index_t c = 0; c < 3; ++c)
    for (index_t i = 0; i < n; ++i) {
      const double r = double(i) / double(n), t = 4.0 * r + 2.094 * double(c) + 0.2 * g.normal();
      s.x(c * n + i, 0) = float(r * std::sin(t));
      s.x(c * n + i, 1) = float(r * std::cos(t));
      s.onehot(c * n + i, c) = 1.0f;
      s.label.push_back(int(c));
    }
  return s;
}

// The custom loss: cross-entropy with label smoothing plus a small penalty on the logits' size.
// log_softmax is a fused op; the rest are elementwise chains, each one graph node.
template <class T>
Var<T> smoothed_cross_entropy(const Var<T>& logits, const Tensor<T>& onehot, double smooth) {
  const double k = double(logits.size(-1));
  Var<T> target(Tensor<T>(onehot * T(1 - smooth) + T(smooth / k)));
  Var<T> nll = mean(sum(Var<T>(-(target * log_softmax(logits, -1))), {-1}));
  Var<T> size_penalty = mean(Var<T>(square(logits)));
  return Var<T>(nll + 1e-3 * size_penalty);
}

int main() {
  const auto data = make_spirals(200, 7);
  nn::model<classifier, float> net(/*seed=*/1);
  std::printf("parameters:\n");
  for (auto& [name, p] : nn::named_parameters(net))
    std::printf("  %-10s %s\n", name.c_str(), (std::ostringstream() << p.shape()).str().c_str());

  // Adam written out with the expression layer: one fused pass per tensor.
  struct moments {
    Tensor<float> m, v;
  };
  std::vector<moments> state;
  net.for_each_parameter(
      [&](const std::string&, Var<float>& p) {
        state.push_back({Tensor<float>::zeros(p.shape()), Tensor<float>::zeros(p.shape())});
      },
      "");

  const float lr = 1e-2f;
  for (int step = 1; step <= 300; ++step) {
    Var<float> loss = smoothed_cross_entropy(net(Var<float>(data.x)), data.onehot, 0.05);
    loss.backward();
    std::size_t i = 0;
    const float bc1 = 1 - std::pow(0.9f, float(step)), bc2 = 1 - std::pow(0.999f, float(step));
    net.for_each_parameter(
        [&](const std::string&, Var<float>& p) {
          auto& [m, v] = state[i++];
          m = 0.9f * m + 0.1f * p.grad();
          v = 0.999f * v + 0.001f * square(p.grad());
          p.value().assign(p.value() - lr * (m / bc1) / (sqrt(v / bc2) + 1e-8f));
          p.zero_grad();
        },
        "");
    if (step % 50 == 0 || step == 1) {
      no_grad ng;
      auto pred = argmax(net(Var<float>(data.x)).value(), -1);
      int right = 0;
      for (std::size_t k = 0; k < data.label.size(); ++k)
        right += pred(index_t(k)) == data.label[k];
      std::printf("step %3d  loss %.4f  accuracy %.1f%%\n", step, double(loss.value().item()),
                  100.0 * right / double(data.label.size()));
    }
  }
  return 0;
}
