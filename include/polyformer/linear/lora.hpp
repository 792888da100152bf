#pragma once
/// \file LoRA: low-rank adapters around any linear policy (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
/// Large Language Models"): y = Inner(x) + Σ_active s·B(A x), with A (r, in), B (out, r) and s = α/r.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// A linear policy whose dense weight (out, in) can be read and replaced: LoRA can merge into it.
template <typename L>
concept MergeableLinear = LinearPolicy<L> && requires(L& l, Matrix w) {
  { std::as_const(l).weight() } -> std::convertible_to<const Matrix&>;
  l.set_weight(std::move(w));
};

/// One named low-rank adapter of a LoRA layer.
struct LoRAAdapter {
  std::string name;
  Matrix a;              ///< (r, in): the down-projection
  Matrix b;              ///< (out, r): the up-projection; zero in a fresh adapter
  float scaling = 1.0f;  ///< s in y += s·B(A x): α/r (PEFT's default), or α/√r (rsLoRA), times a strength
  bool active = false;

  Index rank() const noexcept { return a.rows(); }
};

/// `Inner` with any number of named low-rank adapters; those active add s·B(A x) to its output. Adapters
/// are added, switched and removed at run time without touching the base weight, or — for a mergeable Inner
/// (Dense) — folded into it with merge() (no extra cost per token) and taken out again with unmerge().
/// forward() is `const` and writes nothing to the object: its (n, r) intermediate is scratch of the call (on the
/// stack when small), so one layer serves any number of threads.
template <LinearPolicy Inner>
class LoRA {
 public:
  using inner_type = Inner;

  LoRA() = default;
  /// Wraps a built linear layer, with no adapters.
  explicit LoRA(Inner inner) : inner_(std::move(inner)) {}
  /// Builds the inner layer from its weight (out, in) and bias — a Dense copies it, an Int8 quantizes it.
  explicit LoRA(Matrix weight, Vector bias = Vector()) requires std::constructible_from<Inner, Matrix, Vector>
      : inner_(std::move(weight), std::move(bias)) {}

  Index in_features() const noexcept { return inner_.in_features(); }
  Index out_features() const noexcept { return inner_.out_features(); }
  bool has_bias() const noexcept { return inner_.has_bias(); }

  /// The wrapped layer. While merged, a mergeable inner layer's weight includes the active adapters.
  const Inner& inner() const noexcept { return inner_; }
  /// Mutable access to the wrapped layer; not while merged (its weight is not the base weight then).
  Inner& mutable_inner() {
    if (merged_) throw config_error("LoRA::mutable_inner: the adapters are merged, unmerge() before changing the base layer");
    return inner_;
  }

  const std::vector<LoRAAdapter>& adapters() const noexcept { return adapters_; }
  /// The adapter of this name, or nullptr.
  const LoRAAdapter* find(const std::string& name) const noexcept {
    auto it = std::find_if(adapters_.begin(), adapters_.end(), [&](const LoRAAdapter& x) { return x.name == name; });
    return it == adapters_.end() ? nullptr : &*it;
  }
  bool merged() const noexcept { return merged_; }

  /// Adds an adapter, inactive: A (r, in), B (out, r), y += scaling·B(A x) once active. Throws shape_error for
  /// mismatched shapes, config_error for a duplicate or empty name or a non-finite scaling.
  void add_adapter(std::string name, Matrix a, Matrix b, float scaling) {
    const char* func = "LoRA::add_adapter";
    if (name.empty()) throw config_error(detail::cat(func, ": name is empty, expected a name"));
    if (find(name)) throw config_error(detail::cat(func, ": an adapter named '", name, "' exists already"));
    if (a.rows() < 1 || a.cols() != in_features())
      throw shape_error(detail::cat(func, ": '", name, "' A has shape ", detail::shape_str(a.rows(), a.cols()),
                                    ", expected (r >= 1, ", in_features(), ")"));
    check_shape(b, out_features(), a.rows(), func, "B");
    if (!std::isfinite(scaling)) throw config_error(detail::cat(func, ": '", name, "' scaling is ", scaling, ", expected finite"));
    adapters_.push_back(LoRAAdapter{std::move(name), std::move(a), std::move(b), scaling, false});
  }

