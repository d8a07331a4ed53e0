// Tensor<T, Device>: a strided view (shape, strides, offset) over shared, aligned storage.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <ostream>
#include <type_traits>
#include <vector>

#include "device.hpp"
#include "dtype.hpp"
#include "error.hpp"
#include "random.hpp"
#include "shape.hpp"
#include "storage.hpp"

namespace flsl {

/// Tag base of every expression-template node (see flsl/expr/). A Tensor is not an expression; it
/// becomes a leaf when it meets an operator.
struct expr_base {};
template <class E>
concept expression = std::is_base_of_v<expr_base, std::remove_cvref_t<E>>;

template <class T, class Device = cpu>
class Tensor;

namespace detail {
// The element generators of randn / rand / trunc_normal: element i from Philox (seed, offset + i).
// Plain structs (not lambdas) so that a device kernel can call them too.
struct randn_gen {
  std::uint64_t seed, offset;
  double mean, stddev;
  FLSL_HD double operator()(index_t i) const {
    return mean + stddev * normal_at(seed, 0, offset + std::uint64_t(i));
  }
};
struct rand_gen {
  std::uint64_t seed, offset;
  double lo, hi;
  FLSL_HD double operator()(index_t i) const {
    return lo + (hi - lo) * uniform_at(seed, 0, offset + std::uint64_t(i));
  }
};
struct trunc_normal_gen {
  std::uint64_t seed, offset;
  double mean, stddev, a, b;
  FLSL_HD double operator()(index_t i) const {
    for (std::uint64_t k = 0;; ++k) {
      const double x = mean + stddev * normal_at(seed, k + 1, offset + std::uint64_t(i));
      if (x >= a && x <= b) return x;
    }
  }
};

/// Evaluates expression `e` into `out` (defined in flsl/expr/assign.hpp).
template <class T, class Device, class E>
void assign_expr(const Tensor<T, Device>& out, const E& e);
}  // namespace detail

/// An n-dimensional array of T on Device. Copying a Tensor copies the handle (both share memory,
/// like torch.Tensor); `clone()` copies the values. Views (narrow, select, permute, view, expand)
/// share memory; the functions that may copy say so in their names (`reshape_or_copy`,
/// `contiguous`). Assigning an expression (`out = a * b + c`) evaluates it into out's memory in one
/// pass.
template <class T, class Device>
class Tensor {
  static_assert(element<T>, "flsl::Tensor: unsupported element type");

 public:
  using value_type = T;
  using device_type = Device;

  /// An undefined tensor (no storage); `defined()` is false. Assigning an expression allocates.
  Tensor() = default;
  Tensor(const Tensor&) = default;
  Tensor(Tensor&&) noexcept = default;
  /// Rebinds the handle (no values are copied); use `assign` or `copy_from` to copy values.
  Tensor& operator=(const Tensor&) = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  /// Evaluates an expression into new storage: `Tensor<float> c = a * b + 1.0f;`
  template <expression E>
  Tensor(const E& e) : Tensor(empty(e.shape())) {  // NOLINT: implicit on purpose
    detail::assign_expr(*this, e);
  }
  /// Evaluates an expression into this tensor's memory (allocating if undefined). The expression's
  /// shape must broadcast to this shape.
  template <expression E>
  Tensor& operator=(const E& e) {
    if (!defined()) *this = empty(e.shape());
    detail::assign_expr(*this, e);
    return *this;
  }

