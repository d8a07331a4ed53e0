// Var<T, Device>: a tensor value that records how it was computed, for reverse-mode autodiff.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "../backend/cpu/gemm.hpp"
#include "../core/tensor.hpp"
#include "../core/trace.hpp"
#include "../expr/reduce.hpp"

namespace flsl {

/// Whether ops record graph nodes on this thread (false inside a no_grad scope).
inline bool& grad_mode() {
  thread_local bool enabled = true;
  return enabled;
}
/// RAII scope in which no op records a graph node (inference, EMA updates, teacher forwards).
class no_grad {
 public:
  no_grad() : prev_(grad_mode()) { grad_mode() = false; }
  ~no_grad() { grad_mode() = prev_; }
  no_grad(const no_grad&) = delete;
  no_grad& operator=(const no_grad&) = delete;

 private:
  bool prev_;
};

namespace autograd {

/// What backward() needs of a node whatever its element type: one graph may hold several dtypes
/// (a bf16 branch between f32 values, see Var::to). Ops work on the typed node<T, D>.
struct node_base {
  bool requires_grad = false;
  const char* op = "leaf";
  /// Inputs of another element type (only dtype casts have one); same-typed inputs are in
  /// node<T, D>::inputs, which every other op uses.
  std::vector<std::shared_ptr<node_base>> other_inputs;

  node_base() = default;
  node_base(const node_base&) = delete;
  node_base& operator=(const node_base&) = delete;
  virtual ~node_base() = default;
  virtual bool is_leaf() const = 0;
  virtual bool has_grad() const = 0;
  virtual std::size_t input_count() const = 0;
  /// Input i: the same-typed inputs first, then other_inputs.
  virtual std::shared_ptr<node_base> input(std::size_t i) const = 0;
  /// Runs the backward closure (the gradient exists).
  virtual void run_backward() = 0;
  /// Frees the graph behind this node (closure and inputs); drops the gradient unless kept.
  virtual void release(bool keep_grad) = 0;
};

/// One value in the graph: its tensor, its accumulated gradient, and for op results the inputs and
/// the backward closure that turns this node's gradient into its inputs' gradients.
template <class T, class D>
struct node final : node_base {
  Tensor<T, D> value;
  Tensor<T, D> grad;  // undefined until something accumulates into it
  std::vector<std::shared_ptr<node>> inputs;
  std::function<void(node&)> backward;  // reads grad, accumulates into inputs

  bool is_leaf() const override { return !backward; }
  bool has_grad() const override { return grad.defined(); }
  std::size_t input_count() const override { return inputs.size() + other_inputs.size(); }
  std::shared_ptr<node_base> input(std::size_t i) const override {
    if (i < inputs.size()) return inputs[i];
    return other_inputs[i - inputs.size()];
  }
  void run_backward() override { backward(*this); }
  void release(bool keep_grad) override {
    backward = nullptr;
    inputs.clear();
    other_inputs.clear();
    if (!keep_grad) grad = Tensor<T, D>();
  }

  /// grad += g (g: tensor or expression broadcastable to value's shape; summed over broadcast
  /// axes). The first accumulation writes instead of adding.
  /// grad += g for a freshly computed tensor of the value's shape: the first accumulation takes
  /// it over instead of copying.
  void accumulate(Tensor<T, D>&& g) {
    if (!grad.defined() && g.shape() == value.shape() && g.is_contiguous() &&
        g.storage().use_count() == 1) {
      grad = std::move(g);
      return;
    }
    accumulate(static_cast<const Tensor<T, D>&>(g));
  }
  template <class G>
  void accumulate(const G& g) {
    const auto e = as_expr(g);
    if (e.shape() == value.shape()) {
      if (!grad.defined())
        grad = Tensor<T, D>(e);
      else
        grad.assign(grad + e);
      return;
    }
    // Broadcast: sum the gradient over the axes that were expanded.
    const Shape& s = value.shape();
    const Shape& gs = e.shape();
    FLSL_CHECK(gs.rank() >= s.rank(), op, ": gradient of shape ", gs, " for a value of shape ", s);
    std::vector<int> axes;
    const int lead = gs.rank() - s.rank();
    for (int i = 0; i < gs.rank(); ++i)
      if (i < lead || (s[i - lead] == 1 && gs[i] != 1)) axes.push_back(i);
    auto reduced = sum(e, axes, true);  // f32 for bf16 values: round back to T
    Tensor<T, D> r;
    if constexpr (std::is_same_v<typename decltype(reduced)::value_type, T>)
      r = reduced.view(s);
    else
      r = Tensor<T, D>(cast<T>(reduced)).view(s);
    if (!grad.defined())
      grad = r;
    else
      grad.assign(grad + r);
  }
};

}  // namespace autograd

template <class T, class D = cpu>
class Var;

namespace detail {
template <class X>
struct is_var : std::false_type {};
template <class T, class D>
struct is_var<Var<T, D>> : std::true_type {};
}  // namespace detail

/// A differentiable tensor: a handle to a graph node. Leaves are created from tensors (parameters,
/// inputs); op results remember their inputs while any of them requires a gradient and grad mode
/// is on. `backward()` on a one-element result fills `grad()` of every leaf that requires it,
/// then frees the graph behind the result.
template <class T, class D>
class Var {
 public:
  using value_type = T;
  using device_type = D;
  using node_type = autograd::node<T, D>;

  Var() = default;
  /// A leaf holding `value` (shared, not copied).
  explicit Var(Tensor<T, D> value, bool requires_grad = false) : n_(std::make_shared<node_type>()) {
    n_->value = std::move(value);
    n_->requires_grad = requires_grad;
  }
  /// Evaluates a Var expression (e.g. `a * b + exp(c)`) as one graph node (see elementwise.hpp).
  template <class E>
  requires requires(const E& e) { e.template materialize<T, D>(); }
  Var(const E& e) : Var(e.template materialize<T, D>()) {}  // NOLINT: implicit on purpose

