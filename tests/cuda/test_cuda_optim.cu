// The parameter update on cuda (optim/adamw.hpp through the fused multi-tensor kernels of
// backend/cuda/kernels/optim.cuh) against the CPU path: the same parameter list on both devices
// from identical initial values and identical gradients, several steps of last-layer freezing,
// per-tensor clipping, AdamW (two weight-decay groups, per-parameter step counts) and the EMA
// teacher update, comparing after every step the norms, the clipped gradients, the parameters,
// the moments, the step counts and the teacher. The list has tensors of rank 0 to 3, sizes that
// are not multiples of the chunk (16384 elements) and, but for 19200, not of the block (256),
// tensors of several chunks (19200, 40000 and 60000 elements), a rank-1 bias, a parameter that
// never has a gradient, the head's last layer (gradient dropped during the first epoch, so its step
// count lags) and a gradient given as a transposed (strided) view. Without a device each case
// prints "skipped: no CUDA device" and passes; test_cuda_main.cpp then exits 77 (CTest: Skipped).
//
// Tolerances. The kernels round every operation of the CPU expressions as written (the _rn
// intrinsics, no FMA contraction); sqrt and division are correctly rounded on both devices, and
// the scalars are the same doubles rounded the same way, so the two devices should agree to the
// bit. The g++ build of a CPU expression may still contract a * b + c into an FMA (gnu++20 with
// -march=native allows it), which moves a result by up to half an ulp of the largest term per
// contraction. Over the 4 steps (m and v carry the previous steps' differences, damped by beta),
// that stays below ~8 roundings: f32 |cuda - cpu| <= 1e-6 |cpu| + 1e-6 max|tensor| (the second
// term covers elements of m that cancel to near zero), f64 1e-13 and 1e-13. Norms: the squares of
// f32 values are exact in double and the sums of <= 60000 positive terms in two orders differ by
// < n * 2^-53 relative: 1e-10 for both types. The case that restores a cuda optimizer from a
// cuda checkpoint compares bit-exactly (same device, same kernels, same inputs); so does the
// repeat of a cuda run.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <flsl/backend/cuda.cuh>
#include <flsl/optim/adamw.hpp>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cuda_test_support.cuh"

using namespace flsl;

