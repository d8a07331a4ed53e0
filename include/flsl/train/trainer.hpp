// The training loop of a run: options -> (resume) -> data loader -> flsl_learner::step -> log and
// progress -> checkpoints, with the k-NN evaluation and pictures at the start and the end.
// Ctrl-C saves a checkpoint and exits; a non-finite loss stops the run and keeps the last good
// checkpoint; rerunning with the same --out continues exactly where the checkpoint left off.
#pragma once

#include <signal.h>
#include <tbb/global_control.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "../data/data.hpp"
#include "../eval/knn_segmentation.hpp"
#include "../eval/label_propagation.hpp"
#include "../eval/maps.hpp"
#include "checkpoint.hpp"
#include "config.hpp"
#include "experiment.hpp"
#include "export.hpp"
#include "flsl_step.hpp"
#include "log.hpp"
#include "progress.hpp"

namespace flsl::train {

/// Exit statuses of a trainer binary.
enum exit_status : int {
  exit_ok = 0,
  exit_error = 1,
  exit_invalid_options = 2,
  exit_non_finite_loss = 3,
  exit_interrupted = 130,
};

// ---- Ctrl-C ------------------------------------------------------------------------------------

/// Set by SIGINT or SIGTERM (or request_stop): the loop saves a checkpoint after the current step
/// and exits with 128 + the signal (130 for Ctrl-C).
inline std::atomic<bool> stop_requested{false};
inline std::atomic<int> stop_signal{0};
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "the signal flags must be lock-free");

/// Asks a running trainer to stop as Ctrl-C does (from a hook or another thread).
inline void request_stop() {
  stop_signal.store(SIGINT);
  stop_requested.store(true);
}

