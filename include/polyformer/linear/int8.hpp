#pragma once
/// \file Int8 linear policy: y = x·Wᵀ + b with W (out, in) quantized once to int8 per output channel and x
/// quantized per row on every forward (Jacob et al. 2018 linear quantization, symmetric; kernels/int8_gemm.hpp).
/// Keeps only the int8 weight (¼ of Dense's bytes), not the float one.
///
/// For activations with outliers, a layer can be calibrated (Int8::calibrated) on inputs it will see:
/// - per-input-channel smoothing after Xiao et al. 2023, "SmoothQuant" (arXiv:2211.10438): x·Wᵀ = (x / s)·(W s)ᵀ
///   with s_j = max|x_j|^α / max|W_j|^(1−α), which moves a channel's range from the activations to the weight;
/// - the largest entries of each row kept out of the int8 product and added in floating point against the
///   same quantized weight, after Dettmers et al. 2022, "LLM.int8()" (arXiv:2208.07339), which splits off
///   outlier columns; here they are chosen per row, as this model's outliers move from token to token.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/int8_gemm.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// How Int8::calibrated treats outliers.
struct Int8Calibration {
  float alpha = 0.5f;         ///< SmoothQuant's migration strength in [0, 1]; 0 leaves the activations alone
  int outliers_per_row = 8;   ///< largest |x / s| entries of each row computed in floating point (0: none)
};

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

  /// A layer calibrated on the largest magnitude each input channel reached, `input_absmax` (in), over inputs it
  /// will see: smoothing and per-row outliers as `c` says (the file comment).
  static Int8 calibrated(const Matrix& weight, Vector bias, const Vector& input_absmax, Int8Calibration c = {}) {
    if (input_absmax.size() != weight.cols())
      throw shape_error(detail::cat("Int8::calibrated: input_absmax has shape ", detail::shape_str(input_absmax.size()),
                                    ", expected ", detail::shape_str(weight.cols())));
    if (!(c.alpha >= 0.0f && c.alpha <= 1.0f) || c.outliers_per_row < 0)
      throw config_error(detail::cat("Int8::calibrated: alpha ", c.alpha, ", outliers_per_row ", c.outliers_per_row,
                                     ", expected alpha in [0, 1] and outliers_per_row >= 0"));
    Vector smooth = Vector::Ones(weight.cols());
    if (c.alpha > 0.0f)
      for (Index j = 0; j < weight.cols(); ++j) {
        const float w = weight.col(j).cwiseAbs().maxCoeff(), x = input_absmax[j];
        if (x > 0.0f && w > 0.0f) smooth[j] = std::pow(x, c.alpha) / std::pow(w, 1.0f - c.alpha);
        if (!(smooth[j] > 1e-20f && smooth[j] < 1e20f)) smooth[j] = 1.0f;  // a channel never seen, or degenerate
      }
    Int8 layer(weight * smooth.asDiagonal(), std::move(bias));
    layer.inverse_smooth_ = smooth.cwiseInverse();
    layer.set_outliers(c.outliers_per_row);
    return layer;
  }

  /// The same from calibration inputs x (rows, in): their per-channel max |x|.
  static Int8 calibrated(const Matrix& weight, Vector bias, ConstMatrixView inputs, Int8Calibration c = {}) {
    check_cols(inputs, weight.cols(), "Int8::calibrated", "inputs");
    const Vector absmax = inputs.rows() == 0 ? Vector(Vector::Zero(weight.cols()))
                                             : Vector(inputs.cwiseAbs().colwise().maxCoeff().transpose());
    return calibrated(weight, std::move(bias), absmax, c);
  }

  /// 1 / s per input channel when the layer is smoothed (calibrated with alpha > 0 applies it), else empty.
  const Vector& inverse_smoothing() const noexcept { return inverse_smooth_; }
  /// Entries per row computed in floating point (0: none).
  int outliers_per_row() const noexcept { return outliers_; }

  Index in_features() const noexcept { return static_cast<Index>(weight_.rows()); }
  Index out_features() const noexcept { return static_cast<Index>(weight_.cols()); }
  bool has_bias() const noexcept { return has_bias_; }

  /// The quantized, packed weight (scales, column sums, int8 values).
  const kernels::QuantizedMatrix& quantized_weight() const noexcept { return weight_; }
  /// The weight the layer actually applies, qW · scale (divided back by the smoothing), as (out, in).
  Matrix dequantized_weight() const {
    Matrix w(out_features(), in_features());
    weight_.dequantize(w.data(), static_cast<std::size_t>(w.cols()));
    if (inverse_smooth_.size() != 0) w = w * inverse_smooth_.asDiagonal();
    return w;
  }
  const Vector& bias() const noexcept { return bias_; }  ///< (out) or empty

  /// "weight" (out, in) — dequantized on read, quantized again on write (with the same smoothing and outliers)
  /// — and "bias" (out) when present.
  void parameters(ParameterList& list, const std::string& prefix) {
    list.add({prefix + "weight", {out_features(), in_features()},
              [this](float* out) { Eigen::Map<Matrix>(out, out_features(), in_features()) = dequantized_weight(); },
              [this](const float* in) {
                Matrix w = Eigen::Map<const Matrix>(in, out_features(), in_features());
                if (inverse_smooth_.size() != 0) w = w * inverse_smooth_.cwiseInverse().asDiagonal();
                Int8 next(w, bias_);
                next.inverse_smooth_ = inverse_smooth_;
                next.set_outliers(outliers_);
                *this = std::move(next);
              }});
    if (bias_.size() != 0) list.add_vector(prefix + "bias", bias_);
  }

  /// Nothing of an int8 layer trains: it is a frozen base (under LoRA, QLoRA-style).
  struct Gradients {};
  Gradients make_gradients() const noexcept { return {}; }
  void gradients(GradientList&, const std::string&, Gradients&) const noexcept {}
  /// The backward of forward(x) for the input alone: dx (n, in) = dy · W with W the weight it applies
  /// (dequantized_weight(); the rounding of x is passed straight through). Writes, or with accumulate_dx adds; a dx
  /// of no columns skips it.
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients&, const Context& ctx,
                bool accumulate_dx = false) const {
    const char* func = "Int8::backward";
    check_cols(x, in_features(), func, "x");
    check_shape(dy, x.rows(), out_features(), func, "dy");
    if (dx.cols() == 0) return;
    check_shape(dx, x.rows(), in_features(), func, "dx");
    const Matrix w = dequantized_weight();  // (out, in)
    kernels::gemm(dy, cview(w), kernels::Transpose::no, dx, 1.0f, accumulate_dx ? 1.0f : 0.0f, ctx.threads);
  }

  /// y (n, out) = quantized x (n, in) · quantized Wᵀ + b; when calibrated, x / s, and its outliers added apart.
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    check_cols(x, in_features(), "Int8::forward", "x");
    check_shape(y, x.rows(), out_features(), "Int8::forward", "y");
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    if (inverse_smooth_.size() == 0 && outliers_ == 0) {
      kernels::int8_gemm(u(x.rows()), x.data(), u(x.outerStride()), weight_, has_bias_ ? bias_.data() : nullptr,
                         y.data(), u(y.outerStride()), ctx.threads);
      return;
    }
    // x / s with each row's outliers taken out, in a per-thread scratch; the outliers go through the columns of
    // the same quantized weight, in float.
    thread_local Matrix scaled;
    thread_local std::vector<std::pair<Index, float>> taken;  // (column, value) for row i at i·outliers_ + t
    if (inverse_smooth_.size() != 0) scaled = x * inverse_smooth_.asDiagonal();
    else scaled = x;
    const Index t = std::min<Index>(outliers_, x.cols());
    taken.assign(static_cast<std::size_t>(x.rows() * t), {0, 0.0f});
    for (Index i = 0; i < x.rows() && t > 0; ++i) {
      float* row = scaled.data() + i * scaled.cols();
      for (Index s = 0; s < t; ++s) {  // t passes of a max search: t is a handful
        Index best = 0;
        for (Index j = 1; j < x.cols(); ++j) best = std::abs(row[j]) > std::abs(row[best]) ? j : best;
        taken[static_cast<std::size_t>(i * t + s)] = {best, row[best]};
        row[best] = 0.0f;
      }
    }
    kernels::int8_gemm(u(x.rows()), scaled.data(), u(scaled.cols()), weight_, has_bias_ ? bias_.data() : nullptr,
                       y.data(), u(y.outerStride()), ctx.threads);
    const float* scales = weight_.scales();
    const Index n = out_features();
    for (Index i = 0; i < x.rows(); ++i) {
      float* yi = y.data() + i * y.outerStride();
      for (Index s = 0; s < t; ++s) {
        const auto [j, v] = taken[static_cast<std::size_t>(i * t + s)];
        if (v == 0.0f) continue;
        const std::int8_t* column = columns_.data() + j * n;  // qW[:, j]
        for (Index o = 0; o < n; ++o) yi[o] += v * scales[o] * static_cast<float>(column[o]);
      }
    }
  }

 private:
  /// Keeps `t` outliers per row, with the quantized weight's columns copied out for them (in, out).
  void set_outliers(int t) {
    outliers_ = t;
    columns_.clear();
    if (t == 0) return;
    const Index n = out_features(), k = in_features();
    columns_.resize(static_cast<std::size_t>(n * k));
    for (Index j = 0; j < k; ++j)
      for (Index o = 0; o < n; ++o)
        columns_[static_cast<std::size_t>(j * n + o)] = weight_.at(static_cast<std::size_t>(o), static_cast<std::size_t>(j));
  }

  kernels::QuantizedMatrix weight_;  // W·diag(s) (out, in) quantized, in micro-kernel panels
  Vector bias_;                      // (out) or empty
  bool has_bias_ = false;
  Vector inverse_smooth_;            // (in) 1 / s, or empty: no smoothing
  int outliers_ = 0;                 // entries per row computed in float
  std::vector<std::int8_t> columns_; // (in, out): qW transposed, for the outliers; empty without them
};

static_assert(TrainableLinear<Int8>);

}  // namespace polyformer
