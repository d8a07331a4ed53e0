// End-to-end tests of the trainer (label e2e): runs of a few steps of a tiny experiment through the
// library API (tests/e2e/e2e_experiment.hpp), and the flsl_pretrain binary itself.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../eval/davis_video.hpp"
#include "e2e_experiment.hpp"

using namespace flsl;
namespace fs = std::filesystem;
using exp_t = e2e::tiny_experiment;

namespace {

/// A fresh folder under the build tree's temporary directory, removed at the end of the test.
struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& name) {
    path = fs::temp_directory_path() / ("flsl_e2e_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

int run(const std::vector<std::string>& args, const train::run_hooks<float>& hooks = {}) {
  return train::run_experiment<exp_t>(args, hooks);
}

std::vector<nlohmann::json> read_log(const fs::path& p) {
  std::ifstream in(p);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::size_t count_type(const std::vector<nlohmann::json>& log, const std::string& type) {
  std::size_t n = 0;
  for (const auto& r : log) n += r.at("type") == type;
  return n;
}

/// Every tensor of two checkpoints is bit-identical (names, dtypes, shapes and bytes).
void check_bit_identical(const fs::path& a, const fs::path& b) {
  const io::safetensors_file fa(a), fb(b);
  REQUIRE(fa.names() == fb.names());
  for (const auto& name : fa.names()) {
    CAPTURE(name);
    const auto &ea = fa.info(name), &eb = fb.info(name);
    REQUIRE(ea.type == eb.type);
    REQUIRE(ea.shape == eb.shape);
    CHECK(std::memcmp(fa.bytes(name), fb.bytes(name), ea.end - ea.begin) == 0);
  }
}

/// Trains `args` in one go into `dir`/whole, and into `dir`/split stopped after `stop_after` steps
/// (`between` runs then) and resumed; the two runs' last checkpoints must be bit-identical.
void check_split_run(const temp_dir& dir, const std::vector<std::string>& args, index_t stop_after,
                     const std::function<void()>& between = {}) {
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), args.begin(), args.end());
    return extra;
  };
  REQUIRE(run(with({"--out", dir / "whole"})) == train::exit_ok);
  REQUIRE(run(with({"--out", dir / "split", "--max_steps", std::to_string(stop_after)})) ==
          train::exit_ok);
  if (between) between();
  REQUIRE(run(with({"--out", dir / "split"})) == train::exit_ok);
  check_bit_identical(train::last_checkpoint_path(dir / "whole"),
                      train::last_checkpoint_path(dir / "split"));
}

/// iteration -> loss of a run's step records.
std::map<index_t, double> step_losses(const fs::path& log) {
  std::map<index_t, double> out;
  for (const auto& r : read_log(log))
    if (r.at("type") == "step") out[r.at("iteration")] = r.at("loss");
  return out;
}

std::string error_of(const std::vector<std::string>& args) {
  const auto info = train::make_experiment_info<exp_t>();
  std::vector<const char*> argv{"flsl_e2e"};
  for (const auto& a : args) argv.push_back(a.c_str());
  try {
    const auto p = train::parse_command_line(int(argv.size()), argv.data(), info);
    train::resolve_run(p, info);
  } catch (const flsl::error& e) {
    return e.what();
  }
  return "";
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_png(const fs::path& p) {
  const std::string s = read_text(p);
  return s.size() > 8 && s.compare(0, 4, "\x89PNG") == 0;
}

}  // namespace

