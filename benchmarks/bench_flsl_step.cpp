// The full FLSL step of ../shared/docs/ANCHORS.md on the CPU: vit_tiny/16, batch 8, 224 px teacher
// and student global views, 2 local views of 96 px, out_dim 4096, on random data. Reports
// images_per_s; benchmarks/run_bench_flsl_step.sh runs the PyTorch anchor in the same invocation.
#include <benchmark/benchmark.h>
#include <tbb/task_arena.h>

#include <flsl/data/query_tokens.hpp>
#include <flsl/flsl.hpp>
#include <flsl/train/flsl_step.hpp>

using namespace flsl;

namespace {
template <class Cfg>
using flsl_net = nn::model<
    nn::backbone_with_head<nn::vision_transformer<Cfg>, nn::projection_head<Cfg::dim, 4096>>,
    float>;

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
void run_step(benchmark::State& st, index_t batch) {
  // An arena (not global_control) so that max_concurrency(), which matmul splits by, agrees.
  tbb::task_arena arena(int(st.range(0)));
  arena.execute([&] {
    flsl_net<Cfg> student(1), teacher(1);
    optim::recipe r;
    r.epochs = 100;
    r.iters_per_epoch = 1000;
    r.total_batch = batch;
    flsl_learner<flsl_net<Cfg>, float> learner(student, teacher, r);
    learner.sync_teacher();
    learner.state().iteration = 5000;  // past the warm-up: a representative lr
    flsl_views<float> v;
    v.teacher = Tensor<float>::randn({batch, 3, 224, 224}, 1);
    v.global = Tensor<float>::randn({batch, 3, 224, 224}, 2);
    v.local = Tensor<float>::randn({batch * 2, 3, 96, 96}, 3);
    v.locals = 2;
    v.query_global = top_left_queries(batch, 14, 3);
    v.query_local = top_left_queries(batch * 2, 6, 2);
    learner.step(v);  // warm-up: first-touch of every buffer
    for (auto _ : st) {
      auto res = learner.step(v);
      benchmark::DoNotOptimize(res.total);
    }
    st.counters["images_per_s"] =
        benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  });
}

void BM_flsl_step_vit_tiny16_b8(benchmark::State& st) { run_step<nn::vit_tiny<16>>(st, 8); }
BENCHMARK(BM_flsl_step_vit_tiny16_b8)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(5.0);
}  // namespace

BENCHMARK_MAIN();
