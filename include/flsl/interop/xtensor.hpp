// Host interop: CPU tensors as xtensor expressions (no copy) and back, and NumPy .npy files.
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xexpression.hpp>
#include <xtensor/xnoalias.hpp>
#include <xtensor/xstrided_view.hpp>

#include "../core/tensor.hpp"
#include "../expr/assign.hpp"

namespace flsl {

// ---- tensors as xtensor expressions ---------------------------------------------------------

/// Views the memory of `t` as an xtensor expression without copying: an `xt::xstrided_view` with
/// the tensor's shape and strides over a flat, non-owning `xt::adapt` of the elements they reach.
/// Non-contiguous views (slices, transposes, expands) therefore read and write exactly the
/// tensor's elements, and writing through the result (`=`, `+=`, element access) writes the
/// tensor. A contiguous tensor is marked row-major, so xtensor takes its linear fast paths.
///
/// (A strided `xt::xarray_adaptor` is not used: its `=` and `+=` copy a row-major temporary over
/// the buffer linearly and adopt the temporary's strides, which is wrong for a strided view.)
///
/// The result does not own the memory: keep a handle to `t` (or to a tensor sharing its storage)
/// alive while it is used. It cannot be resized.
template <class T>
auto as_xtensor(const Tensor<T, cpu>& t) {
  FLSL_CHECK(t.defined(), "as_xtensor: the tensor is undefined");
  std::vector<std::size_t> shape(t.shape().begin(), t.shape().end());
  std::vector<std::ptrdiff_t> strides(t.strides().begin(), t.strides().end());
  std::size_t reach = t.numel() == 0 ? 0 : 1;  // elements from data() to the last one, inclusive
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (t.numel() > 0) reach += (shape[d] - 1) * std::size_t(strides[d]);
    if (shape[d] == 1) strides[d] = 0;  // xtensor's convention; its broadcasting relies on it
  }
  auto flat = xt::adapt(t.data(), reach, xt::no_ownership(), std::vector<std::size_t>{reach});
  const auto layout = t.is_contiguous() ? xt::layout_type::row_major : xt::layout_type::dynamic;
  return xt::strided_view(std::move(flat), std::move(shape), std::move(strides), 0, layout);
}

/// The type `as_xtensor` returns for a `Tensor<T, cpu>`.
template <class T>
using xtensor_view_t = decltype(as_xtensor(std::declval<const Tensor<T, cpu>&>()));

/// Evaluates an xtensor expression into a new contiguous tensor of element type T (values are
/// converted with static_cast, as xtensor's own assignment does).
template <class T, class E>
Tensor<T, cpu> from_xtensor(const xt::xexpression<E>& expr) {
  const E& x = expr.derived_cast();
  FLSL_CHECK(x.dimension() <= std::size_t(max_rank), "from_xtensor: an expression of rank ",
             x.dimension(), " exceeds the largest supported rank ", max_rank);
  Shape shape;
  for (auto d : x.shape()) shape.push_back(index_t(d));
  auto out = Tensor<T, cpu>::empty(shape);
  if (out.numel() == 0) return out;
  auto dst = as_xtensor(out);
  if constexpr (std::is_same_v<typename E::value_type, T>) {
    xt::noalias(dst) = x;
  } else {
    xt::noalias(dst) = xt::cast<T>(x);
  }
  return out;
}

// ---- .npy files ------------------------------------------------------------------------------
// The NumPy format (numpy.lib.format): magic "\x93NUMPY", version, header length, a Python dict
// literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded to a multiple of 64
// bytes, then the raw elements. Versions 1.0 to 3.0 are read; 1.0 is written.