namespace detail {
extern "C" inline void flsl_on_stop_signal(int sig) {
  if (stop_requested.exchange(true)) {  // a second signal: stop at once (checkpoints stay intact)
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  stop_signal.store(sig);
  static const char msg[] =
      "\nflsl: interrupted: saving a checkpoint after the current step (Ctrl-C again quits at "
      "once; the previous checkpoint stays)\n";
  (void)!::write(2, msg, sizeof msg - 1);
}

/// Installs the SIGINT and SIGTERM handler for its lifetime.
class stop_signal_guard {
 public:
  stop_signal_guard() {
    stop_requested.store(false);
    stop_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = flsl_on_stop_signal;
    sigemptyset(&sa.sa_mask);
    installed_int_ = ::sigaction(SIGINT, &sa, &old_int_) == 0;
    installed_term_ = ::sigaction(SIGTERM, &sa, &old_term_) == 0;
  }
  ~stop_signal_guard() {
    if (installed_int_) ::sigaction(SIGINT, &old_int_, nullptr);
    if (installed_term_) ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  stop_signal_guard(const stop_signal_guard&) = delete;
  stop_signal_guard& operator=(const stop_signal_guard&) = delete;

 private:
  struct sigaction old_int_ {
  }, old_term_{};
  bool installed_int_ = false, installed_term_ = false;
};
}  // namespace detail

// ---- datasets ----------------------------------------------------------------------------------

/// Any image_dataset behind one type, so that one Loader instantiation serves folders and the
/// procedural dataset.
class dataset_ref {
 public:
  template <data::image_dataset D>
  explicit dataset_ref(std::shared_ptr<const D> d)
      : size_(d->size()), load_([d](std::size_t i, data::SourceImage& out) { d->load(i, out); }) {}
  std::size_t size() const { return size_; }
  void load(std::size_t i, data::SourceImage& out) const { load_(i, out); }

 private:
  std::size_t size_;
  std::function<void(std::size_t, data::SourceImage&)> load_;
};

/// The seed of the built-in procedural dataset: fixed, so that every run (whatever its --seed)
/// trains on the same images and is evaluated on the same validation split.
inline constexpr std::uint64_t procedural_dataset_seed = 0;

/// The multi-crop transform of a configuration.
inline data::MultiCropParams multicrop_params(const run_config& c) {
  data::MultiCropParams m;
  m.teacher = {int(c.global_size), c.teacher_scale.first, c.teacher_scale.second};
  m.student = {int(c.global_size), c.global_scale.first, c.global_scale.second};
  m.local = {int(c.local_size), c.local_scale.first, c.local_scale.second};
  m.n_local = int(c.locals);
  m.flip_p = c.flip_p;
  m.patch = int(c.patch);
  m.global_window = int(c.global_window);
  m.local_window = int(c.local_window);
  m.random_sampling = c.random_sampling;
  auto& s = m.style;
  s.jitter_p = c.jitter_p;
  s.brightness = float(c.brightness);
  s.contrast = float(c.contrast);
  s.saturation = float(c.saturation);
  s.hue = float(c.hue);
  s.grayscale_p = c.grayscale_p;
  s.blur_branch_p = c.blur_branch_p;
  s.blur_p_a = c.blur_p_a;
  s.blur_p_b = c.blur_p_b;
  s.solarize_p = c.solarize_p;
  s.sigma_min = c.blur_sigma.first;
  s.sigma_max = c.blur_sigma.second;
  return m;
}

/// The schedules' constants of a configuration (iters_per_epoch from the loader).
inline optim::recipe recipe_of(const run_config& c, index_t iters_per_epoch) {
  optim::recipe r;
  r.epochs = c.epochs;
  r.iters_per_epoch = iters_per_epoch;
  r.total_batch = c.batch;
  r.lr = c.lr;
  r.min_lr = c.min_lr;
  r.warmup_epochs = c.warmup_epochs;
  r.start_warmup_lr = c.start_warmup_lr;
  r.weight_decay = c.weight_decay;
  r.weight_decay_end = c.weight_decay_end;
  r.momentum_teacher = c.momentum_teacher;
  r.momentum_teacher_end = c.momentum_teacher_end;
  r.warmup_teacher_temp = c.warmup_teacher_temp;
  r.teacher_temp = c.teacher_temp;
  r.warmup_teacher_temp_epochs = c.warmup_teacher_temp_epochs;
  r.b_sa = c.b_sa;
  r.b_ca = c.b_ca;
  r.b_sa_start = c.b_sa_start;
  r.b_ca_start = c.b_ca_start;
  r.coef_ms = c.coef_ms;
  r.start_intraview = c.start_intraview;
  r.freeze_last_layer = c.freeze_last_layer;
  return r;
}

/// The loss scaler a run uses: --loss_scale with auto resolved for the matmul precision.
inline optim::grad_scaler_options resolved_loss_scale(const run_config& c) {
  optim::grad_scaler_options o;
  o.growth_interval = c.loss_scale_growth_interval;
  o.init_scale = c.loss_scale_init;
  if (c.loss_scale == "auto") {
    o.enabled = resolved_matmul_precision(c) == matmul_precision::fp16;
  } else if (c.loss_scale == "dynamic") {
    o.enabled = true;
  } else if (c.loss_scale != "none") {
    o.enabled = true;
    o.dynamic = false;
    o.init_scale = *detail::parse_fixed_loss_scale(c.loss_scale);
  }
  return o;
}

// ---- resolving a run (before any work) ---------------------------------------------------------

/// Options that only say how this process runs (never taken from a checkpoint).
inline bool is_process_option(const std::string& name) {
  static const std::set<std::string> s = {"out",
                                          "resume",
                                          "fresh",
                                          "export",
                                          "config",
                                          "threads",
                                          "device",
                                          "max_steps",
                                          "progress",
                                          "progress_every",
                                          "log_every",
                                          "checkpoint_every",
                                          "eval",
                                          "eval_every",
                                          "eval_train_images",
                                          "eval_val_images",
                                          "eval_size",
                                          "knn_k",
                                          "knn_temperature",
                                          "knn_center_positions",
                                          "knn_center_images",
                                          "knn_labels",
                                          "linear_probe",
                                          "eval_only",
                                          "pictures",
                                          "kmeans_clusters",
                                          "davis",
                                          "davis_size",
                                          "davis_sequences"};
  return s.count(name) != 0;
}
/// Options a resumed run cannot change: the model, the data and its order.
inline bool is_structural_option(const std::string& name) {
  static const std::set<std::string> s = {"arch",
                                          "patch",
                                          "data",
                                          "batch",
                                          "procedural_images",
                                          "procedural_size",
                                          "procedural_min_objects",
                                          "procedural_max_objects",
                                          "global_size",
                                          "local_size",
                                          "locals",
                                          "global_window",
                                          "local_window",
                                          "out_dim",
                                          "norm_last_layer",
                                          "seed"};
  return s.count(name) != 0;
}

/// A run ready to start: its configuration and, when it continues, the checkpoint.
struct resolved_run {
  run_config config;
  std::optional<std::filesystem::path> resume_from;
  checkpoint_header checkpoint;    // valid when resume_from is set
  std::vector<std::string> notes;  // changed options on resume, for the user
};

/// Decides whether the run continues a checkpoint (--resume FILE, or <out>/checkpoint_last when
/// it exists and --fresh is not given) and merges the configurations: the checkpoint's options,
/// this process's options (out, threads, evaluation, ...) and the options given explicitly. A
/// given option that would change the model or the data order is refused; other given changes are
/// applied and reported. Throws flsl::error with the reason.
inline resolved_run resolve_run(const parsed_options& p, const experiment_info& info) {
  resolved_run r;
  r.config = p.config;
  namespace fs = std::filesystem;
  fs::path ckpt;
  if (!p.config.resume.empty()) {
    ckpt = p.config.resume;
  } else if (!p.config.fresh) {
    std::error_code ec;
    const fs::path last = last_checkpoint_path(p.config.out);
    if (fs::exists(last, ec)) ckpt = last;
  }
  if (ckpt.empty()) {
    validate(r.config, info);
    return r;
  }
  open_checkpoint(ckpt, &r.checkpoint);  // throws with the reason when unusable
  r.resume_from = ckpt;
  run_config merged = info.defaults;
  for (auto it = r.checkpoint.config.begin(); it != r.checkpoint.config.end(); ++it) {
    const std::string& name = it.key();
    const option* o = find_option(name);
    if (!o || is_process_option(name)) continue;  // unknown keys of other versions: ignored
    const auto text = detail::json_to_text(it.value());
    if (text) set_option(merged, name, *text, " in the checkpoint's configuration");
  }
  for (const option& o : options()) {
    const std::string& name = o.name;
    const auto cur = o.get(p.config);
    if (is_process_option(name)) {
      set_option(merged, name, *detail::json_to_text(cur), "");
      continue;
    }
    if (!p.given.count(name)) continue;
    const auto old = o.get(merged);
    if (old == cur) continue;
    if (is_structural_option(name))
      fail("--", name, " ", o.text(p.config), " differs from the value ", o.text(merged),
           " in the checkpoint ", detail::quoted(ckpt),
           ", and a resumed run cannot change the model, the data or its order; resume with --",
           name, " ", o.text(merged), ", or start another run (another --out, or --fresh)");
    const std::string old_text = o.text(merged);
    set_option(merged, name, *detail::json_to_text(cur), "");
    r.notes.push_back("--" + name + " " + o.text(p.config) + " (the checkpoint has " + old_text +
                      "); the run will differ from an uninterrupted one");
  }
  validate(merged, info);
  r.config = merged;
  return r;
}

// ---- the trainer -------------------------------------------------------------------------------

/// Test and tool hooks: called after every step with the iteration count and the student's
/// parameters (which a hook may change, e.g. to inject a fault), on the trainer's device.
template <class T, class D = cpu>
struct run_hooks {
  std::function<void(index_t iteration, const optim::named_vars<T, D>& student)> after_step;
};

/// Runs one experiment with one ViT configuration, on the experiment's device: the student, the
/// teacher and the optimizer live there; batches come from the CPU loader and are copied to the
/// device; checkpoints, the k-NN evaluation, the pictures and the export read a host copy.
template <experiment Exp, class Cfg>
class trainer {
 public:
  using T = typename Exp::value_type;
  using Dev = typename Exp::device;
  using net_t = network<Exp, Cfg>;
  using host_net_t = nn::model<network_spec<Exp, Cfg>, T, cpu>;  // net_t itself on the CPU
  using learner_t = flsl_learner<net_t, T, Dev>;
  static constexpr bool on_host = std::is_same_v<Dev, cpu>;

  trainer(resolved_run run, std::string arch_name, run_hooks<T, Dev> hooks = {})
      : run_(std::move(run)),
        c_(run_.config),
        arch_(make_architecture_info<Exp, Cfg>(arch_name)),
        hooks_(std::move(hooks)),
        out_(c_.out) {}

  /// The whole run; returns the exit status (see exit_status).
  int run() {
    const auto wall0 = clock::now();
    std::filesystem::create_directories(out_);
    std::optional<tbb::global_control> threads;
    if (c_.threads > 0)
      threads.emplace(tbb::global_control::max_allowed_parallelism, std::size_t(c_.threads));
    say(std::string(Exp::name) + ": " + arch_.describe() + ", " + data_description() + ", batch " +
        std::to_string(c_.batch) + ", " + std::to_string(c_.epochs) + " epochs, " +
        std::to_string(
            tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism)) +
        " threads" + (on_host ? std::string() : ", on " + std::string(Dev::name)) +
        "; run folder '" + out_.string() + "'");
    make_data();
    make_models();
    if (resolved_autocast(c_) != nn::autocast::off)
      say(std::string("autocast ") + std::string(to_string(resolved_autocast(c_))) +
          ": the backbones' products, attention and GELU on bf16 activations" +
          (on_host ? " (slow on the CPU: the products convert to f32)" : ""));
    if (precision_ != matmul_precision::exact || learner_->loss_scaler().enabled())
      say(std::string("matmul precision ") + std::string(to_string(precision_)) +
          (on_host && precision_ != matmul_precision::exact ? " (emulated on the CPU)" : "") +
          (learner_->loss_scaler().enabled()
               ? ", loss scale " + detail::format_double(learner_->loss_scaler().scale()) +
                     (learner_->loss_scaler().options().dynamic ? " (dynamic)" : " (fixed)")
               : std::string()));
    if (run_.resume_from && c_.eval_only) {
      say("evaluating '" + run_.resume_from->string() + "': iteration " +
          std::to_string(pos_.iteration) + ", " + std::to_string(pos_.epoch) + " of " +
          std::to_string(c_.epochs) + " epochs done" +
          (pos_.batch_in_epoch > 0
               ? " and " + std::to_string(pos_.batch_in_epoch) + " steps of the next"
               : std::string()));
    } else if (run_.resume_from) {
      say("resuming from '" + run_.resume_from->string() + "' at epoch " +
          std::to_string(pos_.epoch + 1) + ", step " + std::to_string(pos_.batch_in_epoch) +
          " (iteration " + std::to_string(pos_.iteration) + ")");
      for (const auto& n : run_.notes) say("  changed on resume: " + n);
    }
    // an evaluation leaves the run's configuration as its training wrote it
    if (!c_.eval_only) write_config_json(out_ / "config.json", config_json());
    log_ = run_log(out_ / "log.jsonl");
    log_.write("run", {{"experiment", Exp::name},
                       {"architecture", arch_.to_json()},
                       {"resumed_from", run_.resume_from ? run_.resume_from->string() : ""},
                       {"iteration", pos_.iteration},
                       {"iters_per_epoch", iters_per_epoch_},
                       {"threads", tbb::global_control::active_value(
                                       tbb::global_control::max_allowed_parallelism)}});
    const index_t total = c_.epochs * iters_per_epoch_;
    int status = exit_ok;
    if (c_.eval_only) {
      evaluate("checkpoint");
    } else if (pos_.iteration >= total) {
      say("the run in '" + out_.string() + "' is complete (" + std::to_string(c_.epochs) +
          " epochs, " + std::to_string(total) +
          " iterations): nothing to train (--fresh starts again; a larger --epochs extends it)");
    } else {
      detail::stop_signal_guard guard;
      if (c_.eval && pos_.iteration == 0) evaluate("start");
      status = train_loop(total);
      if (status != exit_ok) return status;
      if (pos_.iteration < total) return exit_ok;  // --max_steps
      char buf[256];
      std::snprintf(buf, sizeof buf, "trained %lld steps (%lld images) in %s: %.1f images/s",
                    (long long)pos_.iteration, (long long)pos_.images_seen,
                    format_duration(pos_.train_seconds).c_str(),
                    pos_.train_seconds > 0 ? double(pos_.images_seen) / pos_.train_seconds : 0.0);
      say(buf);
      if (c_.eval) evaluate("end");
    }
    if (!c_.export_path.empty()) export_teacher();
    const double wall = seconds_since(wall0);
    log_.write("end", {{"iteration", pos_.iteration}, {"wall_seconds", wall}});
    say("done in " + format_duration(wall) + " (wall time of this process)");
    return exit_ok;
  }

  // access for tests and tools
  net_t& student() { return *student_; }
  net_t& teacher() { return *teacher_; }
  const run_position& position() const { return pos_; }
  const run_config& config() const { return c_; }
  const architecture_info& architecture() const { return arch_; }
  std::optional<double> start_miou() const { return pos_.start_miou; }
  std::optional<double> end_miou() const { return end_miou_; }

 private:
  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t) {
    return std::chrono::duration<double>(clock::now() - t).count();
  }