TEST_CASE("a run of a few steps writes a valid checkpoint, config, log, pictures and an export") {
  temp_dir dir("run");
  const std::string out = dir / "run";
  REQUIRE(run({"--out", out, "--export", dir / "teacher.safetensors", "--checkpoint_every", "1"}) ==
          train::exit_ok);
  // checkpoint: position, architecture, configuration, every tensor
  train::checkpoint_header h;
  const auto f = train::open_checkpoint(train::last_checkpoint_path(out), &h);
  CHECK(h.experiment == "flsl_e2e");
  CHECK(h.position.iteration == 8);
  CHECK(h.position.epoch == 2);
  CHECK(h.position.batch_in_epoch == 0);
  CHECK(h.position.iters_per_epoch == 4);
  CHECK(h.position.images_seen == 32);
  CHECK(h.position.start_miou.has_value());
  CHECK(h.arch.dim == 32);
  CHECK(h.arch.out_dim == 64);
  CHECK(h.config.at("lr") == 0.01);
  CHECK(f.contains("student.blocks.1.attn.qkv.weight"));
  CHECK(f.contains("teacher.head.last_layer.weight_v"));
  CHECK(f.contains("optimizer.exp_avg_sq.patch_embed.proj.weight"));
  CHECK(f.get<std::int64_t>("optimizer.step.norm.weight").item() == 8);
  CHECK(f.get<std::int64_t>("optimizer.step.head.last_layer.weight_v").item() ==
        4);  // frozen 1 epoch
  CHECK(fs::exists(train::epoch_checkpoint_path(out, 1)));
  CHECK(fs::exists(train::epoch_checkpoint_path(out, 2)));
  CHECK_FALSE(fs::exists(out + "/checkpoint_last.safetensors.tmp"));
  // config.json: the resolved options
  const auto cfg = nlohmann::json::parse(read_text(out + "/config.json"));
  CHECK(cfg.at("arch") == "t32");
  CHECK(cfg.at("batch") == 4);
  CHECK(cfg.at("teacher_scale") == nlohmann::json::array({0.8, 1.0}));
  // log.jsonl: a run record, the start evaluation, 8 steps with every scheduled value, 2 epochs,
  // the end evaluation, the end
  const auto log = read_log(out + "/log.jsonl");
  CHECK(count_type(log, "run") == 1);
  CHECK(count_type(log, "step") == 8);
  CHECK(count_type(log, "epoch") == 2);
  CHECK(count_type(log, "eval") == 2);
  CHECK(count_type(log, "end") == 1);
  for (const auto& r : log) {
    if (r.at("type") != "step") continue;
    for (const char* k : {"loss", "loss_ms", "loss_km", "loss_vmr", "teacher_entropy",
                          "student_entropy", "lr", "weight_decay", "momentum", "teacher_temp",
                          "b_sa", "b_ca", "coef_ms", "last_layer_frozen", "images_per_second"})
      CHECK_MESSAGE(r.contains(k), k);
    // assignment entropies lie in (0, log K]
    for (const char* k : {"teacher_entropy", "student_entropy"}) {
      CAPTURE(k);
      CHECK(r.at(k).get<double>() > 0);
      CHECK(r.at(k).get<double>() <= std::log(double(exp_t::out_dim)) + 1e-9);
    }
  }
  for (const auto& r : log)
    if (r.at("type") == "eval") CHECK(r.at("knn_miou").get<double>() >= 0);
  // pictures at the start and the end
  CHECK(is_png(out + "/pictures/maps_start.png"));
  CHECK(is_png(out + "/pictures/maps_epoch002.png"));
  // export: timm names, pos_embed [1, N, D], no head, no optimizer
  const io::safetensors_file e(dir / "teacher.safetensors");
  CHECK(e.info("pos_embed").shape == Shape{1, 16, 32});
  CHECK(e.info("patch_embed.proj.weight").shape == Shape{32, 3, 8, 8});
  CHECK(e.info("blocks.1.attn.qkv.weight").shape == Shape{96, 32});
  CHECK(e.contains("norm.bias"));
  CHECK_FALSE(e.contains("head.last_layer.weight_v"));
  CHECK(e.names().size() == 1 + 4 + 12 * 2);  // pos_embed, patch_embed + norm, 12 per block
  const auto teacher_w = e.get<float>("blocks.1.mlp.fc2.weight");
  const auto ckpt_w = f.get<float>("teacher.blocks.1.mlp.fc2.weight");
  CHECK(std::memcmp(teacher_w.data(), ckpt_w.data(), std::size_t(ckpt_w.numel()) * 4) == 0);
  // rerunning the finished run trains nothing
  CHECK(run({"--out", out}) == train::exit_ok);
  CHECK(count_type(read_log(out + "/log.jsonl"), "step") == 8);
  // --eval_only evaluates the checkpoint (with the linear probe) and changes neither the
  // checkpoint nor the configuration
  const std::string ckpt_before = read_text(train::last_checkpoint_path(out));
  const std::string cfg_before = read_text(out + "/config.json");
  CHECK(run({"--out", out, "--eval_only", "--linear_probe"}) == train::exit_ok);
  CHECK(read_text(train::last_checkpoint_path(out)) == ckpt_before);
  CHECK(read_text(out + "/config.json") == cfg_before);
  const auto log2 = read_log(out + "/log.jsonl");
  CHECK(count_type(log2, "step") == 8);
  CHECK(count_type(log2, "eval") == 3);
  const auto& last_eval = *std::find_if(log2.rbegin(), log2.rend(),
                                        [](const auto& r) { return r.at("type") == "eval"; });
  CHECK(last_eval.at("when") == "checkpoint");
  CHECK(last_eval.at("iteration") == 8);
  CHECK(last_eval.at("probe_miou").get<double>() >= 0);
  CHECK(last_eval.at("within_image_cos").get<double>() <= 1.0);
  CHECK(is_png(out + "/pictures/maps_iteration8.png"));
}

TEST_CASE("N steps in one go and N/2 + resume + N/2 give bit-identical weights") {
  temp_dir dir("resume");
  // stop in the middle of the first epoch (3 of its 4 steps), then continue in a new process state
  check_split_run(dir, {"--eval", "false", "--epochs", "2"}, 3, [&] {
    train::checkpoint_header h;
    train::open_checkpoint(train::last_checkpoint_path(dir / "split"), &h);
    CHECK(h.position.iteration == 3);
    CHECK(h.position.epoch == 0);
    CHECK(h.position.batch_in_epoch == 3);
  });
  // the logged losses of every iteration agree too
  const auto a = step_losses(dir / "whole/log.jsonl"), b = step_losses(dir / "split/log.jsonl");
  CHECK(a == b);
  CHECK(a.size() == 8);
}

