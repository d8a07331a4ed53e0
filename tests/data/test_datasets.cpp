// Datasets: the folder scan (order, labels, bad files skipped and reported, empty folder error,
// file lists) and the procedural dataset (determinism, masks, classes not given away by colour).
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include <flsl/data/encode.hpp>
#include <flsl/data/folder_dataset.hpp>
#include <flsl/data/procedural.hpp>

#include "test_images.hpp"

using namespace flsl::data;
using flsl::data::testing::smooth_image;
using flsl::data::testing::TempDir;

namespace {

/// A folder of good and bad files:
///   b/one.png  a/two.jpg  a/sub/three.JPG  top.jpeg   (good)
///   a/empty.jpg  b/text.png  a/cut.jpg (header intact, data cut)  README.txt (ignored)
struct MixedFolder {
  TempDir dir;
  MixedFolder() {
    std::filesystem::create_directories(dir / "a/sub");
    std::filesystem::create_directories(dir / "b");
    std::filesystem::create_directories(dir / ".hidden");
    const auto jpeg = encode_jpeg(smooth_image(160, 120), 90);
    write_file(dir / "b/one.png", encode_png(smooth_image(20, 10)));
    write_file(dir / "a/two.jpg", jpeg);
    write_file(dir / "a/sub/three.JPG", jpeg);
    write_file(dir / "top.jpeg", jpeg);
    write_file(dir / "a/empty.jpg", {});
    const std::string text = "not an image";
    write_file(dir / "b/text.png",
               {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    write_file(dir / "a/cut.jpg", {jpeg.data(), jpeg.size() * 2 / 3});
    write_file(dir / "README.txt",
               {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    write_file(dir / ".hidden/x.jpg", jpeg);
  }
};

std::uint64_t fnv1a(const std::uint8_t* p, std::size_t n, std::uint64_t h = 0xcbf29ce484222325ull) {
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

}  // namespace

TEST_CASE(
    "folder scan: sorted order, sub-folder labels, bad files skipped with a warning naming them") {
  MixedFolder f;
  std::vector<std::string> log;
  FolderOptions opt;
  opt.log = [&](const std::string& m) { log.push_back(m); };
  opt.check = ScanCheck::decode;
  const FolderDataset ds(f.dir.path(), opt);
  REQUIRE(ds.size() == 4);
  CHECK(ds.relative_path(0) == "a/sub/three.JPG");
  CHECK(ds.relative_path(1) == "a/two.jpg");
  CHECK(ds.relative_path(2) == "b/one.png");
  CHECK(ds.relative_path(3) == "top.jpeg");
  CHECK(ds.classes() == std::vector<std::string>{"a", "b"});
  CHECK(ds.label(0) == 0);
  CHECK(ds.label(1) == 0);
  CHECK(ds.label(2) == 1);
  CHECK(ds.label(3) == -1);
  const ScanSummary& s = ds.summary();
  CHECK(s.candidates == 7);
  CHECK(s.images == 4);
  CHECK(s.ignored == 1);  // README.txt; hidden folders are not entered
  REQUIRE(s.skipped.size() == 3);
  for (const char* bad : {"empty.jpg", "text.png", "cut.jpg"}) {
    CAPTURE(bad);
    int warned = 0;
    for (const auto& m : log)
      warned += m.find("warning") != std::string::npos && m.find(bad) != std::string::npos;
    CHECK(warned == 1);
  }
  CHECK(log.back().find("4 images, 3 skipped") != std::string::npos);

  SourceImage src;
  ds.load(2, src);
  CHECK(src.encoded);
  CHECK(src.label == 1);
  CHECK(src.name.find("one.png") != std::string::npos);
  CHECK(decode_image(src.bytes, src.name).width == 20);
}

TEST_CASE(
    "folder scan: the header check lets a truncated file through, the decode check does not") {
  MixedFolder f;
  FolderOptions opt;
  opt.log = [](const std::string&) {};
  opt.check = ScanCheck::header;
  const FolderDataset ds(f.dir.path(), opt);
  CHECK(ds.size() == 5);  // cut.jpg has a valid header; the loader replaces it when it fails
  CHECK(ds.summary().skipped.size() == 2);
  opt.class_subfolders = false;
  opt.check = ScanCheck::extension;
  const FolderDataset all(f.dir.path(), opt);
  CHECK(all.size() == 6);  // only the empty file is refused without reading
  for (std::size_t i = 0; i < all.size(); ++i) CHECK(all.label(i) == -1);
}

TEST_CASE("a folder without a readable image is an error naming the folder") {
  TempDir dir;
  write_file(dir / "broken.jpg", std::vector<std::uint8_t>{0xFF, 0xD8, 0xFF, 0x00});
  FolderOptions opt;
  opt.log = [](const std::string&) {};
  CHECK_THROWS_WITH_AS(FolderDataset(dir.path(), opt),
                       doctest::Contains(dir.path().string().c_str()), flsl::error);
  CHECK_THROWS_WITH_AS(FolderDataset(dir / "missing", opt), doctest::Contains("missing"),
                       flsl::error);
}

TEST_CASE("file list: listed paths in their sorted order, missing files skipped") {
  MixedFolder f;
  const std::string list = "# images\nb/one.png\n\ntop.jpeg\r\na/two.jpg\nnot/there.jpg\n";
  write_file(f.dir / "list.txt", {reinterpret_cast<const std::uint8_t*>(list.data()), list.size()});
  std::vector<std::string> log;
  FolderOptions opt;
  opt.log = [&](const std::string& m) { log.push_back(m); };
  const auto ds = FolderDataset::from_file_list(f.dir / "list.txt", f.dir.path(), opt);
  REQUIRE(ds.size() == 3);
  CHECK(ds.relative_path(0) == "a/two.jpg");
  CHECK(ds.relative_path(2) == "top.jpeg");
  CHECK(ds.summary().skipped.size() == 1);
  CHECK(log.front().find("not/there.jpg") != std::string::npos);
}

TEST_CASE("procedural dataset: same (seed, split, index), same pixels; splits and seeds differ") {
  ProceduralParams p;
  p.seed = 7;
  p.width = 64;
  p.height = 48;
  p.size = 100;
  const ProceduralDataset train(p);
  ProceduralSample a, b;
  train.render(0, a);
  train.render(0, b);
  CHECK(a.image.pixels == b.image.pixels);
  CHECK(a.classes == b.classes);
  CHECK(a.instances == b.instances);
  // golden value: the same on every machine and compiler (integer arithmetic only)
  const std::uint64_t h = fnv1a(a.classes.data(), a.classes.size(),
                                fnv1a(a.image.pixels.data(), a.image.pixels.size()));
  CHECK(h == 0xa599aa0c4231cdd4ull);
  train.render(1, b);
  CHECK(a.image.pixels != b.image.pixels);
  ProceduralParams pv = p;
  pv.split = Split::val;
  ProceduralDataset(pv).render(0, b);
  CHECK(a.image.pixels != b.image.pixels);
  ProceduralParams ps = p;
  ps.seed = 8;
  ProceduralDataset(ps).render(0, b);
  CHECK(a.image.pixels != b.image.pixels);
  // any size
  ProceduralParams odd = p;
  odd.width = 37;
  odd.height = 23;
  ProceduralDataset(odd).render(5, b);
  CHECK(b.image.width == 37);
  CHECK(b.classes.size() == 37u * 23u);
}

TEST_CASE("procedural masks: classes and instances agree; several objects; every class occurs") {
  ProceduralParams p;
  p.width = 96;
  p.height = 96;
  p.size = 60;
  const ProceduralDataset ds(p);
  ProceduralSample s;
  std::set<int> classes_seen;
  double visible_objects = 0;
  int occluded_images = 0;
  for (std::size_t i = 0; i < ds.size(); ++i) {
    ds.render(i, s);
    std::set<int> visible;
    for (std::size_t k = 0; k < s.classes.size(); ++k) {
      const int inst = s.instances[k], cls = s.classes[k];
      REQUIRE((inst == 0) == (cls == 0));
      if (inst > 0) {
        REQUIRE(inst <= int(s.instance_class.size()));
        REQUIRE(s.instance_class[std::size_t(inst - 1)] == cls);
        visible.insert(inst);
        classes_seen.insert(cls);
      }
    }
    visible_objects += double(visible.size());
    // an object drawn earlier that another covers: some of its boundary neighbours belong to a
    // later one
    bool occluded = false;
    for (int y = 1; y < p.height && !occluded; ++y)
      for (int x = 1; x < p.width && !occluded; ++x) {
        const int here = s.instances[std::size_t(y * p.width + x)];
        const int left = s.instances[std::size_t(y * p.width + x - 1)];
        occluded = here > 0 && left > 0 && here != left;
      }
    occluded_images += occluded;
    CHECK(s.dominant_class >= 1);
  }
  CHECK(visible_objects / double(ds.size()) >= 2.0);
  CHECK(occluded_images >= 10);
  CHECK(classes_seen.size() == procedural_num_classes);
}

TEST_CASE("procedural background is smooth and low-contrast; textured objects are not") {
  // mean absolute difference between horizontal neighbours of the same region (noise included):
  // the background's must stay far below every textured class's (the plain ring is one colour)
  ProceduralParams p;
  p.width = 96;
  p.height = 96;
  p.size = 100;
  const ProceduralDataset ds(p);
  ProceduralSample s;
  std::array<double, procedural_num_classes + 1> diff{}, count{};
  for (std::size_t i = 0; i < ds.size(); ++i) {
    ds.render(i, s);
    for (int y = 0; y < p.height; ++y)
      for (int x = 1; x < p.width; ++x) {
        const std::size_t k = std::size_t(y * p.width + x);
        if (s.instances[k] != s.instances[k - 1]) continue;
        double d = 0;
        for (int c = 0; c < 3; ++c)
          d += std::abs(int(s.image.pixels[3 * k + std::size_t(c)]) -
                        int(s.image.pixels[3 * (k - 1) + std::size_t(c)]));
        diff[s.classes[k]] += d / 3;
        count[s.classes[k]] += 1;
      }
  }
  const double background = diff[0] / count[0];
  CHECK(background < 8.0);  // the +-8 pixel noise and a slow blend of two close colours
  for (int cls = 1; cls <= procedural_num_classes; ++cls) {
    CAPTURE(cls);
    REQUIRE(count[std::size_t(cls)] > 1000);
    const double mean = diff[std::size_t(cls)] / count[std::size_t(cls)];
    if (std::string(procedural_class_names[std::size_t(cls)]) == "plain ring")
      CHECK(mean < 8.0);
    else
      CHECK(mean > 1.5 * background);
  }
}

TEST_CASE("procedural classes are not given away by colour: every class spans the colour range") {
  ProceduralParams p;
  p.width = 64;
  p.height = 64;
  p.size = 200;
  const ProceduralDataset ds(p);
  ProceduralSample s;
  // per class: mean colour of each visible object, then the spread of those means
  std::array<std::vector<std::array<double, 3>>, procedural_num_classes + 1> means;
  for (std::size_t i = 0; i < ds.size(); ++i) {
    ds.render(i, s);
    std::vector<std::array<double, 4>> acc(s.instance_class.size());
    for (std::size_t k = 0; k < s.instances.size(); ++k)
      if (const int inst = s.instances[k]; inst > 0) {
        auto& a = acc[std::size_t(inst - 1)];
        for (int c = 0; c < 3; ++c) a[std::size_t(c)] += s.image.pixels[3 * k + std::size_t(c)];
        a[3] += 1;
      }
    for (std::size_t o = 0; o < acc.size(); ++o)
      if (acc[o][3] > 30)
        means[s.instance_class[o]].push_back(
            {acc[o][0] / acc[o][3], acc[o][1] / acc[o][3], acc[o][2] / acc[o][3]});
  }
  for (int cls = 1; cls <= procedural_num_classes; ++cls) {
    CAPTURE(cls);
    const auto& m = means[std::size_t(cls)];
    REQUIRE(m.size() >= 20);
    for (int c = 0; c < 3; ++c) {
      double mean = 0, var = 0;
      for (const auto& v : m) mean += v[std::size_t(c)];
      mean /= double(m.size());
      for (const auto& v : m) var += (v[std::size_t(c)] - mean) * (v[std::size_t(c)] - mean);
      const double sd = std::sqrt(var / double(m.size()));
      CHECK(std::abs(mean - 128) < 30);  // no class has a typical colour
      CHECK(sd > 30);                    // and each spans the range
    }
  }
}
