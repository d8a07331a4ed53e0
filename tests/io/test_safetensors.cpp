// safetensors: round trips of every dtype, files written by Python, every malformed-file error,
// and the atomic write (a failed write leaves the previous file intact).
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <flsl/expr/assign.hpp>
#include <flsl/io/safetensors.hpp>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

using namespace flsl;
namespace fs = std::filesystem;

namespace {

/// A fresh directory under the system temp dir, removed at scope exit.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static int n = 0;
    path = fs::temp_directory_path() /
           ("flsl_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
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
/// A file: little-endian u64 header length, the header, then `data`.
std::string make_file(const std::string& header, const std::string& data) {
  std::string s(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(s.data(), &n, 8);
  return s + header + data;
}

/// The error message of loading `p` (empty when it loads).
std::string load_error(const fs::path& p) {
  try {
    io::safetensors_file f(p);
  } catch (const flsl::error& e) {
    return e.what();
  }
  return "";
}

template <class T>
std::vector<double> as_doubles(const Tensor<T>& t) {
  std::vector<double> out;
  for (T v : t.to_vector()) out.push_back(convert<double>(v));
  return out;
}

}  // namespace

TEST_CASE("every dtype round-trips with its shape, values and name order") {
  temp_dir dir;
  const auto f32 = Tensor<float>::from({1.5f, -2.0f, 3.25f, 1e-30f, -0.0f, 7.0f}, {2, 3});
  const auto f64 = Tensor<double>::from({0.1, -1e300, 3.0}, {3});
  const auto b16 =
      Tensor<bf16>::from({bf16(1.0f), bf16(-0.15625f), bf16(3e38f), bf16(0.1f)}, {2, 2});
  const auto i32 = Tensor<std::int32_t>::from({-2147483647 - 1, 0, 2147483647}, {3, 1});
  const auto i64 = Tensor<std::int64_t>::from({std::int64_t(1) << 40, -5}, {2});
  const auto u8 = Tensor<std::uint8_t>::from({0, 128, 255}, {3});
  const auto bl = Tensor<bool>::from({true, false, true, true}, {1, 4});
  const auto scalar = Tensor<double>::scalar(42.5);
  const auto empty = Tensor<float>::zeros({0, 3});
  io::save_safetensors(dir / "all.safetensors", {{"z.f32", f32},
                                                 {"a.f64", f64},
                                                 {"bf16", b16},
                                                 {"i32", i32},
                                                 {"i64", i64},
                                                 {"u8", u8},
                                                 {"bool", bl},
                                                 {"scalar", scalar},
                                                 {"empty", empty}});
  const io::safetensors_file f(dir / "all.safetensors");
  CHECK(f.names() == std::vector<std::string>{"z.f32", "a.f64", "bf16", "i32", "i64", "u8", "bool",
                                              "scalar", "empty"});
  CHECK(f.info("z.f32").type == dtype::f32);
  CHECK(f.info("bf16").type == dtype::bf16);
  CHECK(f.info("bool").type == dtype::boolean);
  CHECK(f.get<float>("z.f32").shape() == Shape{2, 3});
  CHECK(f.get<float>("z.f32").to_vector() == f32.to_vector());
  CHECK(std::signbit(f.get<float>("z.f32").to_vector()[4]));  // -0.0 bit for bit
  CHECK(f.get<double>("a.f64").to_vector() == f64.to_vector());
  CHECK(f.get<bf16>("bf16").to_vector() == b16.to_vector());
  CHECK(f.get<std::int32_t>("i32").to_vector() == i32.to_vector());
  CHECK(f.get<std::int32_t>("i32").shape() == Shape{3, 1});
  CHECK(f.get<std::int64_t>("i64").to_vector() == i64.to_vector());
  CHECK(f.get<std::uint8_t>("u8").to_vector() == u8.to_vector());
  CHECK(f.get<bool>("bool").to_vector() == bl.to_vector());
  CHECK(f.get<double>("scalar").shape() == Shape{});
  CHECK(f.get<double>("scalar").item() == 42.5);
  CHECK(f.get<float>("empty").shape() == Shape{0, 3});
  CHECK(f.metadata().empty());
  CHECK(std::holds_alternative<Tensor<bf16>>(f.get_any("bf16")));
  // The header is padded to a multiple of 8 bytes and starts with '{'.
  const std::string raw = read_bytes(dir / "all.safetensors");
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  CHECK(n % 8 == 0);
  CHECK(raw[8] == '{');
}

TEST_CASE("metadata round-trips and is reachable by key") {
  temp_dir dir;
  const io::metadata_map meta{{"format", "pt"},
                              {"config", R"({"arch": "vit_tiny", "epochs": 3})"},
                              {"unicode", "temp\xC3\xA9rature"}};
  io::save_safetensors(dir / "m.safetensors", {{"x", Tensor<float>::ones({2})}}, meta);
  const io::safetensors_file f(dir / "m.safetensors");
  CHECK(f.metadata() == meta);
  CHECK(f.metadata("format") == "pt");
  CHECK(f.has_metadata("config"));
  CHECK_FALSE(f.has_metadata("nope"));
  CHECK_THROWS_WITH_AS(f.metadata("nope"), doctest::Contains("no metadata key 'nope'"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(
      io::save_safetensors(dir / "bad.safetensors", {{"x", Tensor<float>::ones({1})}},
                           {{"k", std::string("\xFF\xFE")}}),
      doctest::Contains("not UTF-8"), flsl::error);
}

TEST_CASE("non-contiguous tensors are written as their row-major values") {
  temp_dir dir;
  const auto base = Tensor<float>::arange(0, 12).view({3, 4});
  const auto transposed = base.t();             // [4, 3], strides (1, 4)
  const auto stepped = base.slice(1, 0, 4, 2);  // [3, 2], every other column
  const auto broadcast = Tensor<double>::from({1.0, 2.0}).unsqueeze(0).expand({3, 2});  // stride 0
  const auto big = Tensor<float>::randn({700, 600}, 3).t();  // > 1 MiB: several staging chunks
  io::save_safetensors(dir / "v.safetensors",
                       {{"t", transposed}, {"s", stepped}, {"b", broadcast}, {"big", big}});
  const io::safetensors_file f(dir / "v.safetensors");
  CHECK(f.get<float>("t").shape() == Shape{4, 3});
  CHECK(f.get<float>("t").to_vector() == transposed.to_vector());
  CHECK(f.get<float>("t").to_vector()[1] == 4.0f);
  CHECK(f.get<float>("s").to_vector() == std::vector<float>{0, 2, 4, 6, 8, 10});
  CHECK(f.get<double>("b").to_vector() == std::vector<double>{1, 2, 1, 2, 1, 2});
  CHECK(f.get<float>("big").to_vector() == big.to_vector());
}

TEST_CASE("a file written by Python's safetensors layout is read exactly") {
  // The bytes of this Python program (the layout of the `safetensors` package: compact JSON,
  // "__metadata__" first, tensors by alignment then name, header padded with spaces to 8 bytes):
  //   ids = struct.pack('<3q', 1, -1, 1 << 40); w = struct.pack('<4f', 1.0, -2.5, 0.5, 3.0)
  //   half = struct.pack('<2H', 0x3F80, 0xBE20)          # bf16 1.0, -0.15625
  //   h = json.dumps(hdr, separators=(',', ':')).encode(); h += b' ' * ((8 - len(h) % 8) % 8)
  //   blob = struct.pack('<Q', len(h)) + h + ids + w + half
  temp_dir dir;
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},)"
      R"("weight":{"dtype":"F32","shape":[2,2],"data_offsets":[24,40]},)"
      R"("half":{"dtype":"BF16","shape":[2],"data_offsets":[40,44]}}       )";
  REQUIRE(header.size() == 216);
  const unsigned char data[44] = {0x01, 0,    0,    0,    0,    0,    0,    0,
                                  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // ids
                                  0,    0,    0,    0,    0,    0x01, 0,    0,     //
                                  0,    0,    0x80, 0x3f, 0,    0,    0x20, 0xc0,
                                  0,    0,    0,    0x3f, 0,    0,    0x40, 0x40,  // weight
                                  0x80, 0x3f, 0x20, 0xbe};                         // half
  const std::string file = make_file(header, std::string(reinterpret_cast<const char*>(data), 44));
  REQUIRE(file.size() == 268);
  write_bytes(dir / "py.safetensors", file);
  const io::safetensors_file f(dir / "py.safetensors");
  CHECK(f.metadata("format") == "pt");
  CHECK(f.names() == std::vector<std::string>{"ids", "weight", "half"});
  CHECK(f.get<std::int64_t>("ids").to_vector() ==
        std::vector<std::int64_t>{1, -1, std::int64_t(1) << 40});
  CHECK(f.get<float>("weight").to_vector() == std::vector<float>{1.0f, -2.5f, 0.5f, 3.0f});
  CHECK(as_doubles(f.get<bf16>("half")) == std::vector<double>{1.0, -0.15625});
  // Writing the same tensors back gives a file that reads the same (our own header order).
  io::save_safetensors(dir / "again.safetensors",
                       {{"ids", f.get<std::int64_t>("ids")},
                        {"weight", f.get<float>("weight")},
                        {"half", f.get<bf16>("half")}},
                       f.metadata());
  const io::safetensors_file g(dir / "again.safetensors");
  CHECK(g.get<float>("weight").to_vector() == f.get<float>("weight").to_vector());
  CHECK(read_bytes(dir / "again.safetensors").substr(8 + 216) == file.substr(8 + 216));
}

TEST_CASE("the golden fixture (written by tools/make_flsl_fixtures.py) reads as its README says") {
  const io::safetensors_file f(std::string(FLSL_FIXTURE_DIR) + "/flsl_tiny.safetensors");
  CHECK(f.metadata("format") == "flsl-fixture-v1");
  CHECK(f.metadata("generator") == "tools/make_flsl_fixtures.py");
  CHECK(f.info("input.teacher").type == dtype::f64);
  CHECK(f.get<double>("input.teacher").shape() == Shape{2, 3, 48, 48});
  CHECK(f.get<std::int64_t>("input.query.global").to_vector() ==
        std::vector<std::int64_t>{0, 3, 18, 21, 2, 3, 20, 28});
  CHECK(f.get<double>("init.head.last_layer.weight_v").shape() == Shape{64, 32});
  CHECK(f.get<double>("step1.loss").shape() == Shape{1});
  CHECK(f.get<std::int64_t>("schedule.epoch").to_vector() ==
        std::vector<std::int64_t>{0, 0, 1, 1, 2, 2, 3, 3, 4, 4});
  index_t params = 0;
  for (const auto& n : f.names())
    if (n.rfind("init.", 0) == 0) params += f.get<double>(n).numel();
  CHECK(params == 42048);  // "The file holds 42,048 parameter values."
}

TEST_CASE("typed access refuses a dtype mismatch; get_as converts floating types") {
  temp_dir dir;
  io::save_safetensors(dir / "t.safetensors", {{"d", Tensor<double>::from({0.1, 2.5})},
                                               {"f", Tensor<float>::from({0.1f, -3.0f})},
                                               {"h", Tensor<bf16>::from({bf16(0.5f), bf16(-2.0f)})},
                                               {"i", Tensor<std::int64_t>::from({1, 2})}});
  const io::safetensors_file f(dir / "t.safetensors");
  CHECK_THROWS_WITH_AS(f.get<float>("d"),
                       doctest::Contains(("tensor 'd' in '" + (dir / "t.safetensors").string() +
                                          "' is F64, not F32 as requested")
                                             .c_str()),
                       flsl::error);
  CHECK_THROWS_WITH_AS(f.get<double>("i"), doctest::Contains("is I64, not F64"), flsl::error);
  CHECK_THROWS_WITH_AS(f.get<double>("missing"), doctest::Contains("no tensor named 'missing'"),
                       flsl::error);
  CHECK(f.get_as<float>("d").to_vector() == std::vector<float>{0.1f, 2.5f});
  CHECK(f.get_as<double>("f").to_vector() == std::vector<double>{double(0.1f), -3.0});
  CHECK(f.get_as<double>("h").to_vector() == std::vector<double>{0.5, -2.0});
  CHECK(as_doubles(f.get_as<bf16>("f")) == std::vector<double>{double(float(bf16(0.1f))), -3.0});
  CHECK(f.get_as<double>("d").to_vector() == std::vector<double>{0.1, 2.5});
  CHECK_THROWS_WITH_AS(f.get_as<double>("i"), doctest::Contains("converts only F32, F64 and BF16"),
                       flsl::error);
}

TEST_CASE("malformed files are refused with the file name and the reason") {
  temp_dir dir;
  auto check = [&](const std::string& name, const std::string& bytes, const std::string& reason) {
    CAPTURE(name);
    write_bytes(dir / name, bytes);
    const std::string msg = load_error(dir / name);
    CHECK(msg.find((dir / name).string()) != std::string::npos);
    CHECK(msg.find(reason) != std::string::npos);
    if (msg.find(reason) == std::string::npos) MESSAGE(msg);
  };
  const std::string t8 = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  check("empty", "", "is empty");
  check("short", "abc", "too short");
  check("png", std::string("\x89PNG\r\n\x1a\n", 8) + std::string(40, '\0'), "looks like a PNG");
  {
    std::string b = make_file(t8, std::string(8, '\0'));
    const std::uint64_t n = 5000;
    std::memcpy(b.data(), &n, 8);
    check("len_beyond", b, "header length 5000 is beyond the end of the file");
  }
  check("truncated", make_file(t8, std::string(5, '\0')), "truncated");
  check("not_json", make_file("{not json}  ", ""), "not valid JSON");
  check("no_brace", make_file("[1, 2, 3]   ", ""), "does not start with '{'");
  check(
      "out_of_range",
      make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", std::string(8, '\0')),
      "out of range");
  check("backwards",
        make_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", std::string(4, '\0')),
        "end before they begin");
  check("overlap",
        make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  std::string(12, '\0')),
        "overlaps tensor 'a'");
  check("gap",
        make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                  std::string(12, '\0')),
        "data bytes [4, 8) belong to no tensor");
  check("trailing", make_file(t8, std::string(12, '\0')), "extra bytes after the last tensor");
  check(
      "size_mismatch",
      make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
      "needs 12 bytes");
  check("dtype", make_file(R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", "xx"),
        "has dtype F16, which flsl does not read");
  check("shape", make_file(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "x"),
        "not a list of non-negative integers");
  check("no_offsets", make_file(R"({"a":{"dtype":"U8","shape":[1]}})", "x"),
        "has no \"data_offsets\"");
  check("metadata", make_file(R"({"__metadata__":{"epoch":3}})", ""), "is not a string");
  write_bytes(dir / "valid_empty", make_file("{}      ", ""));
  CHECK(load_error(dir / "valid_empty").empty());  // "{}" alone is a valid file with no tensor

  // A missing file, a directory.
  const std::string missing = load_error(dir / "nope.safetensors");
  CHECK(missing.find("cannot open '" + (dir / "nope.safetensors").string() + "'") !=
        std::string::npos);
  CHECK(missing.find("No such file") != std::string::npos);
  CHECK(load_error(dir.path).find("is a directory") != std::string::npos);
  // A BOOL tensor with a byte other than 0/1 loads but refuses typed access.
  write_bytes(dir / "badbool",
              make_file(R"({"b":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
                        std::string("\x01\x02", 2)));
  const io::safetensors_file f(dir / "badbool");
  CHECK_THROWS_WITH_AS(f.get<bool>("b"), doctest::Contains("holds the byte 2"), flsl::error);
}

TEST_CASE("the writer refuses bad tensor lists before touching the file") {
  temp_dir dir;
  const auto x = Tensor<float>::ones({2});
  CHECK_THROWS_WITH_AS(io::save_safetensors(dir / "a", {{"x", x}, {"x", x}}),
                       doctest::Contains("tensor name 'x' appears twice"), flsl::error);
  CHECK_THROWS_WITH_AS(io::save_safetensors(dir / "a", {{"__metadata__", x}}),
                       doctest::Contains("invalid tensor name"), flsl::error);
  CHECK_FALSE(fs::exists(dir / "a"));
  CHECK_FALSE(fs::exists(dir / "a.tmp"));
}

TEST_CASE("an interrupted write leaves the previous file intact and readable") {
  temp_dir dir;
  const fs::path path = dir / "ckpt.safetensors";
  io::save_safetensors(path, {{"w", Tensor<double>::from({1.0, 2.0})}}, {{"step", "1"}});
  const std::string old_bytes = read_bytes(path);
  auto still_old = [&] {
    CHECK(read_bytes(path) == old_bytes);
    const io::safetensors_file f(path);
    CHECK(f.metadata("step") == "1");
    CHECK(f.get<double>("w").to_vector() == std::vector<double>{1.0, 2.0});
    CHECK_FALSE(fs::exists(dir / "ckpt.safetensors.tmp"));
  };

  // 1. An undefined tensor in the list.
  CHECK_THROWS_WITH_AS(io::save_safetensors(path, {{"w", Tensor<double>::from({3.0, 4.0})},
                                                   {"broken", Tensor<float>()}}),
                       doctest::Contains("tensor 'broken' is undefined"), flsl::error);
  still_old();

  // 2. The disk fills up in the middle of the write: the temporary file is a link to /dev/full,
  //    so every write fails with ENOSPC after the file was opened.
  if (fs::exists("/dev/full")) {
    fs::create_symlink("/dev/full", dir / "ckpt.safetensors.tmp");
    CHECK_THROWS_WITH_AS(
        io::save_safetensors(path, {{"w", Tensor<double>::from({5.0, 6.0})}}, {{"step", "2"}}),
        doctest::Contains("failed"), flsl::error);
    CHECK_FALSE(fs::is_symlink(dir / "ckpt.safetensors.tmp"));  // removed after the failure
    still_old();
  }

  // 3. The temporary file cannot be created (a directory is in the way).
  fs::create_directory(dir / "ckpt.safetensors.tmp");
  CHECK_THROWS_WITH_AS(io::save_safetensors(path, {{"w", Tensor<double>::from({7.0, 8.0})}}),
                       doctest::Contains("cannot create"), flsl::error);
  fs::remove(dir / "ckpt.safetensors.tmp");
  still_old();

  // A successful write replaces the file and leaves no temporary behind.
  io::save_safetensors(path, {{"w", Tensor<double>::from({9.0, 10.0})}}, {{"step", "3"}});
  const io::safetensors_file f(path);
  CHECK(f.metadata("step") == "3");
  CHECK(f.get<double>("w").to_vector() == std::vector<double>{9.0, 10.0});
  CHECK_FALSE(fs::exists(dir / "ckpt.safetensors.tmp"));
}