  void say(const std::string& s) {
    if (progress_) {
      progress_->message(s);
    } else {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    }
  }

  std::string data_description() const {
    if (!c_.data.empty()) return "images of '" + c_.data + "'";
    return "the procedural dataset (" + std::to_string(c_.procedural_images) + " images of " +
           std::to_string(c_.procedural_size) + " px)";
  }

  nlohmann::ordered_json config_json() const {
    nlohmann::ordered_json j = config_to_json(c_);
    return j;
  }

  void make_data() {
    if (c_.data.empty()) {
      data::ProceduralParams pp;
      pp.seed = procedural_dataset_seed;
      pp.split = data::Split::train;
      pp.size = std::size_t(c_.procedural_images);
      pp.width = pp.height = int(c_.procedural_size);
      pp.min_objects = int(c_.procedural_min_objects);
      pp.max_objects = int(c_.procedural_max_objects);
      dataset_ = std::make_unique<dataset_ref>(std::make_shared<const data::ProceduralDataset>(pp));
    } else {
      auto folder = std::make_shared<const data::FolderDataset>(c_.data);
      say("data: " + folder->summary().str(c_.data));
      dataset_ = std::make_unique<dataset_ref>(folder);
    }
    data::LoaderParams lp;
    lp.batch_size = c_.batch;
    lp.seed = c_.seed;
    lp.threads = int(c_.threads);
    lp.log = [this](const std::string& m) { say("data: " + m); };
    crop_ = multicrop_params(c_);
    loader_ = std::make_unique<data::Loader<dataset_ref>>(*dataset_, crop_, lp);
    iters_per_epoch_ = loader_->batches_per_epoch();
  }

