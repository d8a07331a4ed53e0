// The FLSL objective of FLSL_SPEC.md §3: mean-shift self- and cross-attention on the sampled query
// tokens, and the intra-view (L_ms), inter-view (L_km) and volume-maximisation (L_vmr) terms.
#pragma once

#include <cmath>
#include <functional>
#include <vector>

#include "../autograd/ops.hpp"
#include "../nn/vit.hpp"

namespace flsl {

/// The objective's constants (spec §3 defaults). b_sa and b_ca multiply the logits.
struct flsl_loss_params {
  double b_sa = 0.1 / std::sqrt(384.0);
  double b_ca = 0.2 / std::sqrt(384.0);
  double student_temp = 0.1;
  double coef_ms = 0.03;  // u (intra-view)
  double coef_km = 1.0;   // e (inter-view)
  double coef_vmr = 5.0;  // c (volume maximisation)
  /// Teacher centering (DINO's running-mean subtraction; spec §3: an alternative to VMR, off by
  /// default): the teacher's logits minus `center` before its softmax, the center an EMA of the
  /// batch-mean teacher logits with this momentum (flsl_learner keeps it).
  bool center_teacher = false;
  double center_momentum = 0.9;
  /// The backbones' activations (teacher and student): f32, or bf16 branches (nn/autocast.hpp,
  /// torch.autocast's placement). The head and every term of the objective stay f32.
  nn::autocast autocast = nn::autocast::off;
};

/// One batch of views: the teacher view and the student global view of B images, L local views
/// per image (image-major: local row r belongs to image r / L), and the sampled query tokens of
/// every student view.
template <class T, class D = cpu>
struct flsl_views {
  Tensor<T, D> teacher;                  // [B, 3, H, W]
  Tensor<T, D> global;                   // [B, 3, H, W]
  Tensor<T, D> local;                    // [B*L, 3, h, w] (may be undefined when L = 0)
  Tensor<std::int64_t, D> query_global;  // [B, Qg] token indices into the global view
  Tensor<std::int64_t, D> query_local;   // [B*L, Ql]
  index_t locals = 0;                    // L
};

/// Stochastic-depth masks for the student's two forwards (empty: none).
template <class T, class D = cpu>
struct flsl_drop_paths {
  std::vector<nn::block_drop<T, D>> global, local;
};

/// The loss, its three parts, and the intermediates the tests and the maps look at.
template <class T, class D = cpu>
struct flsl_loss_result {
  Var<T, D> total, ms, km, vmr;
  Tensor<T, D> teacher_tokens;              // [B, M, D]
  Var<T, D> student_global, student_local;  // [B, N, D], [B*L, n, D]
  Var<T, D> zhat;                           // [R, D] all queries: global rows, then local rows
  Tensor<T, D> zplus;                       // [R, D]
  Var<T, D> student_logits;                 // [R, K]
  Tensor<T, D> teacher_logits;              // [R, K]
  // diagnostics (no gradient): the mean entropy over the queries of the teacher's assignments q
  // and of the student's p, in nats (log K: uniform, 0: one-hot); the batch mean's is log K - L_vmr
  Tensor<T, D> teacher_entropy, student_entropy;  // [] each
};

/// Averages the batch-mean probability over processes (a no-op on one process).
template <class T, class D>
using mean_allreduce = std::function<void(const Tensor<T, D>&)>;

namespace detail {
/// Queries of one student view set: zq [rows, Q, D] gathered from z, zhat (self mean shift over
/// all tokens of the same view), zplus (cross mean shift over the paired teacher tokens, no grad).
template <class T, class D>
void flsl_view_terms(const Var<T, D>& z, const Tensor<std::int64_t, D>& query,
                     const Tensor<T, D>& teacher_rows, const flsl_loss_params& p,
                     std::vector<Var<T, D>>& zq, std::vector<Var<T, D>>& zhat,
                     std::vector<Tensor<T, D>>& zplus) {
  const index_t dim = z.size(-1);
  Var<T, D> q = gather_tokens(z, query);            // [rows, Q, D]
  Var<T, D> h = meanshift_attention(q, z, p.b_sa);  // [rows, Q, D]
  Tensor<T, D> plus;
  {
    no_grad ng;
    plus = meanshift_attention(q.detach(), Var<T, D>(teacher_rows), p.b_ca).value();
  }
  zq.push_back(reshape(q, {-1, dim}));
  zhat.push_back(reshape(h, {-1, dim}));
  zplus.push_back(plus.reshape_or_copy({-1, dim}));
}
}  // namespace detail

/// Computes the FLSL loss for one batch. `student` and `teacher` are backbone_with_head modules;
/// the teacher runs without gradients. `teacher_temp` is tau_t of the current epoch. Queries are
/// concatenated in the order: global views (image-major), then local views (row order).
/// `center` [K], when defined, is subtracted from the teacher's logits before its softmax
/// (teacher centering; the caller updates it, see flsl_learner).
template <class Net, class T, class D>
flsl_loss_result<T, D> flsl_loss(const Net& student, const Net& teacher, const flsl_views<T, D>& v,
                                 double teacher_temp, const flsl_loss_params& p,
                                 const flsl_drop_paths<T, D>& drop = {},
                                 const mean_allreduce<T, D>& allreduce = {},
                                 const Tensor<T, D>& center = {}) {
  const index_t B = v.global.size(0);
  FLSL_CHECK(v.teacher.size(0) == B, "flsl_loss: ", v.teacher.size(0), " teacher views for ", B,
             " global views");
  FLSL_CHECK(v.query_global.rank() == 2 && v.query_global.size(0) == B,
             "flsl_loss: global queries of shape ", v.query_global.shape(), " for ", B, " views");
  flsl_loss_result<T, D> r;
  {
    no_grad ng;
    r.teacher_tokens = teacher.backbone(v.teacher, {}, p.autocast).value();  // [B, M, D]
  }
  std::vector<Var<T, D>> zq, zhat;
  std::vector<Tensor<T, D>> zplus;
  r.student_global = student.backbone(v.global, drop.global, p.autocast);
  detail::flsl_view_terms(r.student_global, v.query_global, r.teacher_tokens, p, zq, zhat, zplus);
  if (v.locals > 0) {
    FLSL_CHECK(v.local.defined() && v.local.size(0) == B * v.locals, "flsl_loss: local views of ",
               "shape ", v.local.defined() ? v.local.shape() : Shape{}, " for ", B, " images x ",
               v.locals, " locals");
    r.student_local = student.backbone(v.local, drop.local, p.autocast);
    // local row r pairs with teacher row r / L
    auto rows = Tensor<std::int64_t, cpu>::empty(Shape{B * v.locals});  // built on the host
    for (index_t i = 0; i < B * v.locals; ++i) rows.data()[i] = i / v.locals;
    Tensor<T, D> paired =
        index_select(Var<T, D>(r.teacher_tokens), 0, rows.template to<D>()).value();
    detail::flsl_view_terms(r.student_local, v.query_local, paired, p, zq, zhat, zplus);
  }
  Var<T, D> q_all = concat(zq, 0);  // [R, D]
  r.zhat = concat(zhat, 0);         // [R, D]
  r.zplus = zplus.size() == 1
                ? zplus[0]
                : concat(std::vector<Var<T, D>>(zplus.begin(), zplus.end()), 0).value();

  // intra-view: 2 - 2 mean cos(z_i, zhat_i), cosine of L2-normalised vectors
  Var<T, D> cos_rows = sum(Var<T, D>(l2_normalize(q_all, -1) * l2_normalize(r.zhat, -1)), {-1});
  r.ms = Var<T, D>(2.0 - 2.0 * mean(cos_rows));

  // inter-view: cross-entropy between the teacher's assignment of zplus and the student's of zhat
  r.student_logits = student.head(r.zhat);  // [R, K]
  Tensor<T, D> q;
  {
    no_grad ng;
    r.teacher_logits = teacher.head(Var<T, D>(r.zplus)).value();
    Var<T, D> logits(r.teacher_logits);
    if (center.defined()) {
      FLSL_CHECK(center.rank() == 1 && center.size(0) == r.teacher_logits.size(-1),
                 "flsl_loss: a teacher center of shape ", center.shape(), " for ",
                 r.teacher_logits.size(-1), " prototypes");
      logits = Var<T, D>(logits - Var<T, D>(center));
    }
    q = softmax(Var<T, D>(logits / teacher_temp), -1).value();
    r.teacher_entropy = soft_cross_entropy(logits, q, teacher_temp).value();  // H(q)
  }
  r.km = soft_cross_entropy(r.student_logits, q, p.student_temp);

  // volume maximisation: KL(mean_i p_i || uniform), the mean over every query of every process
  Var<T, D> probs = softmax(Var<T, D>(r.student_logits / p.student_temp), -1);
  {
    no_grad ng;
    r.student_entropy =
        soft_cross_entropy(r.student_logits.detach(), probs.value(), p.student_temp).value();
  }
  Var<T, D> pbar = mean(probs, {0});
  if (allreduce) allreduce(pbar.value());
  r.vmr = kl_to_uniform(pbar);

  r.total = Var<T, D>(p.coef_ms * r.ms + p.coef_km * r.km + p.coef_vmr * r.vmr);
  return r;
}

}  // namespace flsl
