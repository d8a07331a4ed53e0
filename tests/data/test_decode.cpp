// Decoding: JPEG and PNG in their colour flavours, EXIF orientation, CMYK, DCT-domain down-scaling,
// and fuzzed (truncated, random, corrupted) bytes that must fail with flsl::error, never crash.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>

#include <flsl/core/random.hpp>
#include <flsl/data/decode.hpp>
#include <flsl/data/encode.hpp>

#include "test_images.hpp"

using namespace flsl::data;
using flsl::data::testing::encode_cmyk_jpeg;
using flsl::data::testing::smooth_image;
using flsl::data::testing::with_exif_orientation;
using flsl::data::testing::write_png_raw;

namespace {

double mean_abs_diff(const ImageU8& a, const ImageU8& b) {
  REQUIRE(a.width == b.width);
  REQUIRE(a.height == b.height);
  double s = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    s += std::abs(int(a.pixels[i]) - int(b.pixels[i]));
  return s / double(a.pixels.size());
}

/// A w x h image of 2 x 2 flat quadrants: red, green / blue, white.
ImageU8 quadrants(int w, int h) {
  ImageU8 img(w, h);
  const std::array<std::array<int, 3>, 4> c = {
      {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}}};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k)
        img.at(y, x, k) =
            std::uint8_t(c[std::size_t((y >= h / 2) * 2 + (x >= w / 2))][std::size_t(k)]);
  return img;
}

/// Index 0..3 (red, green, blue, white) of the colour nearest to pixel (x, y).
int colour_at(const ImageU8& img, int x, int y) {
  const std::array<std::array<int, 3>, 4> c = {
      {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}}};
  int best = -1, best_d = 1 << 30;
  for (int i = 0; i < 4; ++i) {
    int d = 0;
    for (int k = 0; k < 3; ++k)
      d += std::abs(int(img.at(y, x, k)) - c[std::size_t(i)][std::size_t(k)]);
    if (d < best_d) best = i, best_d = d;
  }
  return best;
}

/// Decoding must end in success or a flsl::error; anything else fails the test.
void decode_must_not_crash(const std::vector<std::uint8_t>& bytes, Decoder& dec, int& errors) {
  ImageU8 img;
  try {
    dec.decode(bytes, "fuzz", img, 0.3);
  } catch (const flsl::error& e) {
    CHECK(std::string(e.what()).find("fuzz") != std::string::npos);  // names the image
    ++errors;
  }
}

}  // namespace

TEST_CASE("format is detected from the bytes, not the name") {
  const ImageU8 img = smooth_image(16, 8);
  CHECK(detect_format(encode_jpeg(img)) == ImageFormat::jpeg);
  CHECK(detect_format(encode_png(img)) == ImageFormat::png);
  const std::vector<std::uint8_t> text = {'h', 'e', 'l', 'l', 'o'};
  CHECK(detect_format(text) == ImageFormat::unknown);
  CHECK_THROWS_WITH_AS(decode_image(text, "notes.jpg"), doctest::Contains("notes.jpg"),
                       flsl::error);
  CHECK_THROWS_WITH_AS(decode_image({}, "empty.png"), doctest::Contains("empty"), flsl::error);
}

TEST_CASE("JPEG colour and greyscale decode to RGB close to the source") {
  const ImageU8 img = smooth_image(48, 32);
  const ImageU8 back = decode_image(encode_jpeg(img, 95, TJSAMP_444));
  CHECK(mean_abs_diff(img, back) < 2.0);

  const ImageU8 grey_back = decode_image(encode_jpeg(img, 95, TJSAMP_GRAY));
  REQUIRE(grey_back.width == 48);
  for (int y = 0; y < grey_back.height; ++y)
    for (int x = 0; x < grey_back.width; ++x) {
      CHECK(grey_back.at(y, x, 0) == grey_back.at(y, x, 1));
      CHECK(grey_back.at(y, x, 1) == grey_back.at(y, x, 2));
    }
}

