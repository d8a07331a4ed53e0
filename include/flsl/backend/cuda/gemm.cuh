// Matrix products on the GPU through cuBLASLt: f32 (exact fp32, or TF32 / bf16 / fp16 tensor-core
// inputs with fp32 accumulation as the matmul precision says), bf16 inputs with fp32 accumulation,
// f64; 2-D, batched and broadcast batches, transposed operands read
// in place as views, alpha/beta. Compiled only by nvcc.
#pragma once

#include <cublasLt.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "../../expr/assign.hpp"
#include "../matmul_precision.hpp"
#include "../matmul_shapes.hpp"
#include "allocator.cuh"

namespace flsl {

/// Options of a CUDA matrix product.
struct gemm_options {
  /// How f32 products treat their inputs (backend/matmul_precision.hpp); by default the
  /// library-wide setting at the time the options are made. tf32, bf16 and fp16 run on the tensor
  /// cores with fp32 accumulation (relative errors near 1e-3, 1e-2 and 1e-3; fp16 overflows past
  /// 65504, see optim/grad_scaler.hpp). f64 and bf16 tensors ignore it.
  matmul_precision precision = get_matmul_precision();
};

namespace cuda_detail {
/// cuBLASLt's compute type for a product of T under precision p.
template <class T>
cublasComputeType_t compute_type(matmul_precision p) {
  if constexpr (std::is_same_v<T, double>) return CUBLAS_COMPUTE_64F;
  if constexpr (std::is_same_v<T, float>) {
    switch (p) {
      case matmul_precision::tf32:
        return CUBLAS_COMPUTE_32F_FAST_TF32;
      case matmul_precision::bf16:
        return CUBLAS_COMPUTE_32F_FAST_16BF;
      case matmul_precision::fp16:
        return CUBLAS_COMPUTE_32F_FAST_16F;
      case matmul_precision::exact:
        break;
    }
  }
  return CUBLAS_COMPUTE_32F;
}
}  // namespace cuda_detail

namespace cuda_detail {

inline void check_cublas(cublasStatus_t s, const char* call) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail("cuBLASLt error ", cublasLtGetStatusName(s), " (", cublasLtGetStatusString(s), ") in ",
         call);
}
#define FLSL_CUBLAS_CHECK(...) ::flsl::cuda_detail::check_cublas((__VA_ARGS__), #__VA_ARGS__)

/// The cuBLASLt handle and workspace of a device, created on first use and kept.
struct cublaslt_context {
  static constexpr std::size_t workspace_bytes = std::size_t(32) << 20;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;

  static cublaslt_context& for_current_device() {
    static std::mutex mu;
    static cublaslt_context contexts[64];
    int dev = 0;
    FLSL_CUDA_CHECK(cudaGetDevice(&dev));
    FLSL_CHECK(dev >= 0 && dev < 64, "matmul: device ordinal ", dev, " out of range");
    std::lock_guard<std::mutex> lock(mu);
    cublaslt_context& c = contexts[dev];
    if (!c.handle) {
      FLSL_CUBLAS_CHECK(cublasLtCreate(&c.handle));
      c.workspace = cuda_caching_allocator::instance().allocate(workspace_bytes);
    }
    return c;
  }
};

template <class T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  if constexpr (std::is_same_v<T, bf16>) return CUDA_R_16BF;
}

/// Largest power of two (<= 256) dividing the address: cuBLASLt must not assume more alignment
/// than a view's pointer has.
inline std::uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  return std::uint32_t(std::min<std::uintptr_t>(a & (~a + 1), 256));
}

/// An operand in cuBLAS's column-major terms. A row-major view [R, C] (ld) is, column-major, its
/// transpose [C, R]; a column-major view is itself and gets op = T. See gemm() for the roles.
struct lt_operand {
  std::int64_t op, rows, cols, ld, batch, batch_stride;
  lt_operand(index_t r, index_t c, const detail::matrix_layout& lay, index_t count, index_t stride)
      : op(lay.row_major ? CUBLAS_OP_N : CUBLAS_OP_T),
        rows(lay.row_major ? c : r),
        cols(lay.row_major ? r : c),
        ld(std::max<index_t>(lay.ld, std::max<index_t>(lay.row_major ? c : r, 1))),
        batch(count),
        batch_stride(stride) {}
};