namespace {

struct param_spec {
  const char* name;
  Shape shape;
  bool has_grad;      // false: the gradient stays undefined
  double grad_scale;  // gradients are randn * grad_scale (norms vs max_norm = 3 below)
  bool strided_grad;  // the cuda gradient is a transposed view of a contiguous tensor
};

// Norms at these scales (about scale * sqrt(numel)): clipped (above 3) or not, all at least 30%
// away from the threshold so that a last-bit difference of a norm cannot flip the decision.
const std::vector<param_spec>& specs() {
  static const std::vector<param_spec> s = {
      {"patch_embed.proj.weight", Shape{5, 7, 9}, true, 1.0, false},    // 315, norm ~18: clip
      {"blocks.0.attn.qkv.weight", Shape{64, 300}, true, 0.01, false},  // 2 chunks, ~1.4
      {"blocks.0.attn.qkv.bias", Shape{47}, true, 1.0, false},          // rank 1, ~6.9: clip
      {"blocks.0.attn.proj.weight", Shape{24, 40}, true, 1.0, true},    // strided grad: clip
      {"blocks.0.mlp.fc1.weight", Shape{33, 47}, true, 0.05, false},    // 1551, ~2.0
      {"blocks.0.norm1.weight", Shape{40000}, true, 0.1, false},        // rank 1, 3 chunks: clip
      {"blocks.0.unused.weight", Shape{8, 8}, false, 1.0, false},       // never a gradient
      {"head.temperature", Shape{}, true, 1.0, false},                  // rank 0, |g| ~1
      {"head.mlp.weight", Shape{300, 200}, true, 0.02, false},          // 4 chunks, ~4.9: clip
      {"head.last_layer.weight_v", Shape{16, 10}, true, 0.5, false},    // frozen in epoch 0
  };
  return s;
}

constexpr int steps = 4;
constexpr index_t freeze_epochs = 1;
constexpr double max_norm = 3.0;
index_t epoch_of(int k) { return k / 2; }  // steps 0, 1: epoch 0 (last layer frozen); 2, 3: 1
double lr_of(int k) { return 1e-3 * (k + 1); }
double wd_of(int k) { return 0.04 + 0.01 * k; }
double momentum_of(int k) { return 0.99 + 0.002 * k; }

template <class T>
Tensor<T, cpu> initial(std::size_t i, std::uint64_t seed) {
  return Tensor<T, cpu>::randn(specs()[i].shape, seed, 1000 * i);
}
/// Gradient of parameter i at step k (host).
template <class T>
Tensor<T, cpu> host_grad(std::size_t i, int k) {
  const param_spec& s = specs()[i];
  return Tensor<T, cpu>(Tensor<T, cpu>::randn(s.shape, 100 + std::uint64_t(k), 1000 * i) *
                        T(s.grad_scale));
}
/// The same on device D (a fresh tensor; a transposed view of a contiguous one where asked).
template <class T, class D>
Tensor<T, D> device_grad(std::size_t i, int k) {
  const Tensor<T, cpu> g = host_grad<T>(i, k);
  if constexpr (std::is_same_v<D, cpu>) {
    return g.clone();
  } else {
    if (specs()[i].strided_grad) {
      const Tensor<T, cuda> gt = g.t().contiguous().template to<cuda>();
      return gt.t();  // [rows, cols] with strides (1, rows)
    }
    return g.template to<cuda>();
  }
}

template <class T, class D>
Tensor<T, D> from_host(const Tensor<T, cpu>& t) {
  if constexpr (std::is_same_v<D, cpu>)
    return t.clone();
  else
    return t.template to<cuda>();
}

/// Student and teacher (same names, other initial values) with their optimizer.
template <class T, class D>
struct setup {
  optim::named_vars<T, D> student, teacher;
  std::unique_ptr<optim::adamw<T, D>> opt;
  std::vector<std::vector<Tensor<T, D>>> grads;  // [step][param], made up front

  explicit setup(std::uint64_t seed = 1) {
    for (std::size_t i = 0; i < specs().size(); ++i) {
      student.emplace_back(specs()[i].name, Var<T, D>(from_host<T, D>(initial<T>(i, seed)), true));
      teacher.emplace_back(specs()[i].name,
                           Var<T, D>(from_host<T, D>(initial<T>(i, seed + 7)), false));
    }
    opt = std::make_unique<optim::adamw<T, D>>(student);
    grads.resize(steps);
    for (int k = 0; k < steps; ++k)
      for (std::size_t i = 0; i < specs().size(); ++i)
        grads[std::size_t(k)].push_back(specs()[i].has_grad ? device_grad<T, D>(i, k)
                                                            : Tensor<T, D>());
  }

