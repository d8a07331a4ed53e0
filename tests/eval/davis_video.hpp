// A synthetic video in the DAVIS folder layout, for the label-propagation and trainer tests.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

#include <flsl/data/encode.hpp>
#include <flsl/data/image.hpp>

namespace flsl::evaluation::testing {

/// A DAVIS folder with one sequence: a red 32 x 32 square moving 8 px right per frame over a
/// blue background, 64 x 128 px frames (JPEG) and masks (PNG: 0 / 255 grey as DAVIS 2016). With
/// `two_objects`, also a green 16 x 8 bar at the bottom moving 8 px left per frame, and the masks
/// in DAVIS 2017's palette colours: the red square object 2 (0, 128, 0), the green one object 1
/// (128, 0, 0).
inline void write_video(const std::filesystem::path& root, const std::string& name, int frames,
                        bool two_objects = false) {
  namespace fs = std::filesystem;
  fs::create_directories(root / "JPEGImages" / "480p" / name);
  fs::create_directories(root / "Annotations" / "480p" / name);
  for (int t = 0; t < frames; ++t) {
    data::ImageU8 img(128, 64), mask(128, 64);
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 128; ++x) {
        const bool in = y >= 16 && y < 48 && x >= 16 + 8 * t && x < 48 + 8 * t;
        const bool in2 = two_objects && y >= 56 && x >= 96 - 8 * t && x < 112 - 8 * t;
        img.at(y, x, 0) = in ? 220 : 20;
        img.at(y, x, 1) = in2 ? 220 : 30;
        img.at(y, x, 2) = in || in2 ? 30 : 200;
        for (int c = 0; c < 3; ++c) mask.at(y, x, c) = in ? 255 : 0;
        if (two_objects) {
          mask.at(y, x, 0) = in2 ? 128 : 0;
          mask.at(y, x, 1) = in ? 128 : 0;
          mask.at(y, x, 2) = 0;
        }
      }
    char stem[16];
    std::snprintf(stem, sizeof stem, "%05d", t);
    data::write_file(root / "JPEGImages" / "480p" / name / (std::string(stem) + ".jpg"),
                     data::encode_jpeg(img, 95, TJSAMP_444));
    data::write_file(root / "Annotations" / "480p" / name / (std::string(stem) + ".png"),
                     data::encode_png(mask));
  }
}

}  // namespace flsl::evaluation::testing
