// Training progress on the terminal: a redrawn bar (epoch, step, ETA, loss and its three parts,
// learning rate, images/s) when the stream is a terminal, plain periodic lines otherwise.
#pragma once

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "../core/shape.hpp"

namespace flsl::train {

/// What one step reports to the display.
struct progress_step {
  index_t iteration = 0;       // steps done, after this one
  index_t epoch = 0;           // of this step
  index_t batch_in_epoch = 0;  // batches of the epoch done, after this one
  double loss = 0, ms = 0, km = 0, vmr = 0;
  double lr = 0;
  double images_per_second = 0;  // recent average
};

/// "1:02:03" / "4:05" for a duration in seconds.
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = (long long)(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

class progress_display {
 public:
  enum class mode { bar, plain, none };

  /// `requested` is the --progress option: auto, bar, plain or none. `every`: steps between plain
  /// lines (0: about ten per epoch).
  progress_display(const std::string& requested, index_t total_iterations, index_t iters_per_epoch,
                   index_t epochs, index_t every, std::FILE* out = stdout)
      : out_(out), total_(total_iterations), per_epoch_(iters_per_epoch), epochs_(epochs) {
    if (requested == "none") {
      mode_ = mode::none;
    } else if (requested == "bar" || (requested == "auto" && ::isatty(::fileno(out)))) {
      mode_ = mode::bar;
    } else {
      mode_ = mode::plain;
    }
    every_ = every > 0 ? every : std::max<index_t>(1, iters_per_epoch / 10);
  }
  ~progress_display() { finish(); }
  progress_display(const progress_display&) = delete;
  progress_display& operator=(const progress_display&) = delete;

  mode current_mode() const { return mode_; }

  /// Marks where timing starts (the first step of this process); `iteration` steps are done.
  void start(index_t iteration) {
    start_iteration_ = iteration;
    start_ = std::chrono::steady_clock::now();
  }

  void step(const progress_step& s) {
    if (mode_ == mode::none) return;
    const double elapsed = seconds_since_start();
    const index_t done_here = s.iteration - start_iteration_;
    const double eta =
        done_here > 0 ? elapsed / double(done_here) * double(total_ - s.iteration) : std::nan("");
    char stats[256];
    std::snprintf(stats, sizeof stats,
                  "loss %.4f (ms %.4f km %.4f vmr %.4f) | lr %.3g | %.1f img/s | ETA %s", s.loss,
                  s.ms, s.km, s.vmr, s.lr, s.images_per_second, format_duration(eta).c_str());
    char where[96];
    std::snprintf(where, sizeof where, "epoch %lld/%lld step %lld/%lld", (long long)(s.epoch + 1),
                  (long long)epochs_, (long long)s.batch_in_epoch, (long long)per_epoch_);
    if (mode_ == mode::plain) {
      if (s.iteration % every_ == 0 || s.batch_in_epoch == per_epoch_ || done_here == 1)
        line(std::string(where) + " | " + stats);
      return;
    }
    const int width = terminal_width();
    const std::string head = std::string(where) + " ";
    const std::string tail =
        " " + std::to_string(s.iteration) + "/" + std::to_string(total_) + " " + stats;
    const int bar = std::clamp(width - int(head.size() + tail.size()) - 2, 10, 40);
    const double frac = total_ > 0 ? double(s.iteration) / double(total_) : 1.0;
    const int filled = int(std::lround(frac * bar));
    std::string text = head + "[" + std::string(std::size_t(filled), '#') +
                       std::string(std::size_t(bar - filled), '.') + "]" + tail;
    if (int(text.size()) > width - 1) text.resize(std::size_t(std::max(width - 1, 20)));
    std::fprintf(out_, "\r%s\033[K", text.c_str());
    std::fflush(out_);
    drawn_ = true;
  }

  /// A message on its own line (the bar, if any, is redrawn by the next step).
  void message(const std::string& text) {
    if (drawn_) {
      std::fprintf(out_, "\r\033[K");
      drawn_ = false;
    }
    std::fprintf(out_, "%s\n", text.c_str());
    std::fflush(out_);
  }

  /// Ends the bar's line.
  void finish() {
    if (drawn_) {
      std::fprintf(out_, "\n");
      std::fflush(out_);
      drawn_ = false;
    }
  }

 private:
  double seconds_since_start() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void line(const std::string& text) {
    std::fprintf(out_, "%s\n", text.c_str());
    std::fflush(out_);
  }
  int terminal_width() const {
    winsize w{};
    if (::ioctl(::fileno(out_), TIOCGWINSZ, &w) == 0 && w.ws_col > 20) return w.ws_col;
    return 120;
  }

  std::FILE* out_;
  mode mode_ = mode::plain;
  index_t total_, per_epoch_, epochs_, every_ = 1;
  index_t start_iteration_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  bool drawn_ = false;
};

}  // namespace flsl::train
