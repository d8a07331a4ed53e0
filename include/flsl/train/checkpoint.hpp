// Training checkpoints as safetensors: student and teacher weights, AdamW moments and step counts,
// and in the metadata the run's position (iteration, epoch, batch within the epoch, seed), its
// architecture and its resolved configuration. Written to a temporary file and renamed; loading
// refuses another architecture, a truncated file or a non-checkpoint with the reason.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "../core/error.hpp"
#include "../io/safetensors.hpp"
#include "../nn/module.hpp"
#include "../optim/adamw.hpp"

namespace flsl::train {

/// The model a checkpoint holds, as the compile-time types say; two runs can share a checkpoint
/// only when these are equal.
struct architecture_info {
  std::string arch;  // the name of the command line ("tiny")
  index_t patch = 0, dim = 0, depth = 0, heads = 0, mlp_hidden = 0;
  index_t out_dim = 0, head_hidden = 0, head_bottleneck = 0;
  bool norm_last_layer = true;
  std::string dtype;  // "f32"

  nlohmann::ordered_json to_json() const {
    return {{"arch", arch},
            {"patch", patch},
            {"dim", dim},
            {"depth", depth},
            {"heads", heads},
            {"mlp_hidden", mlp_hidden},
            {"out_dim", out_dim},
            {"head_hidden", head_hidden},
            {"head_bottleneck", head_bottleneck},
            {"norm_last_layer", norm_last_layer},
            {"dtype", dtype}};
  }
  static architecture_info from_json(const nlohmann::json& j) {
    architecture_info a;
    a.arch = j.at("arch").get<std::string>();
    a.patch = j.at("patch").get<index_t>();
    a.dim = j.at("dim").get<index_t>();
    a.depth = j.at("depth").get<index_t>();
    a.heads = j.at("heads").get<index_t>();
    a.mlp_hidden = j.at("mlp_hidden").get<index_t>();
    a.out_dim = j.at("out_dim").get<index_t>();
    a.head_hidden = j.at("head_hidden").get<index_t>();
    a.head_bottleneck = j.at("head_bottleneck").get<index_t>();
    a.norm_last_layer = j.at("norm_last_layer").get<bool>();
    a.dtype = j.at("dtype").get<std::string>();
    return a;
  }
  /// "vit_tiny/16 (dim 192, depth 12, heads 3; head 2048-256-4096; f32)"
  std::string describe() const {
    return "vit_" + arch + "/" + std::to_string(patch) + " (dim " + std::to_string(dim) +
           ", depth " + std::to_string(depth) + ", heads " + std::to_string(heads) + "; head " +
           std::to_string(head_hidden) + "-" + std::to_string(head_bottleneck) + "-" +
           std::to_string(out_dim) + (norm_last_layer ? "" : " with learned g") + "; " + dtype +
           ")";
  }
  bool operator==(const architecture_info&) const = default;
};

/// Running totals of the epoch in progress, so that an epoch's log record after a mid-epoch resume
/// averages all of its steps, not only those since the resume.
struct epoch_totals {
  double loss = 0, ms = 0, km = 0, vmr = 0, teacher_entropy = 0, student_entropy = 0, seconds = 0;
  index_t steps = 0, images = 0, skipped = 0;

  nlohmann::ordered_json to_json() const {
    return {{"loss", loss},
            {"ms", ms},
            {"km", km},
            {"vmr", vmr},
            {"teacher_entropy", teacher_entropy},
            {"student_entropy", student_entropy},
            {"seconds", seconds},
            {"steps", steps},
            {"images", images},
            {"skipped", skipped}};
  }
  static epoch_totals from_json(const nlohmann::json& j) {
    epoch_totals e;
    e.loss = j.at("loss").get<double>();
    e.ms = j.at("ms").get<double>();
    e.km = j.at("km").get<double>();
    e.vmr = j.at("vmr").get<double>();
    // absent in checkpoints written before the entropies were logged
    e.teacher_entropy = j.value("teacher_entropy", 0.0);
    e.student_entropy = j.value("student_entropy", 0.0);
    e.seconds = j.at("seconds").get<double>();
    e.steps = j.at("steps").get<index_t>();
    e.images = j.at("images").get<index_t>();
    e.skipped = j.at("skipped").get<index_t>();
    return e;
  }
};

/// Where a run stands. Every random draw of a run derives from the seed and these counters
/// (parameter init from the seed; data order from (seed, epoch); views from (seed, epoch, image);
/// stochastic depth from (seed, iteration)), so they are its whole random state.
struct run_position {
  index_t iteration = 0;       // steps done
  index_t epoch = 0;           // epoch of the next step
  index_t batch_in_epoch = 0;  // batches of that epoch already done
  index_t iters_per_epoch = 0;
  index_t images_seen = 0;
  std::uint64_t seed = 0;
  double train_seconds = 0;           // time spent in steps so far
  std::optional<double> start_miou;   // k-NN mIoU of the initial weights, once measured
  std::optional<double> loss_scale;   // the dynamic loss scale (runs with loss scaling)
  index_t loss_scale_good_steps = 0;  // finite steps since it last changed
  epoch_totals epoch_so_far;          // the batch_in_epoch steps of the current epoch

