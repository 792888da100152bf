#pragma once
/// \file BF16 linear policy: y = bf16(x)·Wᵀ + b with W (out, in) stored in bf16 (half of Dense's bytes), products
/// summed in fp32 (kernels/bf16_gemm.hpp: `vdpbf16ps` where the CPU has AVX512-BF16, portable loops otherwise).

#include <cstddef>
#include <string>
#include <utility>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/bf16_gemm.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// Fully connected layer in bf16: the weight (out, in) rounded to bf16 once (nearest even), the input rounded per
/// call, fp32 sums and bias. Error against Dense: bf16 keeps 8 significant bits, so each product carries up to
/// 2^-8 of relative error; over a dot product these partly cancel (tests/test_linear_bf16.cpp gives the measured
/// figures per layer and per model).
class BF16 {
 public:
  static constexpr const char* name = "bf16";  ///< its name in the linear registry (linear/registry.hpp)

  BF16() = default;

  /// Rounds weight (out, in) to bf16; bias (out), when non-empty, stays float.
  explicit BF16(const Matrix& weight, Vector bias = Vector()) : bias_(std::move(bias)) {
    check("BF16", weight.rows(), weight.cols());
    weight_ = kernels::Bf16Matrix::pack_transposed(weight.data(), static_cast<std::size_t>(weight.rows()),
                                                   static_cast<std::size_t>(weight.cols()),
                                                   static_cast<std::size_t>(weight.cols()));
  }

  /// A layer from bf16 values as a checkpoint stores them: weight (out, in) row-major, little-endian, 2 bytes
  /// each — copied bit for bit, never widened to float.
  static BF16 from_bf16(const std::byte* weight, Index out, Index in, Vector bias = Vector()) {
    BF16 layer;
    layer.bias_ = std::move(bias);
    layer.check("BF16::from_bf16", out, in);
    layer.weight_ = kernels::Bf16Matrix::pack_transposed_bf16(weight, static_cast<std::size_t>(out),
                                                              static_cast<std::size_t>(in), static_cast<std::size_t>(in));
    return layer;
  }

  /// The bf16 version of a dense layer (same weight, rounded, and bias).
  static BF16 from_dense(const Dense& dense) { return BF16(dense.weight(), dense.has_bias() ? dense.bias() : Vector()); }

  Index in_features() const noexcept { return static_cast<Index>(weight_.rows()); }
  Index out_features() const noexcept { return static_cast<Index>(weight_.cols()); }
  bool has_bias() const noexcept { return has_bias_; }
  const Vector& bias() const noexcept { return bias_; }  ///< (out) or empty
  const kernels::Bf16Matrix& packed_weight() const noexcept { return weight_; }

  /// The weight the layer applies, widened to float, as (out, in).
  Matrix weight() const {
    Matrix w(out_features(), in_features());
    weight_.unpack_transposed(w.data(), static_cast<std::size_t>(w.cols()));
    return w;
  }

  /// "weight" (out, in) — widened on read; rounded to bf16 on a float write, taken as it is from bf16 — and
  /// "bias" (out) when present.
  void parameters(ParameterList& list, const std::string& prefix) {
    Parameter w{prefix + "weight", {out_features(), in_features()},
                [this](float* out) { weight_.unpack_transposed(out, static_cast<std::size_t>(in_features())); },
                [this](const float* in) {
                  weight_ = kernels::Bf16Matrix::pack_transposed(in, weight_.cols(), weight_.rows(), weight_.rows());
                }};
    w.write_bf16 = [this](const std::byte* in) {
      weight_ = kernels::Bf16Matrix::pack_transposed_bf16(in, weight_.cols(), weight_.rows(), weight_.rows());
    };
    list.add(std::move(w));
    if (has_bias_) list.add_vector(prefix + "bias", bias_);
  }

  /// y (n, out) = bf16(x) (n, in) · Wᵀ + b.
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    check_cols(x, in_features(), "BF16::forward", "x");
    check_shape(y, x.rows(), out_features(), "BF16::forward", "y");
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    kernels::bf16_gemm(u(x.rows()), x.data(), u(x.outerStride()), weight_, has_bias_ ? bias_.data() : nullptr,
                       y.data(), u(y.outerStride()), ctx.threads);
  }

 private:
  void check(const char* func, Index out, Index in) {
    if (out < 1 || in < 1)
      throw shape_error(detail::cat(func, ": weight has shape ", detail::shape_str(out, in), ", expected (out >= 1, in >= 1)"));
    has_bias_ = bias_.size() != 0;
    if (has_bias_ && bias_.size() != out)
      throw shape_error(detail::cat(func, ": bias has shape ", detail::shape_str(bias_.size()), ", expected ",
                                    detail::shape_str(out)));
  }

  kernels::Bf16Matrix weight_;  // Wᵀ (in, out) in bf16 pair panels
  Vector bias_;                 // (out) or empty
  bool has_bias_ = false;
};

static_assert(LinearPolicy<BF16>);

}  // namespace polyformer
