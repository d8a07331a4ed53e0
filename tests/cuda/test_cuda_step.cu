// The FLSL training step (train/flsl_step.hpp: flsl_loss, backward, per-tensor clipping, last-layer
// freeze, AdamW, teacher EMA) on cuda against the CPU: a tiny ViT (dim 32, depth 2, 2 heads,
// patch 8) and head, the same initial weights on both devices (the CPU's, copied), the same
// batches from the CPU data loader (procedural images, 2 local views, query windows), copied to the
// device with views_to<cuda> (pinned staging), three steps across the end of the last-layer freeze.
// Without a device each test case prints "skipped: no CUDA device" and passes;
// test_cuda_main.cpp then exits 77 (CTest: Skipped). None of these comparisons has run on a GPU
// yet: the tolerances below are reasoned, not measured.
//
// Tolerances (f32 on both devices):
// - losses (total and the three terms) of every step: 1e-4 relative. Step 1 sees identical
//   weights and inputs, and test_cuda_flsl bounds the objective's values at 1e-4 of themselves;
//   steps 2 and 3 start from weights that differ by the update errors below (~1e-6 relative), which
//   move the loss by far less. Plus 1e-6 absolute: L_vmr (a KL near uniform) can be small, and
//   1e-6 is ~1e-7 of the O(1-10) total, what f32 sums of it resolve.
// - gradient norms before clipping: 1e-3 relative (the objective's gradients agree to 2e-4 of each
//   tensor's largest element, test_cuda_flsl; a norm sums many such elements).
// - student and teacher weights after the steps: |cuda - cpu| <= 1e-3 * max |cpu| of the tensor
//   (+ 1e-7 absolute for tensors that start at zero) for all but a few elements. AdamW divides by
//   sqrt(v): an element whose gradient is within rounding of zero (|g| below the ~1e-6 relative
//   gradient error) can step either way by up to about 2 lr, whatever the tolerance. So at most
//   max(1, 0.1%) of a tensor's elements may exceed the bulk tolerance, and those by no more than
//   that worst case, 4 lr per step (the peak lr here is 1e-3). A wrong update (lr, weight decay,
//   freeze, clipping, EMA or a stale gradient) moves most elements by ~lr and fails the bulk check.
//   The teacher moves by (1 - momentum) of the student and is compared the same way.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <flsl/backend/cuda.cuh>
#include <flsl/data/data.hpp>
#include <flsl/nn/vit.hpp>
#include <flsl/train/flsl_step.hpp>
#include <memory>
#include <string>
#include <vector>

#include "cuda_test_support.cuh"

using namespace flsl;

