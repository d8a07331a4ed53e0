// Finite-difference gradient checks (double precision, central differences) and the registry of
// per-op check rows that the `gradcheck` test runs.
#pragma once

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "var.hpp"

namespace flsl::autograd {

struct gradcheck_result {
  bool ok = true;
  double max_abs_err = 0;  // worst |analytic - numeric| over all checked elements
  double max_rel_err = 0;
  std::string report;  // the worst element of each input that failed
};

struct gradcheck_options {
  double eps = 1e-6;   // central difference step
  double atol = 1e-6;  // pass if |a - n| <= atol + rtol * |n|
  double rtol = 1e-5;
  std::uint64_t seed = 1234;
};

/// Checks the analytic gradient of `f` (inputs -> Var) against central differences of the scalar
/// L = sum(f(inputs) * R) with a fixed random R. `inputs` may be non-contiguous views; their
/// elements are perturbed in place. Only inputs with `wrt[i]` are differentiated.
template <class F>
gradcheck_result gradcheck(F&& f, const std::vector<Tensor<double>>& inputs,
                           std::vector<bool> wrt = {}, gradcheck_options opt = {}) {
  if (wrt.empty()) wrt.assign(inputs.size(), true);
  std::vector<Var<double>> vars;
  for (std::size_t i = 0; i < inputs.size(); ++i) vars.emplace_back(inputs[i], bool(wrt[i]));
  Var<double> out = f(vars);
  const auto r = Tensor<double>::randn(out.shape(), opt.seed);
  auto loss = [&] {
    no_grad ng;
    std::vector<Var<double>> vs;
    for (auto& t : inputs) vs.emplace_back(t, false);
    Var<double> o = f(vs);
    return sum(o.value() * r).item();
  };
  out.backward(r.clone());
  gradcheck_result res;
  std::ostringstream rep;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!wrt[i]) continue;
    const Tensor<double>& x = inputs[i];
    const Tensor<double> g =
        vars[i].grad().defined() ? vars[i].grad() : Tensor<double>::zeros(x.shape());
    if (!(g.shape() == x.shape())) {
      res.ok = false;
      rep << "input " << i << ": gradient shape " << g.shape() << " != " << x.shape() << "\n";
      continue;
    }
    const auto gv = g.to_vector();
    double worst = -1;
    std::string worst_msg;
    x.for_each_offset([&](index_t k, index_t off) {
      double& e = x.data()[off];
      const double keep = e;
      e = keep + opt.eps;
      const double lp = loss();
      e = keep - opt.eps;
      const double lm = loss();
      e = keep;
      const double num = (lp - lm) / (2 * opt.eps);
      const double ana = gv[std::size_t(k)];
      const double err = std::abs(ana - num);
      res.max_abs_err = std::max(res.max_abs_err, err);
      res.max_rel_err = std::max(res.max_rel_err, err / std::max(std::abs(num), 1e-12));
      const double excess = err - (opt.atol + opt.rtol * std::abs(num));
      if (excess > 0 && excess > worst) {
        worst = excess;
        std::ostringstream m;
        m << "input " << i << " " << x.shape() << " element " << k << ": analytic " << ana
          << " numeric " << num << "\n";
        worst_msg = m.str();
      }
    });
    if (worst > 0) {
      res.ok = false;
      rep << worst_msg;
    }
  }
  res.report = rep.str();
  return res;
}

/// A random f64 test input of `shape`; `strided` makes it a non-contiguous view (every other
/// element of the last axis of a wider buffer, with the two leading axes swapped when rank >= 2).
inline Tensor<double> random_input(const Shape& shape, std::uint64_t seed, bool strided = true,
                                   double scale = 1.0) {
  if (!strided || shape.rank() == 0) return Tensor<double>::randn(shape, seed, 0, 0.0, scale);
  Shape wide = shape;
  if (wide.rank() >= 2) std::swap(wide[0], wide[1]);
  wide[wide.rank() - 1] *= 2;
  auto buf = Tensor<double>::randn(wide, seed, 0, 0.0, scale);
  auto v = buf.slice(-1, 0, wide.at(-1), 2);
  return shape.rank() >= 2 ? v.transpose(0, 1) : v;
}

/// One row of the op table: a name and a check that builds its own inputs.
struct gradcheck_row {
  std::string name;
  gradcheck_result (*run)();
};
inline std::vector<gradcheck_row>& gradcheck_rows() {
  static std::vector<gradcheck_row> rows;
  return rows;
}
inline bool register_gradcheck(const char* name, gradcheck_result (*run)()) {
  gradcheck_rows().push_back({name, run});
  return true;
}

}  // namespace flsl::autograd

/// Declares a gradcheck row next to an op (compiled only where FLSL_GRADCHECK_ROWS is defined, i.e.
/// in the gradcheck test):  FLSL_GRADCHECK_ROW(linear) { return gradcheck(...); }
#define FLSL_GRADCHECK_ROW(NAME)                                               \
  inline ::flsl::autograd::gradcheck_result flsl_gradcheck_row_##NAME();       \
  inline const bool flsl_gradcheck_registered_##NAME =                         \
      ::flsl::autograd::register_gradcheck(#NAME, &flsl_gradcheck_row_##NAME); \
  inline ::flsl::autograd::gradcheck_result flsl_gradcheck_row_##NAME()
