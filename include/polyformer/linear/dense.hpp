#pragma once
/// \file Dense linear policy: y = x·Wᵀ + b with W stored (out, in) as in torch.nn.Linear.

#include <utility>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/gemm.hpp"

namespace polyformer {

/// Fully connected layer; weight (out, in) row-major, optional bias (out).
class Dense {
 public:
  Dense() = default;

  /// Zero weights (and a zero bias when `bias`) of the given size.
  Dense(Index in_features, Index out_features, bool bias = true)
      : weight_(Matrix::Zero(out_features, in_features)), bias_(bias ? Vector::Zero(out_features) : Vector()),
        has_bias_(bias) {
    if (in_features < 1 || out_features < 1)
      throw config_error(detail::cat("Dense: features are (in ", in_features, ", out ", out_features,
                                     "), expected both >= 1"));
  }

  /// Takes ownership of weight (out, in) and, when non-empty, bias (out).
  explicit Dense(Matrix weight, Vector bias = Vector()) : weight_(std::move(weight)), bias_(std::move(bias)) {
    if (weight_.rows() < 1 || weight_.cols() < 1)
      throw shape_error(detail::cat("Dense: weight has shape ", detail::shape_str(weight_.rows(), weight_.cols()),
                                    ", expected (out >= 1, in >= 1)"));
    has_bias_ = bias_.size() != 0;
    if (has_bias_ && bias_.size() != weight_.rows())
      throw shape_error(detail::cat("Dense: bias has shape ", detail::shape_str(bias_.size()), ", expected ",
                                    detail::shape_str(weight_.rows())));
  }

  Index in_features() const noexcept { return weight_.cols(); }
  Index out_features() const noexcept { return weight_.rows(); }
  bool has_bias() const noexcept { return has_bias_; }

  const Matrix& weight() const noexcept { return weight_; }  ///< (out, in)
  Matrix& weight() noexcept { return weight_; }
  const Vector& bias() const noexcept { return bias_; }  ///< (out) or empty
  Vector& bias() noexcept { return bias_; }

  /// y (n, out) = x (n, in) · Wᵀ + b.
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    check_cols(x, in_features(), "Dense::forward", "x");
    check_shape(y, x.rows(), out_features(), "Dense::forward", "y");
    kernels::gemm(x, view(weight_), kernels::Transpose::yes, y, 1.0f, 0.0f, ctx.threads);
    if (has_bias_) {
      const Index n = y.rows(), out = y.cols();
      parallel_chunks(n, n * out >= (1 << 16) ? ctx.threads : 1, [&](Index r0, Index r1, int) {
        for (Index r = r0; r < r1; ++r)
          kernels::add(bias_.data(), y.data() + r * y.outerStride(), static_cast<std::size_t>(out));
      });
    }
  }

 private:
  Matrix weight_;  // (out, in)
  Vector bias_;    // (out) or empty
  bool has_bias_ = false;
};

static_assert(LinearPolicy<Dense>);

}  // namespace polyformer
