// Every option of a training run: its value, default, help text and check, in one table that
// serves the command line, the --config JSON file, --help, the resolved config.json and the
// checkpoint's metadata. Invalid or unknown values are refused before any work, with the reason.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../backend/matmul_precision.hpp"
#include "../core/error.hpp"
#include "../core/shape.hpp"
#include "../nn/autocast.hpp"

namespace flsl::train {

/// A (min, max) pair such as a crop's area scale range.
using range = std::pair<double, double>;

/// All run-time options. The defaults here are the published recipe (FLSL_SPEC.md) where the spec
/// gives one; an experiment (examples/experiments/) changes them before the command line is read.
struct run_config {
  // ---- run
  std::string data;  // a folder of images; empty: the built-in procedural dataset
  std::string arch = "tiny";
  index_t patch = 16;
  index_t epochs = 100;
  index_t batch = 64;
  std::string out = "runs/flsl";
  std::uint64_t seed = 0;
  index_t threads = 0;  // 0: all cores
  std::string device = "cpu";
  std::string
      resume;  // checkpoint to continue from; empty: <out>/checkpoint_last.safetensors if any
  bool fresh = false;      // ignore a checkpoint in <out> and start again
  bool eval_only = false;  // evaluate the checkpoint (or the random weights) and stop
  std::string export_path;
  std::string config_file;
  index_t max_steps = 0;         // stop (with a checkpoint) once this many iterations are done
  index_t checkpoint_every = 0;  // epochs between kept checkpoint_epochNNN files; 0: none
  index_t log_every = 1;         // steps between log.jsonl step records
  std::string progress = "auto";
  index_t progress_every = 0;  // steps between plain progress lines; 0: about 10 per epoch
  // ---- data
  index_t procedural_images = 10000;  // images of the procedural training split
  index_t procedural_size = 256;      // their side in pixels
  index_t procedural_min_objects = 2, procedural_max_objects = 5;  // per image (train and eval)
  // ---- views (spec §2)
  index_t global_size = 224;
  index_t local_size = 96;
  index_t locals = 2;
  range teacher_scale{0.8, 1.0};
  range global_scale{0.5, 1.0};
  range local_scale{0.05, 0.4};
  index_t global_window = 3;
  index_t local_window = 2;
  bool random_sampling = false;
  double flip_p = 0.0;
  double jitter_p = 0.8;
  double brightness = 0.4, contrast = 0.4, saturation = 0.2, hue = 0.1;
  double grayscale_p = 0.2;
  double blur_branch_p = 0.5, blur_p_a = 0.5, blur_p_b = 0.1, solarize_p = 0.2;
  range blur_sigma{0.1, 2.0};
  // ---- objective (spec §3)
  double b_sa = 0.1 / std::sqrt(384.0);
  double b_ca = 0.2 / std::sqrt(384.0);
  std::optional<double> b_sa_start, b_ca_start;
  double coef_ms = 0.03;
  std::optional<double> start_intraview;
  double coef_km = 1.0;
  double coef_vmr = 5.0;
  bool center_teacher = false;  // DINO's teacher centering (spec §3: an alternative to VMR)
  double center_momentum = 0.9;
  double student_temp = 0.1;
  double teacher_temp = 0.07;
  double warmup_teacher_temp = 0.04;
  index_t warmup_teacher_temp_epochs = 30;
  index_t out_dim = 4096;       // compile-time in an experiment; the option only checks it
  bool norm_last_layer = true;  // likewise
  // ---- optimisation (spec §4)
  double lr = 5e-4;  // peak = lr * batch / 256
  double min_lr = 1e-6;
  std::optional<index_t> warmup_epochs;  // unset: 10% of the epochs
  double start_warmup_lr = 0.0;
  double weight_decay = 0.04, weight_decay_end = 0.4;
  double momentum_teacher = 0.996, momentum_teacher_end = 1.0;
  double clip_grad = 3.0;
  index_t freeze_last_layer = 1;
  double drop_path_rate = 0.1;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  // ---- precision (backend/matmul_precision.hpp, optim/grad_scaler.hpp)
  std::string matmul_precision = "auto";  // auto: exact on cpu, bf16 on cuda
  std::string autocast = "auto";     // the backbones' activations; auto: off on cpu, bf16 on cuda
  std::string loss_scale = "auto";   // auto: dynamic with fp16 products, none otherwise
  double loss_scale_init = 65536.0;  // a dynamic scale's start
  index_t loss_scale_growth_interval = 2000;
  // ---- evaluation
  bool eval = true;
  index_t eval_every = 0;  // epochs between evaluations besides start and end; 0: none
  index_t eval_train_images = 200;
  index_t eval_val_images = 100;
  index_t eval_size = 224;
  index_t knn_k = 20;
  double knn_temperature = 0.07;
  bool knn_center_positions = false;
  bool knn_center_images = false;
  std::string knn_labels = "soft";  // memory votes: class fractions ("soft") or "majority" class
  bool linear_probe = false;
  index_t pictures = 4;
  index_t kmeans_clusters = 6;
  // DAVIS video label propagation (eval/label_propagation.hpp); empty: none
  std::string davis;
  index_t davis_size = 480;
  std::string davis_sequences;  // comma-separated names; empty: every sequence
};

/// What an experiment lets the command line choose among, and what it fixes at compile time.
struct experiment_info {
  std::string name;         // program name in messages and --help
  std::string description;  // one paragraph for --help
  struct arch_choice {
    std::string name;  // "tiny"
    index_t patch = 16;
  };
  std::vector<arch_choice> archs;
  index_t out_dim = 4096;
  bool norm_last_layer = true;
  bool cuda = false;    // the binary can train with --device cuda (built with the CUDA backend)
  run_config defaults;  // the spec's defaults after the experiment's changes
};

namespace detail {

// ---- text <-> value, strictly (the whole text must be the value) ------------------------------

inline std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

template <class V>
struct value_codec;

template <>
struct value_codec<index_t> {
  static constexpr const char* kind = "integer";
  static std::optional<index_t> parse(const std::string& s) {
    index_t v = 0;
    const char* end = s.data() + s.size();
    const auto [p, ec] = std::from_chars(s.data(), end, v);
    if (ec != std::errc() || p != end || s.empty()) return std::nullopt;
    return v;
  }
  static nlohmann::json to_json(index_t v) { return v; }
  static std::string text(index_t v) { return std::to_string(v); }
};

template <>
struct value_codec<std::uint64_t> {
  static constexpr const char* kind = "unsigned integer";
  static std::optional<std::uint64_t> parse(const std::string& s) {
    std::uint64_t v = 0;
    const char* end = s.data() + s.size();
    const auto [p, ec] = std::from_chars(s.data(), end, v);
    if (ec != std::errc() || p != end || s.empty()) return std::nullopt;
    return v;
  }
  static nlohmann::json to_json(std::uint64_t v) { return v; }
  static std::string text(std::uint64_t v) { return std::to_string(v); }
};

inline std::string format_double(double v) {
  std::ostringstream os;
  os.precision(6);
  os << v;
  return os.str();
}

template <>
struct value_codec<double> {
  static constexpr const char* kind = "number";
  static std::optional<double> parse(const std::string& s) {
    if (s.empty()) return std::nullopt;
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
    return v;
  }
  static nlohmann::json to_json(double v) { return v; }
  static std::string text(double v) { return format_double(v); }
};

template <>
struct value_codec<bool> {
  static constexpr const char* kind = "true or false";
  static std::optional<bool> parse(const std::string& s) {
    if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "0" || s == "no" || s == "off") return false;
    return std::nullopt;
  }
  static nlohmann::json to_json(bool v) { return v; }
  static std::string text(bool v) { return v ? "true" : "false"; }
};

template <>
struct value_codec<std::string> {
  static constexpr const char* kind = "text";
  static std::optional<std::string> parse(const std::string& s) { return s; }
  static nlohmann::json to_json(const std::string& v) { return v; }
  static std::string text(const std::string& v) { return v.empty() ? "\"\"" : v; }
};

template <>
struct value_codec<range> {
  static constexpr const char* kind = "MIN,MAX";
  static std::optional<range> parse(const std::string& s) {
    const auto comma = s.find(',');
    if (comma == std::string::npos) return std::nullopt;
    const auto a = value_codec<double>::parse(trim(s.substr(0, comma)));
    const auto b = value_codec<double>::parse(trim(s.substr(comma + 1)));
    if (!a || !b) return std::nullopt;
    return range{*a, *b};
  }
  static nlohmann::json to_json(const range& v) {
    return nlohmann::json::array({v.first, v.second});
  }
  static std::string text(const range& v) {
    return format_double(v.first) + "," + format_double(v.second);
  }
};

/// Optional values: "none" (or JSON null) unsets.
template <class V>
struct value_codec<std::optional<V>> {
  static constexpr const char* kind = value_codec<V>::kind;
  static std::optional<std::optional<V>> parse(const std::string& s) {
    if (s == "none" || s == "auto" || s == "null") return std::optional<V>{};
    auto v = value_codec<V>::parse(s);
    if (!v) return std::nullopt;
    return std::optional<V>{*v};
  }
  static nlohmann::json to_json(const std::optional<V>& v) {
    return v ? value_codec<V>::to_json(*v) : nlohmann::json(nullptr);
  }
  static std::string text(const std::optional<V>& v) {
    return v ? value_codec<V>::text(*v) : "none";
  }
};

/// Text of a JSON value as the command line would give it ("" when the JSON type is wrong).
inline std::optional<std::string> json_to_text(const nlohmann::json& j) {
  if (j.is_null()) return std::string("none");
  if (j.is_string()) return j.get<std::string>();
  if (j.is_boolean()) return std::string(j.get<bool>() ? "true" : "false");
  if (j.is_number_integer() || j.is_number_unsigned()) return j.dump();
  if (j.is_number_float()) {
    std::ostringstream os;
    os.precision(17);
    os << j.get<double>();
    return os.str();
  }
  if (j.is_array() && j.size() == 2 && j[0].is_number() && j[1].is_number()) {
    auto a = json_to_text(j[0]), b = json_to_text(j[1]);
    return *a + "," + *b;
  }
  return std::nullopt;
}

/// Edit distance, for "did you mean" suggestions.
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] =
          std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace detail

