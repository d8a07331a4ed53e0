// Image types of the data layer: interleaved RGB bytes (decoder output, HWC uint8) and planar
// float images (CHW, the layout of a batch slot).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"

namespace flsl::data {

/// An RGB image of bytes, rows top to bottom, pixels interleaved R, G, B ([H, W, 3], row stride
/// 3 * width). `resize` keeps the capacity, so a reused ImageU8 stops allocating once it has held
/// the largest image.
struct ImageU8 {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  // [H, W, 3]

  ImageU8() = default;
  ImageU8(int w, int h) { resize(w, h); }

  void resize(int w, int h) {
    FLSL_CHECK(w >= 0 && h >= 0, "ImageU8::resize: negative size ", w, "x", h);
    width = w;
    height = h;
    pixels.resize(std::size_t(w) * std::size_t(h) * 3);
  }
  bool empty() const { return width == 0 || height == 0; }
  std::ptrdiff_t row_stride() const { return std::ptrdiff_t(width) * 3; }
  std::uint8_t* row(int y) { return pixels.data() + std::ptrdiff_t(y) * row_stride(); }
  const std::uint8_t* row(int y) const { return pixels.data() + std::ptrdiff_t(y) * row_stride(); }
  std::uint8_t& at(int y, int x, int c) { return row(y)[3 * x + c]; }
  std::uint8_t at(int y, int x, int c) const { return row(y)[3 * x + c]; }
};

/// A non-owning view of a planar float RGB image: three planes of height x width floats, one after
/// the other ([3, H, W], contiguous). Batch slots are PlanarViews into the batch tensors.
struct PlanarView {
  float* data = nullptr;
  int width = 0;
  int height = 0;

  std::size_t plane_size() const { return std::size_t(width) * std::size_t(height); }
  float* plane(int c) const { return data + std::size_t(c) * plane_size(); }
  float* row(int c, int y) const { return plane(c) + std::size_t(y) * std::size_t(width); }
  float& at(int c, int y, int x) const { return row(c, y)[x]; }
};

/// An owning planar float RGB image ([3, H, W]).
struct ImageF32 {
  int width = 0;
  int height = 0;
  std::vector<float> values;  // [3, H, W]

  ImageF32() = default;
  ImageF32(int w, int h) { resize(w, h); }
  void resize(int w, int h) {
    FLSL_CHECK(w >= 0 && h >= 0, "ImageF32::resize: negative size ", w, "x", h);
    width = w;
    height = h;
    values.resize(std::size_t(w) * std::size_t(h) * 3);
  }
  PlanarView view() { return {values.data(), width, height}; }
};

/// Planar float image in [0, 1] from an interleaved byte image (x / 255).
inline void to_planar(const ImageU8& src, ImageF32& dst) {
  dst.resize(src.width, src.height);
  const PlanarView v = dst.view();
  for (int y = 0; y < src.height; ++y) {
    const std::uint8_t* s = src.row(y);
    for (int c = 0; c < 3; ++c) {
      float* d = v.row(c, y);
      for (int x = 0; x < src.width; ++x) d[x] = float(s[3 * x + c]) * (1.0f / 255.0f);
    }
  }
}

}  // namespace flsl::data
