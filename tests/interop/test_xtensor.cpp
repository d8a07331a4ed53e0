// xtensor interop: zero-copy views of tensors (strided ones too), tensors from xtensor
// expressions, .npy round trips and the errors a bad file gives.
#include <doctest/doctest.h>

#include <unistd.h>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <flsl/flsl.hpp>
#include <fstream>
#include <string>
#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xmath.hpp>

using namespace flsl;
namespace fs = std::filesystem;

namespace {
/// A fresh directory under the system temp dir, removed at scope exit.
struct temp_dir {
  fs::path path;
  temp_dir() {
    path = fs::temp_directory_path() / ("flsl_test_xtensor_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}
/// A version 1.0 .npy file with the given dict literal (padded to 64 bytes) and raw data.
std::string npy_file(const std::string& dict, const std::string& data) {
  std::string header = dict;
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += char(1);
  out += char(0);
  out += char(header.size() & 0xFF);
  out += char(header.size() >> 8);
  return out + header + data;
}

/// Elementwise equality of a tensor and an xtensor expression of the same shape.
template <class T, class X>
void check_same(const Tensor<T>& t, const X& x) {
  REQUIRE(x.dimension() == std::size_t(t.rank()));
  for (int d = 0; d < t.rank(); ++d) REQUIRE(x.shape()[std::size_t(d)] == std::size_t(t.size(d)));
  const auto v = t.to_vector();
  std::size_t i = 0;
  for (auto it = x.begin(); it != x.end(); ++it, ++i) CHECK(*it == v[i]);  // row-major walk
  CHECK(i == v.size());
}
}  // namespace

TEST_CASE("as_xtensor views the tensor's memory: writes go through, nothing is allocated") {
  auto t = Tensor<float>::arange(12).view({3, 4});
  const auto before = storage_stats::allocations().load();
  auto x = as_xtensor(t);
  CHECK(storage_stats::allocations().load() == before);
  CHECK(&x(0, 0) == t.data());
  CHECK(x.shape() == std::vector<std::size_t>{3, 4});
  check_same(t, x);
  x(1, 2) = -5.0f;
  CHECK(t(1, 2) == -5.0f);
  x += 1.0f;  // an xtensor computed assignment updates the tensor in place
  CHECK(t(0, 0) == 1.0f);
  CHECK(t(1, 2) == -4.0f);
  t(2, 3) = 100.0f;  // and the other way round
  CHECK(x(2, 3) == 100.0f);
}

TEST_CASE("as_xtensor follows the strides of non-contiguous views") {
  auto base = Tensor<double>::randn({4, 6, 5}, 1);
  const std::vector<std::pair<const char*, Tensor<double>>> views = {
      {"transpose", base.transpose(0, 2)},
      {"permute", base.permute({1, 2, 0})},
      {"slice with step", base.slice(1, 1, 6, 2)},
      {"narrow", base.narrow(2, 1, 3)},
      {"select", base.select(1, 4)},
      {"expand", base.select(0, 0).select(0, 0).unsqueeze(0).expand({3, 5})},
      {"rank 0", base.select(0, 1).select(0, 2).select(0, 3)},
      {"empty", base.narrow(1, 2, 0)},
  };
  for (const auto& [name, v] : views) {
    CAPTURE(name);
    const auto x = as_xtensor(v);
    check_same(v, x);
    // an xtensor expression over the view evaluates to the same values as flsl's
    xt::xarray<double> y = 2.0 * x + 1.0;
    check_same(Tensor<double>(2.0 * v + 1.0), y);
  }
  // writing through a strided view writes exactly the viewed elements
  auto z = Tensor<int>::zeros({4, 6});
  auto cols = as_xtensor(z.slice(1, 0, 6, 3));  // columns 0 and 3
  cols = xt::ones<int>({4, 2}) * 7;
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 6; ++j) CHECK(z(i, j) == (j % 3 == 0 ? 7 : 0));
  // computed assignment too
  cols += 1;
  auto rows = as_xtensor(z.t().slice(1, 1, 4, 2));  // z rows 1 and 3, transposed: [6, 2]
  xt::noalias(rows) = rows * 10;
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 6; ++j) {
      const int v = j % 3 == 0 ? 8 : 0;
      CHECK(z(i, j) == (i % 2 == 1 ? 10 * v : v));
    }
}

TEST_CASE("an extent-1 axis with a non-zero stride broadcasts correctly in xtensor") {
  auto t = Tensor<float>::arange(12).view({3, 4});
  auto col = t.narrow(1, 2, 1);  // [3, 1], strides (4, 1)
  auto row = t.narrow(0, 1, 1);  // [1, 4], strides (4, 1)
  // broadcasts to [3, 4]
  xt::xarray<float> sum = as_xtensor(col) + as_xtensor(row);
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 4; ++j) CHECK(sum(i, j) == t(index_t(i), 2) + t(1, index_t(j)));
}

