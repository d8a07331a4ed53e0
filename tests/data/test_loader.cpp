// The loader: batch shapes, content fixed by (seed, epoch, index) whatever the thread count,
// epoch shuffling, drop_last, failing images replaced with a warning, stop and resume.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <flsl/data/folder_dataset.hpp>
#include <flsl/data/loader.hpp>
#include <flsl/data/procedural.hpp>

#include "test_images.hpp"

using namespace flsl::data;

namespace {

/// Small views so that the loader tests run in milliseconds.
MultiCropParams small_views() {
  MultiCropParams p;
  p.teacher.size = 32;
  p.student.size = 32;
  p.local.size = 16;
  p.patch = 8;
  p.global_window = 3;  // 4x4 grid -> 1 query, at a random corner
  p.local_window = 1;   // 2x2 grid -> 4 queries
  return p;
}

ProceduralDataset small_procedural(std::size_t n) {
  ProceduralParams p;
  p.width = 48;
  p.height = 40;
  p.size = n;
  return ProceduralDataset(p);
}

bool same_tensor(const auto& a, const auto& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.numel()) * sizeof(*a.data())) == 0;
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.index == b.index && a.size == b.size && same_tensor(a.teacher, b.teacher) &&
         same_tensor(a.student, b.student) && same_tensor(a.local, b.local) &&
         same_tensor(a.student_queries, b.student_queries) &&
         same_tensor(a.local_queries, b.local_queries) && same_tensor(a.labels, b.labels) &&
         same_tensor(a.indices, b.indices);
}

/// A copy of a contiguous tensor.
template <class T>
flsl::Tensor<T> copy_of(const flsl::Tensor<T>& t) {
  auto out = flsl::Tensor<T>::empty(t.shape());
  std::memcpy(out.data(), t.data(), std::size_t(t.numel()) * sizeof(T));
  return out;
}

/// Copies of every batch of one epoch.
std::vector<Batch> run_epoch(Loader<ProceduralDataset>& loader, std::int64_t epoch) {
  std::vector<Batch> out;
  loader.start_epoch(epoch);
  while (const Batch* b = loader.next()) {
    Batch copy = loader.new_batch();
    copy.epoch = b->epoch, copy.index = b->index, copy.size = b->size;
    copy.teacher = copy_of(b->teacher);
    copy.student = copy_of(b->student);
    copy.local = copy_of(b->local);
    copy.student_queries = copy_of(b->student_queries);
    copy.local_queries = copy_of(b->local_queries);
    copy.labels = copy_of(b->labels);
    copy.indices = copy_of(b->indices);
    out.push_back(std::move(copy));
  }
  return out;
}

/// A dataset whose image 3 always fails.
struct Flaky {
  ProceduralDataset inner = small_procedural(10);
  std::size_t size() const { return inner.size(); }
  void load(std::size_t i, SourceImage& out) const {
    if (i == 3) throw flsl::error("cannot decode 'image-3.jpg': corrupt");
    inner.load(i, out);
  }
};

}  // namespace

TEST_CASE("loader: batch shapes and query indices") {
  const auto ds = small_procedural(10);
  LoaderParams lp;
  lp.batch_size = 4;
  lp.drop_last = false;
  Loader loader(ds, small_views(), lp);
  CHECK(loader.batches_per_epoch() == 3);
  loader.start_epoch(0);
  std::vector<std::int64_t> sizes;
  while (const Batch* b = loader.next()) {
    const std::int64_t n = b->size;
    sizes.push_back(n);
    CHECK(b->teacher.shape() == flsl::Shape{n, 3, 32, 32});
    CHECK(b->student.shape() == flsl::Shape{n, 3, 32, 32});
    CHECK(b->local.shape() == flsl::Shape{n * 2, 3, 16, 16});
    CHECK(b->student_queries.shape() == flsl::Shape{n, 1});
    CHECK(b->local_queries.shape() == flsl::Shape{n * 2, 4});
    CHECK(b->labels.shape() == flsl::Shape{n});
    for (std::int64_t i = 0; i < n; ++i) CHECK((b->labels(i) >= 1 && b->labels(i) <= 8));
    for (std::int64_t i = 0; i < n * 2; ++i) {
      std::set<std::int64_t> q;
      for (int k = 0; k < 4; ++k) q.insert(b->local_queries(i, k));
      CHECK(q == std::set<std::int64_t>{0, 1, 2, 3});  // window 1: every token of the 2x2 grid
    }
  }
  CHECK(sizes == std::vector<std::int64_t>{4, 4, 2});
  CHECK(loader.next() == nullptr);
}