  // ---- creation -------------------------------------------------------------------------------
  static Tensor empty(const Shape& shape) {
    for (auto d : shape) FLSL_CHECK(d >= 0, "Tensor::empty: negative extent in shape ", shape);
    Tensor t;
    t.storage_ = std::make_shared<Storage<Device>>(std::size_t(shape.numel()) * sizeof(T));
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    return t;
  }
  static Tensor full(const Shape& shape, T value) {
    Tensor t = empty(shape);
    t.fill(value);
    return t;
  }
  static Tensor zeros(const Shape& shape) { return full(shape, convert<T>(0)); }
  static Tensor ones(const Shape& shape) { return full(shape, convert<T>(1)); }
  /// A rank-0 tensor holding `value`.
  static Tensor scalar(T value) { return full(Shape{}, value); }
  /// [start, stop) with step, as a rank-1 tensor.
  static Tensor arange(double start, double stop, double step = 1.0) {
    if constexpr (!std::is_same_v<Device, cpu>) {  // built on the host, then copied
      return Tensor<T, cpu>::arange(start, stop, step).template to<Device>();
    } else {
      FLSL_CHECK(step != 0, "Tensor::arange: step is 0");
      const auto n = index_t(std::max(0.0, std::ceil((stop - start) / step)));
      Tensor t = empty({n});
      T* p = t.data();
      for (index_t i = 0; i < n; ++i) p[i] = convert<T>(start + double(i) * step);
      return t;
    }
  }
  static Tensor arange(index_t n) { return arange(0.0, double(n), 1.0); }
  /// Copies `values` (row-major) into a new tensor of `shape`.
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
    if constexpr (!std::is_same_v<Device, cpu>) {  // built on the host, then copied
      return Tensor<T, cpu>::from_vector(values, shape).template to<Device>();
    } else {
      FLSL_CHECK(index_t(values.size()) == shape.numel(), "Tensor::from_vector: ", values.size(),
                 " values for shape ", shape, " (", shape.numel(), " elements)");
      Tensor t = empty(shape);
      std::copy(values.begin(), values.end(), t.data());
      return t;
    }
  }
  static Tensor from_vector(const std::vector<T>& values) {
    return from_vector(values, Shape{index_t(values.size())});
  }
  static Tensor from(std::initializer_list<T> values, const Shape& shape) {
    return from_vector(std::vector<T>(values), shape);
  }
  static Tensor from(std::initializer_list<T> values) {
    return from_vector(std::vector<T>(values));
  }

  /// Standard normal * std + mean. Element i (row-major) is Philox draw (seed, counter offset + i):
  /// the same numbers on every thread count and device.
  static Tensor randn(const Shape& shape, std::uint64_t seed, std::uint64_t offset = 0,
                      double mean = 0.0, double std = 1.0) {
    return generate(shape, detail::randn_gen{seed, offset, mean, std});
  }
  /// Uniform in [lo, hi); element i is Philox draw (seed, offset + i) on stream 0.
  static Tensor rand(const Shape& shape, std::uint64_t seed, std::uint64_t offset = 0,
                     double lo = 0.0, double hi = 1.0) {
    return generate(shape, detail::rand_gen{seed, offset, lo, hi});
  }
  /// Normal(mean, std) restricted to [a, b] (absolute bounds, as timm's trunc_normal_), by
  /// rejection: element i tries candidates k = 0, 1, ... from stream k + 1 at counter offset + i.
  static Tensor trunc_normal(const Shape& shape, std::uint64_t seed, std::uint64_t offset = 0,
                             double mean = 0.0, double std = 1.0, double a = -2.0, double b = 2.0) {
    FLSL_CHECK(a < b && std > 0, "Tensor::trunc_normal: empty interval [", a, ", ", b, "] or std ",
               std, " <= 0");
    return generate(shape, detail::trunc_normal_gen{seed, offset, mean, std, a, b});
  }

  // ---- properties ---------------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int rank() const { return shape_.rank(); }
  index_t size(int axis) const { return shape_.at(axis); }
  index_t stride(int axis) const { return strides_.at(axis); }
  index_t numel() const { return shape_.numel(); }
  index_t offset() const { return offset_; }
  static constexpr dtype dtype_tag() { return dtype_of<T>; }
  /// Pointer to element [0, ..., 0] (the view's offset applied); a device address for cuda.
  T* data() const { return storage_ ? static_cast<T*>(storage_->data()) + offset_ : nullptr; }
  const std::shared_ptr<Storage<Device>>& storage() const { return storage_; }
  bool is_contiguous() const { return numel() <= 1 || strides_ == contiguous_strides(shape_); }
  /// True when both view the same storage block.
  bool shares_storage(const Tensor& o) const { return storage_ && storage_ == o.storage_; }