TEST_CASE("from_xtensor builds a contiguous tensor from any xtensor expression") {
  xt::xarray<double> a = {{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}};
  auto t = from_xtensor<double>(a);
  CHECK(t.shape() == Shape{2, 3});
  CHECK(t.is_contiguous());
  CHECK(t.to_vector() == std::vector<double>{1, 2, 3, 4, 5, 6});
  auto f = from_xtensor<float>(xt::transpose(a) * 2.0);  // a lazy expression, converted to f32
  CHECK(f.shape() == Shape{3, 2});
  CHECK(f.to_vector() == std::vector<float>{2, 8, 4, 10, 6, 12});
  auto m = from_xtensor<bool>(a > 2.5);
  CHECK(m.to_vector() == std::vector<bool>{false, false, true, true, true, true});
  auto s = from_xtensor<std::int64_t>(xt::xarray<std::int64_t>(7));
  CHECK(s.rank() == 0);
  CHECK(s.item() == 7);
  // tensor -> xtensor -> tensor copies a strided view into fresh, contiguous memory
  auto base = Tensor<float>::randn({5, 7}, 3);
  auto back = from_xtensor<float>(as_xtensor(base.t()));
  CHECK(!back.shares_storage(base));
  CHECK(back.to_vector() == base.t().to_vector());
  auto empty = from_xtensor<float>(xt::xarray<float>::from_shape({0, 3}));
  CHECK(empty.shape() == Shape{0, 3});
}

