// Modules composed at compile time: forward values, parameter names, gradients, training.
#include <doctest/doctest.h>

#include <flsl/flsl.hpp>

using namespace flsl;

using mlp = nn::sequential<nn::linear<3, 8>, nn::gelu, nn::linear<8, 2>>;

TEST_CASE("sequential applies its layers in order") {
  nn::model<mlp, double> net(7);
  auto x = Var<double>(Tensor<double>::randn({5, 3}, 1));
  auto y = net(x);
  CHECK(y.shape() == Shape{5, 2});
  auto& l0 = net.get<0>();
  auto& l2 = net.get<2>();
  Tensor<double> h = gelu(matmul(x.value(), l0.weight.value().t()) + l0.bias.value());
  Tensor<double> want = matmul(h, l2.weight.value().t()) + l2.bias.value();
  for (index_t i = 0; i < 5; ++i)
    for (index_t j = 0; j < 2; ++j)
      CHECK(y.value()(i, j) == doctest::Approx(want(i, j)).epsilon(1e-14));
}

TEST_CASE("parameters are enumerable by name, in order, like a torch state_dict") {
  nn::model<mlp, float> net(1);
  std::vector<std::string> names;
  std::vector<Shape> shapes;
  for (auto& [name, v] : nn::named_parameters(net)) {
    names.push_back(name);
    shapes.push_back(v.shape());
  }
  CHECK(names == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  CHECK(shapes == std::vector<Shape>{{8, 3}, {8}, {2, 8}, {2}});
  CHECK(nn::parameter_count(net) == 8 * 3 + 8 + 2 * 8 + 2);
}

TEST_CASE("initialisation is trunc-normal(0.02) weights, zero biases, reproducible from the seed") {
  nn::model<nn::linear<256, 128>, double> a(42), b(42), c(43);
  CHECK(a.weight.value().to_vector() == b.weight.value().to_vector());
  CHECK(a.weight.value().to_vector() != c.weight.value().to_vector());
  CHECK(std::sqrt(var(a.weight.value()).item()) == doctest::Approx(0.02 * 0.8796).epsilon(0.03));
  CHECK(max(abs(a.weight.value())).item() <= 2.0);
  CHECK(sum(abs(a.bias.value())).item() == 0.0);
}

TEST_CASE("module gradients match finite differences of the whole network") {
  nn::model<mlp, double> net(3);
  auto x = Var<double>(Tensor<double>::randn({4, 3}, 2));
  auto target = Tensor<double>::randn({4, 2}, 5);
  auto loss_of = [&] {
    Var<double> d = net(x) - Var<double>(target);
    return Var<double>(d * d);
  };
  auto l = loss_of();
  l.backward(Tensor<double>::ones(l.shape()));
  auto& w = net.get<0>().weight;
  const auto g = w.grad().clone();
  for (index_t i : {0, 5, 17}) {
    double& e = w.value().data()[i];
    const double keep = e;
    no_grad ng;
    e = keep + 1e-6;
    const double lp = sum(loss_of().value()).item();
    e = keep - 1e-6;
    const double lm = sum(loss_of().value()).item();
    e = keep;
    CHECK(g.data()[i] == doctest::Approx((lp - lm) / 2e-6).epsilon(1e-6));
  }
}

TEST_CASE("a small network trains: plain SGD fits a smooth function") {
  using net_t = nn::sequential<nn::linear<1, 32>, nn::gelu, nn::linear<32, 1>>;
  nn::model<net_t, float> net(11);
  // scale up the init so the tiny network is expressive from the start
  net.get<0>().weight.value().assign(net.get<0>().weight.value() * 50.0f);
  auto xs = Tensor<float>::arange(-1.0, 1.0, 1.0 / 32).view({-1, 1});
  Tensor<float> ys = sin(xs * 3.0f);
  auto mse = [&] {
    Var<float> d = net(Var<float>(xs)) - Var<float>(ys);
    return mean(Tensor<float>(square(d.value()))).item();
  };
  const float before = mse();
  for (int step = 0; step < 300; ++step) {
    Var<float> d = net(Var<float>(xs)) - Var<float>(ys);
    Var<float> sq = d * d;
    sq.backward(Tensor<float>::full(sq.shape(), 2.0f / float(sq.numel())));
    net.for_each_parameter(
        [](const std::string&, Var<float>& p) {
          p.value().assign(p.value() - 0.1f * p.grad());
          p.zero_grad();
        },
        "");
  }
  const float after = mse();
  CHECK(after < 0.1f * before);
}