/// One option: how to read, write, check and describe it.
struct option {
  std::string name;
  std::string group;
  std::string value_name;  // "N", "X", "DIR", ... ("" for flags)
  std::string help;
  bool flag = false;  // a bare --name means true
  /// Sets the value from text; returns "" or the reason the text is refused.
  std::function<std::string(run_config&, const std::string&)> set;
  std::function<nlohmann::json(const run_config&)> get;
  std::function<std::string(const run_config&)> text;
};

namespace detail {

/// A check returns "" when the value is fine, else what is wrong with it.
template <class V>
using check_fn = std::function<std::string(const V&)>;

template <class V>
option make_option(std::string name, std::string group, std::string value_name, std::string help,
                   V run_config::*member, check_fn<V> check = {}) {
  option o;
  o.name = std::move(name);
  o.group = std::move(group);
  o.value_name = std::move(value_name);
  o.help = std::move(help);
  o.flag = std::is_same_v<V, bool>;
  o.set = [member, check](run_config& c, const std::string& text) -> std::string {
    const auto v = value_codec<V>::parse(text);
    if (!v) return std::string("'") + text + "' is not a valid " + value_codec<V>::kind;
    if (check) {
      std::string why = check(*v);
      if (!why.empty()) return why;
    }
    c.*member = *v;
    return {};
  };
  o.get = [member](const run_config& c) { return value_codec<V>::to_json(c.*member); };
  o.text = [member](const run_config& c) { return value_codec<V>::text(c.*member); };
  return o;
}

inline check_fn<index_t> at_least(index_t lo) {
  return [lo](const index_t& v) {
    return v >= lo ? std::string()
                   : "must be at least " + std::to_string(lo) + ", got " + std::to_string(v);
  };
}
inline check_fn<std::optional<index_t>> opt_at_least(index_t lo) {
  return [lo](const std::optional<index_t>& v) {
    return !v || *v >= lo
               ? std::string()
               : "must be at least " + std::to_string(lo) + " (or none), got " + std::to_string(*v);
  };
}
/// lo <= v (closed) and v < hi or v <= hi.
inline check_fn<double> within(double lo, double hi, bool hi_open = false) {
  return [=](const double& v) {
    const bool ok = v >= lo && (hi_open ? v < hi : v <= hi);
    return ok ? std::string()
              : "must be in [" + format_double(lo) + ", " + format_double(hi) +
                    (hi_open ? ")" : "]") + ", got " + format_double(v);
  };
}
inline check_fn<double> positive() {
  return [](const double& v) {
    return v > 0 ? std::string() : "must be positive, got " + format_double(v);
  };
}
inline check_fn<double> non_negative() {
  return [](const double& v) {
    return v >= 0 ? std::string() : "must not be negative, got " + format_double(v);
  };
}
inline check_fn<std::optional<double>> opt_non_negative() {
  return [](const std::optional<double>& v) {
    return !v || *v >= 0 ? std::string() : "must not be negative, got " + format_double(*v);
  };
}
/// 0 < min <= max <= hi.
inline check_fn<range> scale_range(double hi = 1.0) {
  return [hi](const range& r) {
    const bool ok = r.first > 0 && r.first <= r.second && r.second <= hi;
    return ok ? std::string()
              : "needs 0 < MIN <= MAX <= " + format_double(hi) + ", got " +
                    value_codec<range>::text(r);
  };
}
inline check_fn<std::string> one_of(std::vector<std::string> choices) {
  return [choices](const std::string& v) {
    if (std::find(choices.begin(), choices.end(), v) != choices.end()) return std::string();
    std::string all;
    for (const auto& c : choices) all += (all.empty() ? "" : ", ") + c;
    return "'" + v + "' is not one of: " + all;
  };
}

inline std::optional<double> parse_fixed_loss_scale(const std::string& v) {
  const auto d = value_codec<double>::parse(v);
  if (d && std::isfinite(*d) && *d > 0) return d;
  return std::nullopt;
}
inline check_fn<std::string> loss_scale_value() {
  return [](const std::string& v) {
    if (v == "auto" || v == "dynamic" || v == "none" || parse_fixed_loss_scale(v))
      return std::string();
    return "'" + v + "' is not auto, dynamic, none or a positive number";
  };
}

}  // namespace detail