TEST_CASE("with teacher centering the checkpoint holds the center and resume is bit-exact") {
  temp_dir dir("center");
  check_split_run(dir, {"--eval", "false", "--epochs", "1", "--center_teacher", "--coef_vmr", "0"},
                  2);
  const io::safetensors_file f(train::last_checkpoint_path(dir / "whole"));
  REQUIRE(f.contains(train::teacher_center_name));
  const auto c = f.get<float>(train::teacher_center_name);
  CHECK(c.shape() == Shape{exp_t::out_dim});
  double norm = 0;
  for (float x : c.to_vector()) norm += double(x) * double(x);
  CHECK(norm > 0);  // it moved from its zero start
  // without centering there is no center in the checkpoint
  REQUIRE(run({"--eval", "false", "--max_steps", "1", "--out", dir / "plain"}) == train::exit_ok);
  CHECK_FALSE(io::safetensors_file(train::last_checkpoint_path(dir / "plain"))
                  .contains(train::teacher_center_name));
}

TEST_CASE("--autocast bf16 trains on bf16 activations; its resume is bit-exact too") {
  temp_dir dir("autocast");
  check_split_run(dir, {"--eval", "false", "--epochs", "1", "--autocast", "bf16"}, 2);
  REQUIRE(run({"--eval", "false", "--epochs", "1", "--out", dir / "f32"}) == train::exit_ok);
  const auto bf = step_losses(dir / "whole/log.jsonl"), f32 = step_losses(dir / "f32/log.jsonl");
  REQUIRE(bf.size() == 4);
  REQUIRE(f32.size() == 4);
  for (const auto& [it, loss] : bf) {
    CAPTURE(it);
    const double want = f32.at(it);
    CHECK(loss != want);                                    // bf16 rounding happened
    CHECK(std::abs(loss - want) <= 1e-2 * std::abs(want));  // and stays close
  }
  CHECK(read_text(dir / "whole/config.json").find("\"autocast\": \"bf16\"") != std::string::npos);
}

TEST_CASE("fp16 products with a dynamic loss scale: skips are logged, resume is bit-exact") {
  temp_dir dir("fp16");
  // this tiny model's gradients reach ~1e4 and overflow fp16 at a scale of 2048 or more: from
  // 4096 the first two steps are skipped, two good steps at 1024 double it, the next step at 2048
  // overflows again, and so on; the split run resumes in the middle of that, at step 5
  check_split_run(dir,
                  {"--eval", "false", "--epochs", "2", "--matmul_precision", "fp16",
                   "--loss_scale_init", "4096", "--loss_scale_growth_interval", "2"},
                  5);
  std::vector<double> scales;
  std::vector<bool> skipped;
  for (const auto& r : read_log(dir / "whole/log.jsonl"))
    if (r.at("type") == "step") {
      scales.push_back(r.at("loss_scale"));
      skipped.push_back(r.at("skipped"));
    }
  REQUIRE(scales.size() == 8);
  CHECK(scales[0] == 4096.0);
  CHECK(skipped[0]);
  int grown = 0;
  for (std::size_t i = 1; i < scales.size(); ++i) {  // halved after a skip, else kept or doubled
    if (skipped[i - 1])
      CHECK(scales[i] == scales[i - 1] / 2);
    else
      CHECK((scales[i] == scales[i - 1] || scales[i] == 2 * scales[i - 1]));
    grown += scales[i] == 2 * scales[i - 1];
  }
  CHECK(grown >= 1);
  CHECK(std::count(skipped.begin(), skipped.end(), true) >= 2);
  CHECK(std::count(skipped.begin(), skipped.end(), false) >= 2);
  train::checkpoint_header hw, hs;
  train::open_checkpoint(train::last_checkpoint_path(dir / "whole"), &hw);
  train::open_checkpoint(train::last_checkpoint_path(dir / "split"), &hs);
  REQUIRE(hw.position.loss_scale);
  CHECK(hs.position.loss_scale == hw.position.loss_scale);
  CHECK(hs.position.loss_scale_good_steps == hw.position.loss_scale_good_steps);
  CHECK(step_losses(dir / "whole/log.jsonl") == step_losses(dir / "split/log.jsonl"));
  // the epoch record after the mid-epoch resume averages the whole epoch, not only its last steps
  auto last_epoch = [&](const fs::path& log) {
    nlohmann::json last;
    for (const auto& r : read_log(log))
      if (r.at("type") == "epoch") last = r;
    return last;
  };
  const auto ew = last_epoch(dir / "whole/log.jsonl"), es = last_epoch(dir / "split/log.jsonl");
  for (const char* key : {"steps", "loss", "loss_ms", "loss_km", "loss_vmr", "teacher_entropy",
                          "student_entropy", "skipped_steps"}) {
    CAPTURE(key);
    CHECK(es.at(key) == ew.at(key));
  }
  CHECK(ew.at("steps") == 4);
}