  /// Adds a fresh adapter of rank r as PEFT initializes one: A Kaiming-uniform (bound 1/√in, seeded), B zero,
  /// scaling α/r — so it changes nothing until trained.
  void add_adapter(std::string name, Index rank, float alpha, unsigned seed = 0) {
    if (rank < 1) throw config_error(detail::cat("LoRA::add_adapter: rank is ", rank, ", expected >= 1"));
    std::mt19937 gen(seed);
    const float bound = 1.0f / std::sqrt(static_cast<float>(in_features()));
    std::uniform_real_distribution<float> dist(-bound, bound);
    Matrix a(rank, in_features());
    for (Index i = 0; i < a.size(); ++i) a.data()[i] = dist(gen);
    add_adapter(std::move(name), std::move(a), Matrix::Zero(out_features(), rank), alpha / static_cast<float>(rank));
  }

  /// Removes an adapter (taking it out of the merged weight first if it was merged in).
  void remove_adapter(const std::string& name) {
    const std::size_t i = index_of(name, "LoRA::remove_adapter");
    rewire([&] { adapters_.erase(adapters_.begin() + static_cast<std::ptrdiff_t>(i)); });
  }

  /// Activates or deactivates one adapter; several may be active at once. Merged weights follow.
  void set_active(const std::string& name, bool active = true) {
    const std::size_t i = index_of(name, "LoRA::set_active");
    rewire([&] { adapters_[i].active = active; });
  }
  /// Makes exactly the named adapters active (an empty list: the base layer alone).
  void activate_only(const std::vector<std::string>& names) {
    for (const auto& n : names) index_of(n, "LoRA::activate_only");
    rewire([&] {
      for (auto& x : adapters_) x.active = std::find(names.begin(), names.end(), x.name) != names.end();
    });
  }
  /// Changes an adapter's scaling (e.g. α/r times a strength).
  void set_scaling(const std::string& name, float scaling) {
    const std::size_t i = index_of(name, "LoRA::set_scaling");
    if (!std::isfinite(scaling)) throw config_error(detail::cat("LoRA::set_scaling: scaling is ", scaling, ", expected finite"));
    rewire([&] { adapters_[i].scaling = scaling; });
  }

  /// Folds the active adapters into the inner weight: W ← W + Σ s·B·A. forward() then costs what Inner's
  /// does. Idempotent.
  void merge() requires MergeableLinear<Inner> {
    if (merged_) return;
    apply_delta(+1.0f);
    merged_ = true;
  }
  /// Takes the merged adapters out again: W ← W − Σ s·B·A (the same product, so W returns to within a
  /// rounding of each element). Idempotent.
  void unmerge() requires MergeableLinear<Inner> {
    if (!merged_) return;
    apply_delta(-1.0f);
    merged_ = false;
  }

  /// The inner layer's parameters under `prefix`, and every adapter's factors as PEFT names them inside a model:
  /// "lora_A.<adapter>.weight" (r, in) and "lora_B.<adapter>.weight" (out, r). Neither read nor written while
  /// merged (the inner weight then holds the adapters too: a checkpoint of it would apply them twice).
  void parameters(ParameterList& list, const std::string& prefix) {
    ParameterList own;
    inner_.parameters(own, prefix);
    for (auto& x : adapters_) {
      own.add_matrix(prefix + "lora_A." + x.name + ".weight", x.a);
      own.add_matrix(prefix + "lora_B." + x.name + ".weight", x.b);
    }
    for (const Parameter& p : own.items()) {
      const bool adapter = p.name.compare(0, prefix.size() + 5, prefix + "lora_") == 0;
      const auto unmerged = [this, name = p.name](const char* what) {
        if (merged_)
          throw config_error(detail::cat("LoRA: '", name, "' cannot be ", what, " while the adapters are merged, ",
                                         "unmerge() first"));
      };
      list.add({p.name, p.shape,
                [unmerged, read = p.read](float* out) {
                  unmerged("read");
                  read(out);
                },
                [this, unmerged, write = p.write, adapter](const float* in) {
                  unmerged("written");
                  write(in);
                  if (adapter) repack();
                }});
    }
  }

