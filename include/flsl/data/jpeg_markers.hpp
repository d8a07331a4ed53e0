// Reads the JPEG header segments the decoder needs that TurboJPEG does not report: the EXIF
// orientation (APP1) and the Adobe colour-transform marker (APP14, tells how CMYK is stored).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace flsl::data {

/// What the segments before the first scan say. Every field has a safe default when a segment is
/// absent or malformed: parsing never fails, it only reads inside the buffer.
struct JpegMarkers {
  int orientation = 1;  // EXIF orientation 1..8 (1: as stored)
  bool adobe = false;   // an APP14 "Adobe" segment is present (CMYK stored inverted, Photoshop)
  int adobe_transform = -1;
};

namespace detail {

inline std::uint32_t read_u16(const std::uint8_t* p, bool big_endian) {
  return big_endian ? (std::uint32_t(p[0]) << 8 | p[1]) : (std::uint32_t(p[1]) << 8 | p[0]);
}
inline std::uint32_t read_u32(const std::uint8_t* p, bool big_endian) {
  return big_endian ? (read_u16(p, true) << 16 | read_u16(p + 2, true))
                    : (read_u16(p + 2, false) << 16 | read_u16(p, false));
}

/// Orientation tag (0x0112) of IFD0 in an APP1 payload that starts with "Exif\0\0"; 1 when absent.
inline int exif_orientation(std::span<const std::uint8_t> app1) {
  static constexpr std::uint8_t exif_id[6] = {'E', 'x', 'i', 'f', 0, 0};
  if (app1.size() < 6 + 8) return 1;
  for (int i = 0; i < 6; ++i)
    if (app1[std::size_t(i)] != exif_id[i]) return 1;
  const std::span<const std::uint8_t> tiff = app1.subspan(6);
  bool big_endian;
  if (tiff[0] == 'M' && tiff[1] == 'M') {
    big_endian = true;
  } else if (tiff[0] == 'I' && tiff[1] == 'I') {
    big_endian = false;
  } else {
    return 1;
  }
  if (read_u16(tiff.data() + 2, big_endian) != 42) return 1;
  const std::size_t ifd = read_u32(tiff.data() + 4, big_endian);
  if (ifd > tiff.size() || tiff.size() - ifd < 2) return 1;
  const std::size_t count = read_u16(tiff.data() + ifd, big_endian);
  for (std::size_t e = 0; e < count; ++e) {
    const std::size_t at = ifd + 2 + 12 * e;
    if (at + 12 > tiff.size()) return 1;
    const std::uint8_t* entry = tiff.data() + at;
    if (read_u16(entry, big_endian) != 0x0112) continue;
    const std::uint32_t type = read_u16(entry + 2, big_endian);
    std::uint32_t value = 0;
    if (type == 3) {  // SHORT, stored in the first two bytes of the value field
      value = read_u16(entry + 8, big_endian);
    } else if (type == 4 || type == 9) {  // LONG / SLONG written by some tools
      value = read_u32(entry + 8, big_endian);
    } else {
      return 1;
    }
    return value >= 1 && value <= 8 ? int(value) : 1;
  }
  return 1;
}

}  // namespace detail

/// Walks the marker segments from SOI up to the first SOS. Stops quietly at the first thing that is
/// not a well-formed segment (the decoder reports real corruption).
inline JpegMarkers read_jpeg_markers(std::span<const std::uint8_t> bytes) {
  JpegMarkers m;
  if (bytes.size() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8) return m;
  std::size_t pos = 2;
  bool seen_exif = false;
  while (pos + 4 <= bytes.size()) {
    if (bytes[pos] != 0xFF) return m;
    const std::uint8_t marker = bytes[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return m;  // SOS or EOI: header is over
    if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01 || marker == 0xD8) {
      pos += 2;  // markers without a length
      continue;
    }
    const std::size_t length = detail::read_u16(bytes.data() + pos + 2, true);
    if (length < 2 || pos + 2 + length > bytes.size()) return m;
    const std::span<const std::uint8_t> payload = bytes.subspan(pos + 4, length - 2);
    if (marker == 0xE1 && !seen_exif) {
      const int o = detail::exif_orientation(payload);
      if (payload.size() >= 6 && payload[0] == 'E' && payload[1] == 'x') seen_exif = true;
      m.orientation = o;
    } else if (marker == 0xEE && payload.size() >= 12 && payload[0] == 'A' && payload[1] == 'd' &&
               payload[2] == 'o' && payload[3] == 'b' && payload[4] == 'e') {
      m.adobe = true;
      m.adobe_transform = payload[11];
    }
    pos += 2 + length;
  }
  return m;
}

}  // namespace flsl::data