namespace detail {

/// The NumPy type string (little-endian) of an element type; bf16 has none.
template <class T>
constexpr std::string_view npy_descr() {
  if constexpr (std::is_same_v<T, float>)
    return "<f4";
  else if constexpr (std::is_same_v<T, double>)
    return "<f8";
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return "<i4";
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return "<i8";
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return "|u1";
  else if constexpr (std::is_same_v<T, bool>)
    return "|b1";
  else
    return "";
}

/// The flsl dtype name for a NumPy type string (byte order ignored), or the string itself.
inline std::string npy_dtype_name(std::string_view descr) {
  const std::string_view kind = descr.size() == 3 ? descr.substr(1) : descr;
  if (kind == "f4") return "f32";
  if (kind == "f8") return "f64";
  if (kind == "i4") return "i32";
  if (kind == "i8") return "i64";
  if (kind == "u1") return "u8";
  if (kind == "b1") return "bool";
  return detail::concat("'", descr, "' (no flsl dtype)");
}

/// The path in quotes, as error messages show it. (Built with append: GCC 12 warns falsely,
/// -Wrestrict, on `"'" + std::string`.)
inline std::string quoted(const std::filesystem::path& path) {
  std::string q(1, '\'');
  q += path.string();
  q += '\'';
  return q;
}

struct npy_header {
  std::string descr;
  bool fortran_order = false;
  Shape shape;
  std::size_t data_offset = 0;  // bytes before the first element
};

/// Closes a FILE* on scope exit.
struct file_closer {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using file_ptr = std::unique_ptr<std::FILE, file_closer>;

/// Parses the dict literal of a .npy header; `where` names the file in errors.
inline npy_header parse_npy_dict(const std::string& text, const std::string& where) {
  npy_header h;
  std::size_t i = 0;
  auto bad = [&](const char* what) {
    fail("load_npy: ", where, ": malformed header (", what, " at byte ", i, "): ", text);
  };
  auto skip = [&] {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t')) ++i;
  };
  auto expect = [&](char c) {
    skip();
    if (i >= text.size() || text[i] != c) bad("unexpected character");
    ++i;
  };
  auto string_lit = [&] {
    skip();
    if (i >= text.size() || (text[i] != '\'' && text[i] != '"')) bad("expected a string");
    const char q = text[i++];
    const std::size_t end = text.find(q, i);
    if (end == std::string::npos) bad("unterminated string");
    std::string s = text.substr(i, end - i);
    i = end + 1;
    return s;
  };
  auto integer = [&] {
    skip();
    index_t v = 0;
    const std::size_t start = i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      if (v > (std::numeric_limits<index_t>::max() - 9) / 10) bad("extent too large");
      v = v * 10 + (text[i++] - '0');
    }
    if (i == start) bad("expected an extent");
    if (i < text.size() && text[i] == 'L') ++i;  // Python 2 longs
    return v;
  };
  bool seen_descr = false, seen_order = false, seen_shape = false;
  expect('{');
  for (skip(); i < text.size() && text[i] != '}'; skip()) {
    const std::string key = string_lit();
    expect(':');
    skip();
    if (key == "descr") {
      h.descr = string_lit();
      seen_descr = true;
    } else if (key == "fortran_order") {
      if (text.compare(i, 4, "True") == 0) {
        h.fortran_order = true;
        i += 4;
      } else if (text.compare(i, 5, "False") == 0) {
        i += 5;
      } else {
        bad("fortran_order is neither True nor False");
      }
      seen_order = true;
    } else if (key == "shape") {
      expect('(');
      for (skip(); i < text.size() && text[i] != ')'; skip()) {
        if (h.shape.rank() == max_rank)
          fail("load_npy: ", where, ": rank above the largest supported rank ", max_rank, ": ",
               text);
        h.shape.push_back(integer());
        skip();
        if (i < text.size() && text[i] == ',') ++i;
      }
      expect(')');
      seen_shape = true;
    } else {
      bad("unknown key");
    }
    skip();
    if (i < text.size() && text[i] == ',') ++i;
  }
  expect('}');
  if (!seen_descr || !seen_order || !seen_shape) bad("missing 'descr', 'fortran_order' or 'shape'");
  return h;
}

/// Reads and checks the preamble and header of an open .npy file.
inline npy_header read_npy_header(std::FILE* f, const std::string& where) {
  unsigned char pre[8];
  const std::size_t got = std::fread(pre, 1, 8, f);
  FLSL_CHECK(got == 8 && std::memcmp(pre, "\x93NUMPY", 6) == 0, "load_npy: ", where,
             " is not a .npy file (no \\x93NUMPY magic in its first ", got, " bytes)");
  const int major = pre[6];
  FLSL_CHECK(major >= 1 && major <= 3, "load_npy: ", where, ": unsupported .npy version ", major,
             ".", int(pre[7]), " (1.0 to 3.0 are read)");
  std::size_t header_len = 0;
  std::size_t prefix = 10;
  if (major == 1) {
    unsigned char len[2];
    FLSL_CHECK(std::fread(len, 1, 2, f) == 2, "load_npy: ", where, " ends inside its preamble");
    header_len = std::size_t(len[0]) | std::size_t(len[1]) << 8;
  } else {
    unsigned char len[4];
    FLSL_CHECK(std::fread(len, 1, 4, f) == 4, "load_npy: ", where, " ends inside its preamble");
    header_len = std::size_t(len[0]) | std::size_t(len[1]) << 8 | std::size_t(len[2]) << 16 |
                 std::size_t(len[3]) << 24;
    prefix = 12;
  }
  FLSL_CHECK(header_len <= (std::size_t(1) << 20), "load_npy: ", where, ": a header of ",
             header_len, " bytes is not plausible (corrupt file?)");
  std::string text(header_len, '\0');
  const std::size_t read = std::fread(text.data(), 1, header_len, f);
  FLSL_CHECK(read == header_len, "load_npy: ", where, " ends inside its header (", read, " of ",
             header_len, " header bytes)");
  npy_header h = parse_npy_dict(text, where);
  h.data_offset = prefix + header_len;
  return h;
}

/// The dict literal of a version 1.0 header for `descr` and `shape`, laid out byte for byte as
/// numpy.save (1.24) writes it: room for the first extent to grow to 21 digits, then spaces up to a
/// 64-byte boundary (a full 64 when already aligned), then '\n'.
inline std::string npy_header_text(std::string_view descr, const Shape& shape) {
  std::string dict = "{'descr': '";
  dict += descr;
  dict += "', 'fortran_order': False, 'shape': (";
  for (int d = 0; d < shape.rank(); ++d) {
    if (d > 0) dict += ", ";
    dict += std::to_string(shape[d]);
  }
  dict += shape.rank() == 1 ? ",), }" : "), }";
  if (shape.rank() > 0)
    dict.append(21 - std::min<std::size_t>(21, std::to_string(shape[0]).size()), ' ');
  const std::size_t unpadded = 10 + dict.size() + 1;  // preamble + dict + '\n'
  dict.append(64 - unpadded % 64, ' ');
  dict += '\n';
  return dict;
}

}  // namespace detail