  void make_models() {
    student_ = std::make_unique<net_t>(c_.seed);
    teacher_ = std::make_unique<net_t>(c_.seed);
    if constexpr (!on_host) {
      // the CPU's initial weights (a --device cpu run starts from the same values), copied over
      if (!run_.resume_from) {
        host_net_t init(c_.seed);
        auto d = nn::named_parameters(*student_);
        auto s = nn::named_parameters(init);
        for (std::size_t i = 0; i < d.size(); ++i)
          d[i].second.value().copy_from(s[i].second.value().template to<Dev>());
      }
    }
    flsl_loss_params lp;
    lp.student_temp = c_.student_temp;
    lp.coef_km = c_.coef_km;
    lp.coef_vmr = c_.coef_vmr;
    lp.center_teacher = c_.center_teacher;
    lp.center_momentum = c_.center_momentum;
    lp.autocast = resolved_autocast(c_);
    flsl_step_options so;
    so.clip_grad = c_.clip_grad;
    so.drop_path_rate = c_.drop_path_rate;
    so.adam = {c_.adam_beta1, c_.adam_beta2, c_.adam_eps};
    so.loss_scale = resolved_loss_scale(c_);
    precision_ = resolved_matmul_precision(c_);
    learner_ = std::make_unique<learner_t>(*student_, *teacher_, recipe_of(c_, iters_per_epoch_),
                                           lp, so, train_state{0, c_.seed});
    pos_.seed = c_.seed;
    pos_.iters_per_epoch = iters_per_epoch_;
    if (!run_.resume_from) {
      learner_->sync_teacher();
      return;
    }
    const Tensor<T, Dev>& center = learner_->teacher_center();  // filled in place
    const checkpoint_header h = load_checkpoint(
        *run_.resume_from, learner_->student_parameters(), learner_->teacher_parameters(),
        learner_->optimizer(), arch_, center.defined() ? &center : nullptr);
    FLSL_CHECK(h.position.iters_per_epoch == iters_per_epoch_, "cannot use checkpoint '",
               run_.resume_from->string(), "': it was written with ", h.position.iters_per_epoch,
               " iterations per epoch, the data now gives ", iters_per_epoch_,
               " (the dataset changed)");
    pos_ = h.position;
    learner_->state().iteration = pos_.iteration;
    if (learner_->loss_scaler().enabled() && pos_.loss_scale)  // else: start from init_scale
      learner_->loss_scaler().set_state({*pos_.loss_scale, pos_.loss_scale_good_steps});
  }

