// Core kernels against their limits: a fused elementwise expression versus the same work in
// separate passes (bytes/s), and matmul at the ViT-S shapes (GFLOP/s), on 1 and 2 threads.
//
// Reference (../shared/docs/ANCHORS.md): OpenBLAS SGEMM reaches ~340 GFLOP/s on this machine's 2
// cores (fp32, 2048^3). `benchmarks/run_bench_core.sh` measures numpy/OpenBLAS at the same shapes
// in the same invocation and prints the ratios.
#include <benchmark/benchmark.h>
#include <tbb/global_control.h>
#include <tbb/task_arena.h>

#include <cstdio>
#include <flsl/flsl.hpp>
#include <string>
#include <vector>

namespace {

using flsl::index_t;
using flsl::Tensor;

/// ANCHORS.md: OpenBLAS SGEMM on 2 cores, fp32, 2048^3.
constexpr double sgemm_reference_gflops = 340.0;
const std::vector<int> thread_counts = {1, 2};

/// Runs `body` (the benchmark loop) with at most `threads` oneTBB threads: a global_control caps
/// the worker pool and an arena of that size makes this_task_arena::max_concurrency(), which the
/// kernels size their work by, report the same number.
template <class Body>
void with_threads(int threads, Body&& body) {
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, std::size_t(threads));
  tbb::task_arena arena(threads);
  arena.execute([&] { body(); });
}

// ---- fused elementwise versus separate passes -----------------------------------------------
// out = a * b + c * d over [64 * 196, 384] f32 (a ViT-S activation at batch 64). The fused
// assignment reads 4 tensors and writes 1; separate passes (t1 = a * b; t2 = c * d; out = t1 + t2)
// move 9 tensors and, as an eager framework does, allocate the two temporaries. bytes/s counts the
// fused pass's 5 tensors for every variant, so the rates compare as speeds.
const flsl::Shape act_shape{64 * 196, 384};

enum class elementwise { fused, separate_alloc, separate_prealloc };

