// The op table: every differentiable op's gradcheck row (declared next to the op) must pass.
#define FLSL_GRADCHECK_ROWS
#include <doctest/doctest.h>

#include <flsl/flsl.hpp>

TEST_CASE("every differentiable op matches central differences in f64") {
  const auto& rows = flsl::autograd::gradcheck_rows();
  REQUIRE(rows.size() >= 8);
  for (const auto& row : rows) {
    CAPTURE(row.name);
    const auto r = row.run();
    INFO(r.report);
    CHECK_MESSAGE(r.ok, row.name, ": max abs err ", r.max_abs_err, ", max rel err ", r.max_rel_err);
    MESSAGE(row.name, ": max abs err ", r.max_abs_err);
  }
}

TEST_CASE("gradcheck catches a wrong backward") {
  using namespace flsl;
  // an op whose backward forgets a factor 2
  auto bad = [](std::vector<Var<double>>& in) {
    auto x = in[0];
    auto back = [](autograd::node<double, cpu>& out) { out.inputs[0]->accumulate(out.grad); };
    return Var<double>::make_result(Tensor<double>(x.value() * 2.0), "bad", back, x);
  };
  const auto r = autograd::gradcheck(bad, {autograd::random_input({3}, 1)});
  CHECK_FALSE(r.ok);
  CHECK(r.max_abs_err > 0.1);
}
