#pragma once
/// \file Dense linear policy: y = x·Wᵀ + b with W stored (out, in) as in torch.nn.Linear.

#include <utility>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"

namespace polyformer {

/// Fully connected layer; weight (out, in) row-major, optional bias (out). The weight is also kept packed
/// for the GEMM micro-kernels (kernels/packed_gemm.hpp), so it is set through the constructor or
/// set_weight, never written in place.
class Dense {
 public:
  Dense() = default;

  /// Zero weights (and a zero bias when `bias`) of the given size.
  Dense(Index in_features, Index out_features, bool bias = true)
      : bias_(bias ? Vector::Zero(out_features) : Vector()), has_bias_(bias) {
    if (in_features < 1 || out_features < 1)
      throw config_error(detail::cat("Dense: features are (in ", in_features, ", out ", out_features,
                                     "), expected both >= 1"));
    set_weight(Matrix::Zero(out_features, in_features));
  }

  /// Takes ownership of weight (out, in) and, when non-empty, bias (out).
  explicit Dense(Matrix weight, Vector bias = Vector()) : bias_(std::move(bias)) {
    if (weight.rows() < 1 || weight.cols() < 1)
      throw shape_error(detail::cat("Dense: weight has shape ", detail::shape_str(weight.rows(), weight.cols()),
                                    ", expected (out >= 1, in >= 1)"));
    has_bias_ = bias_.size() != 0;
    if (has_bias_ && bias_.size() != weight.rows())
      throw shape_error(detail::cat("Dense: bias has shape ", detail::shape_str(bias_.size()), ", expected ",
                                    detail::shape_str(weight.rows())));
    set_weight(std::move(weight));
  }

  Index in_features() const noexcept { return weight_.cols(); }
  Index out_features() const noexcept { return weight_.rows(); }
  bool has_bias() const noexcept { return has_bias_; }

  const Matrix& weight() const noexcept { return weight_; }  ///< (out, in)
  const kernels::PackedMatrix& packed_weight() const noexcept { return packed_; }  ///< Wᵀ, packed

  /// Replaces the weight (out, in) — same shape as before — and repacks it.
  void set_weight(Matrix weight) {
    if (weight_.size() != 0 && (weight.rows() != weight_.rows() || weight.cols() != weight_.cols()))
      throw shape_error(detail::cat("Dense::set_weight: weight has shape ", detail::shape_str(weight.rows(), weight.cols()),
                                    ", expected ", detail::shape_str(weight_.rows(), weight_.cols())));
    weight_ = std::move(weight);
    packed_ = kernels::PackedMatrix::pack_transposed(weight_.data(), static_cast<std::size_t>(weight_.rows()),
                                                     static_cast<std::size_t>(weight_.cols()),
                                                     static_cast<std::size_t>(weight_.cols()));
  }
  const Vector& bias() const noexcept { return bias_; }  ///< (out) or empty
  Vector& bias() noexcept { return bias_; }

  /// y (n, out) = x (n, in) · Wᵀ + b.
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    check_cols(x, in_features(), "Dense::forward", "x");
    check_shape(y, x.rows(), out_features(), "Dense::forward", "y");
    kernels::gemm(x, packed_, y, has_bias_ ? bias_.data() : nullptr, /*accumulate=*/false, ctx.threads);
  }

 private:
  Matrix weight_;                   // (out, in)
  kernels::PackedMatrix packed_;    // Wᵀ (in, out) in micro-kernel panels
  Vector bias_;    // (out) or empty
  bool has_bias_ = false;
};

static_assert(LinearPolicy<Dense>);

}  // namespace polyformer