void bm_elementwise(benchmark::State& state, elementwise kind, int threads) {
  auto a = Tensor<float>::randn(act_shape, 1), b = Tensor<float>::randn(act_shape, 2);
  auto c = Tensor<float>::randn(act_shape, 3), d = Tensor<float>::randn(act_shape, 4);
  auto out = Tensor<float>::empty(act_shape);
  auto t1 = Tensor<float>::empty(act_shape), t2 = Tensor<float>::empty(act_shape);
  with_threads(threads, [&] {
    for (auto _ : state) {
      switch (kind) {
        case elementwise::fused:
          out = a * b + c * d;
          break;
        case elementwise::separate_alloc: {
          Tensor<float> ab = a * b;  // a new storage each
          Tensor<float> cd = c * d;
          out = ab + cd;
          break;
        }
        case elementwise::separate_prealloc:
          t1 = a * b;  // evaluates into t1's memory
          t2 = c * d;
          out = t1 + t2;
          break;
      }
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
  });
  const auto bytes = act_shape.numel() * index_t(sizeof(float));
  state.SetBytesProcessed(state.iterations() * 5 * bytes);
}

// ---- matmul at the ViT-S shapes --------------------------------------------------------------
// A ViT-S/16 block on B images has M = B * 196 tokens; qkv is [M, 384] x [384, 1152] and fc2 is
// [M, 1536] x [1536, 384]. For Y = X W (W stored [in, out]) the backward pass computes
// dX = dY W^T and dW = X^T dY; the transposed operands are views (no copy), as autograd will pass
// them.
enum class operands { nn, nt, tn };  // X W, dY W^T, X^T dY

struct gemm_case {
  const char* name;
  index_t in, out;  // the layer's W is [in, out]
  operands role;
};
const std::vector<gemm_case> vit_cases = {
    {"qkv_fwd", 384, 1152, operands::nn},   {"qkv_dgrad", 384, 1152, operands::nt},
    {"qkv_wgrad", 384, 1152, operands::tn}, {"fc2_fwd", 1536, 384, operands::nn},
    {"fc2_dgrad", 1536, 384, operands::nt}, {"fc2_wgrad", 1536, 384, operands::tn},
};

void bm_matmul(benchmark::State& state, const Tensor<float>& lhs, const Tensor<float>& rhs,
               int threads) {
  auto c = Tensor<float>::empty({lhs.size(0), rhs.size(1)});
  with_threads(threads, [&] {
    for (auto _ : state) {
      flsl::matmul_into(c, lhs, rhs);
      benchmark::DoNotOptimize(c.data());
      benchmark::ClobberMemory();
    }
  });
  const double flop = 2.0 * double(lhs.size(0)) * double(lhs.size(1)) * double(rhs.size(1));
  const double done = flop * double(state.iterations());
  state.counters["GFLOP/s"] = benchmark::Counter(done / 1e9, benchmark::Counter::kIsRate);
  state.counters["of_sgemm_ref"] =
      benchmark::Counter(done / (sgemm_reference_gflops * 1e9), benchmark::Counter::kIsRate);
  // "nt M=1568 K=1152 N=384": C[M, N] = A[M, K] B[K, N], A or B a transposed view (t) or not (n);
  // run_bench_core.sh reads it to time numpy on the same product.
  auto op = [](const Tensor<float>& m) { return m.stride(-1) == 1 ? 'n' : 't'; };
  state.SetLabel(std::string{op(lhs), op(rhs)} + " M=" + std::to_string(lhs.size(0)) +
                 " K=" + std::to_string(lhs.size(1)) + " N=" + std::to_string(rhs.size(1)));
}

/// The operands of one case at batch B, (lhs, rhs) with lhs @ rhs the product to time. Made on
/// first use and kept until another case asks (one case's tensors in memory at a time).
const std::pair<Tensor<float>, Tensor<float>>& operands_for(const gemm_case& g, index_t batch) {
  static const gemm_case* cached_case = nullptr;
  static index_t cached_batch = 0;
  static std::pair<Tensor<float>, Tensor<float>> cached;
  if (cached_case == &g && cached_batch == batch) return cached;
  cached = {};
  const index_t M = batch * 196;
  auto x = Tensor<float>::randn({M, g.in}, 1);      // activations      [M, in]
  auto w = Tensor<float>::randn({g.in, g.out}, 2);  // weight           [in, out]
  auto dy = Tensor<float>::randn({M, g.out}, 3);    // output gradient  [M, out]
  switch (g.role) {
    case operands::nn:  // [M, in] @ [in, out]
      cached = {x, w};
      break;
    case operands::nt:  // [M, out] @ [out, in] (a view)
      cached = {dy, w.t()};
      break;
    case operands::tn:  // [in, M] @ [M, out] (a view)
      cached = {x.t(), dy};
      break;
  }
  cached_case = &g;
  cached_batch = batch;
  return cached;
}

void register_all() {
  const std::pair<elementwise, const char*> kinds[] = {
      {elementwise::fused, "fused"},
      {elementwise::separate_alloc, "separate_alloc"},
      {elementwise::separate_prealloc, "separate_prealloc"}};
  for (int threads : thread_counts)
    for (auto [kind, name] : kinds)
      benchmark::RegisterBenchmark(
          ("elementwise/a*b+c*d/" + std::string(name) + "/threads:" + std::to_string(threads))
              .c_str(),
          [kind = kind, threads](benchmark::State& s) { bm_elementwise(s, kind, threads); })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);

  for (index_t batch : {index_t(8), index_t(64)})
    for (const gemm_case& g : vit_cases)
      for (int threads : thread_counts)
        benchmark::RegisterBenchmark(("matmul/" + std::string(g.name) + "/B:" +
                                      std::to_string(batch) + "/threads:" + std::to_string(threads))
                                         .c_str(),
                                     [&g, batch, threads](benchmark::State& s) {
                                       const auto& [lhs, rhs] = operands_for(g, batch);
                                       bm_matmul(s, lhs, rhs, threads);
                                     })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
  // The reference shape itself: SGEMM 2048^3.
  for (int threads : thread_counts)
    benchmark::RegisterBenchmark(("matmul/sgemm_2048/threads:" + std::to_string(threads)).c_str(),
                                 [threads](benchmark::State& s) {
                                   static const auto a = Tensor<float>::randn({2048, 2048}, 4);
                                   static const auto b = Tensor<float>::randn({2048, 2048}, 5);
                                   bm_matmul(s, a, b, threads);
                                 })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
  char reference[160];
  std::snprintf(reference, sizeof reference,
                "OpenBLAS SGEMM ~%.0f GFLOP/s on 2 cores (fp32, 2048^3; ../shared/docs/ANCHORS.md)",
                sgemm_reference_gflops);
  benchmark::AddCustomContext("sgemm_reference", reference);
  benchmark::AddCustomContext("elementwise_bytes",
                              "bytes/s counts the fused pass's 5 tensors for every variant");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