  checkpoint_header header() const {
    checkpoint_header h;
    h.experiment = Exp::name;
    h.arch = arch_;
    h.position = pos_;
    if (learner_->loss_scaler().enabled()) {
      h.position.loss_scale = learner_->loss_scaler().scale();
      h.position.loss_scale_good_steps = learner_->loss_scaler().state().good_steps;
    }
    h.config = config_json();
    return h;
  }

  std::filesystem::path save_checkpoint_last() {
    const auto path = last_checkpoint_path(out_);
    save_checkpoint(path, learner_->student_parameters(), learner_->teacher_parameters(),
                    learner_->optimizer(), header(), learner_->teacher_center());
    return path;
  }

  int train_loop(index_t total) {
    progress_ = std::make_unique<progress_display>(c_.progress, total, iters_per_epoch_, c_.epochs,
                                                   c_.progress_every);
    progress_->start(pos_.iteration);
    std::deque<std::pair<double, index_t>> recent;  // (seconds, images) of the last steps
    while (pos_.epoch < c_.epochs) {
      if (stop_requested.load()) return interrupted();
      loader_->start_epoch(pos_.epoch, pos_.batch_in_epoch);
      if (pos_.batch_in_epoch == 0) pos_.epoch_so_far = {};  // else resumed inside this epoch
      auto t_prev = clock::now();
      while (const data::Batch* b = loader_->next()) {
        flsl_views<T, Dev> views = make_views(*b);
        flsl_step_result res;
        try {
          matmul_precision_scope precision(precision_);  // evaluation stays exact
          res = learner_->step(views);
        } catch (const flsl::error& e) {
          if (std::string(e.what()).find("the loss is not finite") == std::string::npos) throw;
          return diverged(e.what());
        }
        const auto now = clock::now();
        const double dt = std::chrono::duration<double>(now - t_prev).count();
        t_prev = now;
        ++pos_.iteration;
        ++pos_.batch_in_epoch;
        pos_.images_seen += b->size;
        pos_.train_seconds += dt;
        recent.emplace_back(dt, b->size);
        if (recent.size() > 20) recent.pop_front();
        double rs = 0;
        index_t ri = 0;
        for (const auto& [s, n] : recent) {
          rs += s;
          ri += n;
        }
        const double ips = rs > 0 ? double(ri) / rs : 0.0;
        add_step(pos_.epoch_so_far, res, b->size, dt);
        if (pos_.iteration % c_.log_every == 0) log_step(res, dt, ips);
        progress_->step({pos_.iteration, pos_.epoch, pos_.batch_in_epoch, res.total, res.ms, res.km,
                         res.vmr, res.schedule.lr, ips});
        if (hooks_.after_step) hooks_.after_step(pos_.iteration, learner_->student_parameters());
        if (stop_requested.load()) return interrupted();
        if (c_.max_steps > 0 && pos_.iteration >= c_.max_steps && pos_.iteration < total) {
          const auto path = save_checkpoint_last();
          progress_->finish();
          say("stopped after " + std::to_string(pos_.iteration) + " iterations (--max_steps); " +
              "checkpoint '" + path.string() + "'; rerun the same command without --max_steps " +
              "to continue");
          log_.write("stopped", {{"iteration", pos_.iteration}, {"reason", "max_steps"}});
          return exit_ok;
        }
      }
      end_epoch();
    }
    progress_->finish();
    return exit_ok;
  }

  flsl_views<T, Dev> make_views(const data::Batch& b) const {
    flsl_views<T, cpu> v;
    auto conv = [](const Tensor<float>& x) {
      if constexpr (std::is_same_v<T, float>) {
        return x;
      } else {
        return x.template to<T>();
      }
    };
    v.teacher = conv(b.teacher);
    v.global = conv(b.student);
    v.query_global = b.student_queries;
    v.locals = crop_.n_local;
    if (crop_.n_local > 0) {
      v.local = conv(b.local);
      v.query_local = b.local_queries;
    }
    if constexpr (on_host) {
      return v;
    } else {
      return views_to<Dev>(v);  // host -> device through the pinned staging buffers
    }
  }

  /// The teacher on the host: the teacher itself on the CPU; on a device, a host model refreshed
  /// with a copy of the teacher's weights (the k-NN evaluation, the pictures and the export read
  /// host memory).
  host_net_t& host_teacher() {
    if constexpr (on_host) {
      return *teacher_;
    } else {
      if (!host_teacher_) host_teacher_ = std::make_unique<host_net_t>(c_.seed);
      auto d = nn::named_parameters(*host_teacher_);
      auto s = nn::named_parameters(*teacher_);
      for (std::size_t i = 0; i < d.size(); ++i)
        d[i].second.value().copy_from(s[i].second.value().template to<cpu>());
      return *host_teacher_;
    }
  }

  void log_step(const flsl_step_result& res, double dt, double ips) {
    double gmax = 0;
    for (double g : res.grad_norms)
      if (std::isfinite(g)) gmax = std::max(gmax, g);
    nlohmann::ordered_json j = {{"iteration", pos_.iteration},
                                {"epoch", pos_.epoch},
                                {"batch", pos_.batch_in_epoch},
                                {"loss", res.total},
                                {"loss_ms", res.ms},
                                {"loss_km", res.km},
                                {"loss_vmr", res.vmr},
                                {"teacher_entropy", res.teacher_entropy},
                                {"student_entropy", res.student_entropy}};
    const nlohmann::ordered_json sched = schedule_json(res.schedule);
    for (auto it = sched.begin(); it != sched.end(); ++it) j[it.key()] = it.value();
    j["grad_norm_max"] = gmax;
    if (learner_->loss_scaler().enabled()) {
      j["loss_scale"] = res.loss_scale;
      j["skipped"] = res.skipped;
    }
    j["step_seconds"] = dt;
    j["images_per_second"] = ips;
    log_.write("step", j);
  }