TEST_CASE(
    "loader: batch content depends on (seed, epoch, index) only, not on threads or prefetch") {
  const auto ds = small_procedural(24);
  LoaderParams one;
  one.batch_size = 5;
  one.seed = 99;
  one.threads = 1;
  one.in_flight = 1;
  one.prefetch = 1;
  LoaderParams two = one;
  two.threads = 2;
  two.in_flight = 3;
  two.prefetch = 2;
  Loader l1(ds, small_views(), one), l2(ds, small_views(), two);
  const auto a = run_epoch(l1, 3), b = run_epoch(l2, 3);
  REQUIRE(a.size() == 4);  // 24 / 5 with drop_last
  REQUIRE(b.size() == 4);
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(same_batch(a[i], b[i]));
  Batch direct;
  l2.make_batch(3, 2, direct);
  CHECK(same_batch(direct, a[2]));
  // a sample's views do not depend on the batch size either
  LoaderParams big = one;
  big.batch_size = 24;
  Loader l3(ds, small_views(), big);
  Batch all;
  l3.make_batch(3, 0, all);
  const std::int64_t per = 3 * 32 * 32;
  CHECK(std::memcmp(all.teacher.data() + 7 * per, a[1].teacher.data() + 2 * per,
                    per * sizeof(float)) == 0);
}

TEST_CASE("loader: each epoch visits every image once, in a new order; drop_last drops the tail") {
  const auto ds = small_procedural(23);
  LoaderParams lp;
  lp.batch_size = 5;
  lp.drop_last = false;
  Loader loader(ds, small_views(), lp);
  std::vector<std::vector<std::int64_t>> orders;
  for (std::int64_t e = 0; e < 2; ++e) {
    std::vector<std::int64_t> seen;
    for (const auto& b : run_epoch(loader, e))
      for (std::int64_t i = 0; i < b.size; ++i) seen.push_back(b.indices(i));
    CHECK(seen == loader.epoch_order(e));
    std::vector<std::int64_t> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    for (std::int64_t i = 0; i < 23; ++i) CHECK(sorted[std::size_t(i)] == i);
    orders.push_back(seen);
  }
  CHECK(orders[0] != orders[1]);
  lp.drop_last = true;
  Loader dropping(ds, small_views(), lp);
  CHECK(dropping.batches_per_epoch() == 4);
  lp.shuffle = false;
  Loader ordered(ds, small_views(), lp);
  const auto order = ordered.epoch_order(5);
  for (std::size_t i = 0; i < order.size(); ++i) CHECK(order[i] == std::int64_t(i));
}

TEST_CASE("loader: an image that fails is replaced by the next one, with one warning") {
  const Flaky ds;
  std::vector<std::string> log;
  LoaderParams lp;
  lp.batch_size = 10;
  lp.shuffle = false;
  lp.log = [&](const std::string& m) { log.push_back(m); };
  Loader loader(ds, small_views(), lp);
  for (int e = 0; e < 2; ++e) {
    loader.start_epoch(e);
    const Batch* b = loader.next();
    REQUIRE(b != nullptr);
    CHECK(b->indices(3) == 4);
    CHECK(b->indices(4) == 4);
    CHECK(loader.next() == nullptr);
  }
  CHECK(loader.replaced_images() == 1);
  REQUIRE(log.size() == 1);
  CHECK(log[0].find("image-3.jpg") != std::string::npos);
}

/// A dataset whose images from 20 on all fail (more in a row than the loader replaces).
struct BrokenTail {
  ProceduralDataset inner = small_procedural(40);
  std::size_t size() const { return inner.size(); }
  void load(std::size_t i, SourceImage& out) const {
    if (i >= 20) throw flsl::error("cannot decode 'image-" + std::to_string(i) + ".jpg'");
    inner.load(i, out);
  }
};