  /// Element access for tests and small host code: t(i, j, k).
  template <class... I>
  T& operator()(I... idx) const {
    static_assert(std::is_same_v<Device, cpu>, "element access needs host memory");
    FLSL_CHECK(int(sizeof...(I)) == rank(), "Tensor::operator(): ", sizeof...(I),
               " indices for a tensor of shape ", shape_);
    const index_t ix[] = {index_t(idx)..., 0};
    index_t off = 0;
    for (int d = 0; d < rank(); ++d) {
      FLSL_CHECK(ix[d] >= 0 && ix[d] < shape_[d], "Tensor::operator(): index ", ix[d],
                 " out of range for axis ", d, " of shape ", shape_);
      off += ix[d] * strides_[d];
    }
    return data()[off];
  }
  /// The single value of a one-element tensor.
  T item() const {
    FLSL_CHECK(numel() == 1, "Tensor::item: tensor of shape ", shape_, " has ", numel(),
               " elements, not 1");
    if constexpr (!std::is_same_v<Device, cpu>)
      return this->template to<cpu>().data()[0];  // a one-element copy to the host
    else
      return data()[0];
  }
  /// Values in row-major order (a copy).
  std::vector<T> to_vector() const {
    if constexpr (!std::is_same_v<Device, cpu>) {
      return this->template to<cpu>().to_vector();
    } else {
      std::vector<T> out(static_cast<std::size_t>(numel()));
      for_each_offset([&](index_t i, index_t off) { out[std::size_t(i)] = data()[off]; });
      return out;
    }
  }

