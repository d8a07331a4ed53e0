// The safetensors format: read a file into named tensors with checked offsets, write one
// atomically (temporary file, fsync, rename) so that a crash never leaves a broken file.
//
// Layout: 8 bytes little-endian u64 header length N; N bytes of JSON
// {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ..}
// (padded with spaces); then the data area, each tensor C-contiguous little-endian in bytes [b, e).
// Readable by the Python `safetensors` package, PyTorch and timm.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace flsl::io {

static_assert(std::endian::native == std::endian::little,
              "flsl::io::safetensors assumes a little-endian host");
static_assert(sizeof(bool) == 1, "safetensors BOOL is one byte");

/// The "__metadata__" block: string keys to string values.
using metadata_map = std::map<std::string, std::string>;

/// A tensor of any element type the format and the library share.
using any_tensor = std::variant<Tensor<float>, Tensor<double>, Tensor<bf16>, Tensor<std::int32_t>,
                                Tensor<std::int64_t>, Tensor<std::uint8_t>, Tensor<bool>>;

/// One tensor to write, under its name.
struct named_tensor {
  std::string name;
  any_tensor tensor;
};

/// The safetensors name of a dtype ("F32", "BF16", "BOOL", ...).
constexpr std::string_view safetensors_dtype(dtype d) {
  switch (d) {
    case dtype::f32:
      return "F32";
    case dtype::f64:
      return "F64";
    case dtype::bf16:
      return "BF16";
    case dtype::i32:
      return "I32";
    case dtype::i64:
      return "I64";
    case dtype::u8:
      return "U8";
    case dtype::boolean:
      return "BOOL";
  }
  return "?";
}
/// The dtype of a safetensors name, if the library supports it.
inline std::optional<dtype> parse_safetensors_dtype(std::string_view s) {
  for (dtype d :
       {dtype::f32, dtype::f64, dtype::bf16, dtype::i32, dtype::i64, dtype::u8, dtype::boolean})
    if (safetensors_dtype(d) == s) return d;
  return std::nullopt;
}

namespace detail {

/// Headers above this size are refused (the limit of the reference Rust implementation).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

inline std::string quoted(const std::filesystem::path& p) {
  std::string s(1, '\'');  // (not "'" + string: GCC 12 raises a false -Wrestrict on it)
  s += p.string();
  s += '\'';
  return s;
}

/// What the first bytes of a non-safetensors file look like, for error messages ("" if unknown).
inline std::string sniff_format(const unsigned char* b, std::size_t n) {
  auto starts = [&](std::initializer_list<unsigned char> sig) {
    return n >= sig.size() && std::equal(sig.begin(), sig.end(), b);
  };
  if (starts({0x89, 'P', 'N', 'G'})) return " (it looks like a PNG image)";
  if (starts({0xFF, 0xD8, 0xFF})) return " (it looks like a JPEG image)";
  if (starts({'P', 'K', 0x03, 0x04}))
    return " (it looks like a zip archive, e.g. a torch.save .pth file)";
  if (starts({0x80})) return " (it looks like a Python pickle)";
  if (starts({'{'})) return " (it looks like a JSON text without the 8-byte length prefix)";
  return "";
}

/// Writes all of [p, p + n) to fd, retrying short writes and EINTR; false with errno on failure.
inline bool write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    c += w;
    n -= std::size_t(w);
  }
  return true;
}

/// Element count of a shape and its byte size, or nullopt on overflow.
inline std::optional<std::uint64_t> checked_bytes(const std::vector<std::uint64_t>& shape,
                                                  std::size_t elem) {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape) {
    if (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / d) return std::nullopt;
    n *= d;
  }
  if (n > std::numeric_limits<std::uint64_t>::max() / elem) return std::nullopt;
  return n * elem;
}

}  // namespace detail

/// A safetensors file read into memory: every tensor's dtype, shape and bytes, and the metadata.
/// Opening checks the whole file (header, dtypes, shapes, offsets in range, contiguous and not
/// overlapping), so every later access is valid. Errors name the file and what is wrong.
class safetensors_file {
 public:
  struct entry {
    dtype type;
    Shape shape;
    std::uint64_t begin = 0, end = 0;  // byte range in the data area
  };