  nlohmann::ordered_json to_json() const {
    nlohmann::ordered_json j = {
        {"iteration", iteration},           {"epoch", epoch},
        {"batch_in_epoch", batch_in_epoch}, {"iters_per_epoch", iters_per_epoch},
        {"images_seen", images_seen},       {"seed", seed},
        {"train_seconds", train_seconds}};
    j["start_miou"] = start_miou ? nlohmann::ordered_json(*start_miou) : nlohmann::ordered_json();
    if (loss_scale) {
      j["loss_scale"] = *loss_scale;
      j["loss_scale_good_steps"] = loss_scale_good_steps;
    }
    if (batch_in_epoch > 0) j["epoch_so_far"] = epoch_so_far.to_json();
    return j;
  }
  static run_position from_json(const nlohmann::json& j) {
    run_position p;
    p.iteration = j.at("iteration").get<index_t>();
    p.epoch = j.at("epoch").get<index_t>();
    p.batch_in_epoch = j.at("batch_in_epoch").get<index_t>();
    p.iters_per_epoch = j.at("iters_per_epoch").get<index_t>();
    p.images_seen = j.at("images_seen").get<index_t>();
    p.seed = j.at("seed").get<std::uint64_t>();
    p.train_seconds = j.value("train_seconds", 0.0);
    if (j.contains("start_miou") && j.at("start_miou").is_number())
      p.start_miou = j.at("start_miou").get<double>();
    if (j.contains("loss_scale")) {
      p.loss_scale = j.at("loss_scale").get<double>();
      p.loss_scale_good_steps = j.value("loss_scale_good_steps", index_t(0));
    }
    if (j.contains("epoch_so_far")) p.epoch_so_far = epoch_totals::from_json(j.at("epoch_so_far"));
    return p;
  }
};

/// What a checkpoint's metadata says (without the tensors).
struct checkpoint_header {
  std::string experiment;
  architecture_info arch;
  run_position position;
  nlohmann::json config;  // the resolved options (see config_to_json)
};

inline constexpr const char* checkpoint_format = "flsl.checkpoint";
inline constexpr const char* checkpoint_format_version = "1";
/// The tensor of the teacher center (present when the run uses teacher centering).
inline constexpr const char* teacher_center_name = "state.teacher_center";

/// The file names of a run folder.
inline std::filesystem::path last_checkpoint_path(const std::filesystem::path& out) {
  return out / "checkpoint_last.safetensors";
}
inline std::filesystem::path epoch_checkpoint_path(const std::filesystem::path& out,
                                                   index_t epoch) {
  char name[64];
  std::snprintf(name, sizeof name, "checkpoint_epoch%03lld.safetensors", (long long)epoch);
  return out / name;
}

/// Writes a checkpoint atomically (io::save_safetensors: temporary file, fsync, rename): a crash
/// at any point leaves the previous file at `path` readable.
template <class T, class D>
void save_checkpoint(const std::filesystem::path& path, const optim::named_vars<T, D>& student,
                     const optim::named_vars<T, D>& teacher, const optim::adamw<T, D>& adam,
                     const checkpoint_header& h, const Tensor<T, D>& teacher_center = {}) {
  std::vector<io::named_tensor> tensors;
  tensors.reserve(student.size() * 5);
  // host tensors: on the CPU the tensors themselves, on a device a copy (the same names, dtypes and
  // shapes on every device, so that a checkpoint continues on another)
  for (const auto& [name, p] : student)
    tensors.push_back({"student." + name, p.value().template to<cpu>()});
  for (const auto& [name, p] : teacher)
    tensors.push_back({"teacher." + name, p.value().template to<cpu>()});
  adam.for_each_state_tensor([&](const std::string& name, const Tensor<T, D>& t) {
    tensors.push_back({"optimizer." + name, t.template to<cpu>()});
  });
  for (const auto& [name, step] : adam.step_counts())
    tensors.push_back({"optimizer." + name, Tensor<std::int64_t>::scalar(step)});
  if (teacher_center.defined())
    tensors.push_back({teacher_center_name, teacher_center.template to<cpu>()});
  io::metadata_map meta;
  meta["flsl.format"] = checkpoint_format;
  meta["flsl.format_version"] = checkpoint_format_version;
  meta["flsl.experiment"] = h.experiment;
  meta["flsl.architecture"] = h.arch.to_json().dump();
  meta["flsl.position"] = h.position.to_json().dump();
  meta["flsl.config"] = h.config.dump();
  io::save_safetensors(path, tensors, meta);
}

namespace detail {
inline std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }
}  // namespace detail

