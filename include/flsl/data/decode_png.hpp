// PNG decoding with libpng: every colour type and bit depth to 8-bit RGB (palette and greyscale
// expanded, alpha dropped, 16-bit reduced to the high byte as PIL does), no gamma correction.
#pragma once

#include <png.h>

#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"

namespace flsl::data {

/// Width and height from the IHDR chunk (the first chunk of every PNG).
struct PngHeader {
  int width = 0;
  int height = 0;
};

inline bool has_png_signature(std::span<const std::uint8_t> bytes) {
  static constexpr std::uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return bytes.size() >= 8 && std::memcmp(bytes.data(), sig, 8) == 0;
}

namespace detail {

/// State shared with libpng's C callbacks. Only trivially destructible members: libpng leaves
/// through longjmp, which must not skip a destructor.
struct PngContext {
  const std::uint8_t* data;
  std::size_t size;
  std::size_t pos;
  char message[256];
};

inline void png_read_from_memory(png_structp png, png_bytep out, std::size_t n) {
  auto* ctx = static_cast<PngContext*>(png_get_io_ptr(png));
  if (n > ctx->size - ctx->pos) png_error(png, "unexpected end of data (truncated file)");
  std::memcpy(out, ctx->data + ctx->pos, n);
  ctx->pos += n;
}
inline void png_on_error(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngContext*>(png_get_error_ptr(png));
  std::snprintf(ctx->message, sizeof ctx->message, "%s", msg);
  png_longjmp(png, 1);
}
inline void png_on_warning(png_structp, png_const_charp) {}

/// Reads the header and sets up the conversion to 8-bit RGB. Returns false when libpng failed
/// (message in the context). No C++ object lives in this frame across the setjmp.
inline bool png_setup_rgb8(png_structp png, png_infop info, png_uint_32* width, png_uint_32* height,
                           std::size_t* rowbytes, int* channels) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  // A palette with a tRNS chunk expands to RGBA; drop that alpha too.
  if (png_get_channels(png, info) == 4) {
    png_set_strip_alpha(png);
    png_read_update_info(png, info);
  }
  *width = png_get_image_width(png, info);
  *height = png_get_image_height(png, info);
  *rowbytes = png_get_rowbytes(png, info);
  *channels = png_get_channels(png, info);
  return true;
}

inline bool png_read_rows(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  return true;
}

}  // namespace detail

/// Width and height from the IHDR chunk; throws when the bytes are not a PNG.
inline PngHeader read_png_header(std::span<const std::uint8_t> bytes, std::string_view name) {
  FLSL_CHECK(has_png_signature(bytes), "cannot decode PNG '", name, "': no PNG signature");
  FLSL_CHECK(bytes.size() >= 24 && std::memcmp(bytes.data() + 12, "IHDR", 4) == 0,
             "cannot decode PNG '", name, "': missing IHDR chunk (truncated file?)");
  auto be32 = [&](std::size_t at) {
    return std::uint32_t(bytes[at]) << 24 | std::uint32_t(bytes[at + 1]) << 16 |
           std::uint32_t(bytes[at + 2]) << 8 | std::uint32_t(bytes[at + 3]);
  };
  const std::uint32_t w = be32(16), h = be32(20);
  FLSL_CHECK(w > 0 && h > 0 && w < (1u << 30) && h < (1u << 30), "cannot decode PNG '", name,
             "': invalid size ", w, "x", h);
  return {int(w), int(h)};
}

/// One libpng reader with its row-pointer scratch. Not thread-safe: one per thread.
class PngDecoder {
 public:
  /// Decodes `bytes` into `out` (RGB). Throws flsl::error naming the image on any libpng error,
  /// on a truncated stream, or when width x height exceeds `max_pixels`.
  void decode(std::span<const std::uint8_t> bytes, std::string_view name, ImageU8& out,
              std::int64_t max_pixels) {
    const PngHeader hdr = read_png_header(bytes, name);
    FLSL_CHECK(std::int64_t(hdr.width) * hdr.height <= max_pixels, "cannot decode PNG '", name,
               "': ", hdr.width, "x", hdr.height, " pixels exceed the limit of ", max_pixels);
    detail::PngContext ctx{bytes.data(), bytes.size(), 0, {0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, detail::png_on_error,
                                             detail::png_on_warning);
    FLSL_CHECK(png != nullptr, "cannot decode PNG '", name, "': png_create_read_struct failed");
    png_infop info = png_create_info_struct(png);
    struct Guard {
      png_structp* png;
      png_infop* info;
      ~Guard() { png_destroy_read_struct(png, info, nullptr); }
    } guard{&png, &info};
    FLSL_CHECK(info != nullptr, "cannot decode PNG '", name, "': png_create_info_struct failed");
    png_set_read_fn(png, &ctx, detail::png_read_from_memory);
    png_set_user_limits(png, 1u << 30, 1u << 30);

    png_uint_32 w = 0, h = 0;
    std::size_t rowbytes = 0;
    int channels = 0;
    if (!detail::png_setup_rgb8(png, info, &w, &h, &rowbytes, &channels))
      fail("cannot decode PNG '", name, "': ", ctx.message);
    FLSL_CHECK(channels == 3 && rowbytes == std::size_t(w) * 3, "cannot decode PNG '", name,
               "': unsupported layout after conversion (", channels, " channels)");
    out.resize(int(w), int(h));
    rows_.resize(h);
    for (png_uint_32 y = 0; y < h; ++y) rows_[y] = out.row(int(y));
    if (!detail::png_read_rows(png, rows_.data()))
      fail("cannot decode PNG '", name, "': ", ctx.message);
  }

 private:
  std::vector<png_bytep> rows_;
};

}  // namespace flsl::data
