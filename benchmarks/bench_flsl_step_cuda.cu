// The full FLSL step (train/flsl_step.hpp: teacher forward, student forward on the global and 2
// local views, mean-shift attention, head, the three-term loss, backward, per-tensor clipping,
// AdamW, EMA) on cuda in f32 (and in the last case with the backbones on bf16 activations):
// vit_small/16 with the spec's head (out_dim 4096), 224 px teacher and student views, 2 local views
// of 96 px, query windows 3 and 2, at batch 128 and 32, on random data already on the device (as
// ../shared/bench/torch_flsl_step.py times it). Counters: images_per_s; peak_device_MiB, the
// caching allocator's largest bytes in use (parameters, optimizer state and activations; not
// cuBLASLt's workspace or the CUDA context); cuda_mallocs_in_loop, cudaMalloc calls during the
// timed steps (0 once the cache is warm). Built only with the CUDA backend; without a device each
// benchmark reports an error and stops. Not yet run on a GPU. scripts/gpu_check.sh runs it next to
// the PyTorch anchor.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <flsl/backend/cuda.cuh>
#include <flsl/data/query_tokens.hpp>
#include <flsl/flsl.hpp>
#include <flsl/train/flsl_step.hpp>
#include <fstream>
#include <span>
#include <string>

using namespace flsl;