TEST_CASE("Ctrl-C saves a checkpoint and exits; the resumed run matches an uninterrupted one") {
  temp_dir dir("sigint");
  train::run_hooks<float> hooks;
  hooks.after_step = [](index_t iteration, const optim::named_vars<float>&) {
    if (iteration == 6) std::raise(SIGINT);  // as a user's Ctrl-C, through the real handler
  };
  const std::vector<std::string> args = {"--eval", "false", "--out", dir / "run"};
  CHECK(run(args, hooks) == train::exit_interrupted);
  train::checkpoint_header h;
  train::open_checkpoint(train::last_checkpoint_path(dir / "run"), &h);
  CHECK(h.position.iteration == 6);
  CHECK(h.position.batch_in_epoch == 2);
  CHECK(count_type(read_log(dir / "run/log.jsonl"), "interrupted") == 1);
  CHECK(run(args) == train::exit_ok);
  REQUIRE(run({"--eval", "false", "--out", dir / "whole"}) == train::exit_ok);
  check_bit_identical(train::last_checkpoint_path(dir / "whole"),
                      train::last_checkpoint_path(dir / "run"));
}

TEST_CASE(
    "a non-finite loss stops the run, names the step and the loss parts, keeps the checkpoint") {
  temp_dir dir("nan");
  train::run_hooks<float> hooks;
  hooks.after_step = [](index_t iteration, const optim::named_vars<float>& student) {
    if (iteration != 5) return;
    for (const auto& [name, p] : student)
      if (name == "norm.weight") p.value().fill(std::numeric_limits<float>::quiet_NaN());
  };
  const std::string out = dir / "run";
  CHECK(run({"--eval", "false", "--out", out}, hooks) == train::exit_non_finite_loss);
  const auto log = read_log(out + "/log.jsonl");
  REQUIRE(count_type(log, "non_finite_loss") == 1);
  for (const auto& r : log) {
    if (r.at("type") != "non_finite_loss") continue;
    const std::string msg = r.at("message");
    CHECK(msg.find("step 5") != std::string::npos);
    CHECK(msg.find("L_ms") != std::string::npos);
    CHECK(msg.find("L_km") != std::string::npos);
    CHECK(msg.find("L_vmr") != std::string::npos);
  }
  // the checkpoint of the end of epoch 1 (iteration 4) is the last good one and is untouched
  train::checkpoint_header h;
  train::open_checkpoint(train::last_checkpoint_path(out), &h);
  CHECK(h.position.iteration == 4);
}

TEST_CASE("bad options are refused before any work, with the reason") {
  temp_dir dir("options");
  const std::string out = dir / "never";
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--lrr", "1"}, "unknown option 'lrr' on the command line (did you mean --lr?)"},
      {{"--lr", "fast"},
       "invalid value for --lr on the command line: 'fast' is not a valid number"},
      {{"--lr", "-1"}, "--lr on the command line: must not be negative"},
      {{"--epochs", "0"}, "--epochs on the command line: must be at least 1"},
      {{"--epochs"}, "option --epochs needs a value"},
      {{"--epochs", "--lr", "1"}, "option --epochs needs a value"},
      {{"--device", "cuda"}, "not built with the CUDA backend"},
      {{"--device", "tpu"}, "'tpu' is not one of: cpu, cuda"},
      {{"--arch", "huge"}, "'huge' is not built into flsl_e2e (it has t32/8, t48/8)"},
      {{"--patch", "16"}, "t32/16 is not built into flsl_e2e"},
      {{"--global_size", "36"}, "--global_size: 36 px is not a positive multiple of the patch 8"},
      {{"--global_window", "5"}, "--global_window: 5 does not fit the 4x4 token grid"},
      {{"--teacher_scale", "0.9,0.2"}, "needs 0 < MIN <= MAX <= 1, got 0.9,0.2"},
      {{"--teacher_scale", "0.9"}, "'0.9' is not a valid MIN,MAX"},
      {{"--flip_p", "2"}, "--flip_p on the command line: must be in [0, 1], got 2"},
      {{"--center_momentum", "1.5"}, "--center_momentum on the command line: must be in [0, 1]"},
      {{"--knn_labels", "hard"}, "'hard' is not one of: soft, majority"},
      {{"--autocast", "fp16"}, "'fp16' is not one of: auto, off, bf16"},
      {{"--out_dim", "4096"}, "fixes out_dim = 64 at compile time"},
      {{"--warmup_epochs", "3"}, "--warmup_epochs: 3 is more than the 2 epochs"},
      {{"--batch", "17"}, "17 is more than the 16 procedural images"},
      {{"--data", (dir / "missing")}, "is not a directory"},
      {{"--fresh", "maybe"}, "unexpected argument 'maybe'"},
      {{"positional"}, "unexpected argument 'positional'"},
      {{"--config", (dir / "missing.json")}, "--config file '"},
  };
  for (const auto& [args, want] : cases) {
    CAPTURE(args.front());
    const std::string got = error_of(args);
    CHECK_MESSAGE(got.find(want) != std::string::npos, got);
    auto with_out = args;
    with_out.insert(with_out.end(), {"--out", out});
    CHECK(run(with_out) == train::exit_invalid_options);
  }
  // a configuration file: same keys, same checks; command-line options win over it
  std::ofstream(dir / "bad.json") << R"({"lr": 0.1, "epochs": -2})";
  CHECK(error_of({"--config", dir / "bad.json"}).find("invalid value for --epochs in '") !=
        std::string::npos);
  std::ofstream(dir / "typo.json") << R"({"momentum_teachr": 0.9})";
  CHECK(error_of({"--config", dir / "typo.json"}).find("did you mean --momentum_teacher") !=
        std::string::npos);
  std::ofstream(dir / "broken.json") << R"({"lr": )";
  CHECK(error_of({"--config", dir / "broken.json"}).find("is not valid JSON") != std::string::npos);
  std::ofstream(dir / "good.json")
      << R"({"lr": 0.1, "teacher_scale": [0.7, 0.9], "b_sa_start": null})";
  const auto info = train::make_experiment_info<exp_t>();
  const std::string cfg = dir / "good.json";
  const char* argv[] = {"flsl_e2e", "--config", cfg.c_str(), "--lr=0.2"};
  const auto p = train::resolve_run(train::parse_command_line(4, argv, info), info);
  CHECK(p.config.lr == 0.2);
  CHECK(p.config.teacher_scale == train::range{0.7, 0.9});
  CHECK_FALSE(fs::exists(out));  // nothing was started
}