  /// y (n, out) = Inner(x (n, in)) + Σ_active s·(x·Aᵀ)·Bᵀ. The intermediate x·Aᵀ (n, r) of each adapter lives
  /// in a buffer of this call: on the stack when n·r ≤ stack_floats (decoding, small batches), else on the heap,
  /// allocated once for the largest active rank.
  /// Either way it is one product per factor over all n rows, so the result does not depend on the buffer.
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    inner_.forward(x, y, ctx);
    if (merged_) return;
    const Index n = x.rows();
    Index r_max = 0;
    for (std::size_t i = 0; i < adapters_.size(); ++i)
      if (adapters_[i].active) r_max = std::max(r_max, static_cast<Index>(packed_[i].a_t.cols()));
    alignas(64) float stack[stack_floats];  // (n, r) when it fits
    std::vector<float> heap(n * r_max > stack_floats ? static_cast<std::size_t>(n * r_max) : 0);  // otherwise
    float* const down = heap.empty() ? stack : heap.data();
    for (std::size_t i = 0; i < adapters_.size(); ++i) {
      if (!adapters_[i].active) continue;
      const Packed& p = packed_[i];
      const Index r = static_cast<Index>(p.a_t.cols());
      const MatrixView down_view(down, n, r, Eigen::OuterStride<>(r));  // (n, r): x·Aᵀ of this adapter
      kernels::gemm(x, p.a_t, down_view, nullptr, /*accumulate=*/false, ctx.threads);
      kernels::gemm(cview(down_view), p.sb_t, y, nullptr, /*accumulate=*/true, ctx.threads);
    }
  }

  /// The gradients of one adapter's factors: A (r, in), B (out, r); empty = frozen.
  struct AdapterGradients {
    Matrix a, b;
  };
  /// The adapters' gradients (in adapters() order) and the inner layer's, which start frozen (empty): LoRA trains
  /// the adapters alone unless the inner layer's tensors are unfrozen by name.
  struct Gradients {
    typename Inner::Gradients inner{};
    std::vector<AdapterGradients> adapters;
  };
  Gradients make_gradients() const requires TrainableLinear<Inner> {
    Gradients g;
    for (const auto& x : adapters_)
      g.adapters.push_back({Matrix::Zero(x.a.rows(), x.a.cols()), Matrix::Zero(x.b.rows(), x.b.cols())});
    return g;
  }
  /// The inner layer's gradients and "lora_A.<adapter>.weight", "lora_B.<adapter>.weight", as parameters() names them.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const requires TrainableLinear<Inner> {
    check_adapter_gradients(g, "LoRA::gradients");
    inner_.gradients(list, prefix, g.inner);
    for (std::size_t i = 0; i < adapters_.size(); ++i) {
      const LoRAAdapter& x = adapters_[i];
      list.add_matrix(prefix + "lora_A." + x.name + ".weight", g.adapters[i].a, x.a.rows(), x.a.cols());
      list.add_matrix(prefix + "lora_B." + x.name + ".weight", g.adapters[i].b, x.b.rows(), x.b.cols());
    }
  }

  /// The backward of forward(x): the inner layer's (its gradients only where unfrozen; dx through its weight), then
  /// each active adapter's: with u = x·Aᵀ (n, r), dB += s·dyᵀ·u, du = s·dy·B, dA += duᵀ·x, dx += du·A. Writes (or,
  /// with accumulate_dx, adds) dx (n, in); a dx of no columns skips it. Not while merged.
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients& g, const Context& ctx,
                bool accumulate_dx = false) const requires TrainableLinear<Inner> {
    const char* func = "LoRA::backward";
    if (merged_) throw config_error(detail::cat(func, ": the adapters are merged, unmerge() before training"));
    check_adapter_gradients(g, func);
    inner_.backward(x, dy, dx, g.inner, ctx, accumulate_dx);
    const Index n = x.rows();
    Matrix down, d_down, d_down_t, dy_t;  // (n, r), (n, r), (r, n), (out, n)
    for (std::size_t i = 0; i < adapters_.size(); ++i) {
      const LoRAAdapter& a = adapters_[i];
      if (!a.active) continue;
      AdapterGradients& ga = g.adapters[i];
      const Index r = a.rank();
      down.resize(n, r);
      d_down.resize(n, r);
      kernels::gemm(x, packed_[i].a_t, view(down), nullptr, false, ctx.threads);
      kernels::gemm(dy, cview(a.b), kernels::Transpose::no, view(d_down), a.scaling, 0.0f, ctx.threads);
      if (detail::live(ga.b)) {
        dy_t = dy.transpose();
        kernels::gemm(cview(dy_t), cview(down), kernels::Transpose::no, view(ga.b), a.scaling, 1.0f, ctx.threads);
      }
      if (detail::live(ga.a)) {
        d_down_t = d_down.transpose();
        kernels::gemm(cview(d_down_t), x, kernels::Transpose::no, view(ga.a), 1.0f, 1.0f, ctx.threads);
      }
      if (dx.cols() != 0) kernels::gemm(cview(d_down), cview(a.a), kernels::Transpose::no, dx, 1.0f, 1.0f, ctx.threads);
    }
  }

  /// Floats of forward()'s stack buffer for x·Aᵀ (8 KB): n·r up to this is not allocated.
  static constexpr Index stack_floats = 2048;

 private:
  /// Throws shape_error naming `func` unless g has a pair of buffers per adapter, each of its shape or empty.
  void check_adapter_gradients(const Gradients& g, const char* func) const {
    if (g.adapters.size() != adapters_.size())
      throw shape_error(detail::cat(func, ": gradients for ", g.adapters.size(), " adapters, expected ", adapters_.size(),
                                    " (make the gradients after adding the adapters)"));
    for (std::size_t i = 0; i < adapters_.size(); ++i) {
      const LoRAAdapter& x = adapters_[i];
      detail::check_gradient(func, "lora_A", g.adapters[i].a, x.a.rows(), x.a.cols());
      detail::check_gradient(func, "lora_B", g.adapters[i].b, x.b.rows(), x.b.cols());
    }
  }

  /// An adapter as forward() streams it: Aᵀ (in, r) and (s·B)ᵀ (r, out), packed for the micro-kernels.
  struct Packed {
    kernels::PackedMatrix a_t, sb_t;
  };

  std::size_t index_of(const std::string& name, const char* func) const {
    for (std::size_t i = 0; i < adapters_.size(); ++i)
      if (adapters_[i].name == name) return i;
    std::string known;
    for (const auto& x : adapters_) known += (known.empty() ? "'" : ", '") + x.name + "'";
    throw config_error(detail::cat(func, ": no adapter named '", name, "' (have ", known.empty() ? "none" : known, ")"));
  }

  /// Changes the adapter set through `change`, keeping the merged weight and the packed copies in step.
  template <typename Change>
  void rewire(Change&& change) {
    if constexpr (MergeableLinear<Inner>) {
      const bool was_merged = merged_;
      unmerge();
      change();
      repack();
      if (was_merged) merge();
    } else {
      change();
      repack();
    }
  }

  void repack() {
    packed_.clear();
    packed_.reserve(adapters_.size());
    for (const auto& x : adapters_) {
      const Matrix sb = x.scaling * x.b;  // (out, r)
      const auto u = [](Index v) { return static_cast<std::size_t>(v); };
      packed_.push_back(Packed{kernels::PackedMatrix::pack_transposed(x.a.data(), u(x.a.rows()), u(x.a.cols()), u(x.a.cols())),
                               kernels::PackedMatrix::pack_transposed(sb.data(), u(sb.rows()), u(sb.cols()), u(sb.cols()))});
    }
  }

  /// W ← W ± Σ_active s·B·A, the sum formed the same way both times (so unmerge undoes merge to a rounding).
  void apply_delta(float sign) requires MergeableLinear<Inner> {
    Matrix delta = Matrix::Zero(out_features(), in_features());  // (out, in)
    bool any = false;
    for (const auto& x : adapters_) {
      if (!x.active) continue;
      delta.noalias() += (x.scaling * x.b) * x.a;
      any = true;
    }
    if (!any) return;
    Matrix w = inner_.weight();
    if (sign > 0) w += delta;
    else w -= delta;
    inner_.set_weight(std::move(w));
  }

  Inner inner_{};
  std::vector<LoRAAdapter> adapters_;
  std::vector<Packed> packed_;  // one per adapter
  bool merged_ = false;
};

/// A LoRA layer without adapters computes as its inner layer does.
template <typename Inner>
inline constexpr bool exact_float_weights<LoRA<Inner>> = exact_float_weights<Inner>;

static_assert(LinearPolicy<LoRA<Dense>>);
static_assert(MergeableLinear<Dense>);

}  // namespace polyformer