  static void add_step(epoch_totals& e, const flsl_step_result& r, index_t n, double dt) {
    e.skipped += r.skipped ? 1 : 0;
    e.loss += r.total;
    e.ms += r.ms;
    e.km += r.km;
    e.vmr += r.vmr;
    e.teacher_entropy += r.teacher_entropy;
    e.student_entropy += r.student_entropy;
    e.seconds += dt;
    e.images += n;
    ++e.steps;
  }

  void end_epoch() {
    const index_t done = pos_.epoch;  // the epoch just finished
    ++pos_.epoch;
    pos_.batch_in_epoch = 0;
    const auto path = save_checkpoint_last();
    if (c_.checkpoint_every > 0 && pos_.epoch % c_.checkpoint_every == 0)
      keep_epoch_checkpoint(path, epoch_checkpoint_path(out_, pos_.epoch));
    const epoch_totals e = pos_.epoch_so_far;
    const double n = double(std::max<index_t>(e.steps, 1));
    const auto sched = learner_->schedules().at(std::max<index_t>(pos_.iteration - 1, 0));
    nlohmann::ordered_json j = {
        {"epoch", done},
        {"iteration", pos_.iteration},
        {"steps", e.steps},
        {"loss", e.loss / n},
        {"loss_ms", e.ms / n},
        {"loss_km", e.km / n},
        {"loss_vmr", e.vmr / n},
        {"teacher_entropy", e.teacher_entropy / n},
        {"student_entropy", e.student_entropy / n},
        {"seconds", e.seconds},
        {"images_per_second", e.seconds > 0 ? double(e.images) / e.seconds : 0.0}};
    const nlohmann::ordered_json sj = schedule_json(sched);
    for (auto it = sj.begin(); it != sj.end(); ++it) j[it.key()] = it.value();
    if (learner_->loss_scaler().enabled()) {
      j["loss_scale"] = learner_->loss_scaler().scale();
      j["skipped_steps"] = e.skipped;
    }
    log_.write("epoch", j);
    if (progress_->current_mode() == progress_display::mode::bar) progress_->finish();
    char buf[320];
    std::snprintf(
        buf, sizeof buf,
        "epoch %lld/%lld: loss %.4f (ms %.4f km %.4f vmr %.4f), assignment entropy teacher %.2f "
        "student %.2f (uniform %.2f), %.1f img/s; checkpoint '%s'",
        (long long)(done + 1), (long long)c_.epochs, e.loss / n, e.ms / n, e.km / n, e.vmr / n,
        e.teacher_entropy / n, e.student_entropy / n, std::log(double(c_.out_dim)),
        e.seconds > 0 ? double(e.images) / e.seconds : 0.0, path.filename().string().c_str());
    say(buf);
    if (e.skipped > 0)
      say("epoch " + std::to_string(done + 1) + ": " + std::to_string(e.skipped) +
          " steps skipped (fp16 gradients overflowed); loss scale now " +
          detail::format_double(learner_->loss_scaler().scale()));
    if (c_.eval && c_.eval_every > 0 && pos_.epoch % c_.eval_every == 0 && pos_.epoch < c_.epochs)
      evaluate("epoch");
  }

  int interrupted() {
    if (progress_) progress_->finish();
    const auto path = save_checkpoint_last();
    log_.write(
        "interrupted",
        {{"iteration", pos_.iteration}, {"epoch", pos_.epoch}, {"batch", pos_.batch_in_epoch}});
    say("interrupted at iteration " + std::to_string(pos_.iteration) + "; checkpoint saved to '" +
        path.string() + "'; rerun the same command to continue");
    const int sig = stop_signal.load();
    return sig == SIGTERM ? 128 + SIGTERM : exit_interrupted;
  }

  int diverged(const std::string& what) {
    if (progress_) progress_->finish();
    log_.write("non_finite_loss", {{"iteration", pos_.iteration}, {"message", what}});
    const auto last = last_checkpoint_path(out_);
    std::error_code ec;
    std::string keep = std::filesystem::exists(last, ec)
                           ? "the last good checkpoint '" + last.string() + "' is kept unchanged"
                           : "no checkpoint was written yet";
    std::fprintf(stderr, "%s: training stopped: %s; %s\n", Exp::name, what.c_str(), keep.c_str());
    return exit_non_finite_loss;
  }