/// Opens a checkpoint and reads its metadata. Throws flsl::error saying why a file is not a usable
/// checkpoint: it cannot be read, it is not safetensors or is truncated (the reader's reason), or
/// it is a safetensors file without flsl checkpoint metadata.
inline io::safetensors_file open_checkpoint(const std::filesystem::path& path,
                                            checkpoint_header* header = nullptr) {
  std::optional<io::safetensors_file> f;
  try {
    f.emplace(path);
  } catch (const flsl::error& e) {
    const std::string why = e.what();
    auto has = [&](const char* s) { return why.find(s) != std::string::npos; };
    const char* what = has("truncated")        ? "the file is truncated"
                       : has("cannot open")    ? "the file cannot be opened"
                       : has("empty")          ? "the file is empty"
                       : has("is a directory") ? "it is a directory"
                                               : "it is not a safetensors file";
    fail("cannot use checkpoint ", detail::quoted(path), ": ", what, " (", why, ")");
  }
  if (!f->has_metadata("flsl.format") || f->metadata("flsl.format") != checkpoint_format)
    fail("cannot use checkpoint ", detail::quoted(path),
         ": it is a safetensors file but not an flsl training checkpoint (no \"flsl.format\": \"",
         checkpoint_format, "\" in its metadata; an --export file holds weights only)");
  if (f->metadata("flsl.format_version") != checkpoint_format_version)
    fail("cannot use checkpoint ", detail::quoted(path), ": format version ",
         f->metadata("flsl.format_version"), ", this build reads version ",
         checkpoint_format_version);
  if (header) {
    try {
      header->experiment = f->metadata("flsl.experiment");
      header->arch =
          architecture_info::from_json(nlohmann::json::parse(f->metadata("flsl.architecture")));
      header->position =
          run_position::from_json(nlohmann::json::parse(f->metadata("flsl.position")));
      header->config = nlohmann::json::parse(f->metadata("flsl.config"));
    } catch (const nlohmann::json::exception& e) {
      fail("cannot use checkpoint ", detail::quoted(path), ": its metadata is damaged (", e.what(),
           ")");
    }
  }
  return std::move(*f);
}

/// Loads a checkpoint into the student, the teacher and the optimizer after checking that it was
/// written for `arch`. Every tensor is checked (present, same shape) before anything is copied, so
/// a refused checkpoint leaves the models unchanged. Returns the metadata. `teacher_center`
/// (a run with teacher centering; its shape is [K]) receives the checkpoint's center; a checkpoint
/// of a run without centering has none and leaves it as it is (zeros: centering starts now).
template <class T, class D>
checkpoint_header load_checkpoint(const std::filesystem::path& path,
                                  const optim::named_vars<T, D>& student,
                                  const optim::named_vars<T, D>& teacher, optim::adamw<T, D>& adam,
                                  const architecture_info& arch,
                                  const Tensor<T, D>* teacher_center = nullptr) {
  checkpoint_header h;
  const io::safetensors_file f = open_checkpoint(path, &h);
  if (!(h.arch == arch))
    fail("cannot use checkpoint ", detail::quoted(path), ": it holds another architecture, ",
         h.arch.describe(), ", while this run builds ", arch.describe(),
         " (use the checkpoint's --arch/--patch, or another --out / --fresh)");
  auto check = [&](const std::string& name, const Shape& shape) {
    if (!f.contains(name))
      fail("cannot use checkpoint ", detail::quoted(path), ": tensor '", name,
           "' is missing (the file is damaged or was written by another version)");
    if (f.info(name).shape != shape)
      fail("cannot use checkpoint ", detail::quoted(path), ": tensor '", name, "' has shape ",
           f.info(name).shape, ", this run expects ", shape);
  };
  for (const auto& [name, p] : student) check("student." + name, p.shape());
  for (const auto& [name, p] : teacher) check("teacher." + name, p.shape());
  for (const auto& [name, t] : adam.state_tensors()) check("optimizer." + name, t.shape());
  for (const auto& [name, step] : adam.step_counts()) check("optimizer." + name, Shape{});
  const bool centered = h.config.contains("center_teacher") && h.config["center_teacher"] == true;
  if (centered || (teacher_center && f.contains(teacher_center_name)))
    check(teacher_center_name, Shape{arch.out_dim});
  // read on the host, copied to D (on the CPU: no copy)
  for (const auto& [name, p] : student)
    p.value().copy_from(f.get_as<T>("student." + name).template to<D>());
  for (const auto& [name, p] : teacher)
    p.value().copy_from(f.get_as<T>("teacher." + name).template to<D>());
  for (const auto& [name, t] : adam.state_tensors())
    adam.load_state_tensor(name, f.get_as<T>("optimizer." + name).template to<D>());
  for (const auto& [name, step] : adam.step_counts()) {
    const std::string pname = name.substr(std::string_view("step.").size());
    adam.set_step_count(pname, f.get<std::int64_t>("optimizer." + name).item());
  }
  if (teacher_center && f.contains(teacher_center_name))
    teacher_center->copy_from(f.get_as<T>(teacher_center_name).template to<D>());
  return h;
}

/// Keeps a copy of the last checkpoint under the epoch's name: a hard link (no bytes written; the
/// next checkpoint_last replaces the directory entry, not the linked file), or a copy where the
/// file system has no links.
inline void keep_epoch_checkpoint(const std::filesystem::path& last,
                                  const std::filesystem::path& epoch_file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::remove(epoch_file, ec);
  fs::create_hard_link(last, epoch_file, ec);
  if (ec) fs::copy_file(last, epoch_file, fs::copy_options::overwrite_existing);
}

}  // namespace flsl::train
