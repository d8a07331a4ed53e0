// Folder dataset: JPEG/PNG files found by a recursive scan of a directory (first-level sub-folders
// are classes) or listed in a text file, in sorted order; unreadable files skipped and reported.
#pragma once

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "dataset.hpp"
#include "decode.hpp"

namespace flsl::data {

/// Reads a whole file (or its first `max_bytes`) into `out`, reusing its capacity. Throws naming
/// the path when the file cannot be opened or read.
inline void read_file(const std::filesystem::path& path, std::vector<std::uint8_t>& out,
                      std::size_t max_bytes = std::size_t(-1)) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  FLSL_CHECK(f != nullptr, "cannot open '", path.string(), "'");
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  out.clear();
  if (std::fseek(f, 0, SEEK_END) == 0) {
    const long size = std::ftell(f);
    if (size >= 0) out.reserve(std::min<std::size_t>(std::size_t(size), max_bytes));
    std::rewind(f);
  }
  std::uint8_t chunk[1 << 16];
  while (out.size() < max_bytes) {
    const std::size_t want = std::min<std::size_t>(sizeof chunk, max_bytes - out.size());
    const std::size_t got = std::fread(chunk, 1, want, f);
    out.insert(out.end(), chunk, chunk + got);
    if (got < want) {
      FLSL_CHECK(!std::ferror(f), "cannot read '", path.string(), "'");
      break;
    }
  }
}

/// How much a scan checks of each candidate file.
enum class ScanCheck {
  extension,  // accept every .jpg/.jpeg/.jpe/.png file; failures surface when loading
  header,     // read the header (size, format); catches empty, non-image and most corrupt files
  decode,     // decode every image fully (in parallel); catches truncated files too
};

struct FolderOptions {
  ScanCheck check = ScanCheck::header;
  /// Label images by their first-level sub-folder (sorted class names); files at the top are -1.
  bool class_subfolders = true;
  /// Receives every warning and the scan summary; default: stderr with a "flsl: " prefix.
  std::function<void(const std::string&)> log = {};
};

/// Result of a scan: counts and every skipped file with the reason.
struct ScanSummary {
  std::size_t candidates = 0;  // files with an image extension
  std::size_t images = 0;      // accepted
  std::size_t ignored = 0;     // files without an image extension (not counted as errors)
  std::vector<std::pair<std::string, std::string>> skipped;  // (path, reason)

  std::string str(const std::string& root) const {
    std::ostringstream os;
    os << "'" << root << "': " << images << " images, " << skipped.size() << " skipped (corrupt, "
       << "empty or not an image), " << ignored << " other files ignored";
    return os.str();
  }
};