  // ---- views (no copy) ----------------------------------------------------------------------
  /// Elements [start, start + length) along axis.
  Tensor narrow(int axis, index_t start, index_t length) const {
    const int a = shape_.normalize_axis(axis);
    FLSL_CHECK(start >= 0 && length >= 0 && start + length <= shape_[a], "narrow: [", start, ", ",
               start + length, ") out of range for axis ", a, " of shape ", shape_);
    Tensor t = *this;
    t.offset_ += start * strides_[a];
    t.shape_[a] = length;
    return t;
  }
  /// Python-style slice [start, stop) with a positive step along axis (negative start/stop count
  /// from the end).
  Tensor slice(int axis, index_t start, index_t stop, index_t step = 1) const {
    const int a = shape_.normalize_axis(axis);
    const index_t n = shape_[a];
    FLSL_CHECK(step > 0, "slice: step must be positive, got ", step);
    if (start < 0) start += n;
    if (stop < 0) stop += n;
    start = std::clamp<index_t>(start, 0, n);
    stop = std::clamp<index_t>(stop, start, n);
    Tensor t = *this;
    t.offset_ += start * strides_[a];
    t.shape_[a] = (stop - start + step - 1) / step;
    t.strides_[a] *= step;
    return t;
  }
  /// Removes `axis`, keeping element `index` of it.
  Tensor select(int axis, index_t index) const {
    const int a = shape_.normalize_axis(axis);
    if (index < 0) index += shape_[a];
    FLSL_CHECK(index >= 0 && index < shape_[a], "select: index ", index, " out of range for axis ",
               a, " of shape ", shape_);
    Tensor t = *this;
    t.offset_ += index * strides_[a];
    t.shape_.erase(a);
    t.strides_.erase(a);
    return t;
  }
  Tensor operator[](index_t index) const { return select(0, index); }
  /// Reorders axes: result axis i is input axis dims[i].
  Tensor permute(std::initializer_list<int> dims) const { return permute(std::vector<int>(dims)); }
  Tensor permute(const std::vector<int>& dims) const {
    FLSL_CHECK(int(dims.size()) == rank(), "permute: ", dims.size(), " axes for shape ", shape_);
    std::array<bool, max_rank> seen{};
    Tensor t = *this;
    for (int i = 0; i < rank(); ++i) {
      const int a = shape_.normalize_axis(dims[std::size_t(i)]);
      FLSL_CHECK(!seen[std::size_t(a)], "permute: axis ", a, " repeated for shape ", shape_);
      seen[std::size_t(a)] = true;
      t.shape_[i] = shape_[a];
      t.strides_[i] = strides_[a];
    }
    return t;
  }
  Tensor transpose(int a, int b) const {
    a = shape_.normalize_axis(a);
    b = shape_.normalize_axis(b);
    Tensor t = *this;
    std::swap(t.shape_[a], t.shape_[b]);
    std::swap(t.strides_[a], t.strides_[b]);
    return t;
  }
  /// Swaps the last two axes (matrix transpose of each matrix of a batch).
  Tensor t() const {
    FLSL_CHECK(rank() >= 2, "t: needs rank >= 2, got shape ", shape_);
    return transpose(-2, -1);
  }
  Tensor unsqueeze(int axis) const {
    const int a = axis < 0 ? axis + rank() + 1 : axis;
    FLSL_CHECK(a >= 0 && a <= rank(), "unsqueeze: axis ", axis, " out of range for shape ", shape_);
    Tensor t = *this;
    const index_t st = a < rank() ? strides_[a] * shape_[a] : 1;
    t.shape_.insert(a, 1);
    t.strides_.insert(a, st);
    return t;
  }
  Tensor squeeze(int axis) const {
    const int a = shape_.normalize_axis(axis);
    FLSL_CHECK(shape_[a] == 1, "squeeze: axis ", a, " has extent ", shape_[a], " in shape ",
               shape_);
    Tensor t = *this;
    t.shape_.erase(a);
    t.strides_.erase(a);
    return t;
  }
  /// Broadcasts size-1 (or missing leading) axes to `target` with stride 0: no copy. Writing to the
  /// result writes the shared elements several times.
  Tensor expand(const Shape& target) const {
    const Shape b = broadcast_shapes(shape_, target, "expand");
    FLSL_CHECK(b == target, "expand: shape ", shape_, " cannot expand to ", target);
    Tensor t = *this;
    t.strides_ = broadcast_strides(shape_, strides_, target);
    t.shape_ = target;
    return t;
  }
  Tensor broadcast_to(const Shape& target) const { return expand(target); }
  /// The same elements under a new shape without copying (one extent may be -1). Throws when the
  /// strides make that impossible; `reshape_or_copy` then copies.
  Tensor view(const Shape& new_shape) const {
    const Shape target = infer_shape(new_shape, "view");
    Shape st;
    FLSL_CHECK(view_strides(target, st), "view: a tensor of shape ", shape_, " and strides ",
               strides_, " cannot be viewed as ", target,
               " without a copy (use reshape_or_copy or contiguous())");
    Tensor t = *this;
    t.shape_ = target;
    t.strides_ = st;
    return t;
  }
  /// `view` when the strides allow it, otherwise a contiguous copy with the new shape.
  Tensor reshape_or_copy(const Shape& new_shape) const {
    const Shape target = infer_shape(new_shape, "reshape_or_copy");
    Shape st;
    if (view_strides(target, st)) return view(target);
    return contiguous().view(target);
  }
  /// Merges axes [first, last] into one (a view when possible, else a copy).
  Tensor flatten(int first = 0, int last = -1) const {
    if (rank() == 0) return reshape_or_copy({1});
    first = shape_.normalize_axis(first);
    last = shape_.normalize_axis(last);
    Shape s;
    for (int i = 0; i < first; ++i) s.push_back(shape_[i]);
    index_t m = 1;
    for (int i = first; i <= last; ++i) m *= shape_[i];
    s.push_back(m);
    for (int i = last + 1; i < rank(); ++i) s.push_back(shape_[i]);
    return reshape_or_copy(s);
  }

  // ---- copies -------------------------------------------------------------------------------
  /// This tensor if already contiguous, else a contiguous copy.
  Tensor contiguous() const { return is_contiguous() ? *this : clone(); }
  /// A contiguous copy of the values.
  Tensor clone() const {
    Tensor t = empty(shape_);
    t.copy_from(*this);
    return t;
  }
  /// A converted copy on the same device (bf16 <-> f32, f32 -> f64, ...).
  template <element U>
  Tensor<U, Device> to() const {
    auto out = Tensor<U, Device>::empty(shape_);
    if constexpr (std::is_same_v<Device, cpu>) {
      U* dst = out.data();
      for_each_offset([&](index_t i, index_t off) { dst[i] = convert<U>(data()[off]); });
    } else {
      device_backend<Device>::convert(out, *this);
    }
    return out;
  }
  /// A contiguous copy on device D (`x.to<cuda>()`, `y.to<cpu>()`); this tensor itself when it
  /// already lives on D (as torch's `.to(device)`).
  template <device D>
  Tensor<T, D> to() const {
    if constexpr (std::is_same_v<D, Device>) {
      return *this;
    } else {
      using other = std::conditional_t<std::is_same_v<D, cpu>, Device, D>;
      return device_backend<other>::template transfer<D>(*this);
    }
  }
  /// Copies values from `src` (same shape, or broadcastable to this shape) into this memory.
  void copy_from(const Tensor& src) const;
  void fill(T value) const;
  /// Evaluates an expression (or copies a tensor) into this memory; shapes as for copy_from.
  template <class E>
  const Tensor& assign(const E& e) const;
  template <class E>
  Tensor& operator+=(const E& e);
  template <class E>
  Tensor& operator-=(const E& e);
  template <class E>
  Tensor& operator*=(const E& e);
  template <class E>
  Tensor& operator/=(const E& e);

