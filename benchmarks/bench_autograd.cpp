// Forward+backward of one ViT-S block at [64, 196, 384] and of the fused attention op, in GFLOP/s.
//
// FLOP counts (multiply-add = 2): a block's forward is B*N*(24 D^2 + 4 N D) (qkv, proj, fc1, fc2;
// q k^T and P v); its backward is twice that. Attention alone: forward 4 B N^2 D, backward 8 B N^2
// D (P is recomputed: +2 B N^2 D counted as work actually done).
#include <benchmark/benchmark.h>
#include <tbb/task_arena.h>

#include <flsl/flsl.hpp>

using namespace flsl;

namespace {
constexpr index_t B = 64, N = 196, Dm = 384, H = 6;
using block_t = nn::block<Dm, H, 4 * Dm>;

void BM_vit_small_block_fwd_bwd(benchmark::State& st) {
  // An arena (not global_control) so that max_concurrency(), which matmul splits by, agrees.
  tbb::task_arena arena(int(st.range(0)));
  arena.execute([&] {
    nn::init_stream init{1, 0};
    typename block_t::module<float, cpu> blk(init);
    auto x = Var<float>(Tensor<float>::randn({B, N, Dm}, 2), true);
    const auto seed = Tensor<float>::randn({B, N, Dm}, 3);
    for (auto _ : st) {
      Var<float> y = blk(x);
      y.backward(seed);
      benchmark::DoNotOptimize(x.grad().data());
      x.zero_grad();
      nn::zero_grad(blk);
    }
    const double fwd = double(B * N) * (24.0 * Dm * Dm + 4.0 * N * Dm);
    st.counters["GFLOP/s"] =
        benchmark::Counter(3 * fwd * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["tokens/s"] =
        benchmark::Counter(double(B * N), benchmark::Counter::kIsIterationInvariantRate);
  });
}
BENCHMARK(BM_vit_small_block_fwd_bwd)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();

void BM_attention_fwd_bwd(benchmark::State& st) {
  // An arena (not global_control) so that max_concurrency(), which matmul splits by, agrees.
  tbb::task_arena arena(int(st.range(0)));
  arena.execute([&] {
    auto qkv = Var<float>(Tensor<float>::randn({B, N, 3 * Dm}, 4), true);
    const auto seed = Tensor<float>::randn({B, N, Dm}, 5);
    for (auto _ : st) {
      Var<float> o = multi_head_attention(qkv, int(H));
      o.backward(seed);
      benchmark::DoNotOptimize(qkv.grad().data());
      qkv.zero_grad();
    }
    const double flops = 4.0 * B * N * N * Dm + 10.0 * B * N * N * Dm;
    st.counters["GFLOP/s"] =
        benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  });
}
BENCHMARK(BM_attention_fwd_bwd)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();

void BM_attention_fwd(benchmark::State& st) {
  // An arena (not global_control) so that max_concurrency(), which matmul splits by, agrees.
  tbb::task_arena arena(int(st.range(0)));
  arena.execute([&] {
    auto qkv = Var<float>(Tensor<float>::randn({B, N, 3 * Dm}, 4), false);
    for (auto _ : st) {
      Var<float> o = multi_head_attention(qkv, int(H));
      benchmark::DoNotOptimize(o.value().data());
    }
    st.counters["GFLOP/s"] = benchmark::Counter(4.0 * B * N * N * Dm * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  });
}
BENCHMARK(BM_attention_fwd)->Arg(2)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
}  // namespace

BENCHMARK_MAIN();