TEST_CASE("PNG of every colour type and bit depth decodes to exact RGB") {
  const int w = 5, h = 3;
  const ImageU8 rgb = smooth_image(w, h);
  SUBCASE("RGB 8-bit, interlaced") {
    const auto png = write_png_raw(w, h, PNG_COLOR_TYPE_RGB, 8, rgb.pixels, true);
    CHECK(decode_image(png).pixels == rgb.pixels);
  }
  SUBCASE("RGBA: alpha is dropped, not composited") {
    std::vector<std::uint8_t> rows;
    for (std::size_t i = 0; i < rgb.pixels.size(); i += 3)
      rows.insert(rows.end(),
                  {rgb.pixels[i], rgb.pixels[i + 1], rgb.pixels[i + 2], std::uint8_t(i)});
    CHECK(decode_image(write_png_raw(w, h, PNG_COLOR_TYPE_RGB_ALPHA, 8, rows)).pixels ==
          rgb.pixels);
  }
  SUBCASE("RGB 16-bit keeps the high byte") {
    std::vector<std::uint8_t> rows;
    for (auto v : rgb.pixels) rows.insert(rows.end(), {v, std::uint8_t(255 - v)});
    CHECK(decode_image(write_png_raw(w, h, PNG_COLOR_TYPE_RGB, 16, rows)).pixels == rgb.pixels);
  }
  SUBCASE("grey 8-bit and grey + alpha become three equal channels") {
    std::vector<std::uint8_t> grey, grey_alpha;
    for (int i = 0; i < w * h; ++i) {
      grey.push_back(std::uint8_t(17 * i));
      grey_alpha.insert(grey_alpha.end(), {std::uint8_t(17 * i), 9});
    }
    for (const auto& [type, rows] :
         {std::pair{PNG_COLOR_TYPE_GRAY, grey}, std::pair{PNG_COLOR_TYPE_GRAY_ALPHA, grey_alpha}}) {
      const ImageU8 out = decode_image(write_png_raw(w, h, type, 8, rows));
      for (int i = 0; i < w * h; ++i)
        for (int c = 0; c < 3; ++c) CHECK(out.pixels[std::size_t(3 * i + c)] == 17 * i);
    }
  }
  SUBCASE("grey 1-bit expands to 0 / 255") {
    // one byte per row holds 5 pixels, MSB first: 1 0 1 1 0
    const std::vector<std::uint8_t> rows(std::size_t(h), 0b10110000);
    const ImageU8 out = decode_image(write_png_raw(w, h, PNG_COLOR_TYPE_GRAY, 1, rows));
    const int expect[5] = {255, 0, 255, 255, 0};
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) CHECK(out.at(y, x, 1) == expect[x]);
  }
  SUBCASE("palette becomes the palette colours") {
    const std::vector<png_color> palette = {{10, 20, 30}, {200, 100, 50}, {0, 255, 7}};
    std::vector<std::uint8_t> rows;
    for (int i = 0; i < w * h; ++i) rows.push_back(std::uint8_t(i % 3));
    const ImageU8 out =
        decode_image(write_png_raw(w, h, PNG_COLOR_TYPE_PALETTE, 8, rows, false, palette));
    for (int i = 0; i < w * h; ++i) {
      const png_color& p = palette[std::size_t(i % 3)];
      CHECK(out.pixels[std::size_t(3 * i)] == p.red);
      CHECK(out.pixels[std::size_t(3 * i + 1)] == p.green);
      CHECK(out.pixels[std::size_t(3 * i + 2)] == p.blue);
    }
  }
}