/// Reads a .npy file into a contiguous tensor. The file's dtype must be T's exactly (load as the
/// stored type and convert with `.to<U>()` otherwise); Fortran-order and big-endian files are
/// converted. A missing, truncated or malformed file, or another dtype, throws flsl::error naming
/// the file, the stored dtype and shape, and what was asked for.
template <class T>
Tensor<T, cpu> load_npy(const std::filesystem::path& path) {
  static_assert(!detail::npy_descr<T>().empty(),
                "load_npy: NumPy has no dtype for this element type (bf16: load f32, then .to)");
  const std::string where = detail::quoted(path);
  detail::file_ptr f(std::fopen(path.c_str(), "rb"));
  if (!f) fail("load_npy: cannot open ", where, ": ", std::strerror(errno));
  const detail::npy_header h = detail::read_npy_header(f.get(), where);
  const std::string_view want = detail::npy_descr<T>();
  const bool big = h.descr.size() == 3 && h.descr[0] == '>';
  const bool same_kind = h.descr.size() == 3 && h.descr.substr(1) == want.substr(1) &&
                         (h.descr[0] == '<' || h.descr[0] == '|' || h.descr[0] == '=' || big);
  FLSL_CHECK(same_kind, "load_npy: ", where, " holds ", detail::npy_dtype_name(h.descr), " ",
             h.shape, " (descr '", h.descr, "'), but ", dtype_name(dtype_of<T>), " (descr '", want,
             "') was requested; load it as the stored type and convert with .to<>()");

  // Size check before allocating: the data must be all there.
  index_t numel = 1;
  for (index_t d : h.shape) {
    FLSL_CHECK(d == 0 || numel <= std::numeric_limits<index_t>::max() / index_t(sizeof(T)) / d,
               "load_npy: ", where, ": shape ", h.shape, " is too large");
    numel *= d;
  }
  const auto need = std::uintmax_t(numel) * sizeof(T);
  std::error_code ec;
  const std::uintmax_t file_size = std::filesystem::file_size(path, ec);
  FLSL_CHECK(!ec, "load_npy: cannot size ", where, ": ", ec.message());
  const std::uintmax_t have = file_size > h.data_offset ? file_size - h.data_offset : 0;
  FLSL_CHECK(have >= need, "load_npy: ", where, " is truncated: ", dtype_name(dtype_of<T>), " ",
             h.shape, " needs ", need, " data bytes after the ", h.data_offset,
             "-byte header, the file has ", have);

  Shape stored = h.shape;  // Fortran order: read as the reversed shape, then transpose
  if (h.fortran_order) std::reverse(stored.begin(), stored.end());
  auto t = Tensor<T, cpu>::empty(stored);
  FLSL_CHECK(std::fread(t.data(), sizeof(T), std::size_t(numel), f.get()) == std::size_t(numel),
             "load_npy: reading the data of ", where, " failed: ", std::strerror(errno));
  auto* bytes = reinterpret_cast<unsigned char*>(t.data());
  if constexpr (sizeof(T) > 1) {
    if (big != (std::endian::native == std::endian::big))
      for (index_t i = 0; i < numel; ++i)
        std::reverse(bytes + i * index_t(sizeof(T)), bytes + (i + 1) * index_t(sizeof(T)));
  }
  if constexpr (std::is_same_v<T, bool>) {  // any non-zero byte is true; a bool must hold 0 or 1
    for (index_t i = 0; i < numel; ++i) bytes[i] = bytes[i] != 0;
  }
  if (!h.fortran_order || t.rank() < 2) return t;
  std::vector<int> reverse_axes(std::size_t(t.rank()));
  for (int d = 0; d < t.rank(); ++d) reverse_axes[std::size_t(d)] = t.rank() - 1 - d;
  return t.permute(reverse_axes).contiguous();
}

