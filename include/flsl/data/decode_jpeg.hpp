// JPEG decoding with TurboJPEG: to RGB bytes, optionally down-scaled in the DCT domain (1/8 steps),
// greyscale expanded to RGB, CMYK/YCCK converted to RGB (naive, no ICC profile).
#pragma once

#include <turbojpeg.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"
#include "jpeg_markers.hpp"

namespace flsl::data {

/// Header of a JPEG stream as stored (before EXIF orientation).
struct JpegHeader {
  int width = 0;
  int height = 0;
  int subsampling = 0;  // TJSAMP_*
  int colorspace = 0;   // TJCS_*
  JpegMarkers markers;
};

/// A DCT-domain scale factor num / den offered by libjpeg-turbo (1/8, 2/8, ..., 8/8).
struct JpegScale {
  int num = 1;
  int den = 1;
  double value() const { return double(num) / double(den); }
  /// Size of a dimension of `extent` pixels decoded at this scale (TurboJPEG's TJSCALED: ceil).
  int scaled(int extent) const { return (extent * num + den - 1) / den; }
};

/// The smallest libjpeg-turbo scale factor that is >= min_scale (and <= 1). A min_scale >= 1 gives
/// 1/1: full resolution.
inline JpegScale jpeg_scale_for(double min_scale) {
  JpegScale best{1, 1};
  if (min_scale >= 1.0) return best;
  int n = 0;
  const tjscalingfactor* f = tjGetScalingFactors(&n);
  for (int i = 0; f && i < n; ++i) {
    const JpegScale s{f[i].num, f[i].denom};
    if (s.value() <= 1.0 && s.value() >= min_scale && s.value() < best.value()) best = s;
  }
  return best;
}

/// One TurboJPEG decompressor with its scratch memory. Not thread-safe: use one per thread
/// (data::Decoder owns one). Every failure throws flsl::error naming the image.
class JpegDecoder {
 public:
  JpegDecoder() : handle_(tjInitDecompress()) {
    FLSL_CHECK(handle_ != nullptr,
               "JpegDecoder: tjInitDecompress failed: ", tjGetErrorStr2(nullptr));
  }
  ~JpegDecoder() {
    if (handle_) tjDestroy(handle_);
  }
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;

  /// Reads the frame header and the APP segments; throws if the stream has no valid header.
  JpegHeader header(std::span<const std::uint8_t> bytes, std::string_view name) {
    JpegHeader h;
    FLSL_CHECK(!bytes.empty(), "cannot decode JPEG '", name, "': the file is empty");
    if (tjDecompressHeader3(handle_, bytes.data(), static_cast<unsigned long>(bytes.size()),
                            &h.width, &h.height, &h.subsampling, &h.colorspace) != 0) {
      const std::string msg = tjGetErrorStr2(handle_);
      reset();
      fail("cannot decode JPEG '", name, "': ", msg);
    }
    FLSL_CHECK(h.width > 0 && h.height > 0, "cannot decode JPEG '", name, "': size ", h.width, "x",
               h.height);
    h.markers = read_jpeg_markers(bytes);
    return h;
  }

  /// Decodes the stored pixels at `scale` into `out` (RGB, not yet oriented). A stream that ends
  /// early (truncated file) is an error; libjpeg's other warnings (extraneous bytes, ...) are not.
  /// `max_pixels` bounds the decoded size (decompression bombs).
  void decode(std::span<const std::uint8_t> bytes, std::string_view name, const JpegHeader& h,
              JpegScale scale, ImageU8& out, std::int64_t max_pixels) {
    const int w = scale.scaled(h.width), hgt = scale.scaled(h.height);
    FLSL_CHECK(std::int64_t(w) * hgt <= max_pixels, "cannot decode JPEG '", name, "': ", w, "x",
               hgt, " pixels exceed the limit of ", max_pixels);
    const bool cmyk = h.colorspace == TJCS_CMYK || h.colorspace == TJCS_YCCK;
    out.resize(w, hgt);
    unsigned char* dst = out.pixels.data();
    if (cmyk) {
      cmyk_.resize(std::size_t(w) * std::size_t(hgt) * 4);
      dst = cmyk_.data();
    }
    const int rc = tjDecompress2(handle_, bytes.data(), static_cast<unsigned long>(bytes.size()),
                                 dst, w, 0, hgt, cmyk ? TJPF_CMYK : TJPF_RGB, 0);
    if (rc != 0) {
      const std::string msg = tjGetErrorStr2(handle_);
      const bool fatal = tjGetErrorCode(handle_) == TJERR_FATAL;
      if (fatal || msg.find("Premature end") != std::string::npos) {
        reset();
        fail("cannot decode JPEG '", name, "': ", fatal ? "" : "truncated: ", msg);
      }
    }
    if (cmyk) cmyk_to_rgb(cmyk_.data(), out, h.markers.adobe);
  }

 private:
  /// CMYK to RGB without a colour profile, as PIL does: R = (255 - C)(255 - K) / 255. Adobe
  /// (Photoshop) files store the inks inverted, which PIL and this function honour.
  static void cmyk_to_rgb(const std::uint8_t* cmyk, ImageU8& out, bool inverted) {
    const std::size_t n = std::size_t(out.width) * std::size_t(out.height);
    std::uint8_t* rgb = out.pixels.data();
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint8_t* p = cmyk + 4 * i;
      const int k = inverted ? p[3] : 255 - p[3];
      for (int c = 0; c < 3; ++c) {
        const int v = inverted ? p[c] : 255 - p[c];
        rgb[3 * i + std::size_t(c)] = std::uint8_t((v * k + 127) / 255);
      }
    }
  }

  /// A fresh decompressor: libjpeg's state after an error is not trusted for the next image.
  void reset() {
    tjDestroy(handle_);
    handle_ = tjInitDecompress();
    FLSL_CHECK(handle_ != nullptr,
               "JpegDecoder: tjInitDecompress failed: ", tjGetErrorStr2(nullptr));
  }

  tjhandle handle_ = nullptr;
  std::vector<std::uint8_t> cmyk_;
};

}  // namespace flsl::data