/// The names of --davis_sequences (comma-separated, spaces trimmed; empty: every sequence).
inline std::vector<std::string> davis_sequence_names(const run_config& c) {
  std::vector<std::string> out;
  for (std::size_t b = 0; b < c.davis_sequences.size();) {
    const std::size_t e = std::min(c.davis_sequences.find(',', b), c.davis_sequences.size());
    std::string name = c.davis_sequences.substr(b, e - b);
    name.erase(0, name.find_first_not_of(' '));
    name.erase(name.find_last_not_of(' ') + 1);
    if (!name.empty()) out.push_back(name);
    b = e + 1;
  }
  return out;
}

/// The matmul precision a run uses: --matmul_precision, with auto resolved for the device.
inline matmul_precision resolved_matmul_precision(const run_config& c) {
  if (c.matmul_precision == "auto")
    return c.device == "cuda" ? matmul_precision::bf16 : matmul_precision::exact;
  return parse_matmul_precision(c.matmul_precision);
}

/// The backbones' activations a run uses: --autocast, with auto resolved for the device.
inline nn::autocast resolved_autocast(const run_config& c) {
  if (c.autocast == "auto") return c.device == "cuda" ? nn::autocast::bf16 : nn::autocast::off;
  return nn::parse_autocast(c.autocast);
}

