// bench_data: images/s of the full FLSL multi-crop transform (file read + decode + 1 teacher,
// 1 student, 2 local views with style augmentation + query tokens) on one core, and the loader's
// throughput with 1 and 2 threads. Data: the folder named by FLSL_DATA (default
// ../shared/data/caltech101_sub40 next to the repository), its first 400 images in sorted order
// (the files ../shared/bench/torch_flsl_aug.py uses). Run benchmarks/data/run_bench_data.sh to
// compare with PyTorch in the same invocation.
#include <benchmark/benchmark.h>

#include <time.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <flsl/data/folder_dataset.hpp>
#include <flsl/data/loader.hpp>
#include <flsl/data/multicrop.hpp>

#ifndef FLSL_REPO_DIR
#define FLSL_REPO_DIR "."
#endif

namespace {

using namespace flsl::data;

constexpr std::size_t kImages = 400;  // as the PyTorch anchor

/// CPU seconds used by the whole process (all threads).
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

std::filesystem::path data_folder() {
  if (const char* env = std::getenv("FLSL_DATA"); env && *env) return env;
  const std::filesystem::path rel = "../shared/data/caltech101_sub40";
  if (std::filesystem::is_directory(rel)) return rel;
  return std::filesystem::path(FLSL_REPO_DIR) / rel;
}

/// The first kImages images (sorted) of the folder, or nullptr with `why` set.
struct FirstImages {
  std::unique_ptr<FolderDataset> all;
  std::string why;
  std::size_t size() const { return std::min(kImages, all->size()); }
  void load(std::size_t i, SourceImage& out) const { all->load(i, out); }
};

const FirstImages& images() {
  static FirstImages f = [] {
    FirstImages r;
    const auto dir = data_folder();
    if (!std::filesystem::is_directory(dir)) {
      r.why = "data folder '" + dir.string() +
              "' not found: set FLSL_DATA to a folder of JPEG/PNG images";
      return r;
    }
    FolderOptions opt;
    opt.check = ScanCheck::extension;
    opt.log = [](const std::string&) {};
    r.all = std::make_unique<FolderDataset>(dir, opt);
    return r;
  }();
  return f;
}

/// Full multi-crop of every image, one thread, output into one reused image slot.
void BM_multicrop_one_core(benchmark::State& state) {
  const FirstImages& data = images();
  if (!data.all) {
    state.SkipWithError(data.why.c_str());
    return;
  }
  const MultiCropParams p;
  MultiCrop crop(p);
  const std::size_t T = std::size_t(p.teacher.size), S = std::size_t(p.student.size),
                    s = std::size_t(p.local.size);
  std::vector<float> teacher(3 * T * T), student(3 * S * S),
      locals(std::size_t(p.n_local) * 3 * s * s);
  std::vector<std::int64_t> sq(std::size_t(p.student_queries())),
      lq(std::size_t(p.n_local) * std::size_t(p.local_queries()));
  const MultiCropOutput out{teacher.data(), student.data(), locals.data(), sq.data(), lq.data()};
  SourceImage src;
  const std::size_t n = data.size();
  for (std::size_t i = 0; i < 10 && i < n; ++i) {  // warm-up, as the anchor
    data.load(i, src);
    crop(src, 0, i, out);
  }
  std::uint64_t stream = 0;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) {
      data.load(i, src);
      crop(src, 0, stream++, out);
    }
    benchmark::DoNotOptimize(teacher.data());
    benchmark::ClobberMemory();
  }
  const double cpu = process_cpu_seconds() - cpu0;
  const double images = double(state.iterations()) * double(n);
  state.SetItemsProcessed(std::int64_t(images));
  // wall-clock rate, comparable with the anchor's; and per CPU-second (robust to a busy machine)
  state.counters["images_per_s_per_core"] = benchmark::Counter(images, benchmark::Counter::kIsRate);
  state.counters["images_per_cpu_s"] = images / cpu;
}
BENCHMARK(BM_multicrop_one_core)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

/// The loader (oneTBB pipeline, batch 32) over the same images with 1 or 2 threads: one epoch
/// (12 full batches) per iteration.
void BM_loader(benchmark::State& state) {
  const FirstImages& data = images();
  if (!data.all) {
    state.SkipWithError(data.why.c_str());
    return;
  }
  const int threads = int(state.range(0));
  LoaderParams lp;
  lp.batch_size = 32;
  lp.threads = threads;
  lp.in_flight = 2;
  lp.prefetch = 2;
  Loader<FirstImages> loader(data, MultiCropParams{}, lp);
  std::int64_t epoch = 0, images_done = 0;
  loader.start_epoch(epoch);  // warm-up epoch: thread-local decoders and scratch
  while (loader.next()) {
  }
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    loader.start_epoch(++epoch);
    while (const Batch* b = loader.next()) images_done += b->size;
  }
  const double cpu = process_cpu_seconds() - cpu0;
  state.SetItemsProcessed(images_done);
  state.counters["images_per_cpu_s"] = double(images_done) / cpu;
  state.counters["cpu_s_per_wall_s"] = benchmark::Counter(cpu, benchmark::Counter::kIsRate);
  state.counters["images_per_s"] =
      benchmark::Counter(double(images_done), benchmark::Counter::kIsRate);
  state.counters["images_per_s_per_core"] =
      benchmark::Counter(double(images_done) / threads, benchmark::Counter::kIsRate);
  state.counters["threads"] = threads;
}
BENCHMARK(BM_loader)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
