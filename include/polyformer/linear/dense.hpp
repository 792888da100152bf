#pragma once
/// \file Dense linear policy: y = x·Wᵀ + b with W stored (out, in) as in torch.nn.Linear.

#include <concepts>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/transpose.hpp"

namespace polyformer {

namespace detail {
/// Dense::backward's buffers: the weight's transpose unpacked and dy transposed, per thread, reshaped to each call's
/// sizes.
struct DenseBackwardScratch {
  Matrix weight_t;  // (in, out)
  Matrix dy_t;      // (out, n)
};

/// A layer's weight W (out, in) packed as the right-hand operand of its backward's dx = dy·W: made by the first
/// backward after each change of the weight, then shared, read-only, by every thread's backward. Inference never
/// makes one; a copied or moved layer starts without one.
class BackwardPacking {
 public:
  BackwardPacking() = default;
  BackwardPacking(const BackwardPacking&) noexcept {}
  BackwardPacking(BackwardPacking&&) noexcept {}
  BackwardPacking& operator=(const BackwardPacking&) noexcept {
    reset();
    return *this;
  }
  BackwardPacking& operator=(BackwardPacking&&) noexcept {
    reset();
    return *this;
  }

  /// Forgets the packing (the weight changed).
  void reset() noexcept {
    const std::lock_guard<std::mutex> lock(mutex_);
    packed_.reset();
  }
  /// The packing, made by make() (returning a kernels::PackedMatrix) when there is none.
  template <typename Make>
  std::shared_ptr<const kernels::PackedMatrix> get(Make&& make) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (!packed_) packed_ = std::make_shared<const kernels::PackedMatrix>(make());
    return packed_;
  }

 private:
  mutable std::mutex mutex_;
  mutable std::shared_ptr<const kernels::PackedMatrix> packed_;
};
inline DenseBackwardScratch& dense_backward_scratch() {
  thread_local DenseBackwardScratch scratch;
  return scratch;
}
}  // namespace detail

/// Fully connected layer; weight (out, in) as in torch.nn.Linear, optional bias (out). The weight is stored
/// once, packed for the GEMM micro-kernels (kernels/packed_gemm.hpp): weight() unpacks a copy, set_weight
/// repacks, so it is never written in place. Training adds a second packing, W for the backward's dx = dy·W, made
/// on the first backward after each change of the weight (twice the weight's memory once a layer trains).
class Dense {
 public:
  static constexpr const char* name = "fp32";  ///< its name in the linear registry (linear/registry.hpp)

  Dense() = default;

  /// Zero weights (and a zero bias when `bias`) of the given size.
  Dense(Index in_features, Index out_features, bool bias = true)
      : bias_(bias ? Vector::Zero(out_features) : Vector()), has_bias_(bias) {
    if (in_features < 1 || out_features < 1)
      throw config_error(detail::cat("Dense: features are (in ", in_features, ", out ", out_features,
                                     "), expected both >= 1"));
    packed_ = kernels::PackedMatrix::zeros(static_cast<std::size_t>(in_features), static_cast<std::size_t>(out_features));
  }

  /// Packs weight (out, in) — taken by value, so a moved-in weight is freed once packed — and keeps bias (out)
  /// when non-empty.
  explicit Dense(Matrix weight, Vector bias = Vector()) : bias_(std::move(bias)) {
    if (weight.rows() < 1 || weight.cols() < 1)
      throw shape_error(detail::cat("Dense: weight has shape ", detail::shape_str(weight.rows(), weight.cols()),
                                    ", expected (out >= 1, in >= 1)"));
    has_bias_ = bias_.size() != 0;
    if (has_bias_ && bias_.size() != weight.rows())
      throw shape_error(detail::cat("Dense: bias has shape ", detail::shape_str(bias_.size()), ", expected ",
                                    detail::shape_str(weight.rows())));
    set_weight(weight);
  }

  Index in_features() const noexcept { return static_cast<Index>(packed_.rows()); }
  Index out_features() const noexcept { return static_cast<Index>(packed_.cols()); }
  bool has_bias() const noexcept { return has_bias_; }

  /// A copy of the weight (out, in), unpacked.
  Matrix weight() const {
    Matrix w(out_features(), in_features());
    packed_.unpack_transposed(w.data(), static_cast<std::size_t>(w.cols()));
    return w;
  }
  const kernels::PackedMatrix& packed_weight() const noexcept { return packed_; }  ///< Wᵀ, packed

  /// Replaces the weight (out, in) — the same shape as before, if any — and packs it into the storage it had.
  void set_weight(const Matrix& weight) { repack(weight.data(), weight.rows(), weight.cols()); }
  const Vector& bias() const noexcept { return bias_; }  ///< (out) or empty
  Vector& bias() noexcept { return bias_; }

  /// "weight" (out, in) and, with a bias, "bias" (out), as nn.Linear names them.
  void parameters(ParameterList& list, const std::string& prefix) {
    list.add({prefix + "weight", {out_features(), in_features()},
              [this](float* out) { packed_.unpack_transposed(out, static_cast<std::size_t>(in_features())); },
              [this](const float* in) { repack(in, out_features(), in_features()); }});
    if (has_bias_) list.add_vector(prefix + "bias", bias_);
  }