TEST_CASE("loader: a batch that cannot be filled is reported after the batches before it") {
  const BrokenTail ds;
  for (int in_flight : {1, 2, 3}) {
    CAPTURE(in_flight);
    LoaderParams lp;
    lp.batch_size = 5;
    lp.shuffle = false;
    lp.in_flight = in_flight;
    lp.log = [](const std::string&) {};
    Loader loader(ds, small_views(), lp);
    loader.start_epoch(0);
    // batches 0-3 hold images 0-19; batch 4's first image and the 15 after it fail
    for (std::int64_t k = 0; k < 4; ++k) {
      const Batch* b = loader.next();
      REQUIRE(b != nullptr);
      CHECK(b->index == k);
      CHECK(b->indices(0) == 5 * k);
    }
    // the batch's first failing image, whatever the threads' timing
    CHECK_THROWS_WITH_AS(loader.next(), doctest::Contains("image 20 and the 15 next ones"),
                         flsl::error);
    CHECK(loader.next() == nullptr);
    loader.start_epoch(0);  // the loader is usable again
    const Batch* b = loader.next();
    REQUIRE(b != nullptr);
    CHECK(b->index == 0);
  }
}

TEST_CASE("loader: folder dataset end to end, a truncated file replaced at load time") {
  flsl::data::testing::TempDir dir;
  const auto jpeg = encode_jpeg(flsl::data::testing::smooth_image(160, 120), 90);
  for (int i = 0; i < 6; ++i) write_file(dir / ("img" + std::to_string(i) + ".jpg"), jpeg);
  write_file(dir / "img2.jpg", {jpeg.data(), jpeg.size() * 2 / 3});
  std::vector<std::string> log;
  FolderOptions fo;
  fo.log = [&](const std::string& m) { log.push_back(m); };
  const FolderDataset ds(dir.path(), fo);
  REQUIRE(ds.size() == 6);
  LoaderParams lp;
  lp.batch_size = 3;
  lp.log = fo.log;
  Loader loader(ds, small_views(), lp);
  loader.start_epoch(0);
  int batches = 0;
  while (loader.next()) ++batches;
  CHECK(batches == 2);
  CHECK(loader.replaced_images() == 1);
  CHECK(log.back().find("img2.jpg") != std::string::npos);
}

TEST_CASE("loader: stopping mid-epoch and resuming at a batch gives the same batches") {
  const auto ds = small_procedural(40);
  LoaderParams lp;
  lp.batch_size = 4;
  lp.threads = 2;
  Loader loader(ds, small_views(), lp);
  const auto full = run_epoch(loader, 1);
  loader.start_epoch(1);
  CHECK(loader.next() != nullptr);
  loader.stop();  // with batches still in the pipeline
  CHECK(loader.next() == nullptr);
  loader.start_epoch(1, 6);
  std::int64_t expect = 6;
  while (const Batch* b = loader.next()) {
    CHECK(b->index == expect);
    CHECK(same_tensor(b->teacher, full[std::size_t(expect)].teacher));
    ++expect;
  }
  CHECK(expect == 10);
  loader.start_epoch(2);  // and destroying a running loader does not hang
}

TEST_CASE("loader: the usage shown in docs/data.md compiles and runs") {
  const ProceduralDataset images({.seed = 0, .size = 6, .width = 40, .height = 40});
  LoaderParams lp{.batch_size = 3, .seed = 42, .threads = 2};
  Loader loader(images, small_views(), lp);
  for (std::int64_t epoch = 0; epoch < 2; ++epoch) {
    loader.start_epoch(epoch);
    int n = 0;
    while (const Batch* b = loader.next()) n += int(b->size);
    CHECK(n == 6);
  }
}

TEST_CASE("loader: restarting while the finished epoch waits for its consumer does not hang") {
  for (std::size_t images : {1, 3}) {
    const auto ds = small_procedural(images);
    LoaderParams lp;
    lp.batch_size = 1;
    lp.in_flight = 1;
    lp.prefetch = 1;
    Loader loader(ds, small_views(), lp);
    for (int round = 0; round < 4; ++round) {
      loader.start_epoch(round);
      // the producer fills the queue and blocks on a batch or on the end-of-epoch marker
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    loader.start_epoch(9);
    std::size_t n = 0;
    while (loader.next()) ++n;
    CHECK(n == images);
  }
}
