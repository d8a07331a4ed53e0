// The run folder's text records: log.jsonl (one JSON object per line: run start, steps, epochs,
// evaluations, the end) and config.json (the resolved configuration, written atomically).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "../core/error.hpp"
#include "../optim/schedule.hpp"

namespace flsl::train {

/// Writes `text` to `path` through a temporary file and a rename (never a half-written file).
inline void write_text_atomic(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("cannot write '", tmp.string(), "': ", std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() &&
                  std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  const int err = errno;
  std::fclose(f);
  if (!ok) {
    std::remove(tmp.c_str());
    fail("cannot write '", tmp.string(), "': ", std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail("cannot rename '", tmp.string(), "' to '", path.string(), "': ", std::strerror(e));
  }
}

/// Saves the resolved configuration as pretty-printed JSON.
inline void write_config_json(const std::filesystem::path& path, const nlohmann::json& config) {
  write_text_atomic(path, config.dump(2) + "\n");
}

/// Every scheduled value of a step, as log fields.
inline nlohmann::ordered_json schedule_json(const optim::scheduled_values& s) {
  return {{"lr", s.lr},
          {"weight_decay", s.weight_decay},
          {"momentum", s.momentum},
          {"teacher_temp", s.teacher_temp},
          {"b_sa", s.b_sa},
          {"b_ca", s.b_ca},
          {"coef_ms", s.coef_ms},
          {"last_layer_frozen", s.last_layer_frozen}};
}

/// log.jsonl: appended to (a resumed run continues the file), one flushed line per record, so a
/// crash loses at most the line being written. Every record has "type" and "time" (seconds since
/// the epoch, UTC); readers that meet a step twice (after a crash between checkpoints) keep the
/// last one.
class run_log {
 public:
  run_log() = default;
  explicit run_log(const std::filesystem::path& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "ab");
    if (!f_) fail("cannot open the log '", path.string(), "': ", std::strerror(errno));
  }
  run_log(const run_log&) = delete;
  run_log& operator=(const run_log&) = delete;
  run_log(run_log&& o) noexcept : path_(std::move(o.path_)), f_(std::exchange(o.f_, nullptr)) {}
  run_log& operator=(run_log&& o) noexcept {
    if (this != &o) {
      close();
      path_ = std::move(o.path_);
      f_ = std::exchange(o.f_, nullptr);
    }
    return *this;
  }
  ~run_log() { close(); }

  bool is_open() const { return f_ != nullptr; }
  const std::filesystem::path& path() const { return path_; }

  /// Appends one record; `type` goes first.
  void write(const std::string& type, const nlohmann::ordered_json& fields) {
    if (!f_) return;
    nlohmann::ordered_json j;
    j["type"] = type;
    j["time"] = double(std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count()) /
                1000.0;
    for (auto it = fields.begin(); it != fields.end(); ++it) j[it.key()] = it.value();
    // non-finite numbers are not JSON: dump writes them as null
    const std::string line =
        j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
      fail("cannot write the log '", path_.string(), "': ", std::strerror(errno));
  }

 private:
  void close() {
    if (f_) std::fclose(f_);
    f_ = nullptr;
  }
  std::filesystem::path path_;
  std::FILE* f_ = nullptr;
};

}  // namespace flsl::train