namespace {

using cfg = nn::vit_config<32, 2, 2, 8, 4, 32>;  // dim 32, depth 2, 2 heads, patch 8
using spec =
    nn::backbone_with_head<nn::vision_transformer<cfg>, nn::projection_head<32, 64, 64, 32>>;
template <class D>
using net_t = nn::model<spec, float, D>;

constexpr index_t batch = 4, steps = 3;
constexpr double peak_lr = 1e-3;

/// Epoch 0 freezes the last layer; two iterations per epoch, so step 3 is the first to update it.
optim::recipe test_recipe() {
  optim::recipe r;
  r.epochs = 2;
  r.iters_per_epoch = 2;
  r.total_batch = batch;
  r.lr = peak_lr * 256.0 / double(batch);  // peak lr = lr * batch / 256
  r.warmup_epochs = 0;
  r.momentum_teacher = 0.9;  // the teacher moves visibly in three steps
  r.warmup_teacher_temp_epochs = 1;
  r.freeze_last_layer = 1;
  return r;
}

/// `steps` batches of the CPU data loader (procedural images, 2 local views of 16 px, 32 px
/// global views: 4 x 4 tokens, query windows 2 and 1), as host views.
std::vector<flsl_views<float, cpu>> loader_batches() {
  data::ProceduralParams pp;
  pp.seed = 0;
  pp.size = std::size_t(batch * steps);
  pp.width = pp.height = 48;
  const data::ProceduralDataset ds(pp);
  data::MultiCropParams mc;
  mc.teacher.size = mc.student.size = 32;
  mc.local.size = 16;
  mc.n_local = 2;
  mc.patch = 8;
  mc.global_window = 2;
  mc.local_window = 1;
  data::LoaderParams lp;
  lp.batch_size = batch;
  lp.seed = 5;
  lp.threads = 2;
  data::Loader<data::ProceduralDataset> loader(ds, mc, lp);
  std::vector<flsl_views<float, cpu>> out;
  for (index_t i = 0; i < steps; ++i) {
    data::Batch b;
    loader.make_batch(0, i, b);
    flsl_views<float, cpu> v;
    v.teacher = b.teacher.clone();
    v.global = b.student.clone();
    v.local = b.local.clone();
    v.locals = mc.n_local;
    v.query_global = b.student_queries.clone();
    v.query_local = b.local_queries.clone();
    out.push_back(std::move(v));
  }
  return out;
}

/// The CPU parameter values copied into the cuda module (same names and shapes).
void copy_to_device(net_t<cpu>& c, net_t<cuda>& g) {
  auto pc = nn::named_parameters(c);
  auto pg = nn::named_parameters(g);
  REQUIRE(pc.size() == pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    REQUIRE(pc[i].first == pg[i].first);
    pg[i].second.value().copy_from(pc[i].second.value().to<cuda>());
  }
}

/// The weight criterion of the top comment, for one tensor.
void check_weights(const Tensor<float, cuda>& gpu, const Tensor<float>& ref,
                   const std::string& what) {
  INFO(what);
  REQUIRE(gpu.shape() == ref.shape());
  const auto g = gpu.to<cpu>().to_vector();
  const auto r = ref.contiguous().to_vector();
  double max_ref = 0;
  for (float v : r) max_ref = std::max(max_ref, std::abs(double(v)));
  const double tol = 1e-3 * max_ref + 1e-7, flip = 4 * peak_lr * double(steps) + tol;
  std::size_t outliers = 0, nan = 0;
  double worst = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    nan += std::isnan(g[i]) != std::isnan(r[i]);
    const double d = std::abs(double(g[i]) - double(r[i]));
    worst = std::max(worst, d);
    outliers += d > tol;
  }
  const std::size_t allowed = std::max<std::size_t>(1, g.size() / 1000);
  INFO("worst |difference| ", worst, ", max |cpu| ", max_ref, ", ", outliers, " of ", g.size(),
       " elements beyond ", tol);
  CHECK(nan == 0);
  CHECK(outliers <= allowed);
  CHECK(worst <= flip);
}

void check_rel(double gpu, double cpu_value, double rel, const std::string& what,
               double abs_floor = 1e-12) {
  INFO(what, ": cuda ", gpu, ", cpu ", cpu_value);
  if (std::isnan(cpu_value)) {  // a norm of a parameter without a gradient
    CHECK(std::isnan(gpu));
    return;
  }
  CHECK(std::isfinite(gpu));
  CHECK(std::abs(gpu - cpu_value) <= rel * std::abs(cpu_value) + abs_floor);
}

struct runs {
  net_t<cpu> sc{1}, tc{1};
  net_t<cuda> sg{1}, tg{1};
  std::unique_ptr<flsl_learner<net_t<cpu>, float, cpu>> lc;
  std::unique_ptr<flsl_learner<net_t<cuda>, float, cuda>> lg;
  runs() {
    copy_to_device(sc, sg);
    lc = std::make_unique<flsl_learner<net_t<cpu>, float, cpu>>(
        sc, tc, test_recipe(), flsl_loss_params{}, flsl_step_options{}, train_state{0, 42});
    lg = std::make_unique<flsl_learner<net_t<cuda>, float, cuda>>(
        sg, tg, test_recipe(), flsl_loss_params{}, flsl_step_options{}, train_state{0, 42});
    lc->sync_teacher();
    lg->sync_teacher();
  }
};

}  // namespace