  /// k-NN mIoU of the teacher and the pictures; `when` is start, epoch or end.
  void evaluate(const std::string& when) {
    if (!eval_train_) {
      const int lo = int(c_.procedural_min_objects), hi = int(c_.procedural_max_objects);
      eval_train_ = evaluation::procedural_segmentation_set(
          procedural_dataset_seed, data::Split::train, c_.eval_train_images, c_.eval_size, lo, hi);
      eval_val_ = evaluation::procedural_segmentation_set(procedural_dataset_seed, data::Split::val,
                                                          c_.eval_val_images, c_.eval_size, lo, hi);
    }
    evaluation::knn_params kp;
    kp.k = c_.knn_k;
    kp.temperature = c_.knn_temperature;
    kp.center_positions = c_.knn_center_positions;
    kp.center_images = c_.knn_center_images;
    kp.soft_labels = c_.knn_labels == "soft";
    kp.linear_probe = c_.linear_probe;
    const host_net_t& teacher = host_teacher();
    const auto r =
        evaluation::knn_segmentation(teacher.backbone, *eval_train_, *eval_val_, Cfg::patch, kp);
    std::string picture;
    if (c_.pictures > 0) {
      const std::string name = when == "start" ? "maps_start.png"
                               : when == "checkpoint"
                                   ? "maps_iteration" + std::to_string(pos_.iteration) + ".png"
                                   : "maps_epoch" + three_digits(pos_.epoch) + ".png";
      evaluation::picture_options po;
      po.images = c_.pictures;
      po.clusters = c_.kmeans_clusters;
      po.seed = c_.seed;
      evaluation::write_maps_picture(teacher.backbone, Cfg::heads, Cfg::patch, *eval_val_, po,
                                     out_ / "pictures" / name);
      picture = "pictures/" + name;
    }
    if (when == "start") pos_.start_miou = r.miou;
    if (when == "end") end_miou_ = r.miou;
    nlohmann::ordered_json iou = nlohmann::ordered_json::array();
    for (double v : r.iou) iou.push_back(v);
    log_.write("eval", {{"when", when},
                        {"epoch", pos_.epoch},
                        {"iteration", pos_.iteration},
                        {"model", "teacher"},
                        {"knn_miou", r.miou},
                        {"knn_pixel_accuracy", r.pixel_accuracy},
                        {"knn_iou", iou},
                        {"knn_foreground_iou", r.foreground_iou},
                        {"same_position_cos", r.features.same_position_cos},
                        {"within_image_cos", r.features.within_image_cos},
                        {"across_image_cos", r.features.across_image_cos},
                        {"probe_miou", c_.linear_probe ? nlohmann::ordered_json(r.probe_miou)
                                                       : nlohmann::ordered_json()},
                        {"probe_foreground_iou",
                         c_.linear_probe ? nlohmann::ordered_json(r.probe_foreground_iou)
                                         : nlohmann::ordered_json()},
                        {"memory_patches", r.memory_patches},
                        {"val_images", r.val_images},
                        {"seconds", r.seconds},
                        {"picture", picture}});
    char buf[512];
    if (when == "start") {
      std::snprintf(buf, sizeof buf,
                    "k-NN segmentation at the start (random weights): mIoU %.1f%%, pixel accuracy "
                    "%.1f%% (%lld val images, %lld memory patches, %.1f s)",
                    100 * r.miou, 100 * r.pixel_accuracy, (long long)r.val_images,
                    (long long)r.memory_patches, r.seconds);
    } else if (when == "end" && pos_.start_miou) {
      std::snprintf(buf, sizeof buf,
                    "k-NN segmentation at the end (teacher): mIoU %.1f%%, pixel accuracy %.1f%%; "
                    "start %.1f%% -> end %.1f%% (%+.1f points)",
                    100 * r.miou, 100 * r.pixel_accuracy, 100 * *pos_.start_miou, 100 * r.miou,
                    100 * (r.miou - *pos_.start_miou));
    } else if (when == "checkpoint") {
      std::snprintf(buf, sizeof buf,
                    "k-NN segmentation at iteration %lld (teacher%s): mIoU %.1f%%, pixel accuracy "
                    "%.1f%%",
                    (long long)pos_.iteration, pos_.iteration == 0 ? ", random weights" : "",
                    100 * r.miou, 100 * r.pixel_accuracy);
    } else {
      std::snprintf(
          buf, sizeof buf,
          "k-NN segmentation after epoch %lld (teacher): mIoU %.1f%%, pixel accuracy %.1f%%",
          (long long)pos_.epoch, 100 * r.miou, 100 * r.pixel_accuracy);
    }
    char stats[256];
    std::snprintf(stats, sizeof stats,
                  "\n  foreground IoU %.1f%%; feature cosines: same position %.2f, within an image "
                  "%.2f, across images %.2f",
                  100 * r.foreground_iou, r.features.same_position_cos, r.features.within_image_cos,
                  r.features.across_image_cos);
    std::string probe;
    if (c_.linear_probe)
      probe = "; linear probe: mIoU " + percent(r.probe_miou) + ", foreground IoU " +
              percent(r.probe_foreground_iou);
    say(std::string(buf) + stats + probe +
        (picture.empty() ? "" : "; pictures '" + (out_ / picture).string() + "'"));
    if (!c_.davis.empty()) evaluate_davis(when);
    if (when == "start") save_checkpoint_last();  // keeps start_miou for a resumed run
  }