/// The option table, in --help order.
inline const std::vector<option>& options() {
  using namespace detail;
  static const std::vector<option> table = [] {
    std::vector<option> t;
    auto add = [&](option o) { t.push_back(std::move(o)); };
    const std::string run = "Run", data = "Data", views = "Views and augmentation (spec 2)",
                      obj = "Objective (spec 3)", opt = "Optimisation (spec 4)",
                      ev = "Evaluation and pictures";
    // run
    add(make_option("data", run, "DIR",
                    "folder of JPEG/PNG images (searched recursively); empty: the built-in "
                    "procedural dataset",
                    &run_config::data));
    add(make_option("arch", run, "NAME", "ViT size: tiny (D 192), small (D 384), base (D 768)",
                    &run_config::arch));
    add(make_option("patch", run, "P", "patch size in pixels (16 or 8)", &run_config::patch,
                    at_least(1)));
    add(make_option("epochs", run, "N", "training epochs", &run_config::epochs, at_least(1)));
    add(make_option("batch", run, "N", "images per step", &run_config::batch, at_least(1)));
    add(make_option("out", run, "DIR",
                    "run folder: config.json, log.jsonl, checkpoints, pictures; rerunning with the "
                    "same folder continues the run",
                    &run_config::out));
    add(make_option("seed", run, "N",
                    "seed of every random draw (initialisation, data order, views, drop path)",
                    &run_config::seed));
    add(make_option("threads", run, "N", "CPU threads (0: all cores)", &run_config::threads,
                    at_least(0)));
    add(make_option("device", run, "cpu|cuda", "where to train", &run_config::device,
                    one_of({"cpu", "cuda"})));
    add(make_option("resume", run, "FILE",
                    "checkpoint to continue from; empty: <out>/checkpoint_last.safetensors when "
                    "it exists",
                    &run_config::resume));
    add(make_option("fresh", run, "",
                    "start from scratch even when <out> holds a checkpoint (it is overwritten)",
                    &run_config::fresh));
    add(make_option("export", run, "FILE",
                    "at the end, write the teacher backbone as safetensors with timm's ViT "
                    "parameter names (also works on a finished run)",
                    &run_config::export_path));
    add(make_option("config", run, "FILE",
                    "read options from a JSON object with these keys (command-line options win)",
                    &run_config::config_file));
    add(make_option("max_steps", run, "N",
                    "stop with a checkpoint once N iterations are done (0: run to the end)",
                    &run_config::max_steps, at_least(0)));
    add(make_option("checkpoint_every", run, "N",
                    "also keep checkpoint_epochNNN.safetensors every N epochs (0: only "
                    "checkpoint_last)",
                    &run_config::checkpoint_every, at_least(0)));
    add(make_option("log_every", run, "N", "steps between step records of log.jsonl",
                    &run_config::log_every, at_least(1)));
    add(make_option("progress", run, "MODE",
                    "auto (a bar on a terminal, plain lines otherwise), bar, plain or none",
                    &run_config::progress, one_of({"auto", "bar", "plain", "none"})));
    add(make_option("progress_every", run, "N",
                    "steps between plain progress lines (0: about 10 per epoch)",
                    &run_config::progress_every, at_least(0)));
    // data
    add(make_option("procedural_images", data, "N",
                    "images in the procedural training split (without --data)",
                    &run_config::procedural_images, at_least(1)));
    add(make_option("procedural_size", data, "PX", "side of the procedural images in pixels",
                    &run_config::procedural_size, at_least(8)));
    add(make_option("procedural_min_objects", data, "N",
                    "fewest objects in a procedural image (training and evaluation images)",
                    &run_config::procedural_min_objects, at_least(1)));
    add(make_option("procedural_max_objects", data, "N", "most objects in a procedural image",
                    &run_config::procedural_max_objects, at_least(1)));
    // views
    add(make_option("global_size", views, "PX",
                    "side of the teacher view and the student global view",
                    &run_config::global_size, at_least(1)));
    add(make_option("local_size", views, "PX", "side of the local views", &run_config::local_size,
                    at_least(1)));
    add(make_option("locals", views, "N", "local views per image", &run_config::locals,
                    at_least(0)));
    add(make_option("teacher_scale", views, "MIN,MAX",
                    "area range of the teacher crop (of the image)", &run_config::teacher_scale,
                    scale_range()));
    add(make_option("global_scale", views, "MIN,MAX",
                    "area range of the student global crop (of the teacher view)",
                    &run_config::global_scale, scale_range()));
    add(make_option("local_scale", views, "MIN,MAX",
                    "area range of the local crops (of the teacher view)", &run_config::local_scale,
                    scale_range()));
    add(make_option("global_window", views, "W",
                    "query window on the global view's token grid (one query per W x W window)",
                    &run_config::global_window, at_least(1)));
    add(make_option("local_window", views, "W", "query window on the local views' token grid",
                    &run_config::local_window, at_least(1)));
    add(make_option("random_sampling", views, "",
                    "a random query token in each window instead of the top-left one",
                    &run_config::random_sampling));
    add(make_option("flip_p", views, "P",
                    "horizontal flip probability per view (not in the recipe)", &run_config::flip_p,
                    within(0, 1)));
    add(make_option("jitter_p", views, "P", "colour jitter probability", &run_config::jitter_p,
                    within(0, 1)));
    add(make_option("brightness", views, "X", "colour jitter brightness", &run_config::brightness,
                    non_negative()));
    add(make_option("contrast", views, "X", "colour jitter contrast", &run_config::contrast,
                    non_negative()));
    add(make_option("saturation", views, "X", "colour jitter saturation", &run_config::saturation,
                    non_negative()));
    add(make_option("hue", views, "X", "colour jitter hue", &run_config::hue, within(0, 0.5)));
    add(make_option("grayscale_p", views, "P", "greyscale probability", &run_config::grayscale_p,
                    within(0, 1)));
    add(make_option("blur_branch_p", views, "P",
                    "probability of the blur branch (else the blur + solarise branch)",
                    &run_config::blur_branch_p, within(0, 1)));
    add(make_option("blur_p_a", views, "P", "blur probability in the blur branch",
                    &run_config::blur_p_a, within(0, 1)));
    add(make_option("blur_p_b", views, "P", "blur probability in the solarise branch",
                    &run_config::blur_p_b, within(0, 1)));
    add(make_option("solarize_p", views, "P", "solarise probability in the solarise branch",
                    &run_config::solarize_p, within(0, 1)));
    add(make_option("blur_sigma", views, "MIN,MAX", "Gaussian blur radius range",
                    &run_config::blur_sigma, scale_range(1e9)));
    // objective
    add(make_option("b_sa", obj, "X",
                    "inverse temperature of the self mean-shift (multiplies the logits)",
                    &run_config::b_sa, non_negative()));
    add(make_option("b_ca", obj, "X", "inverse temperature of the cross mean-shift",
                    &run_config::b_ca, non_negative()));
    add(make_option("b_sa_start", obj, "X|none",
                    "start of a cosine schedule of b_sa (none: constant)", &run_config::b_sa_start,
                    opt_non_negative()));
    add(make_option("b_ca_start", obj, "X|none",
                    "start of a cosine schedule of b_ca (none: constant)", &run_config::b_ca_start,
                    opt_non_negative()));
    add(make_option("coef_ms", obj, "U", "weight u of the intra-view (mean-shift) term",
                    &run_config::coef_ms, non_negative()));
    add(make_option("start_intraview", obj, "U|none",
                    "start of a cosine schedule of u (none: constant)",
                    &run_config::start_intraview, opt_non_negative()));
    add(make_option("coef_km", obj, "E", "weight e of the inter-view (k-means) term",
                    &run_config::coef_km, non_negative()));
    add(make_option("coef_vmr", obj, "C", "weight c of the volume-maximisation term",
                    &run_config::coef_vmr, non_negative()));
    add(make_option("center_teacher", obj, "",
                    "subtract a running mean from the teacher's logits before its softmax "
                    "(DINO's centering, an alternative to VMR: use it with --coef_vmr 0)",
                    &run_config::center_teacher));
    add(make_option("center_momentum", obj, "M",
                    "momentum of the teacher center's running mean of the batch-mean logits",
                    &run_config::center_momentum, within(0, 1)));
    add(make_option("student_temp", obj, "T", "student temperature tau_s",
                    &run_config::student_temp, positive()));
    add(make_option("teacher_temp", obj, "T", "teacher temperature tau_t after the warm-up",
                    &run_config::teacher_temp, positive()));
    add(make_option("warmup_teacher_temp", obj, "T", "teacher temperature at epoch 0",
                    &run_config::warmup_teacher_temp, positive()));
    add(make_option("warmup_teacher_temp_epochs", obj, "N",
                    "epochs of the linear teacher-temperature warm-up",
                    &run_config::warmup_teacher_temp_epochs, at_least(0)));
    add(make_option("out_dim", obj, "K",
                    "prototypes of the projection head (fixed at compile time by the experiment)",
                    &run_config::out_dim, at_least(1)));
    add(make_option("norm_last_layer", obj, "",
                    "weight-normalised last layer with g fixed at 1 (fixed by the experiment)",
                    &run_config::norm_last_layer));
    // optimisation
    add(make_option("lr", opt, "X", "base learning rate; the peak is lr * batch / 256",
                    &run_config::lr, non_negative()));
    add(make_option("min_lr", opt, "X", "learning rate at the end of the cosine",
                    &run_config::min_lr, non_negative()));
    add(make_option("warmup_epochs", opt, "N|auto",
                    "epochs of linear learning-rate warm-up (auto: 10% of the epochs)",
                    &run_config::warmup_epochs, opt_at_least(0)));
    add(make_option("start_warmup_lr", opt, "X", "learning rate at iteration 0",
                    &run_config::start_warmup_lr, non_negative()));
    add(make_option("weight_decay", opt, "X", "weight decay at the start (cosine)",
                    &run_config::weight_decay, non_negative()));
    add(make_option("weight_decay_end", opt, "X", "weight decay at the end",
                    &run_config::weight_decay_end, non_negative()));
    add(make_option("momentum_teacher", opt, "M", "teacher EMA momentum at the start (cosine)",
                    &run_config::momentum_teacher, within(0, 1)));
    add(make_option("momentum_teacher_end", opt, "M", "teacher EMA momentum at the end",
                    &run_config::momentum_teacher_end, within(0, 1)));
    add(make_option("clip_grad", opt, "X", "per-tensor gradient norm limit (0: no clipping)",
                    &run_config::clip_grad, non_negative()));
    add(make_option("freeze_last_layer", opt, "N",
                    "epochs during which the head's last layer is not updated",
                    &run_config::freeze_last_layer, at_least(0)));
    add(make_option("drop_path_rate", opt, "X", "student stochastic depth at the last block",
                    &run_config::drop_path_rate, within(0, 1, true)));
    add(make_option("adam_beta1", opt, "X", "AdamW beta1", &run_config::adam_beta1,
                    within(0, 1, true)));
    add(make_option("adam_beta2", opt, "X", "AdamW beta2", &run_config::adam_beta2,
                    within(0, 1, true)));
    add(make_option("adam_eps", opt, "X", "AdamW epsilon", &run_config::adam_eps, positive()));
    add(make_option("matmul_precision", opt, "P",
                    "inputs of the f32 matrix products: exact, tf32, bf16 or fp16 (fp32 "
                    "accumulation on the GPU's tensor cores; emulated, slower, on the CPU); auto: "
                    "exact on cpu, bf16 on cuda",
                    &run_config::matmul_precision,
                    one_of({"auto", "exact", "tf32", "bf16", "fp16"})));
    add(make_option("autocast", opt, "A",
                    "activations of the backbones: off (f32) or bf16 (products, attention and "
                    "GELU on bf16 activations with fp32 arithmetic; LayerNorm, the residual "
                    "stream, the head and the loss f32; f32 master weights); auto: off on cpu, "
                    "bf16 on cuda",
                    &run_config::autocast, one_of({"auto", "off", "bf16"})));
    add(make_option("loss_scale", opt, "S",
                    "backward seed for fp16 products: dynamic (start 65536, halve on an "
                    "overflow and skip the step), none, or a fixed number; auto: dynamic with "
                    "fp16, none otherwise",
                    &run_config::loss_scale, loss_scale_value()));
    add(make_option("loss_scale_init", opt, "S", "the start of a dynamic loss scale",
                    &run_config::loss_scale_init, positive()));
    add(make_option("loss_scale_growth_interval", opt, "N",
                    "steps without overflow after which a dynamic loss scale doubles",
                    &run_config::loss_scale_growth_interval, at_least(1)));
    // evaluation
    add(make_option("eval", ev, "",
                    "dense k-NN segmentation (mIoU) of the procedural validation split and "
                    "pictures at the start and the end",
                    &run_config::eval));
    add(make_option("eval_only", ev, "",
                    "evaluate and stop: the k-NN segmentation and pictures of the checkpoint "
                    "that --resume or <out> holds (or of the random weights when there is none), "
                    "without training or writing a checkpoint",
                    &run_config::eval_only));
    add(make_option("eval_every", ev, "N", "also evaluate every N epochs (0: start and end only)",
                    &run_config::eval_every, at_least(0)));
    add(make_option("eval_train_images", ev, "N", "procedural training images of the k-NN memory",
                    &run_config::eval_train_images, at_least(1)));
    add(make_option("eval_val_images", ev, "N", "procedural validation images scored",
                    &run_config::eval_val_images, at_least(1)));
    add(make_option("eval_size", ev, "PX", "side of the evaluation images", &run_config::eval_size,
                    at_least(1)));
    add(make_option("knn_k", ev, "K", "neighbours per patch", &run_config::knn_k, at_least(1)));
    add(make_option("knn_temperature", ev, "T", "vote weight exp(cos / T)",
                    &run_config::knn_temperature, positive()));
    add(make_option("knn_center_positions", ev, "",
                    "subtract the mean memory feature at each grid position before the k-NN",
                    &run_config::knn_center_positions));
    add(make_option("knn_center_images", ev, "",
                    "subtract each image's mean feature from its patches before the k-NN",
                    &run_config::knn_center_images));
    add(make_option("knn_labels", ev, "MODE",
                    "what a memory patch votes for: soft (the fraction of its pixels in each "
                    "class) or majority (its majority class)",
                    &run_config::knn_labels, one_of({"soft", "majority"})));
    add(make_option("linear_probe", ev, "",
                    "also fit a linear probe (softmax regression) on the k-NN memory's patches "
                    "and report its mIoU",
                    &run_config::linear_probe));
    add(make_option("pictures", ev, "N",
                    "validation images in the attention / k-means pictures (0: none)",
                    &run_config::pictures, at_least(0)));
    add(make_option("kmeans_clusters", ev, "K", "clusters of the k-means pictures",
                    &run_config::kmeans_clusters, at_least(2)));
    add(make_option("davis", ev, "DIR",
                    "also evaluate DAVIS video label propagation (J, F, J&F) on the sequences of "
                    "DIR (JPEGImages/480p, Annotations/480p), where the k-NN runs; predicted "
                    "masks of the last evaluation go to <out>/davis",
                    &run_config::davis));
    add(make_option("davis_size", ev, "PX",
                    "short side of the DAVIS frames (a multiple of the patch; DINO's 480)",
                    &run_config::davis_size, at_least(1)));
    add(make_option("davis_sequences", ev, "LIST",
                    "comma-separated DAVIS sequences to evaluate (empty: all)",
                    &run_config::davis_sequences));
    return t;
  }();
  return table;
}