/// Writes `t` (any strides: a non-contiguous view is written in row-major order) as a version 1.0
/// .npy file that numpy.load reads. Throws flsl::error naming the file when it cannot be written.
template <class T>
void save_npy(const std::filesystem::path& path, const Tensor<T, cpu>& t) {
  static_assert(!detail::npy_descr<T>().empty(),
                "save_npy: NumPy has no dtype for this element type (bf16: save .to<float>())");
  static_assert(std::endian::native == std::endian::little, "save_npy writes little-endian data");
  const std::string where = detail::quoted(path);
  FLSL_CHECK(t.defined(), "save_npy: ", where, ": the tensor is undefined");
  const Tensor<T, cpu> c = t.contiguous();
  const std::string dict = detail::npy_header_text(detail::npy_descr<T>(), c.shape());
  // magic, version 1.0, header length (2 bytes, little-endian)
  char preamble[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  preamble[8] = char(dict.size() & 0xFF);
  preamble[9] = char(dict.size() >> 8);
  detail::file_ptr f(std::fopen(path.c_str(), "wb"));
  if (!f) fail("save_npy: cannot open ", where, " for writing: ", std::strerror(errno));
  bool ok = std::fwrite(preamble, 1, sizeof preamble, f.get()) == sizeof preamble &&
            std::fwrite(dict.data(), 1, dict.size(), f.get()) == dict.size();
  const auto n = std::size_t(c.numel());
  if (ok && n > 0) ok = std::fwrite(c.data(), sizeof(T), n, f.get()) == n;
  ok = std::fflush(f.get()) == 0 && ok;
  if (!ok) fail("save_npy: writing ", where, " failed: ", std::strerror(errno));
  if (std::fclose(f.release()) != 0)
    fail("save_npy: closing ", where, " failed: ", std::strerror(errno));
}

}  // namespace flsl