/// Images of a folder tree or file list. Order: sorted relative paths (byte order of their
/// generic form), the same on every machine. Thread-safe `load`.
class FolderDataset {
 public:
  /// Recursive scan of `root`.
  explicit FolderDataset(const std::filesystem::path& root, FolderOptions opt = {})
      : root_(root), opt_(std::move(opt)) {
    namespace fs = std::filesystem;
    FLSL_CHECK(fs::is_directory(root_), "FolderDataset: '", root_.string(), "' is not a directory");
    std::vector<std::string> rel;
    for (auto it =
             fs::recursive_directory_iterator(root_, fs::directory_options::skip_permission_denied);
         it != fs::recursive_directory_iterator(); ++it) {
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] == '.') {  // hidden files and folders
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (!it->is_regular_file()) continue;
      const std::string r = fs::relative(it->path(), root_).generic_string();
      if (has_image_extension(name)) {
        rel.push_back(r);
      } else {
        ++summary_.ignored;
      }
    }
    build(std::move(rel));
  }

  /// Images named in a text file, one path per line (relative to `root`, or absolute); blank lines
  /// and lines starting with '#' are ignored. A listed file that does not exist is skipped.
  static FolderDataset from_file_list(const std::filesystem::path& list,
                                      const std::filesystem::path& root, FolderOptions opt = {}) {
    std::vector<std::uint8_t> bytes;
    read_file(list, bytes);
    std::vector<std::string> rel;
    std::istringstream in(std::string(bytes.begin(), bytes.end()));
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (line.empty() || line[0] == '#') continue;
      rel.push_back(line);
    }
    return FolderDataset(root, std::move(opt), std::move(rel));
  }

  std::size_t size() const { return files_.size(); }
  const std::filesystem::path& root() const { return root_; }
  /// Path of image i (root / relative path).
  std::filesystem::path path(std::size_t i) const { return root_ / files_.at(i); }
  const std::string& relative_path(std::size_t i) const { return files_.at(i); }
  std::int64_t label(std::size_t i) const { return labels_.at(i); }
  const std::vector<std::string>& classes() const { return classes_; }
  const ScanSummary& summary() const { return summary_; }

  void load(std::size_t i, SourceImage& out) const {
    FLSL_CHECK(i < files_.size(), "FolderDataset: index ", i, " out of range (", files_.size(),
               " images in '", root_.string(), "')");
    out.encoded = true;
    out.name = (root_ / files_[i]).string();
    out.label = labels_[i];
    read_file(out.name, out.bytes);
  }

 private:
  FolderDataset(const std::filesystem::path& root, FolderOptions opt, std::vector<std::string> rel)
      : root_(root), opt_(std::move(opt)) {
    build(std::move(rel));
  }

  static bool has_image_extension(std::string_view name) {
    const auto dot = name.rfind('.');
    if (dot == std::string_view::npos) return false;
    std::string ext(name.substr(dot + 1));
    for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
    return ext == "jpg" || ext == "jpeg" || ext == "jpe" || ext == "png";
  }

  void log(const std::string& msg) const {
    if (opt_.log) {
      opt_.log(msg);
    } else {
      std::cerr << "flsl: " << msg << '\n';
    }
  }

  /// Checks the candidates (in parallel), keeps the readable ones in sorted order, assigns labels.
  void build(std::vector<std::string> rel) {
    std::sort(rel.begin(), rel.end());
    rel.erase(std::unique(rel.begin(), rel.end()), rel.end());
    summary_.candidates = rel.size();
    std::vector<std::string> reason(rel.size());
    tbb::parallel_for(std::size_t(0), rel.size(),
                      [&](std::size_t i) { reason[i] = check(root_ / rel[i]); });
    for (std::size_t i = 0; i < rel.size(); ++i) {
      if (reason[i].empty()) {
        files_.push_back(rel[i]);
      } else {
        const std::string p = (root_ / rel[i]).string();
        log("warning: skipping '" + p + "': " + reason[i]);
        summary_.skipped.emplace_back(p, reason[i]);
      }
    }
    summary_.images = files_.size();
    if (files_.empty())
      fail("FolderDataset: no readable JPEG or PNG image in '", root_.string(), "' (",
           summary_.candidates, " candidate files, ", summary_.skipped.size(), " skipped)");
    std::map<std::string, std::int64_t> class_ids;
    auto class_of = [&](const std::string& r) -> std::string {
      const auto slash = r.find('/');
      return opt_.class_subfolders && slash != std::string::npos ? r.substr(0, slash) : "";
    };
    for (const auto& f : files_)
      if (auto c = class_of(f); !c.empty()) class_ids.emplace(c, 0);
    for (auto& [name, id] : class_ids) {
      id = std::int64_t(classes_.size());
      classes_.push_back(name);
    }
    labels_.reserve(files_.size());
    for (const auto& f : files_) {
      const auto c = class_of(f);
      labels_.push_back(c.empty() ? -1 : class_ids.at(c));
    }
    log("scanned " + summary_.str(root_.string()));
  }

  /// Empty string when the file passes the check, else why not.
  std::string check(const std::filesystem::path& p) const {
    try {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(p, ec)) return "does not exist or is not a file";
      const auto size = std::filesystem::file_size(p, ec);
      if (ec) return "cannot read its size: " + ec.message();
      if (size == 0) return "empty file";
      if (opt_.check == ScanCheck::extension) return "";
      std::vector<std::uint8_t> bytes;
      Decoder dec;
      if (opt_.check == ScanCheck::header) {
        read_file(p, bytes, std::size_t(1) << 18);
        try {
          dec.header(bytes, p.string());
          return "";
        } catch (const flsl::error&) {
          if (bytes.size() == size) throw;  // the whole file was read: the header is bad
        }
        read_file(p, bytes);  // the header may sit behind a large APP segment
        dec.header(bytes, p.string());
        return "";
      }
      read_file(p, bytes);
      ImageU8 img;
      dec.decode(bytes, p.string(), img);
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  }

  std::filesystem::path root_;
  FolderOptions opt_;
  std::vector<std::string> files_;
  std::vector<std::int64_t> labels_;
  std::vector<std::string> classes_;
  ScanSummary summary_;
};

}  // namespace flsl::data