/// Other names accepted for an option (DINO's flag names).
inline std::string canonical_option_name(std::string name) {
  std::replace(name.begin(), name.end(), '-', '_');
  static const std::vector<std::pair<std::string, std::string>> aliases = {
      {"local_crops_number", "locals"},
      {"global_crops_scale", "global_scale"},
      {"local_crops_scale", "local_scale"},
      {"local_crops_size", "local_size"},
      {"global_crops_size", "global_size"},
      {"batch_size", "batch"},
      {"output_dir", "out"},
      {"num_threads", "threads"}};
  for (const auto& [a, c] : aliases)
    if (name == a) return c;
  return name;
}

/// The option called `name` (after canonical_option_name), or nullptr.
inline const option* find_option(const std::string& name) {
  for (const option& o : options())
    if (o.name == name) return &o;
  return nullptr;
}

/// "unknown option --x" with the closest names.
inline std::string unknown_option_message(const std::string& name, const std::string& where) {
  std::vector<std::pair<std::size_t, std::string>> near;
  for (const option& o : options()) {
    const std::size_t d = detail::edit_distance(name, o.name);
    if (d <= std::max<std::size_t>(2, name.size() / 3) ||
        (name.size() >= 3 && o.name.find(name) != std::string::npos))
      near.emplace_back(d, o.name);
  }
  std::sort(near.begin(), near.end());
  std::string msg = "unknown option '" + name + "'" + where;
  if (!near.empty()) {
    msg += " (did you mean";
    for (std::size_t i = 0; i < near.size() && i < 3; ++i)
      msg += std::string(i ? "," : "") + " --" + near[i].second;
    msg += "?)";
  }
  return msg + "; --help lists every option";
}