  /// The gradients of the weight (out, in) and the bias (out, when there is one); empty = frozen.
  struct Gradients {
    Matrix weight;
    Vector bias;
  };
  Gradients make_gradients() const {
    return {Matrix::Zero(out_features(), in_features()), has_bias_ ? Vector::Zero(out_features()) : Vector()};
  }
  /// "weight" and, with a bias, "bias", as parameters() names them.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const {
    list.add_matrix(prefix + "weight", g.weight, out_features(), in_features());
    if (has_bias_) list.add_vector(prefix + "bias", g.bias, out_features());
  }

  /// The backward of forward(x): adds dyᵀ·x to g.weight and the column sums of dy to g.bias (when live), and
  /// writes dx (n, in) = dy (n, out) · W — or adds it, with accumulate_dx; a dx of no columns skips it.
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients& g, const Context& ctx,
                bool accumulate_dx = false) const {
    const char* func = "Dense::backward";
    check_cols(x, in_features(), func, "x");
    check_shape(dy, x.rows(), out_features(), func, "dy");
    if (dx.cols() != 0) check_shape(dx, x.rows(), in_features(), func, "dx");
    detail::check_gradient(func, "weight", g.weight, out_features(), in_features());
    detail::check_gradient(func, "bias", g.bias, out_features());
    if (detail::live(g.bias) && !has_bias_)
      throw shape_error(detail::cat(func, ": a bias gradient was given for a layer without a bias"));
    const Index n = x.rows();
    if (n == 0) return;
    detail::DenseBackwardScratch& scratch = detail::dense_backward_scratch();
    if (dx.cols() != 0) {
      // dx = dy · W, W packed once per weight: Wᵀ (in, out) copied out of its panels row by row, then packed
      // transposed.
      const auto w = backward_packing_.get([&] {
        ensure_shape(scratch.weight_t, in_features(), out_features());
        packed_.unpack(scratch.weight_t.data(), static_cast<std::size_t>(out_features()));
        return kernels::PackedMatrix::pack_transposed(scratch.weight_t.data(), static_cast<std::size_t>(in_features()),
                                                      static_cast<std::size_t>(out_features()),
                                                      static_cast<std::size_t>(out_features()));
      });
      kernels::gemm(dy, *w, dx, nullptr, accumulate_dx, ctx.threads);
    }
    if (detail::live(g.weight)) {
      ensure_shape(scratch.dy_t, out_features(), n);
      kernels::transpose(dy.data(), dy.outerStride(), n, out_features(), scratch.dy_t.data(), n);
      kernels::gemm(cview(scratch.dy_t), x, kernels::Transpose::no, view(g.weight), 1.0f, 1.0f, ctx.threads);
    }
    if (detail::live(g.bias))
      for (Index r = 0; r < n; ++r) g.bias += dy.row(r).transpose();
  }

  /// y (n, out) = x (n, in) · Wᵀ + b.
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    check_cols(x, in_features(), "Dense::forward", "x");
    check_shape(y, x.rows(), out_features(), "Dense::forward", "y");
    kernels::gemm(x, packed_, y, has_bias_ ? bias_.data() : nullptr, /*accumulate=*/false, ctx.threads);
  }

 private:
  /// Packs the weight w (out, in), row-major and contiguous, reusing the packed storage (set_weight's check).
  void repack(const float* w, Index out, Index in) {
    if (packed_.size() != 0 && (out != out_features() || in != in_features()))
      throw shape_error(detail::cat("Dense::set_weight: weight has shape ", detail::shape_str(out, in), ", expected ",
                                    detail::shape_str(out_features(), in_features())));
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    packed_.repack_transposed(w, u(out), u(in), u(in));
    backward_packing_.reset();
  }

  kernels::PackedMatrix packed_;  // Wᵀ (in, out) in micro-kernel panels
  detail::BackwardPacking backward_packing_;  // W (out, in) packed for dx = dy·W, once training asks
  Vector bias_;                   // (out) or empty
  bool has_bias_ = false;
};

/// Whether a linear policy computes with its float weight exactly as given, so that a model may run it from a
/// weight it already holds instead (a Llama's tied classifier reads the embedding itself).
template <typename L>
inline constexpr bool exact_float_weights = false;
template <>
inline constexpr bool exact_float_weights<Dense> = true;

static_assert(LinearPolicy<Dense>);

namespace detail {
/// A linear policy built around another one (LoRA, adapters): constructible from its inner layer.
template <typename Lin>
concept WrapsLinear = requires { typename Lin::inner_type; } && std::constructible_from<Lin, typename Lin::inner_type>;
}  // namespace detail

/// A linear layer of policy Lin with zero weights (out, in) and, with `bias`, a zero bias: what a model is built
/// with before its weights are loaded. Dense (and a wrapper over it, such as LoRA<Dense>) is made without a float
/// weight matrix to pack; any other policy from a zero Matrix.
template <typename Lin>
Lin zero_linear(Index out, Index in, bool bias) {
  if constexpr (std::same_as<Lin, Dense>) {
    return Dense(in, out, bias);
  } else if constexpr (detail::WrapsLinear<Lin>) {
    return Lin(zero_linear<typename Lin::inner_type>(out, in, bias));
  } else if (bias) {
    return Lin(Matrix(Matrix::Zero(out, in)), Vector(Vector::Zero(out)));
  } else {
    return Lin(Matrix(Matrix::Zero(out, in)));
  }
}

}  // namespace polyformer