TEST_CASE("bad checkpoints are refused with a message that says which and why") {
  temp_dir dir("ckpt");
  const std::string out = dir / "run";
  REQUIRE(run({"--eval", "false", "--epochs", "1", "--out", out}) == train::exit_ok);
  const fs::path good = train::last_checkpoint_path(out);
  // another architecture: through the options, and through the loader itself
  CHECK(error_of({"--resume", good.string(), "--arch", "t48", "--out", dir / "x"})
            .find("--arch t48 differs from the value t32 in the checkpoint") != std::string::npos);
  {
    train::network<exp_t, e2e::t48> s(0), t(0);
    optim::adamw<float> adam(nn::named_parameters(s));
    const auto arch = train::make_architecture_info<exp_t, e2e::t48>("t48");
    try {
      train::load_checkpoint(good, nn::named_parameters(s), nn::named_parameters(t), adam, arch);
      FAIL("loaded a checkpoint of another architecture");
    } catch (const flsl::error& e) {
      const std::string m = e.what();
      CHECK(m.find("it holds another architecture, vit_t32/8 (dim 32") != std::string::npos);
      CHECK(m.find("while this run builds vit_t48/8 (dim 48") != std::string::npos);
    }
  }
  // a truncated file
  const fs::path cut = dir / "cut.safetensors";
  fs::copy_file(good, cut);
  fs::resize_file(cut, fs::file_size(good) / 2);
  std::string m = error_of({"--resume", cut.string(), "--out", dir / "x"});
  CHECK(m.find("cannot use checkpoint '" + cut.string() + "': the file is truncated") !=
        std::string::npos);
  // not safetensors at all (a PNG), and a text file
  std::ofstream(dir / "notes.txt") << "these are not weights\n";
  m = error_of({"--resume", dir / "notes.txt", "--out", dir / "x"});
  CHECK(m.find("it is not a safetensors file") != std::string::npos);
  data::ImageU8 img(4, 4);
  data::write_file(dir / "image.png", data::encode_png(img));
  m = error_of({"--resume", dir / "image.png", "--out", dir / "x"});
  CHECK(m.find("it is not a safetensors file") != std::string::npos);
  CHECK(m.find("PNG") != std::string::npos);
  // safetensors without checkpoint metadata (weights only)
  io::save_safetensors(dir / "weights.safetensors", {{"w", Tensor<float>::zeros({2})}});
  m = error_of({"--resume", dir / "weights.safetensors", "--out", dir / "x"});
  CHECK(m.find("is a safetensors file but not an flsl training checkpoint") != std::string::npos);
  // and the trainer refuses them with the invalid-options status, starting nothing
  CHECK(run({"--resume", cut.string(), "--out", dir / "x"}) == train::exit_invalid_options);
  CHECK_FALSE(fs::exists(dir / "x"));
}

TEST_CASE("an interrupted checkpoint write leaves the previous checkpoint readable") {
  temp_dir dir("crash");
  const std::string out = dir / "run";
  REQUIRE(run({"--eval", "false", "--epochs", "1", "--out", out}) == train::exit_ok);
  const fs::path last = train::last_checkpoint_path(out);
  const std::string before = read_text(last);
  // A child process writes a checkpoint over checkpoint_last but dies in the middle of the write:
  // the file-size limit raises SIGXFSZ, whose default action kills it, when the temporary file
  // reaches 64 KiB (as a crash or a power cut would).
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    rlimit lim{64 * 1024, 64 * 1024};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    ::signal(SIGXFSZ, SIG_DFL);
    train::network<exp_t, e2e::t32> s(7), t(7);
    optim::adamw<float> adam(nn::named_parameters(s));
    train::checkpoint_header h;
    h.experiment = "flsl_e2e";
    h.arch = train::make_architecture_info<exp_t, e2e::t32>("t32");
    h.config = nlohmann::json::object();
    train::save_checkpoint(last, nn::named_parameters(s), nn::named_parameters(t), adam, h);
    ::_exit(0);  // not reached
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGXFSZ);
  CHECK(fs::exists(last.string() + ".tmp"));  // the half-written temporary file
  CHECK(read_text(last) == before);           // the previous checkpoint, byte for byte
  train::checkpoint_header h;
  train::open_checkpoint(last, &h);
  CHECK(h.position.iteration == 4);
  // the run continues from it (one more epoch); the stale temporary file is replaced
  CHECK(run({"--eval", "false", "--epochs", "2", "--out", out}) == train::exit_ok);
  train::open_checkpoint(last, &h);
  CHECK(h.position.iteration == 8);
  CHECK_FALSE(fs::exists(last.string() + ".tmp"));
}