/// Sets option `name` from text, or throws flsl::error saying which option, where and why.
inline void set_option(run_config& c, const std::string& raw_name, const std::string& value,
                       const std::string& where) {
  const std::string name = canonical_option_name(raw_name);
  const option* o = find_option(name);
  if (!o) fail(unknown_option_message(raw_name, where));
  const std::string why = o->set(c, value);
  if (!why.empty()) fail("invalid value for --", name, where, ": ", why);
}

/// The resolved configuration as a JSON object (every option, in table order).
inline nlohmann::ordered_json config_to_json(const run_config& c) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const option& o : options()) j[o.name] = o.get(c);
  return j;
}

/// Applies the keys of a JSON object to `c` (each checked as on the command line). Returns the
/// keys that were set. `where` names the source in messages (" in config.json").
inline std::vector<std::string> apply_json(run_config& c, const nlohmann::json& j,
                                           const std::string& where) {
  FLSL_CHECK(j.is_object(), "the configuration", where, " is not a JSON object");
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string name = canonical_option_name(it.key());
    if (name == "config") fail("--config", where, ": a configuration file cannot name another");
    const auto text = detail::json_to_text(it.value());
    if (!text)
      fail("invalid value for --", name, where, ": ", it.value().dump(), " is a JSON ",
           it.value().type_name(), ", not a single value");
    set_option(c, name, *text, where);
    keys.push_back(name);
  }
  return keys;
}