  /// One training-step update (after the backward): set the gradients, freeze, clip, AdamW, EMA.
  /// Returns the norms.
  std::vector<double> step(int k) {
    for (std::size_t i = 0; i < student.size(); ++i)
      student[i].second.node()->grad = grads[std::size_t(k)][i];
    optim::cancel_last_layer_gradients(student, epoch_of(k), freeze_epochs);
    std::vector<double> norms = optim::clip_grad_per_tensor(student, max_norm);
    opt->step(lr_of(k), wd_of(k));
    optim::ema_update(teacher, student, momentum_of(k));
    return norms;
  }
};

template <class T>
struct tol {
  static constexpr double rel = std::is_same_v<T, float> ? 1e-6 : 1e-13;
  static constexpr double of_max = std::is_same_v<T, float> ? 1e-6 : 1e-13;
};
constexpr double norm_rel = 1e-10;

/// |cuda - cpu| <= rel |cpu| + of_max max|cpu| element by element; reports the worst element and
/// the largest difference seen (zero when the devices agree to the bit).
template <class T>
void check_close(const Tensor<T, cuda>& gpu, const Tensor<T, cpu>& ref, const std::string& what) {
  INFO(what);
  REQUIRE(gpu.defined() == ref.defined());
  if (!ref.defined()) return;
  REQUIRE(gpu.shape() == ref.shape());
  const std::vector<T> g = gpu.template to<cpu>().to_vector();
  const std::vector<T> r = ref.contiguous().to_vector();
  double largest = 0;
  for (T x : r) largest = std::max(largest, std::abs(double(x)));
  double worst = -1, max_diff = 0;
  std::size_t at = 0;
  for (std::size_t j = 0; j < r.size(); ++j) {
    const double d = std::abs(double(g[j]) - double(r[j]));
    max_diff = std::max(max_diff, d);
    const double excess = d - (tol<T>::rel * std::abs(double(r[j])) + tol<T>::of_max * largest);
    if (!(excess <= worst)) worst = excess, at = j;  // a NaN difference is the worst
  }
  INFO("worst element ", at, " of ", r.size(), ": cuda ", r.empty() ? 0.0 : double(g[at]), " cpu ",
       r.empty() ? 0.0 : double(r[at]), "; largest difference ", max_diff);
  CHECK(worst <= 0);
}

/// Every parameter, gradient, moment, step count and teacher tensor of the two setups.
template <class T>
void check_same_state(const setup<T, cuda>& g, const setup<T, cpu>& c, const std::string& when) {
  for (std::size_t i = 0; i < specs().size(); ++i) {
    const std::string n = specs()[i].name;
    const std::string at = when + ", " + n;
    check_close(g.student[i].second.value(), c.student[i].second.value(), at + ": parameter");
    check_close(g.student[i].second.grad(), c.student[i].second.grad(), at + ": gradient");
    check_close(g.opt->state(n).exp_avg, c.opt->state(n).exp_avg, at + ": exp_avg");
    check_close(g.opt->state(n).exp_avg_sq, c.opt->state(n).exp_avg_sq, at + ": exp_avg_sq");
    check_close(g.teacher[i].second.value(), c.teacher[i].second.value(), at + ": teacher");
    CHECK_MESSAGE(g.opt->step_count(n) == c.opt->step_count(n), at, ": step count");
  }
}

void check_norms(const std::vector<double>& g, const std::vector<double>& c,
                 const std::string& when) {
  REQUIRE(g.size() == c.size());
  for (std::size_t i = 0; i < c.size(); ++i) {
    INFO(when, ", norm of ", specs()[i].name, ": cuda ", g[i], " cpu ", c[i]);
    if (std::isnan(c[i])) {
      CHECK(std::isnan(g[i]));
      continue;
    }
    CHECK(std::abs(g[i] - c[i]) <= norm_rel * c[i]);
  }
}

template <class T>
void compare_with_cpu() {
  setup<T, cpu> c;
  setup<T, cuda> g;
  for (int k = 0; k < steps; ++k) {
    const std::string when = "after step " + std::to_string(k);
    const auto nc = c.step(k);
    const auto ng = g.step(k);
    check_norms(ng, nc, when);
    check_same_state(g, c, when);
  }
  // What the steps were meant to exercise.
  CHECK(c.opt->step_count("blocks.0.attn.qkv.weight") == steps);
  CHECK(c.opt->step_count("head.last_layer.weight_v") == steps - 2);
  CHECK(c.opt->step_count("blocks.0.unused.weight") == 0);
}

/// Bit-for-bit equality of two cuda tensors.
template <class T>
bool identical(const Tensor<T, cuda>& a, const Tensor<T, cuda>& b) {
  const std::vector<T> va = a.template to<cpu>().to_vector(), vb = b.template to<cpu>().to_vector();
  return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * sizeof(T)) == 0;
}

}  // namespace