TEST_CASE(
    "patch class fractions: the share of each class among a patch's pixels; void counts for none") {
  evaluation::segmentation_set s;
  s.count = 1;
  s.size = 16;
  s.masks.assign(16 * 16, 0);
  for (index_t y = 0; y < 16; ++y)
    for (index_t x = 0; x < 16; ++x) {
      std::uint8_t c = 0;
      if (y < 8 && x < 4) c = 1;     // top-left patch: left half class 1
      if (y < 8 && x >= 8) c = 2;    // top-right patch: all class 2
      if (y >= 8 && x < 2) c = 255;  // bottom-left patch: a quarter void
      s.masks[std::size_t(y * 16 + x)] = c;
    }
  const auto f = evaluation::patch_class_fractions(s, 8, 3);  // [4 patches, 3 classes]
  REQUIRE(f.size() == 12);
  const std::vector<float> want = {0.5f,  0.5f, 0.0f, 0.0f, 0.0f, 1.0f,
                                   0.75f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f};
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(f[i] == doctest::Approx(want[i]));
}

TEST_CASE("k-NN segmentation: class-coding features score mIoU 1, position-only features do not") {
  // two 16 px images, patch 8: every patch one class (0..3), the same layout mirrored
  evaluation::segmentation_set train, val;
  for (auto* s : {&train, &val}) {
    s->count = 2;
    s->size = 16;
    s->images = Tensor<float>::zeros({2, 3, 16, 16});
    s->masks.assign(2 * 16 * 16, 0);
  }
  auto cls = [](index_t img, index_t gy, index_t gx) {
    return int(img == 0 ? gy * 2 + gx : 3 - (gy * 2 + gx));
  };
  for (auto* s : {&train, &val})
    for (index_t i = 0; i < 2; ++i)
      for (index_t y = 0; y < 16; ++y)
        for (index_t x = 0; x < 16; ++x)
          s->masks[std::size_t((i * 16 + y) * 16 + x)] =
              std::uint8_t(cls(s == &val ? 1 - i : i, y / 8, x / 8));
  auto features = [&](bool by_class, bool val_set) {  // [2, 4, 4] one-hot
    auto f = Tensor<float>::zeros({2, 4, 4});
    for (index_t i = 0; i < 2; ++i)
      for (index_t t = 0; t < 4; ++t)
        f(i, t, by_class ? cls(val_set ? 1 - i : i, t / 2, t % 2) : t) = 1;
    return f;
  };
  evaluation::knn_params kp;
  kp.k = 1;
  kp.num_classes = 4;
  auto r =
      evaluation::knn_segmentation(features(true, false), train, features(true, true), val, 8, kp);
  CHECK(r.miou == doctest::Approx(1.0));
  CHECK(r.pixel_accuracy == doctest::Approx(1.0));
  CHECK(r.memory_patches == 8);
  // features that only say where a patch is: the nearest patch is the first training image's at
  // the same place, right for one validation image and wrong everywhere on the other
  r = evaluation::knn_segmentation(features(false, false), train, features(false, true), val, 8,
                                   kp);
  CHECK(r.pixel_accuracy == doctest::Approx(0.5));
  CHECK(r.miou == doctest::Approx(1.0 / 3.0));  // per class: 64 right, 64 missed, 64 wrong
  // foreground (classes 1..3) against class 0: validation image 0 is all right; on image 1 the
  // class-0 patch is predicted 3 and a class-3 patch 0: 320 right, 64 missed, 64 false
  CHECK(r.foreground_iou == doctest::Approx(320.0 / 448.0));
  // majority votes give the same answer here (every patch is one class)
  kp.soft_labels = false;
  r = evaluation::knn_segmentation(features(true, false), train, features(true, true), val, 8, kp);
  CHECK(r.miou == doctest::Approx(1.0));
  kp.soft_labels = true;
  // an ignored class is left out of the score
  kp.ignore_index = 3;
  r = evaluation::knn_segmentation(features(true, false), train, features(true, true), val, 8, kp);
  CHECK(r.iou[3] != r.iou[3]);  // NaN: never counted
}

