// Test helpers of the data layer: temporary folders and images encoded in every PNG flavour, JPEGs
// with an EXIF orientation or CMYK inks, all made in the test (no files from outside).
#pragma once

#include <png.h>
#include <turbojpeg.h>
#include <unistd.h>

#include <atomic>
#include <csetjmp>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <flsl/core/error.hpp>
#include <flsl/data/encode.hpp>
#include <flsl/data/image.hpp>

namespace flsl::data::testing {

/// A fresh directory under the system temp folder, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("flsl_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& rel) const { return path_ / rel; }

 private:
  std::filesystem::path path_;
};

/// A smooth deterministic colour image (gradients and a diagonal wave), JPEG-friendly.
inline ImageU8 smooth_image(int w, int h, int seed = 0) {
  ImageU8 img(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      img.at(y, x, 0) = std::uint8_t((x * 255) / std::max(1, w - 1));
      img.at(y, x, 1) = std::uint8_t((y * 255) / std::max(1, h - 1));
      img.at(y, x, 2) = std::uint8_t(128 + ((x + y + seed * 7) % 64) * 2 - 64);
    }
  return img;
}

/// Writes a PNG with libpng's low-level API: `rows` holds height rows of the packed samples of the
/// given colour type and bit depth (16-bit samples big-endian, as PNG stores them).
inline std::vector<std::uint8_t> write_png_raw(int w, int h, int color_type, int bit_depth,
                                               const std::vector<std::uint8_t>& rows,
                                               bool interlace = false,
                                               const std::vector<png_color>& palette = {}) {
  struct Sink {
    static void write(png_structp png, png_bytep data, size_t n) {
      auto* out = static_cast<std::vector<std::uint8_t>*>(png_get_io_ptr(png));
      out->insert(out->end(), data, data + n);
    }
    static void flush(png_structp) {}
  };
  std::vector<std::uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  const std::size_t stride = rows.size() / std::size_t(h);
  std::vector<png_bytep> ptrs(static_cast<std::size_t>(h));
  for (int y = 0; y < h; ++y)
    ptrs[std::size_t(y)] = const_cast<png_bytep>(rows.data() + std::size_t(y) * stride);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw flsl::error("write_png_raw failed");
  }
  png_set_write_fn(png, &out, Sink::write, Sink::flush);
  png_set_IHDR(png, info, png_uint_32(w), png_uint_32(h), bit_depth, color_type,
               interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) png_set_PLTE(png, info, palette.data(), int(palette.size()));
  png_write_info(png, info);
  png_write_image(png, ptrs.data());
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return out;
}

/// A baseline JPEG with an APP1 EXIF segment carrying `orientation` inserted after SOI.
inline std::vector<std::uint8_t> with_exif_orientation(const std::vector<std::uint8_t>& jpeg,
                                                       int orientation, bool big_endian) {
  std::vector<std::uint8_t> tiff;
  auto u16 = [&](unsigned v) {
    if (big_endian) {
      tiff.push_back(std::uint8_t(v >> 8));
      tiff.push_back(std::uint8_t(v));
    } else {
      tiff.push_back(std::uint8_t(v));
      tiff.push_back(std::uint8_t(v >> 8));
    }
  };
  auto u32 = [&](unsigned v) {
    if (big_endian) {
      u16(v >> 16);
      u16(v & 0xFFFF);
    } else {
      u16(v & 0xFFFF);
      u16(v >> 16);
    }
  };
  tiff.push_back(big_endian ? 'M' : 'I');
  tiff.push_back(big_endian ? 'M' : 'I');
  u16(42);
  u32(8);       // IFD0 right after the header
  u16(2);       // two entries: a dummy tag, then the orientation
  u16(0x010F);  // Make, ASCII, 4 bytes inline
  u16(2);
  u32(4);
  tiff.insert(tiff.end(), {'f', 'l', 's', 0});
  u16(0x0112);  // Orientation, SHORT, 1 value
  u16(3);
  u32(1);
  u16(unsigned(orientation));
  u16(0);
  u32(0);  // no next IFD
  std::vector<std::uint8_t> app1 = {'E', 'x', 'i', 'f', 0, 0};
  app1.insert(app1.end(), tiff.begin(), tiff.end());
  const std::size_t len = app1.size() + 2;
  std::vector<std::uint8_t> out(6 + app1.size() + jpeg.size() - 2);
  const std::uint8_t head[6] = {0xFF, 0xD8, 0xFF, 0xE1, std::uint8_t(len >> 8), std::uint8_t(len)};
  std::copy(head, head + 6, out.begin());
  std::copy(app1.begin(), app1.end(), out.begin() + 6);
  std::copy(jpeg.begin() + 2, jpeg.end(), out.begin() + 6 + std::ptrdiff_t(app1.size()));
  return out;
}

/// A JPEG of CMYK samples ([H, W, 4] as given; TurboJPEG stores them as YCCK with an Adobe
/// marker, i.e. in the inverted Photoshop convention).
inline std::vector<std::uint8_t> encode_cmyk_jpeg(int w, int h,
                                                  const std::vector<std::uint8_t>& cmyk) {
  tjhandle t = tjInitCompress();
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(t, cmyk.data(), w, 0, h, TJPF_CMYK, &buf, &size, TJSAMP_444, 100, 0);
  std::vector<std::uint8_t> out;
  if (rc == 0) out.assign(buf, buf + size);
  tjFree(buf);
  tjDestroy(t);
  if (rc != 0) throw flsl::error("encode_cmyk_jpeg failed");
  return out;
}

}  // namespace flsl::data::testing