namespace {
template <class Cfg>
using flsl_net = nn::model<
    nn::backbone_with_head<nn::vision_transformer<Cfg>, nn::projection_head<Cfg::dim, 4096>>, float,
    cuda>;

Tensor<std::int64_t> top_left_queries(index_t rows, int grid, int window) {
  const int q = data::query_token_count(grid, window);
  auto t = Tensor<std::int64_t>::empty({rows, q});
  Generator g(0);
  for (index_t r = 0; r < rows; ++r)
    data::sample_query_tokens(grid, window, false, g,
                              std::span<std::int64_t>(t.data() + r * q, std::size_t(q)));
  return t;
}

template <class Cfg>
void run_step(benchmark::State& st, const char* name, index_t batch,
              matmul_precision precision = matmul_precision::exact,
              nn::autocast cast = nn::autocast::off) {
  if (!cuda_available()) {
    st.SkipWithError("no CUDA device");
    return;
  }
  const matmul_precision_scope scope(precision);
  cuda_caching_allocator::instance().reset_peak();
  flsl_net<Cfg> student(1), teacher(1);
  optim::recipe r;
  r.epochs = 100;
  r.iters_per_epoch = 1000;
  r.total_batch = batch;
  flsl_loss_params lp;
  lp.autocast = cast;
  flsl_learner<flsl_net<Cfg>, float, cuda> learner(student, teacher, r, lp);
  learner.sync_teacher();
  learner.state().iteration = 5000;  // past the warm-up and the last-layer freeze
  flsl_views<float> v;
  v.teacher = Tensor<float>::randn({batch, 3, 224, 224}, 1);
  v.global = Tensor<float>::randn({batch, 3, 224, 224}, 2);
  v.local = Tensor<float>::randn({batch * 2, 3, 96, 96}, 3);
  v.locals = 2;
  v.query_global = top_left_queries(batch, 14, 3);
  v.query_local = top_left_queries(batch * 2, 6, 2);
  const flsl_views<float, cuda> vg = views_to<cuda>(v);
  const cuda_work_counters before = cuda_work();
  learner.step(vg);  // warm-up: fills the allocator's cache and cuBLASLt's heuristics
  synchronize();
  const double step_flops = (cuda_work().gemm_flops - before.gemm_flops) +
                            (cuda_work().attention_flops - before.attention_flops);
  const long long mallocs = cuda_memory().device_allocations;
  for (auto _ : st) {
    auto res = learner.step(vg);  // the loss is read on the host: one synchronisation per step
    benchmark::DoNotOptimize(res.total);
  }
  synchronize();
  const long long mallocs_in_loop = cuda_memory().device_allocations - mallocs;
  // FLSL_CUDA_TIMELINE=DIR: one more step recorded on a cuda_timeline, its report written to
  // DIR/<name>.csv (where the step's time goes, per op and kernel)
  if (const char* dir = std::getenv("FLSL_CUDA_TIMELINE"); dir && *dir) {
    cuda_timeline::instance().start();
    learner.step(vg);
    const auto report = cuda_timeline::instance().stop();
    std::ofstream(std::string(dir) + "/" + name + ".csv") << cuda_timeline::csv(report);
  }
  st.counters["images_per_s"] =
      benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  // the step's GEMM and attention FLOPs (timeline.cuh's counters) per second
  st.counters["TFLOP_per_s"] =
      benchmark::Counter(step_flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GFLOP_per_image"] = step_flops * 1e-9 / double(batch);
  st.counters["peak_device_MiB"] = double(cuda_memory().peak_in_use) / double(1 << 20);
  st.counters["cuda_mallocs_in_loop"] = double(mallocs_in_loop);
}

void BM_flsl_step_cuda_vit_small16_b128(benchmark::State& st) {
  run_step<nn::vit_small<16>>(st, "BM_flsl_step_cuda_vit_small16_b128", 128);
}
void BM_flsl_step_cuda_vit_small16_b32(benchmark::State& st) {
  run_step<nn::vit_small<16>>(st, "BM_flsl_step_cuda_vit_small16_b32", 32);
}
// the same step with the GEMMs on tensor cores (f32 in memory, fp32 accumulation)
void BM_flsl_step_cuda_vit_small16_b128_tf32(benchmark::State& st) {
  run_step<nn::vit_small<16>>(st, "BM_flsl_step_cuda_vit_small16_b128_tf32", 128,
                              matmul_precision::tf32);
}
void BM_flsl_step_cuda_vit_small16_b128_bf16(benchmark::State& st) {
  run_step<nn::vit_small<16>>(st, "BM_flsl_step_cuda_vit_small16_b128_bf16", 128,
                              matmul_precision::bf16);
}
// flsl_pretrain's cuda defaults, the anchor's setting: the backbones on bf16 activations
// (autocast), the head's f32 products with bf16 inputs
void BM_flsl_step_cuda_vit_small16_b128_autocast_bf16(benchmark::State& st) {
  run_step<nn::vit_small<16>>(st, "BM_flsl_step_cuda_vit_small16_b128_autocast_bf16", 128,
                              matmul_precision::bf16, nn::autocast::bf16);
}
// The device's bf16 GEMM rate in the same run (the denominator of the step's share of peak): an
// 8192^3 product, bf16 in and out, fp32 accumulation.
void BM_cublaslt_bf16_gemm_8192(benchmark::State& st) {
  if (!cuda_available()) {
    st.SkipWithError("no CUDA device");
    return;
  }
  constexpr index_t n = 8192;
  auto a = Tensor<float, cuda>::randn({n, n}, 1).to<bf16>();
  auto b = Tensor<float, cuda>::randn({n, n}, 2).to<bf16>();
  auto c = Tensor<bf16, cuda>::empty({n, n});
  matmul_into(c, a, b);  // warm-up (heuristic, clocks)
  synchronize();
  for (auto _ : st) matmul_into(c, a, b);
  synchronize();
  st.counters["TFLOP_per_s"] = benchmark::Counter(2.0 * double(n) * double(n) * double(n) * 1e-12,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_cublaslt_bf16_gemm_8192)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(20);
BENCHMARK(BM_flsl_step_cuda_vit_small16_b32)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(10);
BENCHMARK(BM_flsl_step_cuda_vit_small16_b128)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(5);
BENCHMARK(BM_flsl_step_cuda_vit_small16_b128_tf32)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(5);
BENCHMARK(BM_flsl_step_cuda_vit_small16_b128_bf16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(5);
BENCHMARK(BM_flsl_step_cuda_vit_small16_b128_autocast_bf16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(5);
}  // namespace

BENCHMARK_MAIN();