// bf16 parameters are not compared here; the three entry points are instantiated for them so that
// they are known to compile.
template void flsl::cuda_ops::multi_tensor_adamw<bf16>(
    std::span<const cuda_ops::adamw_tensor<bf16>>, const cuda_ops::adamw_constants<float>&);
template void flsl::cuda_ops::multi_tensor_clip_per_tensor<bf16>(
    std::span<const cuda_ops::clip_tensor<bf16>>, double, std::span<double>);
template void flsl::cuda_ops::multi_tensor_ema<bf16>(std::span<const cuda_ops::ema_tensor<bf16>>,
                                                     float, float);

TEST_CASE("cuda: AdamW, per-tensor clipping, freezing and EMA match the CPU over 4 steps (f32)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  compare_with_cpu<float>();
}

TEST_CASE("cuda: AdamW, per-tensor clipping, freezing and EMA match the CPU over 4 steps (f64)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  compare_with_cpu<double>();
}

TEST_CASE("cuda: the fused update repeats bit-exactly and makes no cudaMalloc after step one") {
  SKIP_WITHOUT_CUDA_DEVICE();
  setup<float, cuda> a, b;
  std::vector<std::vector<double>> na, nb;
  na.push_back(a.step(0));
  const long long allocs = cuda_memory().device_allocations;
  for (int k = 1; k < steps; ++k) na.push_back(a.step(k));
  CHECK_MESSAGE(cuda_memory().device_allocations == allocs,
                "the steady state reached cudaMalloc (workspaces must be allocated once)");
  for (int k = 0; k < steps; ++k) nb.push_back(b.step(k));
  for (int k = 0; k < steps; ++k)
    for (std::size_t i = 0; i < specs().size(); ++i) {
      INFO("step ", k, ", norm of ", specs()[i].name);
      const double x = na[std::size_t(k)][i], y = nb[std::size_t(k)][i];
      CHECK((std::memcmp(&x, &y, sizeof(double)) == 0));
    }
  for (std::size_t i = 0; i < specs().size(); ++i) {
    const std::string n = specs()[i].name;
    INFO(n);
    CHECK(identical(a.student[i].second.value(), b.student[i].second.value()));
    CHECK(identical(a.teacher[i].second.value(), b.teacher[i].second.value()));
    CHECK(identical(a.opt->state(n).exp_avg, b.opt->state(n).exp_avg));
    CHECK(identical(a.opt->state(n).exp_avg_sq, b.opt->state(n).exp_avg_sq));
  }
}

TEST_CASE("cuda: optimizer state saved by name restores into a new cuda optimizer") {
  SKIP_WITHOUT_CUDA_DEVICE();
  // A cuda run and a CPU run of steps 0 and 1; then two fresh cuda setups (other initial values)
  // restored by name, one from the cuda state and one from the CPU state (a checkpoint written on
  // another device); all continue with steps 2 and 3.
  setup<float, cuda> g;
  setup<float, cpu> c;
  for (int k = 0; k < 2; ++k) {
    g.step(k);
    c.step(k);
  }
  auto restore = [](setup<float, cuda>& into, const auto& from) {
    for (std::size_t i = 0; i < specs().size(); ++i) {
      const std::string n = specs()[i].name;
      into.student[i].second.value().copy_from(
          from.student[i].second.value().template to<cpu>().template to<cuda>());
      into.teacher[i].second.value().copy_from(
          from.teacher[i].second.value().template to<cpu>().template to<cuda>());
      into.opt->set_step_count(n, from.opt->step_count(n));
    }
    for (const auto& [n, t] : from.opt->state_tensors())
      into.opt->load_state_tensor(n, t.template to<cpu>().template to<cuda>());
  };
  setup<float, cuda> from_cuda(99), from_cpu(98);
  restore(from_cuda, g);
  restore(from_cpu, c);
  std::vector<std::string> names;
  for (const auto& [n, t] : g.opt->state_tensors()) names.push_back(n);
  REQUIRE(names.size() == 2 * specs().size());
  CHECK(names[0] == "exp_avg.patch_embed.proj.weight");
  CHECK(names[1] == "exp_avg_sq.patch_embed.proj.weight");
  for (int k = 2; k < steps; ++k) {
    g.step(k);
    c.step(k);
    from_cuda.step(k);
    from_cpu.step(k);
  }
  for (std::size_t i = 0; i < specs().size(); ++i) {
    const std::string n = specs()[i].name;
    INFO(n);
    CHECK(identical(from_cuda.student[i].second.value(), g.student[i].second.value()));
    CHECK(identical(from_cuda.teacher[i].second.value(), g.teacher[i].second.value()));
    CHECK(identical(from_cuda.opt->state(n).exp_avg, g.opt->state(n).exp_avg));
    CHECK(identical(from_cuda.opt->state(n).exp_avg_sq, g.opt->state(n).exp_avg_sq));
    CHECK(from_cuda.opt->step_count(n) == g.opt->step_count(n));
  }
  check_same_state(from_cpu, c, "restored from the CPU state, after step 3");
}