TEST_CASE("linear probe: class-coding features under a positional offset are read right") {
  // 4 images of 16 px, patch 8; patch (i, t) has class (i + t) % 3 (the validation images are
  // shifted by one); features: a weak class one-hot plus a strong position one-hot
  evaluation::segmentation_set train, val;
  auto cls = [](index_t img, index_t t) { return int((img + t) % 3); };
  for (auto* s : {&train, &val}) {
    s->count = 4;
    s->size = 16;
    s->images = Tensor<float>::zeros({4, 3, 16, 16});
    s->masks.assign(4 * 16 * 16, 0);
    for (index_t i = 0; i < 4; ++i)
      for (index_t y = 0; y < 16; ++y)
        for (index_t x = 0; x < 16; ++x)
          s->masks[std::size_t((i * 16 + y) * 16 + x)] =
              std::uint8_t(cls(s == &val ? i + 1 : i, (y / 8) * 2 + x / 8));
  }
  auto features = [&](bool val_set) {  // [4, 4, 7]: class one-hot (0..2), position one-hot (3..6)
    auto f = Tensor<float>::zeros({4, 4, 7});
    for (index_t i = 0; i < 4; ++i)
      for (index_t t = 0; t < 4; ++t) {
        f(i, t, cls(val_set ? i + 1 : i, t)) = 0.3f;
        f(i, t, 3 + t) = 1.0f;
      }
    return f;
  };
  evaluation::linear_probe_params lp;
  lp.num_classes = 3;
  const auto r =
      evaluation::linear_probe_segmentation(features(false), train, features(true), val, 8, lp);
  // every patch right; the pixels a little less (0.967 when written): scores are upsampled
  // bilinearly between patch centres, so where two neighbouring patches differ in confidence
  // the more confident one wins a few pixels past the patch border
  CHECK(r.pixel_accuracy > 0.95);
  CHECK(r.miou > 0.9);
  CHECK(r.memory_patches == 16);
  // position-only features carry no class: the probe cannot beat chance (at most 1 in 3 right
  // per position on average)
  auto pos_only = [&] {
    auto f = Tensor<float>::zeros({4, 4, 7});
    for (index_t i = 0; i < 4; ++i)
      for (index_t t = 0; t < 4; ++t) f(i, t, 3 + t) = 1.0f;
    return f;
  };
  CHECK(evaluation::linear_probe_segmentation(pos_only(), train, pos_only(), val, 8, lp)
            .pixel_accuracy < 0.5);
}

TEST_CASE("feature centering: per position (memory mean) and per image") {
  // 2 images of 4 tokens: f(i, t) = e_t (position) + 0.5 e_{4+i} (image)
  auto make = [] {
    auto f = Tensor<float>::zeros({2, 4, 6});
    for (index_t i = 0; i < 2; ++i)
      for (index_t t = 0; t < 4; ++t) {
        f(i, t, t) = 1.0f;
        f(i, t, 4 + i) = 0.5f;
      }
    return f;
  };
  // per position: the mean e_t + 0.25 (e_4 + e_5) goes; image 0 keeps (e_4 - e_5) / sqrt(2)
  Tensor<float> m = make(), q = make();
  evaluation::center_positions(m, q);
  const float h = float(std::sqrt(0.5));
  for (index_t t = 0; t < 4; ++t) {
    CHECK(m(0, t, t) == doctest::Approx(0.0));
    CHECK(m(0, t, 4) == doctest::Approx(h));
    CHECK(m(0, t, 5) == doctest::Approx(-h));
    CHECK(q(1, t, 5) == doctest::Approx(h));  // queries lose the memory's mean
  }
  // per image: the image's mean e_{4+i} + 0.25 sum_t e_t goes; token t keeps 0.75 e_t - 0.25
  // (the other three), normalised by sqrt(0.75^2 + 3 * 0.25^2)
  Tensor<float> f = make();
  evaluation::center_images(f);
  const double n = std::sqrt(0.75 * 0.75 + 3 * 0.25 * 0.25);
  CHECK(f(0, 0, 0) == doctest::Approx(0.75 / n));
  CHECK(f(0, 0, 1) == doctest::Approx(-0.25 / n));
  CHECK(f(1, 2, 4) == doctest::Approx(0.0));
  CHECK(f(1, 2, 5) == doctest::Approx(0.0));
}

TEST_CASE("feature cosines: same position, within an image, across images") {
  // position-only one-hot features: same place in two images identical, otherwise orthogonal
  auto f = Tensor<float>::zeros({3, 4, 4});
  for (index_t i = 0; i < 3; ++i)
    for (index_t t = 0; t < 4; ++t) f(i, t, t) = 1;
  auto s = evaluation::feature_cosines(f);
  CHECK(s.same_position_cos == doctest::Approx(1.0));
  CHECK(s.within_image_cos == doctest::Approx(0.0));
  CHECK(s.across_image_cos == doctest::Approx(0.25));  // 1 of the 4 tokens of another image
  // image-level features: every token of image i is e_i
  f = Tensor<float>::zeros({3, 4, 4});
  for (index_t i = 0; i < 3; ++i)
    for (index_t t = 0; t < 4; ++t) f(i, t, i) = 1;
  s = evaluation::feature_cosines(f);
  CHECK(s.same_position_cos == doctest::Approx(0.0));
  CHECK(s.within_image_cos == doctest::Approx(1.0));
  CHECK(s.across_image_cos == doctest::Approx(0.0));
  // two unit vectors at 60 degrees, alternating within each image (cos 0.5 between them)
  f = Tensor<float>::zeros({2, 2, 2});
  for (index_t i = 0; i < 2; ++i) {
    f(i, 0, 0) = 1;
    f(i, 1, 0) = 0.5f;
    f(i, 1, 1) = float(std::sqrt(0.75));
  }
  s = evaluation::feature_cosines(f);
  CHECK(s.same_position_cos == doctest::Approx(1.0));
  CHECK(s.within_image_cos == doctest::Approx(0.5));
  CHECK(s.across_image_cos == doctest::Approx(0.75));  // pairs: 1, 1, 0.5, 0.5
  CHECK_THROWS_WITH_AS(evaluation::feature_cosines(Tensor<float>::zeros({1, 4, 4})),
                       doctest::Contains("2+ images"), flsl::error);
}