  bool defined() const { return n_ != nullptr; }
  const Tensor<T, D>& value() const { return n_->value; }
  /// The accumulated gradient (undefined before any backward reached this value).
  const Tensor<T, D>& grad() const { return n_->grad; }
  bool requires_grad() const { return n_ && n_->requires_grad; }
  /// Marks a leaf as trainable (or not).
  Var& set_requires_grad(bool on) {
    FLSL_CHECK(n_->is_leaf(), "set_requires_grad: only leaves can change, this is the result of ",
               n_->op);
    n_->requires_grad = on;
    return *this;
  }
  const Shape& shape() const { return n_->value.shape(); }
  int rank() const { return n_->value.rank(); }
  index_t size(int axis) const { return n_->value.size(axis); }
  index_t numel() const { return n_->value.numel(); }
  const char* op() const { return n_->op; }
  bool is_leaf() const { return n_->is_leaf(); }
  /// The same value cut off from the graph (no gradient flows through it).
  Var detach() const { return Var(n_->value, false); }
  /// Drops the accumulated gradient.
  void zero_grad() const { n_->grad = Tensor<T, D>(); }
  const std::shared_ptr<node_type>& node() const { return n_; }

  /// Back-propagates from this one-element value (seed 1).
  void backward() const {
    FLSL_CHECK(numel() == 1, "backward: needs a one-element value, got shape ", shape(),
               " (pass a seed gradient for other shapes)");
    backward(Tensor<T, D>::full(shape(), convert<T>(1)));
  }
  /// Back-propagates `seed` (the gradient of some scalar with respect to this value).
  void backward(const Tensor<T, D>& seed) const {
    FLSL_CHECK(seed.shape() == shape(), "backward: seed of shape ", seed.shape(),
               " for a value of shape ", shape());
    FLSL_CHECK(requires_grad(), "backward: the value does not require a gradient (no input of ",
               n_->op, " requires one, or it was computed under no_grad)");
    // Topological order (inputs before users) by an iterative depth-first search. The order holds
    // owning pointers: freeing a node's inputs below must not destroy nodes still to be visited.
    // The nodes may have other element types (dtype casts), hence node_base.
    using base = autograd::node_base;
    std::vector<std::shared_ptr<base>> order;
    std::unordered_set<base*> seen;
    std::vector<std::pair<std::shared_ptr<base>, std::size_t>> stack{{n_, 0}};
    seen.insert(n_.get());
    while (!stack.empty()) {
      auto& top = stack.back();
      if (top.second < top.first->input_count()) {
        std::shared_ptr<base> in = top.first->input(top.second++);
        if (in->requires_grad && !in->is_leaf() && seen.insert(in.get()).second)
          stack.emplace_back(std::move(in), 0);
      } else {
        order.push_back(std::move(top.first));
        stack.pop_back();
      }
    }
    n_->accumulate(seed);
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      base* nd = it->get();
      if (nd->has_grad()) {
        nd->run_backward();
        detail::trace_op(nd->op, true);
      }
      // Free the graph: saved tensors live in the closure, inputs keep parents alive.
      nd->release(/*keep_grad=*/nd == n_.get());
    }
  }

  /// This value converted to element type U (bf16 <-> f32 <-> f64), as a graph node: the gradient
  /// is converted back to T and accumulated into this value's. The basis of mixed precision: a
  /// bf16 branch computed from f32 values, whose gradients reach the f32 parameters. Converting to
  /// T itself returns this Var.
  template <class U>
  Var<U, D> to() const {
    static_assert(is_floating<T> && is_floating<U>,
                  "Var::to<U>: converts between floating types (float, double, bf16)");
    if constexpr (std::is_same_v<U, T>) {
      return *this;
    } else {
      Var<U, D> out(value().template to<U>(), false);
      out.n_->op = "to_dtype";
      detail::trace_op("to_dtype", false);
      if (grad_mode() && requires_grad()) {
        out.n_->requires_grad = true;
        out.n_->other_inputs.push_back(n_);
        out.n_->backward = [](autograd::node<U, D>& nd) {
          auto& in = static_cast<node_type&>(*nd.other_inputs[0]);
          in.accumulate(nd.grad.template to<T>());
        };
      }
      return out;
    }
  }

  /// Creates the result node of an op: records `inputs` and `backward` only when grad mode is on
  /// and some input requires a gradient. Op files call this.
  template <class... In>
  static Var make_result(Tensor<T, D> value, const char* op,
                         std::function<void(node_type&)> backward, const In&... inputs) {
    detail::trace_op(op, false);
    Var out(std::move(value), false);
    out.n_->op = op;
    const bool needs = grad_mode() && (inputs.requires_grad() || ...);
    if (needs) {
      out.n_->requires_grad = true;
      (out.n_->inputs.push_back(inputs.node()), ...);
      out.n_->backward = std::move(backward);
    }
    return out;
  }
  /// As make_result, for a run-time list of inputs.
  static Var make_result_n(Tensor<T, D> value, const char* op,
                           std::function<void(node_type&)> backward, const std::vector<Var>& ins) {
    detail::trace_op(op, false);
    Var out(std::move(value), false);
    out.n_->op = op;
    bool needs = false;
    for (auto& v : ins) needs = needs || v.requires_grad();
    if (grad_mode() && needs) {
      out.n_->requires_grad = true;
      for (auto& v : ins) out.n_->inputs.push_back(v.node());
      out.n_->backward = std::move(backward);
    }
    return out;
  }

 private:
  template <class, class>
  friend class Var;
  std::shared_ptr<node_type> n_;
};

}  // namespace flsl
