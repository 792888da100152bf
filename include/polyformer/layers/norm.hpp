#pragma once
/// \file Norm policies: LayerNorm (Ba et al. 2016, as torch.nn.LayerNorm) and RMSNorm (Zhang & Sennrich 2019).

#include <string>
#include <utility>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/norm.hpp"

namespace polyformer {

/// Where a layer normalizes: before each sublayer (pre-norm, x + f(norm(x))) or after the residual
/// (post-norm, norm(x + f(x))), the two wirings of torch's `norm_first`.
enum class NormPlacement { pre, post };

namespace detail {
inline void check_norm_args(const char* func, Index dim, float eps) {
  if (dim < 1) throw config_error(cat(func, ": dim is ", dim, ", expected >= 1"));
  if (!(eps >= 0.0f)) throw config_error(cat(func, ": eps is ", eps, ", expected >= 0"));
}
template <typename M>
void check_norm_rows(const char* func, const M& x, Index dim) {
  check_cols(x, dim, func, "x");
}
}  // namespace detail

/// y = (x − mean) / sqrt(var + eps) · gamma + beta over each row, biased variance.
class LayerNorm {
 public:
  LayerNorm() = default;
  /// gamma = 1, beta = 0.
  explicit LayerNorm(Index dim, float eps = 1e-5f) : gamma_(Vector::Ones(dim)), beta_(Vector::Zero(dim)), eps_(eps) {
    detail::check_norm_args("LayerNorm", dim, eps);
  }
  LayerNorm(Vector gamma, Vector beta, float eps = 1e-5f)
      : gamma_(std::move(gamma)), beta_(std::move(beta)), eps_(eps) {
    detail::check_norm_args("LayerNorm", gamma_.size(), eps);
    if (beta_.size() != gamma_.size())
      throw shape_error(detail::cat("LayerNorm: beta has shape ", detail::shape_str(beta_.size()), ", expected ",
                                    detail::shape_str(gamma_.size())));
  }

  Index dim() const noexcept { return gamma_.size(); }
  float eps() const noexcept { return eps_; }
  /// "weight" (the gain) and "bias" (d), as nn.LayerNorm names them.
  void parameters(ParameterList& list, const std::string& prefix) {
    list.add_vector(prefix + "weight", gamma_);
    list.add_vector(prefix + "bias", beta_);
  }
  /// The gradients of the gain and the bias (d each); empty = frozen.
  struct Gradients {
    Vector weight, bias;
  };
  Gradients make_gradients() const { return {Vector::Zero(dim()), Vector::Zero(dim())}; }
  /// "weight" and "bias", as parameters() names them.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const {
    list.add_vector(prefix + "weight", g.weight, dim());
    list.add_vector(prefix + "bias", g.bias, dim());
  }

  Vector& gamma() noexcept { return gamma_; }
  Vector& beta() noexcept { return beta_; }
  const Vector& gamma() const noexcept { return gamma_; }
  const Vector& beta() const noexcept { return beta_; }

  /// y (n, dim) = LayerNorm(x (n, dim)); y may alias x.
  void forward(ConstMatrixView x, MatrixView y) const {
    detail::check_norm_rows("LayerNorm::forward", x, dim());
    check_shape(y, x.rows(), dim(), "LayerNorm::forward", "y");
    for (Index r = 0; r < x.rows(); ++r)
      kernels::layer_norm(x.data() + r * x.outerStride(), y.data() + r * y.outerStride(), gamma_.data(),
                          beta_.data(), static_cast<std::size_t>(dim()), eps_);
  }

  /// The backward of forward(x): dx (n, dim) from x and dy (n, dim); g's live buffers are added to. dx may alias dy.
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients& g) const {
    const char* func = "LayerNorm::backward";
    detail::check_norm_rows(func, x, dim());
    check_shape(dy, x.rows(), dim(), func, "dy");
    check_shape(dx, x.rows(), dim(), func, "dx");
    detail::check_gradient(func, "weight", g.weight, dim());
    detail::check_gradient(func, "bias", g.bias, dim());
    float* dgamma = detail::live(g.weight) ? g.weight.data() : nullptr;
    float* dbeta = detail::live(g.bias) ? g.bias.data() : nullptr;
    for (Index r = 0; r < x.rows(); ++r)
      kernels::layer_norm_backward(x.data() + r * x.outerStride(), dy.data() + r * dy.outerStride(), gamma_.data(),
                                   dx.data() + r * dx.outerStride(), dgamma, dbeta, static_cast<std::size_t>(dim()), eps_);
  }

 private:
  Vector gamma_, beta_;
  float eps_ = 1e-5f;
};

/// y = x / sqrt(mean(x²) + eps) · gamma over each row.
class RMSNorm {
 public:
  RMSNorm() = default;
  explicit RMSNorm(Index dim, float eps = 1e-5f) : gamma_(Vector::Ones(dim)), eps_(eps) {
    detail::check_norm_args("RMSNorm", dim, eps);
  }
  explicit RMSNorm(Vector gamma, float eps = 1e-5f) : gamma_(std::move(gamma)), eps_(eps) {
    detail::check_norm_args("RMSNorm", gamma_.size(), eps);
  }

  Index dim() const noexcept { return gamma_.size(); }
  float eps() const noexcept { return eps_; }
  /// "weight" (the gain, d).
  void parameters(ParameterList& list, const std::string& prefix) { list.add_vector(prefix + "weight", gamma_); }
  /// The gradient of the gain (d); empty = frozen.
  struct Gradients {
    Vector weight;
  };
  Gradients make_gradients() const { return {Vector::Zero(dim())}; }
  /// "weight", as parameters() names it.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const {
    list.add_vector(prefix + "weight", g.weight, dim());
  }

  Vector& gamma() noexcept { return gamma_; }
  const Vector& gamma() const noexcept { return gamma_; }

  /// y (n, dim) = RMSNorm(x (n, dim)); y may alias x.
  void forward(ConstMatrixView x, MatrixView y) const {
    detail::check_norm_rows("RMSNorm::forward", x, dim());
    check_shape(y, x.rows(), dim(), "RMSNorm::forward", "y");
    for (Index r = 0; r < x.rows(); ++r)
      kernels::rms_norm(x.data() + r * x.outerStride(), y.data() + r * y.outerStride(), gamma_.data(),
                        static_cast<std::size_t>(dim()), eps_);
  }

  /// The backward of forward(x): dx (n, dim) from x and dy (n, dim); g's live buffer is added to. dx may alias dy.
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients& g) const {
    const char* func = "RMSNorm::backward";
    detail::check_norm_rows(func, x, dim());
    check_shape(dy, x.rows(), dim(), func, "dy");
    check_shape(dx, x.rows(), dim(), func, "dx");
    detail::check_gradient(func, "weight", g.weight, dim());
    float* dgamma = detail::live(g.weight) ? g.weight.data() : nullptr;
    for (Index r = 0; r < x.rows(); ++r)
      kernels::rms_norm_backward(x.data() + r * x.outerStride(), dy.data() + r * dy.outerStride(), gamma_.data(),
                                 dx.data() + r * dx.outerStride(), dgamma, static_cast<std::size_t>(dim()), eps_);
  }

 private:
  Vector gamma_;
  float eps_ = 1e-5f;
};

static_assert(NormPolicy<LayerNorm>);
static_assert(NormPolicy<RMSNorm>);

}  // namespace polyformer