/// The cuBLASLt objects of one product shape: the descriptor, the three layouts and the algorithm
/// the heuristic chose. Made once per shape (gemm_plans) and kept: creating them and querying the
/// heuristic costs tens of microseconds of host time per call, more than many of the products.
struct gemm_plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  gemm_plan() = default;
  gemm_plan(const gemm_plan&) = delete;
  gemm_plan& operator=(const gemm_plan&) = delete;
  ~gemm_plan() {  // errors ignored: at exit the CUDA context may be gone already
    if (desc) (void)cublasLtMatmulDescDestroy(desc);
    for (cublasLtMatrixLayout_t l : {la, lb, lc})
      if (l) (void)cublasLtMatrixLayoutDestroy(l);
  }
};

inline cublasLtMatrixLayout_t make_layout(cudaDataType_t type, const lt_operand& m) {
  cublasLtMatrixLayout_t layout = nullptr;
  FLSL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, std::uint64_t(m.rows),
                                               std::uint64_t(m.cols), m.ld));
  const auto count = std::int32_t(m.batch);
  const std::int64_t stride = m.batch_stride;
  FLSL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                     &count, sizeof(count)));
  FLSL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
      layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  return layout;
}

/// What decides a plan: device, types, the three operands' layouts, the pointers' alignments and
/// whether the bias epilogue is on.
using gemm_key = std::array<std::int64_t, 25>;

/// The plans made so far, per key (all devices in one map; the device is part of the key). At most
/// max_plans are kept: past that the map is cleared and refilled (shapes that change every call,
/// e.g. evaluation at many image sizes, must not grow it without bound). Like the rest of the
/// backend, products are enqueued from one host thread at a time.
class gemm_plans {
 public:
  static constexpr std::size_t max_plans = 4096;
  static gemm_plans& instance() {
    static gemm_plans p;
    return p;
  }
  /// The plan of `key`, made by `make` on the first call.
  template <class Make>
  const gemm_plan& get(const gemm_key& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return *it->second;
    if (plans_.size() >= max_plans) plans_.clear();
    auto plan = std::make_unique<gemm_plan>();
    make(*plan);
    return *plans_.emplace(key, std::move(plan)).first->second;
  }
  std::size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return plans_.size();
  }

 private:
  std::mutex mu_;
  std::map<gemm_key, std::unique_ptr<gemm_plan>> plans_;
};

/// The product's name on a cuda_timeline.
template <class T>
const char* gemm_label(matmul_precision p) {
  if constexpr (std::is_same_v<T, float>) {
    switch (p) {
      case matmul_precision::tf32:
        return "cublasLt f32 (tf32 inputs)";
      case matmul_precision::bf16:
        return "cublasLt f32 (bf16 inputs)";
      case matmul_precision::fp16:
        return "cublasLt f32 (fp16 inputs)";
      case matmul_precision::exact:
        break;
    }
    return "cublasLt f32";
  } else if constexpr (std::is_same_v<T, bf16>) {
    return "cublasLt bf16";
  } else {
    return "cublasLt f64";
  }
}