  explicit safetensors_file(const std::filesystem::path& path) : path_(path) { load(); }

  const std::filesystem::path& path() const { return path_; }
  /// Tensor names in data order (as written).
  const std::vector<std::string>& names() const { return order_; }
  std::size_t size() const { return order_.size(); }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  /// dtype, shape and byte range of a tensor.
  const entry& info(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) missing(name);
    return it->second;
  }
  /// The raw little-endian bytes of a tensor.
  const std::byte* bytes(const std::string& name) const { return data_.get() + info(name).begin; }

  const metadata_map& metadata() const { return metadata_; }
  bool has_metadata(const std::string& key) const { return metadata_.count(key) != 0; }
  /// A metadata value; throws naming the file and the key when it is absent.
  const std::string& metadata(const std::string& key) const {
    auto it = metadata_.find(key);
    FLSL_CHECK(it != metadata_.end(), "safetensors: ", detail::quoted(path_),
               " has no metadata key '", key, "'");
    return it->second;
  }

  /// The tensor `name` as Tensor<T> (a copy); its dtype must be exactly T's.
  template <class T>
  Tensor<T> get(const std::string& name) const {
    const entry& e = info(name);
    FLSL_CHECK(e.type == dtype_of<T>, "safetensors: tensor '", name, "' in ", detail::quoted(path_),
               " is ", safetensors_dtype(e.type), ", not ", safetensors_dtype(dtype_of<T>),
               " as requested",
               is_floating_tag(e.type) && is_floating<T> ? " (get_as converts)" : "");
    auto t = Tensor<T>::empty(e.shape);
    if (e.end > e.begin)
      std::memcpy(static_cast<void*>(t.data()), data_.get() + e.begin, e.end - e.begin);
    if constexpr (std::is_same_v<T, bool>) {
      const auto* b = reinterpret_cast<const std::uint8_t*>(data_.get() + e.begin);
      for (std::uint64_t i = 0; i < e.end - e.begin; ++i)
        FLSL_CHECK(b[i] <= 1, "safetensors: BOOL tensor '", name, "' in ", detail::quoted(path_),
                   " holds the byte ", int(b[i]), " at element ", i, " (only 0 and 1 are valid)");
    }
    return t;
  }
  /// The tensor `name` converted to the floating type T (from F32, F64 or BF16).
  template <class T>
  Tensor<T> get_as(const std::string& name) const {
    static_assert(is_floating<T>, "get_as converts between floating types (float, double, bf16)");
    const entry& e = info(name);
    switch (e.type) {
      case dtype::f32:
        return get<float>(name).template to<T>();
      case dtype::f64:
        return get<double>(name).template to<T>();
      case dtype::bf16:
        return get<bf16>(name).template to<T>();
      default:
        fail("safetensors: tensor '", name, "' in ", detail::quoted(path_), " is ",
             safetensors_dtype(e.type), "; get_as<", safetensors_dtype(dtype_of<T>),
             "> converts only F32, F64 and BF16");
    }
  }
  /// The tensor `name` in its stored type.
  any_tensor get_any(const std::string& name) const {
    switch (info(name).type) {
      case dtype::f32:
        return get<float>(name);
      case dtype::f64:
        return get<double>(name);
      case dtype::bf16:
        return get<bf16>(name);
      case dtype::i32:
        return get<std::int32_t>(name);
      case dtype::i64:
        return get<std::int64_t>(name);
      case dtype::u8:
        return get<std::uint8_t>(name);
      case dtype::boolean:
        return get<bool>(name);
    }
    fail("safetensors: unreachable dtype");
  }

 private:
  static constexpr bool is_floating_tag(dtype d) {
    return d == dtype::f32 || d == dtype::f64 || d == dtype::bf16;
  }
  template <class... P>
  [[noreturn]] void bad(const P&... parts) const {
    fail("safetensors: ", detail::quoted(path_), ": ", parts...);
  }
  [[noreturn]] void missing(const std::string& name) const {
    std::string some;
    for (std::size_t i = 0; i < order_.size() && i < 5; ++i) some += (i ? ", " : "") + order_[i];
    if (order_.size() > 5) some += ", ...";
    fail("safetensors: ", detail::quoted(path_), " has no tensor named '", name, "' (it holds ",
         order_.size(), " tensors", order_.empty() ? "" : ": ", some, ")");
  }

  void load() {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path_, ec))
      fail("safetensors: ", detail::quoted(path_), " is a directory, not a safetensors file");
    std::ifstream in(path_, std::ios::binary);
    if (!in) fail("safetensors: cannot open ", detail::quoted(path_), ": ", std::strerror(errno));
    const std::uint64_t file_size = fs::file_size(path_, ec);
    if (ec) bad("cannot read the file size: ", ec.message());
    if (file_size == 0) bad("the file is empty (0 bytes), not a safetensors file");
    unsigned char head[8] = {};
    const std::size_t got = file_size < 8 ? std::size_t(file_size) : 8;
    if (!in.read(reinterpret_cast<char*>(head), std::streamsize(got))) bad("read error");
    const std::string looks = detail::sniff_format(head, got);
    if (file_size < 8)
      bad("the file has only ", file_size,
          " bytes, too short for a safetensors file (8-byte header length first)", looks);
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, head, 8);
    if (header_len > detail::safetensors_max_header)
      bad("header length ", header_len, " exceeds the 100 MB limit: not a safetensors file", looks);
    if (header_len > file_size - 8)
      bad("header length ", header_len, " is beyond the end of the file (", file_size,
          " bytes): the file is truncated or not safetensors", looks);
    std::string header(std::size_t(header_len), '\0');
    if (!in.read(header.data(), std::streamsize(header_len))) bad("read error in the header");
    const std::uint64_t data_size = file_size - 8 - header_len;
    auto data = std::make_unique_for_overwrite<std::byte[]>(
        std::size_t(std::max<std::uint64_t>(data_size, 1)));
    if (data_size > 0 && !in.read(reinterpret_cast<char*>(data.get()), std::streamsize(data_size)))
      bad("read error in the data area");
    data_ = std::move(data);
    parse_header(header, data_size);
  }

  void parse_header(const std::string& header, std::uint64_t data_size) {
    const auto first = header.find_first_not_of(" \t\r\n");
    if (first == std::string::npos || header[first] != '{')
      bad("the header does not start with '{': not a safetensors file");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(header);
    } catch (const nlohmann::json::exception& e) {
      bad("the header is not valid JSON: ", e.what());
    }
    if (!j.is_object()) bad("the header is not a JSON object");
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "__metadata__") {
        parse_metadata(it.value());
        continue;
      }
      entries_.emplace(it.key(), parse_entry(it.key(), it.value(), data_size));
      order_.push_back(it.key());
    }
    // Data order; then every byte of the data area belongs to exactly one tensor.
    std::sort(order_.begin(), order_.end(), [&](const std::string& a, const std::string& b) {
      const entry &ea = entries_.at(a), &eb = entries_.at(b);
      return ea.begin != eb.begin ? ea.begin < eb.begin : ea.end < eb.end;
    });
    std::uint64_t pos = 0;
    const std::string* prev = nullptr;
    for (const std::string& n : order_) {
      const entry& e = entries_.at(n);
      if (e.begin < pos)
        bad("tensor '", n, "' (data bytes [", e.begin, ", ", e.end, ")) overlaps tensor '", *prev,
            "' (ending at byte ", pos, ")");
      if (e.begin > pos)
        bad("data bytes [", pos, ", ", e.begin, ") belong to no tensor (before tensor '", n, "')");
      pos = e.end;
      prev = &n;
    }
    if (pos != data_size)
      bad("the data area has ", data_size, " bytes but the tensors use ", pos,
          " (extra bytes after the last tensor)");
  }

  void parse_metadata(const nlohmann::json& m) {
    if (!m.is_object()) bad("__metadata__ is not a JSON object");
    for (auto it = m.begin(); it != m.end(); ++it) {
      if (!it.value().is_string())
        bad("__metadata__ value of '", it.key(), "' is not a string (", it.value().type_name(),
            ")");
      metadata_.emplace(it.key(), it.value().get<std::string>());
    }
  }

  entry parse_entry(const std::string& name, const nlohmann::json& v,
                    std::uint64_t data_size) const {
    if (!v.is_object()) bad("the header entry of tensor '", name, "' is not an object");
    auto field = [&](const char* key) -> const nlohmann::json& {
      auto it = v.find(key);
      if (it == v.end()) bad("tensor '", name, "' has no \"", key, "\" in the header");
      return *it;
    };
    const auto& dt = field("dtype");
    if (!dt.is_string()) bad("tensor '", name, "': \"dtype\" is not a string");
    const auto type = parse_safetensors_dtype(dt.get<std::string>());
    if (!type)
      bad("tensor '", name, "' has dtype ", dt.get<std::string>(),
          ", which flsl does not read (supported: F32, F64, BF16, I64, I32, U8, BOOL)");
    const auto& sh = field("shape");
    if (!sh.is_array()) bad("tensor '", name, "': \"shape\" is not an array");
    if (sh.size() > std::size_t(max_rank))
      bad("tensor '", name, "' has rank ", sh.size(), ", more than flsl's maximum ", max_rank);
    std::vector<std::uint64_t> dims;
    for (const auto& d : sh) {
      if (!d.is_number_unsigned())
        bad("tensor '", name, "': shape ", sh.dump(), " is not a list of non-negative integers");
      dims.push_back(d.get<std::uint64_t>());
    }
    const auto& off = field("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      bad("tensor '", name, "': data_offsets ", off.dump(),
          " is not a pair of non-negative integers");
    entry e;
    e.type = *type;
    e.begin = off[0].get<std::uint64_t>();
    e.end = off[1].get<std::uint64_t>();
    for (std::uint64_t d : dims) {
      if (d > std::uint64_t(std::numeric_limits<index_t>::max()))
        bad("tensor '", name, "': extent ", d, " is too large");
      e.shape.push_back(index_t(d));
    }
    if (e.end < e.begin)
      bad("tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] end before they begin");
    const auto need = detail::checked_bytes(dims, dtype_size(e.type));
    if (!need) bad("tensor '", name, "': shape ", sh.dump(), " overflows the byte count");
    if (e.end - e.begin != *need)
      bad("tensor '", name, "' of dtype ", safetensors_dtype(e.type), " and shape ", e.shape,
          " needs ", *need, " bytes but its data_offsets [", e.begin, ", ", e.end, "] span ",
          e.end - e.begin);
    if (e.end > data_size)
      bad("tensor '", name, "' needs data bytes [", e.begin, ", ", e.end,
          ") but the data area has only ", data_size,
          " bytes: the file is truncated or its offsets are out of range");
    return e;
  }

  std::filesystem::path path_;
  std::shared_ptr<const std::byte[]> data_;
  std::map<std::string, entry> entries_;
  std::vector<std::string> order_;
  metadata_map metadata_;
};

