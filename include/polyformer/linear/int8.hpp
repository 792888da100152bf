#pragma once
/// \file Int8 linear policy: y = x·Wᵀ + b with W (out, in) quantized once to int8 per output channel and x
/// quantized per row on every forward (Jacob et al. 2018 linear quantization, symmetric; kernels/int8_gemm.hpp).
/// Keeps only the int8 weight (¼ of Dense's bytes), not the float one.

#include <cstddef>
#include <string>
#include <utility>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/int8_gemm.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// Fully connected layer on int8 arithmetic: weight (out, in) quantized symmetrically per output row
/// (scale max|W[j,:]| / 127), activations per input row (scale max|x[i,:]| / 127), exact int32 sums, float
/// rescaling and bias. Relative error against Dense (Frobenius, tests/test_linear_int8.cpp): ≈ 0.3–1 % on
/// well-spread rows, more where one entry dominates its row (1.6–2.7 % on stories260K's SwiGLU hidden state).
class Int8 {
 public:
  static constexpr const char* name = "int8";  ///< its name in the linear registry (linear/registry.hpp)

  Int8() = default;

  /// Quantizes weight (out, in) once; bias (out), when non-empty, stays float.
  explicit Int8(const Matrix& weight, Vector bias = Vector()) : bias_(std::move(bias)) {
    if (weight.rows() < 1 || weight.cols() < 1)
      throw shape_error(detail::cat("Int8: weight has shape ", detail::shape_str(weight.rows(), weight.cols()),
                                    ", expected (out >= 1, in >= 1)"));
    if (static_cast<std::size_t>(weight.cols()) > kernels::int8_max_depth)
      throw shape_error(detail::cat("Int8: weight has shape ", detail::shape_str(weight.rows(), weight.cols()),
                                    ", expected in <= ", kernels::int8_max_depth, " (exact int32 sums)"));
    has_bias_ = bias_.size() != 0;
    if (has_bias_ && bias_.size() != weight.rows())
      throw shape_error(detail::cat("Int8: bias has shape ", detail::shape_str(bias_.size()), ", expected ",
                                    detail::shape_str(weight.rows())));
    weight_ = kernels::QuantizedMatrix::quantize(weight.data(), static_cast<std::size_t>(weight.rows()),
                                                 static_cast<std::size_t>(weight.cols()),
                                                 static_cast<std::size_t>(weight.cols()));
  }

  /// The int8 version of a dense layer (same weight and bias).
  static Int8 from_dense(const Dense& dense) {
    return Int8(dense.weight(), dense.has_bias() ? dense.bias() : Vector());
  }

  Index in_features() const noexcept { return static_cast<Index>(weight_.rows()); }
  Index out_features() const noexcept { return static_cast<Index>(weight_.cols()); }
  bool has_bias() const noexcept { return has_bias_; }

  /// The quantized, packed weight (scales, column sums, int8 values).
  const kernels::QuantizedMatrix& quantized_weight() const noexcept { return weight_; }
  /// The weight the layer actually applies, qW · scale, as (out, in).
  Matrix dequantized_weight() const {
    Matrix w(out_features(), in_features());
    weight_.dequantize(w.data(), static_cast<std::size_t>(w.cols()));
    return w;
  }
  const Vector& bias() const noexcept { return bias_; }  ///< (out) or empty

  /// y (n, out) = quantized x (n, in) · quantized Wᵀ + b.
  /// "weight" (out, in) — dequantized on read, quantized again on write — and "bias" (out) when present.
  void parameters(ParameterList& list, const std::string& prefix) {
    list.add({prefix + "weight", {out_features(), in_features()},
              [this](float* out) { Eigen::Map<Matrix>(out, out_features(), in_features()) = dequantized_weight(); },
              [this](const float* in) {
                *this = Int8(Matrix(Eigen::Map<const Matrix>(in, out_features(), in_features())), bias_);
              }});
    if (bias_.size() != 0) list.add_vector(prefix + "bias", bias_);
  }

  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    check_cols(x, in_features(), "Int8::forward", "x");
    check_shape(y, x.rows(), out_features(), "Int8::forward", "y");
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    kernels::int8_gemm(u(x.rows()), x.data(), u(x.outerStride()), weight_, has_bias_ ? bias_.data() : nullptr,
                       y.data(), u(y.outerStride()), ctx.threads);
  }

 private:
  kernels::QuantizedMatrix weight_;  // W (out, in) quantized, in micro-kernel panels
  Vector bias_;                      // (out) or empty
  bool has_bias_ = false;
};

static_assert(LinearPolicy<Int8>);

}  // namespace polyformer