/// c = alpha a b + beta c with c row-major and a, b mappable (checked by the caller). Row-major
/// C = A B is, column-major, C^T = B^T A^T: cuBLAS's first operand is our b, its second our a.
/// With `bias` (a [N] vector for c [M, N]), cuBLASLt's bias epilogue adds it to every row before
/// the output is rounded.
template <class T>
void gemm(const Tensor<T, cuda>& c, const Tensor<T, cuda>& a, const Tensor<T, cuda>& b,
          double alpha, double beta, const gemm_options& opt, const T* bias = nullptr) {
  using scale_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const cublasComputeType_t compute = compute_type<T>(opt.precision);
  const cudaDataType_t type = cuda_type<T>();
  const bool batched = c.rank() == 3;
  const index_t batch = batched ? c.size(0) : 1;
  auto batch_stride = [&](const Tensor<T, cuda>& x) {
    return x.rank() == 3 && x.size(0) > 1 ? x.stride(0) : index_t(0);  // 0: broadcast
  };
  auto lay = [](const Tensor<T, cuda>& x) {
    return detail::layout_of(x.size(-2), x.size(-1), x.stride(-2), x.stride(-1));
  };
  const lt_operand ob(b.size(-2), b.size(-1), lay(b), batch, batch_stride(b));
  const lt_operand oa(a.size(-2), a.size(-1), lay(a), batch, batch_stride(a));
  const lt_operand oc(c.size(-2), c.size(-1), lay(c), batch, batched ? c.stride(0) : 0);
  const std::uint32_t align_a = alignment_of(b.data()), align_b = alignment_of(a.data()),
                      align_c = alignment_of(c.data());
  int dev = 0;
  FLSL_CUDA_CHECK(cudaGetDevice(&dev));
  gemm_key key{dev, std::int64_t(type), std::int64_t(compute), align_a, align_b, align_c};
  std::size_t k = 6;
  for (const lt_operand* m : {&ob, &oa, &oc})
    for (std::int64_t v : {m->op, m->rows, m->cols, m->ld, m->batch, m->batch_stride}) key[k++] = v;
  key[k] = bias != nullptr;

  cublaslt_context& ctx = cublaslt_context::for_current_device();
  const std::uint64_t ws = cublaslt_context::workspace_bytes;
  const gemm_plan& plan = gemm_plans::instance().get(key, [&](gemm_plan& p) {
    p.lb = make_layout(type, ob);
    p.la = make_layout(type, oa);
    p.lc = make_layout(type, oc);
    FLSL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, cuda_type<scale_t>()));
    const auto op_b = cublasOperation_t(ob.op), op_a = cublasOperation_t(oa.op);
    FLSL_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)));
    FLSL_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)));
    if (bias) {  // D (column-major [N, M]) += bias along its rows: our c's rows each get bias
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      FLSL_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      FLSL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof(bias)));
    }
    cublasLtMatmulPreference_t pref = nullptr;
    FLSL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    struct pref_guard {
      cublasLtMatmulPreference_t p;
      ~pref_guard() { cublasLtMatmulPreferenceDestroy(p); }
    } pguard{pref};
    FLSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    FLSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    FLSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    FLSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
    FLSL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));
    cublasLtMatmulHeuristicResult_t heuristic{};
    int found = 0;
    FLSL_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.handle, p.desc, p.lb, p.la, p.lc, p.lc,
                                                     pref, 1, &heuristic, &found));
    FLSL_CHECK(found > 0, "matmul: cuBLASLt has no algorithm for ", a.shape(), " @ ", b.shape(),
               " with strides ", a.strides(), " and ", b.strides());
    p.algo = heuristic.algo;
  });
  if (bias)  // the pointer is the call's, the descriptor the shape's
    FLSL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                     &bias, sizeof(bias)));
  const scale_t al = scale_t(alpha), be = scale_t(beta);
  FLSL_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, plan.desc, &al, b.data(), plan.lb, a.data(), plan.la,
                                   &be, c.data(), plan.lc, c.data(), plan.lc, &plan.algo,
                                   ctx.workspace, ws, current_stream()));
  cuda_work().gemm_flops +=
      2.0 * double(batch) * double(c.size(-2)) * double(c.size(-1)) * double(a.size(-1));
  timeline_mark(gemm_label<T>(opt.precision), current_stream());
}

}  // namespace cuda_detail