TEST_CASE("cuda: clipping with max_norm 0 only measures; empty lists and no gradients work") {
  SKIP_WITHOUT_CUDA_DEVICE();
  setup<float, cuda> g;
  setup<float, cpu> c;
  for (std::size_t i = 0; i < specs().size(); ++i) {
    g.student[i].second.node()->grad = g.grads[0][i];
    c.student[i].second.node()->grad = c.grads[0][i];
  }
  const auto ng = optim::clip_grad_per_tensor(g.student, 0.0);
  const auto nc = optim::clip_grad_per_tensor(c.student, 0.0);
  check_norms(ng, nc, "max_norm 0");
  for (std::size_t i = 0; i < specs().size(); ++i)
    check_close(g.student[i].second.grad(), c.student[i].second.grad(),
                std::string("unscaled gradient of ") + specs()[i].name);
  // No parameter has a gradient: nothing changes, no step is counted, the norms are all NaN.
  for (auto& [n, v] : g.student) v.zero_grad();
  const auto none = optim::clip_grad_per_tensor(g.student, max_norm);
  for (double x : none) CHECK(std::isnan(x));
  const auto before = g.student[0].second.value().template to<cpu>().to_vector();
  g.opt->step(1e-3, 0.04);
  CHECK(g.student[0].second.value().template to<cpu>().to_vector() == before);
  CHECK(g.opt->step_count("patch_embed.proj.weight") == 0);
  // Empty lists.
  optim::named_vars<float, cuda> empty;
  CHECK(optim::clip_grad_per_tensor(empty, max_norm).empty());
  optim::ema_update(empty, empty, 0.5);
  optim::adamw<float, cuda> none_opt(empty);
  none_opt.step(1e-3, 0.04);
}

TEST_CASE("cuda: the optimizer's argument checks are the CPU's") {
  SKIP_WITHOUT_CUDA_DEVICE();
  setup<float, cuda> g;
  CHECK_THROWS_WITH_AS(optim::clip_grad_per_tensor(g.student, -1.0),
                       doctest::Contains("max_norm -1 is negative"), flsl::error);
  g.student[2].second.node()->grad = Tensor<float, cuda>::zeros({5});
  CHECK_THROWS_WITH_AS(g.opt->step(1e-3, 0.04), doctest::Contains("gradient of shape [5]"),
                       flsl::error);
  CHECK(g.opt->step_count("patch_embed.proj.weight") == 0);  // checked before any state changed
  auto other = g.teacher;
  other.pop_back();
  CHECK_THROWS_WITH_AS(optim::ema_update(other, g.student, 0.5),
                       doctest::Contains("has no teacher parameter of that name"), flsl::error);
}