/// Reads a JSON configuration file (strict JSON; the error names the file and the position).
inline nlohmann::json read_json_file(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) fail(what, " '", path, "' cannot be opened");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(what, " '", path, "' is not valid JSON: ", e.what());
  }
}

/// The checks that involve several options or the experiment; throws with the reason.
inline void validate(const run_config& c, const experiment_info& info) {
  // architecture
  bool arch_ok = false, arch_known = false;
  std::string choices;
  for (const auto& a : info.archs) {
    arch_known = arch_known || a.name == c.arch;
    arch_ok = arch_ok || (a.name == c.arch && a.patch == c.patch);
    choices += (choices.empty() ? "" : ", ") + a.name + "/" + std::to_string(a.patch);
  }
  if (!arch_known)
    fail("invalid value for --arch: '", c.arch, "' is not built into ", info.name, " (it has ",
         choices, ")");
  if (!arch_ok)
    fail("invalid value for --patch: ", c.arch, "/", c.patch, " is not built into ", info.name,
         " (it has ", choices, ")");
  if (c.device == "cuda" && !info.cuda)
    fail("--device cuda: ", info.name,
         " was not built with the CUDA backend (configure with nvcc found, or "
         "-DFLSL_WITH_CUDA=ON; docs/cuda.md); use --device cpu");
  if (c.out_dim != info.out_dim)
    fail("invalid value for --out_dim: ", c.out_dim, "; the experiment '", info.name,
         "' fixes out_dim = ", info.out_dim,
         " at compile time (add an experiment in examples/experiments/ for another head)");
  if (c.norm_last_layer != info.norm_last_layer)
    fail("invalid value for --norm_last_layer: the experiment '", info.name, "' fixes it to ",
         info.norm_last_layer ? "true" : "false", " at compile time");
  // views
  auto multiple = [&](const char* what, index_t size) {
    if (size % c.patch != 0 || size < c.patch)
      fail("invalid value for --", what, ": ", size, " px is not a positive multiple of the patch ",
           c.patch);
  };
  multiple("global_size", c.global_size);
  if (c.locals > 0) multiple("local_size", c.local_size);
  if (c.eval) multiple("eval_size", c.eval_size);
  if (c.global_window > c.global_size / c.patch)
    fail("invalid value for --global_window: ", c.global_window, " does not fit the ",
         c.global_size / c.patch, "x", c.global_size / c.patch, " token grid of a ", c.global_size,
         " px view");
  if (c.locals > 0 && c.local_window > c.local_size / c.patch)
    fail("invalid value for --local_window: ", c.local_window, " does not fit the ",
         c.local_size / c.patch, "x", c.local_size / c.patch, " token grid of a ", c.local_size,
         " px view");
  // optimisation
  if (c.warmup_epochs && *c.warmup_epochs > c.epochs)
    fail("invalid value for --warmup_epochs: ", *c.warmup_epochs, " is more than the ", c.epochs,
         " epochs");
  if (c.coef_ms == 0 && c.coef_km == 0 && c.coef_vmr == 0 && !c.start_intraview)
    fail("invalid loss coefficients: coef_ms, coef_km and coef_vmr are all 0");
  // data
  if (c.procedural_min_objects > c.procedural_max_objects || c.procedural_max_objects > 64)
    fail("invalid procedural object counts: min ", c.procedural_min_objects, ", max ",
         c.procedural_max_objects, " (need 1 <= min <= max <= 64)");
  if (!c.data.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(c.data, ec))
      fail("invalid value for --data: '", c.data, "' is not a directory");
  } else if (c.procedural_images < c.batch) {
    fail("invalid value for --batch: ", c.batch, " is more than the ", c.procedural_images,
         " procedural images (--procedural_images), so no full batch can be made");
  }
  if (!c.davis.empty()) {
    std::error_code ec;
    const std::filesystem::path d(c.davis);
    if (!std::filesystem::is_directory(d / "JPEGImages" / "480p", ec) ||
        !std::filesystem::is_directory(d / "Annotations" / "480p", ec))
      fail("invalid value for --davis: '", c.davis,
           "' has no JPEGImages/480p and Annotations/480p folders (the DAVIS layout)");
    for (const std::string& name : davis_sequence_names(c))
      if (!std::filesystem::is_directory(d / "JPEGImages" / "480p" / name, ec))
        fail("invalid value for --davis_sequences: '", c.davis, "' has no sequence '", name, "'");
    if (c.davis_size % c.patch != 0)
      fail("invalid value for --davis_size: ", c.davis_size, " is not a multiple of the patch ",
           c.patch);
  }
  if (!c.resume.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(c.resume, ec))
      fail("invalid value for --resume: '", c.resume, "' is not a file");
  }
  if (!c.export_path.empty()) {
    std::error_code ec;
    if (std::filesystem::is_directory(c.export_path, ec))
      fail("invalid value for --export: '", c.export_path, "' is a directory, not a file name");
  }
  if (c.out.empty()) fail("invalid value for --out: the run folder cannot be empty");
}