  /// Calls f(row_major_index, element_offset) for every element, in row-major order (serial).
  template <class F>
  void for_each_offset(F&& f) const {
    const index_t n = numel();
    if (n == 0) return;
    std::array<index_t, max_rank> idx{};
    index_t off = 0;
    for (index_t i = 0; i < n; ++i) {
      f(i, off);
      for (int d = rank() - 1; d >= 0; --d) {
        off += strides_[d];
        if (++idx[std::size_t(d)] < shape_[d]) break;
        off -= strides_[d] * shape_[d];
        idx[std::size_t(d)] = 0;
      }
    }
  }

 private:
  template <class Gen>
  static Tensor generate(const Shape& shape, Gen gen);

  Shape infer_shape(const Shape& s, const char* op) const {
    Shape out = s;
    int infer = -1;
    index_t known = 1;
    for (int i = 0; i < s.rank(); ++i) {
      if (s[i] == -1) {
        FLSL_CHECK(infer < 0, op, ": more than one -1 in ", s);
        infer = i;
      } else {
        FLSL_CHECK(s[i] >= 0, op, ": negative extent in ", s);
        known *= s[i];
      }
    }
    if (infer >= 0) {
      FLSL_CHECK(known > 0 && numel() % known == 0, op, ": cannot infer -1 in ", s, " for ",
                 numel(), " elements of shape ", shape_);
      out[infer] = numel() / known;
    }
    FLSL_CHECK(out.numel() == numel(), op, ": shape ", shape_, " (", numel(),
               " elements) cannot become ", s);
    return out;
  }
  // Strides for viewing this tensor as `target` without copying, if any (the algorithm of
  // PyTorch's computeStride: each run of merged input axes must be contiguous in itself).
  bool view_strides(const Shape& target, Shape& out) const {
    out = Shape::filled(target.rank(), 1);
    if (numel() == 0 || rank() == 0) {
      out = contiguous_strides(target);
      return true;
    }
    int tdim = target.rank() - 1;
    index_t chunk_base_stride = strides_[rank() - 1];
    index_t tensor_numel = 1, view_numel = 1;
    for (int d = rank() - 1; d >= 0; --d) {
      tensor_numel *= shape_[d];
      if (d == 0 || (shape_[d - 1] != 1 && strides_[d - 1] != tensor_numel * chunk_base_stride)) {
        while (tdim >= 0 && (view_numel < tensor_numel || target[tdim] == 1)) {
          out[tdim] = view_numel * chunk_base_stride;
          view_numel *= target[tdim];
          --tdim;
        }
        if (view_numel != tensor_numel) return false;
        if (d > 0) {
          chunk_base_stride = strides_[d - 1];
          tensor_numel = 1;
          view_numel = 1;
        }
      }
    }
    return tdim == -1;
  }

  std::shared_ptr<Storage<Device>> storage_;
  Shape shape_, strides_;
  index_t offset_ = 0;
};

template <class T, class D>
std::ostream& operator<<(std::ostream& os, const Tensor<T, D>& t) {
  os << "Tensor<" << dtype_name(dtype_of<T>) << ", " << D::name << ">" << t.shape();
  if (t.defined() && t.numel() <= 16) {
    os << " {";
    auto v = t.to_vector();  // a copy to the host for a device tensor
    for (std::size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << convert<double>(v[i]);
    os << '}';
  }
  return os;
}

}  // namespace flsl
