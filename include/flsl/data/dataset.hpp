// What a dataset hands to the multi-crop transform (encoded bytes or decoded pixels, a name for
// messages, a label) and the concept every dataset of the loader satisfies.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "image.hpp"

namespace flsl::data {

/// One image as loaded by a dataset. Reused from image to image (buffers keep their capacity).
struct SourceImage {
  bool encoded = true;              // true: `bytes` holds a JPEG/PNG; false: `pixels` is decoded
  std::vector<std::uint8_t> bytes;  // encoded file contents
  ImageU8 pixels;                   // decoded RGB
  std::string name;                 // file path or "<procedural train 17>", for messages
  std::int64_t label = -1;          // class index, -1 when there is none
};

/// A random-access image collection: `size()` images, `load(i, out)` fills out with image i.
/// `load` must be callable concurrently from several threads (it is const and uses only `out`),
/// and throws flsl::error naming the image when it cannot.
template <class D>
concept image_dataset = requires(const D& d, std::size_t i, SourceImage& out) {
  { d.size() } -> std::convertible_to<std::size_t>;
  d.load(i, out);
};

}  // namespace flsl::data