TEST_CASE("EXIF orientation 1..8 makes the image upright (both byte orders)") {
  // quadrants [[R, G], [B, W]] after each orientation, row-major (PIL's exif_transpose)
  const std::array<std::array<int, 4>, 9> expect = {
      {{},
       {0, 1, 2, 3},    // 1 as stored
       {1, 0, 3, 2},    // 2 mirror left-right
       {3, 2, 1, 0},    // 3 rotate 180
       {2, 3, 0, 1},    // 4 mirror top-bottom
       {0, 2, 1, 3},    // 5 transpose
       {2, 0, 3, 1},    // 6 rotate 90 clockwise
       {3, 1, 2, 0},    // 7 transverse
       {1, 3, 0, 2}}};  // 8 rotate 90 counter-clockwise
  const auto jpeg = encode_jpeg(quadrants(32, 16), 100, TJSAMP_444);
  Decoder dec;
  for (bool big_endian : {true, false}) {
    for (int o = 1; o <= 8; ++o) {
      CAPTURE(o);
      CAPTURE(big_endian);
      const auto bytes = with_exif_orientation(jpeg, o, big_endian);
      const ImageHeader h = dec.header(bytes, "exif");
      CHECK(h.orientation == o);
      ImageU8 img;
      dec.decode(bytes, "exif", img);
      const bool swap = o >= 5;
      CHECK(img.width == (swap ? 16 : 32));
      CHECK(img.height == (swap ? 32 : 16));
      CHECK(h.width == img.width);
      CHECK(h.height == img.height);
      const int qx = img.width / 4, qy = img.height / 4;
      CHECK(colour_at(img, qx, qy) == expect[std::size_t(o)][0]);
      CHECK(colour_at(img, 3 * qx, qy) == expect[std::size_t(o)][1]);
      CHECK(colour_at(img, qx, 3 * qy) == expect[std::size_t(o)][2]);
      CHECK(colour_at(img, 3 * qx, 3 * qy) == expect[std::size_t(o)][3]);
    }
  }
}

TEST_CASE("CMYK (Adobe YCCK) JPEG is converted to RGB = C'K'/255 without a profile") {
  const int w = 32, h = 16;
  // stored (inverted) inks: left half C'=255 M'=0 Y'=0 K'=255 -> red; right half K'=128 -> grey-ish
  // cyan
  std::vector<std::uint8_t> cmyk;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      if (x < w / 2) {
        cmyk.insert(cmyk.end(), {255, 0, 0, 255});
      } else {
        cmyk.insert(cmyk.end(), {0, 255, 255, 128});
      }
    }
  Decoder dec;
  const auto bytes = encode_cmyk_jpeg(w, h, cmyk);
  CHECK(dec.header(bytes, "cmyk").jpeg.markers.adobe);
  ImageU8 img;
  dec.decode(bytes, "cmyk", img);
  CHECK(std::abs(img.at(8, 4, 0) - 255) <= 3);
  CHECK(img.at(8, 4, 1) <= 3);
  CHECK(img.at(8, 4, 2) <= 3);
  CHECK(img.at(8, 28, 0) <= 3);
  CHECK(std::abs(img.at(8, 28, 1) - 128) <= 3);
  CHECK(std::abs(img.at(8, 28, 2) - 128) <= 3);
}

TEST_CASE("DCT-domain down-scaling picks the smallest k/8 factor >= the requested scale") {
  CHECK(jpeg_scale_for(1.0).value() == 1.0);
  CHECK(jpeg_scale_for(0.3).value() == doctest::Approx(0.375));
  CHECK(jpeg_scale_for(0.25).value() == doctest::Approx(0.25));
  CHECK(jpeg_scale_for(0.01).value() == doctest::Approx(0.125));
  const ImageU8 img = smooth_image(320, 240);
  const auto jpeg = encode_jpeg(img, 95, TJSAMP_444);
  Decoder dec;
  ImageU8 small;
  const DecodedInfo info = dec.decode(jpeg, "big", small, 0.3);
  CHECK(small.width == 120);
  CHECK(small.height == 90);
  CHECK(info.full_width == 320);
  CHECK(info.scale_x == doctest::Approx(0.375));
  // every decoded pixel approximates the full image around the matching position
  double err = 0;
  int n = 0;
  for (int y = 2; y < small.height - 2; y += 7)
    for (int x = 2; x < small.width - 2; x += 7) {
      const int fx = int((x + 0.5) / 0.375), fy = int((y + 0.5) / 0.375);
      for (int c = 0; c < 2; ++c) err += std::abs(int(small.at(y, x, c)) - int(img.at(fy, fx, c)));
      n += 2;
    }
  CHECK(err / n < 3.0);
  // PNG ignores the request
  ImageU8 png_img;
  CHECK(dec.decode(encode_png(img), "png", png_img, 0.3).scale_x == 1.0);
  CHECK(png_img.width == 320);
}