TEST_CASE("flsl step: three steps on cuda match the CPU (losses, norms, student and teacher)") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto batches = loader_batches();
  runs r;
  for (index_t i = 0; i < steps; ++i) {
    CAPTURE(i);
    const auto& vc = batches[std::size_t(i)];
    const flsl_views<float, cuda> vg = views_to<cuda>(vc);
    CHECK(vg.query_global.shape() == vc.query_global.shape());
    const auto rc = r.lc->step(vc);
    const auto rg = r.lg->step(vg);
    check_rel(rg.total, rc.total, 1e-4, "total loss", 1e-6);
    check_rel(rg.ms, rc.ms, 1e-4, "L_ms", 1e-6);
    check_rel(rg.km, rc.km, 1e-4, "L_km", 1e-6);
    check_rel(rg.vmr, rc.vmr, 1e-4, "L_vmr", 1e-6);
    CHECK(rg.schedule.lr == rc.schedule.lr);
    CHECK(rg.schedule.last_layer_frozen == rc.schedule.last_layer_frozen);
    REQUIRE(rg.grad_norms.size() == rc.grad_norms.size());
    for (std::size_t k = 0; k < rc.grad_norms.size(); ++k)
      check_rel(rg.grad_norms[k], rc.grad_norms[k], 1e-3,
                "gradient norm of " + r.lc->student_parameters()[k].first);
  }
  CHECK(r.lg->state().iteration == steps);
  const auto& sc = r.lc->student_parameters();
  const auto& sg = r.lg->student_parameters();
  const auto& tc = r.lc->teacher_parameters();
  const auto& tg = r.lg->teacher_parameters();
  REQUIRE(sc.size() == sg.size());
  for (std::size_t k = 0; k < sc.size(); ++k) {
    check_weights(sg[k].second.value(), sc[k].second.value(), "student " + sc[k].first);
    check_weights(tg[k].second.value(), tc[k].second.value(), "teacher " + tc[k].first);
    CHECK_FALSE(tg[k].second.grad().defined());
  }
}

TEST_CASE("flsl step: the cuda step repeats bit-exactly from the same weights and batches") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto batches = loader_batches();
  runs a, b;
  for (index_t i = 0; i < steps; ++i) {
    const auto v = views_to<cuda>(batches[std::size_t(i)]);
    const auto ra = a.lg->step(v), rb = b.lg->step(v);
    CHECK(ra.total == rb.total);
  }
  const auto& pa = a.lg->student_parameters();
  const auto& pb = b.lg->student_parameters();
  for (std::size_t k = 0; k < pa.size(); ++k) {
    INFO(pa[k].first);
    CHECK(pa[k].second.value().to<cpu>().to_vector() == pb[k].second.value().to<cpu>().to_vector());
  }
}

TEST_CASE("flsl step: views_to copies every tensor of a batch to the device and back unchanged") {
  SKIP_WITHOUT_CUDA_DEVICE();
  const auto vc = loader_batches().front();
  const auto vg = views_to<cuda>(vc);
  CHECK(vg.locals == vc.locals);
  CHECK(vg.teacher.to<cpu>().to_vector() == vc.teacher.to_vector());
  CHECK(vg.global.to<cpu>().to_vector() == vc.global.to_vector());
  CHECK(vg.local.to<cpu>().to_vector() == vc.local.to_vector());
  CHECK(vg.query_global.to<cpu>().to_vector() == vc.query_global.to_vector());
  CHECK(vg.query_local.to<cpu>().to_vector() == vc.query_local.to_vector());
  flsl_views<float, cpu> no_locals = vc;
  no_locals.local = {};
  no_locals.query_local = {};
  no_locals.locals = 0;
  const auto vn = views_to<cuda>(no_locals);
  CHECK_FALSE(vn.local.defined());
  CHECK_FALSE(vn.query_local.defined());
}
