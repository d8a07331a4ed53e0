// Image decoding front end: detects JPEG or PNG from the bytes, reads the upright size, decodes to
// upright RGB (EXIF orientation applied), optionally down-scaled in the JPEG DCT domain.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "../core/error.hpp"
#include "decode_jpeg.hpp"
#include "decode_png.hpp"
#include "image.hpp"
#include "orientation.hpp"

namespace flsl::data {

enum class ImageFormat { unknown, jpeg, png };

/// Format from the first bytes (JPEG SOI + marker, PNG signature); never from the file name.
inline ImageFormat detect_format(std::span<const std::uint8_t> bytes) {
  if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF)
    return ImageFormat::jpeg;
  if (has_png_signature(bytes)) return ImageFormat::png;
  return ImageFormat::unknown;
}

/// Size of the upright image (after EXIF orientation) and how it is stored.
struct ImageHeader {
  ImageFormat format = ImageFormat::unknown;
  int width = 0;   // upright
  int height = 0;  // upright
  int orientation = 1;
  JpegHeader jpeg;  // valid when format == jpeg
};

/// What a decode produced, in upright coordinates: the full size of the image and the scale of the
/// decoded pixels relative to it (1 unless a JPEG was down-scaled in the DCT domain).
struct DecodedInfo {
  int full_width = 0;
  int full_height = 0;
  double scale_x = 1.0;  // decoded pixels per full-size pixel (k/8 for a scaled JPEG)
  double scale_y = 1.0;
};

/// Decoding limits.
struct DecodeOptions {
  std::int64_t max_pixels = std::int64_t(1) << 28;  // decoded width x height, bounds memory
};

/// One JPEG + PNG decoder with scratch memory; cheap to reuse, not thread-safe (one per thread).
/// Every failure (empty, truncated, corrupt, not an image, too large) throws flsl::error whose
/// message names the image.
class Decoder {
 public:
  explicit Decoder(DecodeOptions opt = {}) : opt_(opt) {}

  ImageHeader header(std::span<const std::uint8_t> bytes, std::string_view name) {
    FLSL_CHECK(!bytes.empty(), "cannot decode '", name, "': the file is empty");
    ImageHeader h;
    h.format = detect_format(bytes);
    switch (h.format) {
      case ImageFormat::jpeg: {
        h.jpeg = jpeg_.header(bytes, name);
        h.orientation = h.jpeg.markers.orientation;
        const bool swap = orientation_swaps_axes(h.orientation);
        h.width = swap ? h.jpeg.height : h.jpeg.width;
        h.height = swap ? h.jpeg.width : h.jpeg.height;
        return h;
      }
      case ImageFormat::png: {
        const PngHeader p = read_png_header(bytes, name);
        h.width = p.width;
        h.height = p.height;
        return h;
      }
      default:
        fail("cannot decode '", name, "': not a JPEG or PNG image (", bytes.size(), " bytes)");
    }
  }

  /// Decodes to upright RGB. `min_scale` < 1 allows a JPEG to be decoded smaller, at the smallest
  /// DCT scale factor (k/8) that is still >= min_scale in both axes; PNG ignores it.
  DecodedInfo decode(std::span<const std::uint8_t> bytes, std::string_view name, ImageU8& out,
                     double min_scale = 1.0) {
    return decode(bytes, name, header(bytes, name), out, min_scale);
  }
  DecodedInfo decode(std::span<const std::uint8_t> bytes, std::string_view name,
                     const ImageHeader& h, ImageU8& out, double min_scale = 1.0) {
    DecodedInfo info{h.width, h.height, 1.0, 1.0};
    if (h.format == ImageFormat::jpeg) {
      const JpegScale scale = jpeg_scale_for(min_scale);
      jpeg_.decode(bytes, name, h.jpeg, scale, out, opt_.max_pixels);
      apply_orientation(out, h.orientation, scratch_);
      // Decoded pixel i covers full-size pixels [i, i + 1) * den / num (the last one may be
      // partial: TurboJPEG rounds the decoded size up).
      info.scale_x = info.scale_y = scale.value();
    } else if (h.format == ImageFormat::png) {
      png_.decode(bytes, name, out, opt_.max_pixels);
    } else {
      fail("cannot decode '", name, "': not a JPEG or PNG image");
    }
    return info;
  }

 private:
  DecodeOptions opt_;
  JpegDecoder jpeg_;
  PngDecoder png_;
  ImageU8 scratch_;
};

/// Decodes one image with a temporary decoder (convenience; reuse a Decoder in loops).
inline ImageU8 decode_image(std::span<const std::uint8_t> bytes,
                            std::string_view name = "<memory>") {
  Decoder d;
  ImageU8 img;
  d.decode(bytes, name, img);
  return img;
}

}  // namespace flsl::data