TEST_CASE("save_npy writes the bytes numpy.save writes") {
  // The dict and the file size numpy 1.24's np.save gives for the same arrays; the header is the
  // dict, spaces, '\n', 118 bytes in all here.
  temp_dir dir;
  auto check_file = [&](const std::string& name, const std::string& dict, std::size_t size) {
    CAPTURE(name);
    const std::string b = read_bytes(dir / name);
    CHECK(b.size() == size);
    CHECK(b.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
    const std::size_t n = std::size_t(std::uint8_t(b[8])) | std::size_t(std::uint8_t(b[9])) << 8;
    CHECK(n == 118);
    CHECK(b.substr(10, n) == dict + std::string(n - 1 - dict.size(), ' ') + "\n");
  };
  save_npy(dir / "a.npy", Tensor<float>::arange(6).view({2, 3}));
  check_file("a.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 152);
  save_npy(dir / "b.npy", Tensor<double>::scalar(2.5));
  check_file("b.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (), }", 136);
  save_npy(dir / "c.npy", Tensor<bool>::from({true, false}));
  check_file("c.npy", "{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", 130);
  save_npy(dir / "d.npy", Tensor<std::int64_t>::zeros({0, 4}));
  check_file("d.npy", "{'descr': '<i8', 'fortran_order': False, 'shape': (0, 4), }", 128);
  const std::string a = read_bytes(dir / "a.npy");
  std::vector<float> values(6);
  std::memcpy(values.data(), a.data() + 128, 24);
  CHECK(values == std::vector<float>{0, 1, 2, 3, 4, 5});
}

TEST_CASE_TEMPLATE("npy round trip keeps dtype, shape and values", T, float, double, std::int64_t,
                   bool, std::int32_t, std::uint8_t) {
  temp_dir dir;
  for (const Shape& shape :
       {Shape{2, 3, 4}, Shape{7}, Shape{}, Shape{0, 5}, Shape{1, 1, 1, 1, 3}}) {
    CAPTURE(shape);
    auto u = Tensor<double>::rand(shape, 5, 0, 0.0, 200.0);  // [0, 200): fits every type
    Tensor<T> t;
    if constexpr (std::is_same_v<T, bool>)
      t = u > 100.0;
    else
      t = cast<T>(u);
    save_npy(dir / "x.npy", t);
    auto back = load_npy<T>(dir / "x.npy");
    CHECK(back.shape() == t.shape());
    CHECK(back.to_vector() == t.to_vector());
  }
}

TEST_CASE("save_npy writes a non-contiguous view in row-major order") {
  temp_dir dir;
  auto base = Tensor<double>::randn({6, 8}, 9);
  const std::vector<Tensor<double>> views = {base.t(), base.slice(1, 1, 8, 3),
                                             base.select(1, 2).unsqueeze(1).expand({6, 4})};
  for (const auto& v : views) {
    save_npy(dir / "v.npy", v);
    auto back = load_npy<double>(dir / "v.npy");
    CHECK(back.shape() == v.shape());
    CHECK(back.to_vector() == v.to_vector());
  }
}

TEST_CASE("load_npy reads Fortran-order and big-endian files as numpy does") {
  temp_dir dir;
  // np.asfortranarray(np.arange(6.0).reshape(2, 3)): memory holds the columns
  std::string data;
  for (double v : {0.0, 3.0, 1.0, 4.0, 2.0, 5.0}) data.append(reinterpret_cast<const char*>(&v), 8);
  write_bytes(dir / "f.npy",
              npy_file("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", data));
  auto f = load_npy<double>(dir / "f.npy");
  CHECK(f.shape() == Shape{2, 3});
  CHECK(f.is_contiguous());
  CHECK(f.to_vector() == std::vector<double>{0, 1, 2, 3, 4, 5});
  // np.arange(3, dtype='>i4')
  write_bytes(dir / "b.npy", npy_file("{'descr': '>i4', 'fortran_order': False, 'shape': (3,), }",
                                      std::string("\0\0\0\0\0\0\0\x01\0\0\x01\0", 12)));
  CHECK(load_npy<std::int32_t>(dir / "b.npy").to_vector() == std::vector<std::int32_t>{0, 1, 256});
}

TEST_CASE("load_npy errors name the file and what was wrong") {
  temp_dir dir;
  const std::string missing = (dir / "missing.npy").string();
  CHECK_THROWS_WITH_AS(
      load_npy<float>(missing),
      doctest::Contains(
          ("load_npy: cannot open '" + missing + "': No such file or directory").c_str()),
      flsl::error);

  save_npy(dir / "d.npy", Tensor<double>::zeros({2, 3}));
  CHECK_THROWS_WITH_AS(load_npy<float>(dir / "d.npy"),
                       doctest::Contains("d.npy' holds f64 [2, 3] (descr '<f8'), but f32 (descr "
                                         "'<f4') was requested"),
                       flsl::error);
  save_npy(dir / "i.npy", Tensor<std::int32_t>::zeros({4}));  // same kind, other word size
  CHECK_THROWS_WITH_AS(load_npy<std::int64_t>(dir / "i.npy"),
                       doctest::Contains("i.npy' holds i32 [4] (descr '<i4'), but i64"),
                       flsl::error);

  save_npy(dir / "t.npy", Tensor<float>::zeros({10, 10}));
  fs::resize_file(dir / "t.npy", 128 + 399);  // one byte short
  CHECK_THROWS_WITH_AS(load_npy<float>(dir / "t.npy"),
                       doctest::Contains("t.npy' is truncated: f32 [10, 10] needs 400 data bytes "
                                         "after the 128-byte header, the file has 399"),
                       flsl::error);
  fs::resize_file(dir / "t.npy", 50);
  CHECK_THROWS_WITH_AS(load_npy<float>(dir / "t.npy"),
                       doctest::Contains("t.npy' ends inside its header (40 of 118 header bytes)"),
                       flsl::error);

  write_bytes(dir / "n.npy", "not a numpy file at all");
  CHECK_THROWS_WITH_AS(load_npy<float>(dir / "n.npy"),
                       doctest::Contains("n.npy' is not a .npy file"), flsl::error);
  write_bytes(dir / "m.npy", npy_file("{'descr': '<f4', 'shape': (2, 3), }", ""));
  CHECK_THROWS_WITH_AS(load_npy<float>(dir / "m.npy"),
                       doctest::Contains("m.npy': malformed header"), flsl::error);
  write_bytes(dir / "c.npy",
              npy_file("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", "12345678"));
  CHECK_THROWS_WITH_AS(load_npy<float>(dir / "c.npy"),
                       doctest::Contains("holds '<c8' (no flsl dtype) [1]"), flsl::error);
}

TEST_CASE("save_npy errors name the file") {
  const std::string bad = "/nonexistent-flsl-dir/x.npy";
  CHECK_THROWS_WITH_AS(
      save_npy(bad, Tensor<float>::zeros({2})),
      doctest::Contains(("save_npy: cannot open '" + bad + "' for writing").c_str()), flsl::error);
}