TEST_CASE("--davis: label propagation is evaluated, logged, and its masks are written") {
  temp_dir dir("davis");
  evaluation::testing::write_video(dir.path / "davis", "square", 4);  // 128 x 64 px frames
  const std::vector<std::string> eval = {
      "--eval_size", "32",      "--eval_train_images", "4", "--eval_val_images", "2", "--pictures",
      "0",           "--davis", dir / "davis"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), eval.begin(), eval.end());
    return extra;
  };
  REQUIRE(run(with({"--eval_only", "--davis_size", "32", "--out", dir / "run"})) == train::exit_ok);
  const auto log = read_log(dir.path / "run" / "log.jsonl");
  REQUIRE(count_type(log, "eval_davis") == 1);
  for (const auto& r : log) {
    if (r.at("type") != "eval_davis") continue;
    CHECK(r.at("when") == "checkpoint");
    CHECK(r.at("frames") == 4);
    CHECK(r.at("size") == 32);
    const double j = r.at("davis_j"), f = r.at("davis_f"), jf = r.at("davis_jf");
    CHECK(j >= 0.0);
    CHECK(j <= 1.0);
    CHECK(jf == doctest::Approx(0.5 * (j + f)));
    CHECK(r.at("sequences").at("square").at("objects") == 1);
  }
  for (const char* frame : {"00001.png", "00002.png", "00003.png"})
    CHECK(is_png(dir.path / "run" / "davis" / "square" / frame));
  // refused before any work: a folder without the DAVIS layout, a size the patch does not divide
  CHECK(error_of({"--davis", dir / "run"}).find("has no JPEGImages/480p and Annotations/480p") !=
        std::string::npos);
  CHECK(error_of({"--davis", dir / "davis", "--davis_size", "36"})
            .find("--davis_size: 36 is not a multiple of the patch 8") != std::string::npos);
  CHECK(error_of({"--davis", dir / "davis", "--davis_sequences", "square, other"})
            .find("--davis_sequences: '" + (dir / "davis") + "' has no sequence 'other'") !=
        std::string::npos);
}

#ifdef FLSL_PRETRAIN_BINARY
namespace {
/// Runs a command through the shell; returns its exit status and output.
std::pair<int, std::string> shell(const std::string& cmd) {
  std::string out;
  std::FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}
const std::string tiny_run =
    " --epochs 1 --batch 2 --procedural_images 4 --procedural_size 48 --global_size 32 "
    "--local_size 16 --global_window 1 --local_window 1 --eval_size 32 --eval_train_images 4 "
    "--eval_val_images 2 --pictures 1 --threads 2 --progress plain";
}  // namespace

TEST_CASE("the flsl_pretrain binary: --help, a refused option, a short run, and Ctrl-C") {
  const std::string bin = FLSL_PRETRAIN_BINARY;
  temp_dir dir("binary");
  auto [rc, text] = shell(bin + " --help");
  CHECK(rc == 0);
  CHECK(text.find("--momentum_teacher M") != std::string::npos);
  CHECK(text.find("recipe 0.0005") != std::string::npos);
#ifdef FLSL_PRETRAIN_HAS_CUDA
  // built with the CUDA backend: without a device, --device cuda stops before any work
  if (!fs::exists("/dev/nvidia0")) {
    const std::string never = dir / "no_device";
    std::tie(rc, text) = shell(bin + " --device cuda --out " + never);
    CHECK(rc == 1);
    CHECK(text.find("--device cuda: no CUDA device: cudaGetDeviceCount returned") !=
          std::string::npos);
    CHECK_FALSE(fs::exists(never));
  } else {
    MESSAGE("a GPU is present (/dev/nvidia0): the no-device message is not checked");
  }
#else
  std::tie(rc, text) = shell(bin + " --device cuda");
  CHECK(rc == 2);
  CHECK(text.find("not built with the CUDA backend") != std::string::npos);
#endif
  std::tie(rc, text) = shell(bin + tiny_run + " --out " + (dir / "short"));
  CHECK(rc == 0);
  CHECK(text.find("k-NN segmentation at the start (random weights): mIoU") != std::string::npos);
  CHECK(text.find("k-NN segmentation at the end (teacher)") != std::string::npos);
  CHECK(text.find("epoch 1/1 step 2/2") != std::string::npos);
  // Ctrl-C: SIGINT to the running process once it has logged a step
  const std::string out = dir / "sigint";
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const std::string cmd = bin + tiny_run + " --epochs 1000 --eval false --out " + out + " > " +
                            (dir / "sigint.txt") + " 2>&1";
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), (char*)nullptr);
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(out + "/log.jsonl") &&
        read_text(out + "/log.jsonl").find("\"step\"") != std::string::npos)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  CHECK(read_text(dir / "sigint.txt").find("checkpoint saved to") != std::string::npos);
  train::checkpoint_header h;
  train::open_checkpoint(train::last_checkpoint_path(out), &h);
  CHECK(h.position.iteration >= 1);
}
#endif