  /// DAVIS label propagation with the teacher's features (--davis); the masks of an evaluation at
  /// the end (or of --eval_only) go to <out>/davis/<sequence>/.
  void evaluate_davis(const std::string& when) {
    const auto seqs = evaluation::davis_sequences(c_.davis, davis_sequence_names(c_));
    evaluation::davis_params dp;
    dp.short_side = c_.davis_size;
    if (when == "end" || when == "checkpoint") dp.write_masks = out_ / "davis";
    const auto r =
        evaluation::davis_label_propagation(host_teacher().backbone, Cfg::patch, seqs, dp);
    nlohmann::ordered_json per = nlohmann::ordered_json::object();
    std::string list;
    for (const auto& q : r.sequences) {
      per[q.name] = {{"j", q.j}, {"f", q.f}, {"frames", q.frames}, {"objects", q.objects}};
      char b[128];
      std::snprintf(b, sizeof b, "%s%s %.1f/%.1f", list.empty() ? "" : ", ", q.name.c_str(),
                    100 * q.j, 100 * q.f);
      list += b;
    }
    log_.write("eval_davis", {{"when", when},
                              {"epoch", pos_.epoch},
                              {"iteration", pos_.iteration},
                              {"model", "teacher"},
                              {"davis_j", r.j},
                              {"davis_f", r.f},
                              {"davis_jf", r.jf},
                              {"sequences", per},
                              {"frames", r.frames},
                              {"size", c_.davis_size},
                              {"seconds", r.seconds}});
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "DAVIS label propagation (%s, %zu sequences, %lld frames at %lld px, %.0f s): "
                  "J&F %.1f%%, J %.1f%%, F %.1f%%",
                  pos_.iteration == 0 ? "random weights" : "teacher", r.sequences.size(),
                  (long long)r.frames, (long long)c_.davis_size, r.seconds, 100 * r.jf, 100 * r.j,
                  100 * r.f);
    say(std::string(buf) + "\n  per sequence J/F: " + list +
        (dp.write_masks.empty() ? "" : "; masks '" + dp.write_masks.string() + "'"));
  }

  static std::string percent(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f%%", 100 * v);
    return b;
  }

  static std::string three_digits(index_t v) {
    char b[32];
    std::snprintf(b, sizeof b, "%03lld", (long long)v);
    return b;
  }

  void export_teacher() {
    io::metadata_map meta;
    meta["flsl.experiment"] = Exp::name;
    meta["flsl.iteration"] = std::to_string(pos_.iteration);
    export_backbone_timm(c_.export_path, host_teacher().backbone, arch_, Cfg::base_image, meta);
    say("exported the teacher backbone to '" + c_.export_path +
        "' (timm names; see docs/training.md)");
  }

  resolved_run run_;
  run_config c_;
  architecture_info arch_;
  run_hooks<T, Dev> hooks_;
  std::filesystem::path out_;
  std::unique_ptr<dataset_ref> dataset_;
  data::MultiCropParams crop_;
  std::unique_ptr<data::Loader<dataset_ref>> loader_;
  index_t iters_per_epoch_ = 0;
  std::unique_ptr<net_t> student_, teacher_;
  std::unique_ptr<host_net_t> host_teacher_;  // on a device: the host copy of host_teacher()
  std::unique_ptr<learner_t> learner_;
  run_position pos_;
  matmul_precision precision_ = matmul_precision::exact;  // of the training steps' products
  run_log log_;
  std::unique_ptr<progress_display> progress_;
  std::optional<evaluation::segmentation_set> eval_train_, eval_val_;
  std::optional<double> end_miou_;
};

// ---- the entry point of a trainer binary -------------------------------------------------------

namespace detail {
template <experiment Exp, class T, class D, class A, class... Rest>
int dispatch_arch(const resolved_run& run, const run_hooks<T, D>& hooks, arch_list<A, Rest...>) {
  if (A::name == run.config.arch && A::config::patch == run.config.patch) {
    trainer<Exp, typename A::config> t(run, std::string(A::name), hooks);
    return t.run();
  }
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_arch<Exp>(run, hooks, arch_list<Rest...>{});
  } else {
    fail("no architecture ", run.config.arch, "/", run.config.patch, " in this experiment");
  }
}
}  // namespace detail

/// The `--device cuda` half of a trainer binary, compiled by nvcc in its own translation unit
/// (train/trainer_cuda.cuh: run_on_cuda<Exp>); null when the binary has no CUDA backend.
using device_runner = int (*)(const resolved_run&);

/// Parses the options (refusing bad ones before any work), resolves a resume, and trains on the
/// CPU, or with `--device cuda` through `cuda` (refused when it is null). Returns the exit status;
/// messages go to stdout, errors to stderr prefixed with the experiment's name.
template <experiment Exp>
int run_experiment(const std::vector<std::string>& args,
                   const run_hooks<typename Exp::value_type>& hooks = {},
                   device_runner cuda = nullptr) {
  static_assert(std::is_same_v<typename Exp::device, cpu>,
                "run_experiment takes the CPU experiment; --device cuda goes through `cuda`");
  experiment_info info = make_experiment_info<Exp>();
  info.cuda = cuda != nullptr;
  std::vector<const char*> argv{Exp::name};
  for (const auto& a : args) argv.push_back(a.c_str());
  resolved_run run;
  try {
    const parsed_options p = parse_command_line(int(argv.size()), argv.data(), info);
    if (p.help) {
      std::fputs(help_text(info).c_str(), stdout);
      return exit_ok;
    }
    run = resolve_run(p, info);
  } catch (const flsl::error& e) {
    std::fprintf(stderr, "%s: %s\n", Exp::name, e.what());
    return exit_invalid_options;
  }
  try {
    if (run.config.device == "cuda") return cuda(run);
    return detail::dispatch_arch<Exp>(run, hooks, typename Exp::archs{});
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "\n%s: error: %s\n", Exp::name, e.what());
    return exit_error;
  }
}

template <experiment Exp>
int run_experiment(int argc, char** argv, device_runner cuda = nullptr) {
  return run_experiment<Exp>(std::vector<std::string>(argv + 1, argv + argc), {}, cuda);
}

}  // namespace flsl::train
