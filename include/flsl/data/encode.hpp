// Image encoding (JPEG with TurboJPEG, PNG with libpng's simplified API) and file writing, for
// saving visualisations, dumping procedural images and making test images.
#pragma once

#include <png.h>
#include <turbojpeg.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"

namespace flsl::data {

/// JPEG bytes of an RGB image. quality 1..100; subsampling TJSAMP_444 / TJSAMP_420 / TJSAMP_GRAY.
inline std::vector<std::uint8_t> encode_jpeg(const ImageU8& img, int quality = 90,
                                             int subsampling = TJSAMP_420) {
  FLSL_CHECK(!img.empty(), "encode_jpeg: empty image");
  tjhandle h = tjInitCompress();
  FLSL_CHECK(h != nullptr, "encode_jpeg: tjInitCompress failed");
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(h, img.pixels.data(), img.width, 0, img.height, TJPF_RGB, &buf, &size,
                             subsampling, quality, TJFLAG_ACCURATEDCT);
  std::vector<std::uint8_t> out;
  if (rc == 0) out.assign(buf, buf + size);
  const std::string msg = rc == 0 ? "" : tjGetErrorStr2(h);
  tjFree(buf);
  tjDestroy(h);
  FLSL_CHECK(rc == 0, "encode_jpeg: ", msg);
  return out;
}

/// PNG bytes of an RGB image (8-bit, no alpha).
inline std::vector<std::uint8_t> encode_png(const ImageU8& img) {
  FLSL_CHECK(!img.empty(), "encode_png: empty image");
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = png_uint_32(img.width);
  image.height = png_uint_32(img.height);
  image.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  FLSL_CHECK(png_image_write_to_memory(&image, nullptr, &size, 0, img.pixels.data(), 0, nullptr),
             "encode_png: ", image.message);
  std::vector<std::uint8_t> out(size);
  FLSL_CHECK(png_image_write_to_memory(&image, out.data(), &size, 0, img.pixels.data(), 0, nullptr),
             "encode_png: ", image.message);
  out.resize(size);
  return out;
}

/// Writes bytes to a file (replacing it); throws naming the path on failure.
inline void write_file(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  FLSL_CHECK(f.good(), "write_file: cannot open '", path.string(), "' for writing");
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  FLSL_CHECK(f.good(), "write_file: cannot write '", path.string(), "'");
}

}  // namespace flsl::data