TEST_CASE("a truncated JPEG or PNG is an error naming the file") {
  const ImageU8 img = smooth_image(64, 48);
  for (const auto& bytes : {encode_jpeg(img, 90), encode_png(img)}) {
    const std::vector<std::uint8_t> half(bytes.begin(),
                                         bytes.begin() + std::ptrdiff_t(bytes.size() / 2));
    CHECK_THROWS_WITH_AS(decode_image(half, "cut.img"), doctest::Contains("cut.img"), flsl::error);
  }
}

TEST_CASE("fuzz: truncated, random and corrupted bytes never crash the decoders") {
  const ImageU8 img = smooth_image(40, 24);
  const std::vector<std::vector<std::uint8_t>> valid = {
      with_exif_orientation(encode_jpeg(img, 80), 6, false), encode_jpeg(img, 80, TJSAMP_GRAY),
      encode_png(img),
      write_png_raw(4, 2, PNG_COLOR_TYPE_PALETTE, 8, {0, 1, 0, 1, 1, 0, 1, 0}, true,
                    {{1, 2, 3}, {4, 5, 6}})};
  Decoder dec;
  int errors = 0;
  // every truncation of every valid file
  for (const auto& v : valid)
    for (std::size_t len = 0; len < v.size(); len += 1 + len / 64)
      decode_must_not_crash(std::vector<std::uint8_t>(v.begin(), v.begin() + std::ptrdiff_t(len)),
                            dec, errors);
  CHECK(errors > 0);
  flsl::Generator g(1234, 0);
  // random bytes, some behind a valid signature
  for (int i = 0; i < 300; ++i) {
    std::vector<std::uint8_t> bytes(g.uniform_int(600));
    for (auto& b : bytes) b = std::uint8_t(g.next_u32());
    const auto& prefix_src = valid[i % 3 == 2 ? 2 : 0];
    const std::size_t keep = std::min({bytes.size(), prefix_src.size(),
                                       i % 2 ? std::size_t(g.uniform_int(200)) : std::size_t(0)});
    std::copy(prefix_src.begin(), prefix_src.begin() + std::ptrdiff_t(keep), bytes.begin());
    decode_must_not_crash(bytes, dec, errors);
  }
  // random byte corruptions of valid files
  for (int i = 0; i < 400; ++i) {
    auto bytes = valid[std::size_t(i) % valid.size()];
    const int flips = 1 + int(g.uniform_int(4));
    for (int f = 0; f < flips; ++f)
      bytes[g.uniform_int(std::uint32_t(bytes.size()))] = std::uint8_t(g.next_u32());
    decode_must_not_crash(bytes, dec, errors);
  }
  // the decoder still works after all that, right after a failure too
  ImageU8 out;
  CHECK_THROWS_AS(
      dec.decode(std::vector<std::uint8_t>(valid[0].begin(), valid[0].begin() + 300), "cut", out),
      flsl::error);
  dec.decode(valid[0], "ok", out);
  CHECK(out.width == 24);  // EXIF orientation 6
  CHECK_THROWS_AS(
      dec.decode(std::vector<std::uint8_t>(valid[2].begin(), valid[2].begin() + 50), "cut", out),
      flsl::error);
  dec.decode(valid[2], "ok", out);
  CHECK(mean_abs_diff(img, out) == 0.0);
}