/// Reads a safetensors file (see safetensors_file).
inline safetensors_file load_safetensors(const std::filesystem::path& path) {
  return safetensors_file(path);
}

namespace detail {

inline dtype any_dtype(const any_tensor& t) {
  return std::visit([](const auto& x) { return std::remove_cvref_t<decltype(x)>::dtype_tag(); }, t);
}

/// The JSON header (padded with spaces to a multiple of 8 bytes) for `tensors`, after checking
/// names, definedness and metadata.
inline std::string safetensors_header(const std::filesystem::path& path,
                                      const std::vector<named_tensor>& tensors,
                                      const metadata_map& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = std::move(m);
  }
  std::uint64_t off = 0;
  for (const auto& nt : tensors) {
    FLSL_CHECK(!nt.name.empty() && nt.name != "__metadata__", "safetensors: writing ", quoted(path),
               ": invalid tensor name '", nt.name, "'");
    FLSL_CHECK(!h.contains(nt.name), "safetensors: writing ", quoted(path), ": tensor name '",
               nt.name, "' appears twice");
    std::visit(
        [&](const auto& t) {
          FLSL_CHECK(t.defined(), "safetensors: writing ", quoted(path), ": tensor '", nt.name,
                     "' is undefined");
          using T = typename std::remove_cvref_t<decltype(t)>::value_type;
          const std::uint64_t bytes = std::uint64_t(t.numel()) * sizeof(T);
          h[nt.name] = {{"dtype", safetensors_dtype(dtype_of<T>)},
                        {"shape", t.shape().vec()},
                        {"data_offsets", {off, off + bytes}}};
          off += bytes;
        },
        nt.tensor);
  }
  std::string s;
  try {
    s = h.dump();
  } catch (const nlohmann::json::exception& e) {
    fail("safetensors: writing ", quoted(path), ": a name or metadata string is not UTF-8 (",
         e.what(), ")");
  }
  s.append((8 - s.size() % 8) % 8, ' ');
  return s;
}