/// What the command line asked for.
struct parsed_options {
  run_config config;
  std::set<std::string> given;  // options set by the command line or the --config file
  bool help = false;
};

/// Reads `--name value`, `--name=value` and bare flags; then --config FILE is applied first and
/// the command-line options over it. Throws flsl::error (before any work) for an unknown option, a
/// missing or invalid value or a bad file. The checks across options (validate) come after a
/// resume has merged the checkpoint's options (train::resolve_run).
inline parsed_options parse_command_line(int argc, const char* const* argv,
                                         const experiment_info& info) {
  parsed_options r;
  r.config = info.defaults;
  std::vector<std::pair<std::string, std::string>> cli;  // (name, value) in order
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      r.help = true;
      continue;
    }
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0)
      fail("unexpected argument '", arg, "': options look like --name VALUE (see --help)");
    arg = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (const auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    const std::string name = canonical_option_name(arg);
    const option* o = find_option(name);
    if (!o) fail(unknown_option_message(arg, " on the command line"));
    if (!has_value) {
      const bool next_is_value = i + 1 < argc && std::string_view(argv[i + 1]).substr(0, 2) != "--";
      if (o->flag) {
        // a bare flag is true; "--flag false" is accepted too
        if (next_is_value && detail::value_codec<bool>::parse(argv[i + 1])) {
          value = argv[++i];
        } else {
          value = "true";
        }
      } else {
        // values may start with '-' (negative numbers) but not with "--"
        if (!next_is_value) fail("option --", name, " needs a value (", o->value_name, ")");
        value = argv[++i];
      }
    }
    cli.emplace_back(name, value);
  }
  if (r.help) return r;
  for (const auto& [name, value] : cli)
    if (name == "config") r.config.config_file = value;
  if (!r.config.config_file.empty()) {
    const auto j = read_json_file(r.config.config_file, "--config file");
    for (auto& k : apply_json(r.config, j, " in '" + r.config.config_file + "'")) r.given.insert(k);
  }
  for (const auto& [name, value] : cli) {
    set_option(r.config, name, value, " on the command line");
    r.given.insert(name);
  }
  return r;
}

namespace detail {
inline void wrap(std::ostream& os, const std::string& text, std::size_t indent, std::size_t width) {
  std::istringstream words(text);
  std::string w;
  std::size_t col = indent;
  bool first = true;
  while (words >> w) {
    if (!first && col + 1 + w.size() > width) {
      os << '\n' << std::string(indent, ' ');
      col = indent;
      first = true;
    }
    if (!first) {
      os << ' ';
      ++col;
    }
    os << w;
    col += w.size();
    first = false;
  }
}
}  // namespace detail

/// The --help text: usage, the experiment, then every option with its help and its default (and
/// the published recipe's value where the experiment changes it).
inline std::string help_text(const experiment_info& info) {
  std::ostringstream os;
  const run_config spec;
  os << "usage: " << info.name << " [--option VALUE ...] [--config FILE]\n\n";
  detail::wrap(os, info.description, 0, 100);
  os << "\n\nOptions may also be written --option=VALUE and with '-' for '_'. Flags take an "
        "optional true/false.\n";
  std::string group;
  for (const option& o : options()) {
    if (o.group != group) {
      group = o.group;
      os << '\n' << group << ":\n";
    }
    std::string head = "  --" + o.name + (o.value_name.empty() ? "" : " " + o.value_name);
    std::string help = o.help;
    const std::string def = o.text(info.defaults), rec = o.text(spec);
    if (o.name != "config") {
      help += " (default " + def;
      if (def != rec && o.group != "Run" && o.group != "Evaluation and pictures" &&
          o.group != "Data")
        help += "; recipe " + rec;
      help += ")";
    }
    os << head;
    if (head.size() < 32) {
      os << std::string(32 - head.size(), ' ');
    } else {
      os << '\n' << std::string(32, ' ');
    }
    detail::wrap(os, help, 32, 100);
    os << '\n';
  }
  os << "\nArchitectures built into " << info.name << ":";
  for (const auto& a : info.archs) os << ' ' << a.name << '/' << a.patch;
  os << "\nExit status: 0 done, 1 error, 2 invalid options, 3 non-finite loss, 130 interrupted "
        "(a checkpoint was saved; rerun to continue).\n";
  return os.str();
}

}  // namespace flsl::train