/// c = alpha * a @ b + beta * c on the GPU, with the shapes of the CPU matmul_into ([M,K] @ [K,N],
/// batches [B,M,K] @ [B,K,N] where a batch of 1 or a 2-D operand broadcasts). Transposed operands
/// are views, read in place; views cuBLASLt cannot address are copied to contiguous memory. f32,
/// f64, and bf16 (fp32 accumulation, rounded once to bf16 on store).
template <class T>
void matmul_into(const Tensor<T, cuda>& c, const Tensor<T, cuda>& a, const Tensor<T, cuda>& b,
                 double alpha = 1.0, double beta = 0.0, const gemm_options& opt = {}) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>,
                "flsl::matmul on cuda supports f32, f64 and bf16");
  detail::check_matmul_shapes<T>("matmul", c.shape(), a.shape(), b.shape());
  if (c.numel() == 0) return;
  if (a.size(-1) == 0) {  // empty sum
    if (beta == 0.0)
      c.fill(convert<T>(0));
    else
      c.assign(c * compute_t<T>(beta));
    return;
  }
  auto fix = [](const Tensor<T, cuda>& m) {
    return detail::layout_of(m.size(-2), m.size(-1), m.stride(-2), m.stride(-1)).mappable
               ? m
               : m.clone();
  };
  const Tensor<T, cuda> A = fix(a), B = fix(b);
  // The output must be row-major: a column-major one is c^T = b^T a^T, others go through a copy.
  const auto cl = detail::layout_of(c.size(-2), c.size(-1), c.stride(-2), c.stride(-1));
  if (!cl.mappable || !cl.row_major) {
    if (cl.mappable) {
      matmul_into(c.t(), B.t(), A.t(), alpha, beta, opt);
    } else {
      auto tmp = beta == 0.0 ? Tensor<T, cuda>::empty(c.shape()) : c.clone();
      matmul_into(tmp, A, B, alpha, beta, opt);
      c.copy_from(tmp);
    }
    return;
  }
  cuda_detail::gemm(c, A, B, alpha, beta, opt);
}

/// c = a @ b + bias for c [M, N], a [M, K], b [K, N], bias [N] added to every row of c: with a
/// contiguous c, mappable operands and a contiguous, 16-byte aligned bias (f32 or bf16) in one
/// cuBLASLt call
/// (the bias epilogue: added in fp32 before the output's single rounding), otherwise the bias
/// broadcast into c, then matmul_into with beta = 1 (the CPU's way; the same sums, one more
/// rounding of the output for bf16).
template <class T>
void matmul_bias_into(const Tensor<T, cuda>& c, const Tensor<T, cuda>& a, const Tensor<T, cuda>& b,
                      const Tensor<T, cuda>& bias, const gemm_options& opt = {}) {
  detail::check_matmul_shapes<T>("matmul_bias_into", c.shape(), a.shape(), b.shape());
  FLSL_CHECK(c.rank() == 2 && bias.rank() == 1 && bias.size(0) == c.size(1),
             "matmul_bias_into: bias of shape ", bias.shape(), " for an output of shape ",
             c.shape(), " (expected [N] for [M, N])");
  const bool epilogue =
      !std::is_same_v<T, double> &&  // cuBLASLt's epilogues are for f32 / bf16 / fp16 outputs
      c.is_contiguous() && bias.is_contiguous() && a.size(-1) > 0 && c.numel() > 0 &&
      reinterpret_cast<std::uintptr_t>(bias.data()) % 16 == 0 &&
      detail::layout_of(a.size(-2), a.size(-1), a.stride(-2), a.stride(-1)).mappable &&
      detail::layout_of(b.size(-2), b.size(-1), b.stride(-2), b.stride(-1)).mappable;
  if (!epilogue) {
    c.assign(bias);
    matmul_into(c, a, b, 1.0, 1.0, opt);
    return;
  }
  cuda_detail::gemm(c, a, b, 1.0, 0.0, opt, bias.data());
}

/// a @ b into a new tensor (see matmul_into for the shapes and options).
template <class T>
Tensor<T, cuda> matmul(const Tensor<T, cuda>& a, const Tensor<T, cuda>& b,
                       const gemm_options& opt = {}) {
  auto c = Tensor<T, cuda>::empty(detail::matmul_result_shape(a.shape(), b.shape()));
  matmul_into(c, a, b, 1.0, 0.0, opt);
  return c;
}

}  // namespace flsl