/// Writes the tensor's elements in row-major order, little-endian (strided views are gathered
/// through a bounded staging buffer).
template <class T>
bool write_tensor_data(int fd, const Tensor<T>& t) {
  const std::size_t bytes = std::size_t(t.numel()) * sizeof(T);
  if (bytes == 0) return true;
  if (t.is_contiguous()) return write_all(fd, t.data(), bytes);
  constexpr std::size_t chunk = (std::size_t(1) << 20) / sizeof(T);
  const std::size_t cap = std::min<std::size_t>(chunk, std::size_t(t.numel()));
  const auto stage = std::make_unique_for_overwrite<T[]>(cap);  // not vector: vector<bool> packs
  std::size_t fill = 0;
  bool ok = true;
  const T* base = t.data();
  t.for_each_offset([&](index_t, index_t off) {
    if (!ok) return;
    stage[fill++] = base[off];
    if (fill == cap) {
      ok = write_all(fd, stage.get(), fill * sizeof(T));
      fill = 0;
    }
  });
  return ok && (fill == 0 || write_all(fd, stage.get(), fill * sizeof(T)));
}

}  // namespace detail

/// Writes `tensors` (in this order) and `metadata` to `path` as safetensors. The bytes go to
/// `path + ".tmp"`, which is fsynced and then renamed over `path` (and the directory fsynced): a
/// crash or an error at any point leaves the previous `path` intact, and a failed write removes
/// the temporary file.
inline void save_safetensors(const std::filesystem::path& path,
                             const std::vector<named_tensor>& tensors,
                             const metadata_map& metadata = {}) {
  const std::string header = detail::safetensors_header(path, tensors, metadata);
  const std::filesystem::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    fail("safetensors: cannot create ", detail::quoted(tmp), " to write ", detail::quoted(path),
         ": ", std::strerror(errno));
  auto abandon = [&](const char* what, int err, int open_fd) {
    if (open_fd >= 0) ::close(open_fd);
    ::unlink(tmp.c_str());
    fail("safetensors: writing ", detail::quoted(path), " failed (", what,
         "): ", std::strerror(err), "; the previous file, if any, is unchanged");
  };
  const std::uint64_t len = header.size();
  if (!detail::write_all(fd, &len, 8) || !detail::write_all(fd, header.data(), header.size()))
    abandon("header", errno, fd);
  for (const auto& nt : tensors) {
    const bool ok =
        std::visit([&](const auto& t) { return detail::write_tensor_data(fd, t); }, nt.tensor);
    if (!ok) abandon(("tensor '" + nt.name + "'").c_str(), errno, fd);
  }
  if (::fsync(fd) != 0) abandon("fsync", errno, fd);
  if (::close(fd) != 0) abandon("close", errno, -1);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) abandon("rename", errno, -1);
  // Make the rename itself durable (best effort: some file systems refuse fsync on directories).
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace flsl::io
