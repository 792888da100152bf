#pragma once
/// \file Row normalizations: LayerNorm and RMSNorm over one row of n features.
///
/// LayerNorm (Ba, Kiros & Hinton 2016, arXiv:1607.06450): y = (x - mean) / sqrt(var + eps) · gamma +
/// beta with the biased variance, computed in two passes (mean, then mean of squared deviations) as
/// `torch.nn.LayerNorm` defines it; the two-pass form avoids the cancellation of E[x²] - E[x]².
/// RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467): y = x / sqrt(mean(x²) + eps) · gamma, in the
/// order of llama2.c's `rmsnorm` (`run.c`): scale = 1/sqrt(ss/n + eps), y = gamma · (scale · x).
/// The vector kernels are chosen at run time (detail/vector_kernel_body.hpp); the scalar twins state the rule.
/// Their backward passes (own derivations, x̂ = (x − mean)·rstd, ĝ = dy ⊙ gamma):
/// LayerNorm dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂)), dgamma += dy ⊙ x̂, dbeta += dy;
/// RMSNorm (scale s = 1/sqrt(mean(x²) + eps)) dx = s·ĝ − x·s³·mean(ĝ ⊙ x), dgamma += dy ⊙ s·x.

#include <cmath>
#include <cstddef>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"
#include "polyformer/kernels/reduce.hpp"
#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

namespace detail {
/// The mean of x (n ≥ 1) and 1/sqrt(var + eps) with the biased variance, in two passes.
struct RowStatistics {
  float mean, rstd;
};
inline RowStatistics row_statistics(const float* x, std::size_t n, float eps) noexcept {
  const auto nf = static_cast<float>(n);
  float sum = 0.0f;
  for (std::size_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / nf;
  float ss = 0.0f;
  for (std::size_t i = 0; i < n; ++i) ss += (x[i] - mean) * (x[i] - mean);
  return {mean, 1.0f / std::sqrt(ss / nf + eps)};
}
}  // namespace detail

/// LayerNorm of one row (scalar twin): x, y, gamma, beta: (n); gamma/beta null mean 1/0; x may equal y.
inline void layer_norm_scalar(const float* x, float* y, const float* gamma, const float* beta, std::size_t n,
                              float eps) noexcept {
  if (n == 0) return;
  const auto [mean, rstd] = detail::row_statistics(x, n, eps);
  for (std::size_t i = 0; i < n; ++i) {
    const float g = gamma != nullptr ? gamma[i] : 1.0f;
    const float b = beta != nullptr ? beta[i] : 0.0f;
    y[i] = (x[i] - mean) * rstd * g + b;
  }
}

/// LayerNorm of one row: x, y, gamma, beta: (n); gamma/beta null mean 1/0; x may equal y. `isa` picks the kernels
/// (default: this process's, kernels::isa()).
inline void layer_norm(const float* x, float* y, const float* gamma, const float* beta, std::size_t n, float eps,
                       Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::layer_norm(x, y, gamma, beta, n, eps); });
}

/// RMSNorm of one row (scalar twin): x, y, gamma: (n); gamma null means 1; x may equal y.
inline void rms_norm_scalar(const float* x, float* y, const float* gamma, std::size_t n, float eps) noexcept {
  if (n == 0) return;
  float ss = 0.0f;
  for (std::size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (std::size_t i = 0; i < n; ++i) y[i] = (gamma != nullptr ? gamma[i] : 1.0f) * (scale * x[i]);
}

/// RMSNorm of one row: y = x / sqrt(mean(x²) + eps) · gamma; x, y, gamma: (n); gamma null means 1;
/// x may equal y. `isa` picks the kernels (default: this process's, kernels::isa()).
inline void rms_norm(const float* x, float* y, const float* gamma, std::size_t n, float eps,
                     Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::rms_norm(x, y, gamma, n, eps); });
}

/// LayerNorm's backward over one row, recomputing the statistics from x: x, dy, dx: (n); gamma null means 1;
/// dgamma and dbeta (n) are added to (null: skipped). dx may equal dy.
inline void layer_norm_backward(const float* x, const float* dy, const float* gamma, float* dx, float* dgamma,
                                float* dbeta, std::size_t n, float eps) noexcept {
  if (n == 0) return;
  const auto nf = static_cast<float>(n);
  const auto [mean, rstd] = detail::row_statistics(x, n, eps);
  float sum_g = 0.0f, sum_gx = 0.0f;  // Σ ĝ and Σ ĝ·x̂
  for (std::size_t i = 0; i < n; ++i) {
    const float xh = (x[i] - mean) * rstd, g = dy[i] * (gamma != nullptr ? gamma[i] : 1.0f);
    sum_g += g;
    sum_gx += g * xh;
    if (dgamma != nullptr) dgamma[i] += dy[i] * xh;
    if (dbeta != nullptr) dbeta[i] += dy[i];
  }
  const float mean_g = sum_g / nf, mean_gx = sum_gx / nf;
  for (std::size_t i = 0; i < n; ++i) {
    const float xh = (x[i] - mean) * rstd, g = dy[i] * (gamma != nullptr ? gamma[i] : 1.0f);
    dx[i] = rstd * (g - mean_g - xh * mean_gx);
  }
}

/// RMSNorm's backward over one row: x, dy, dx: (n); gamma null means 1; dgamma (n) is added to (null: skipped).
/// dx may equal dy.
inline void rms_norm_backward(const float* x, const float* dy, const float* gamma, float* dx, float* dgamma,
                              std::size_t n, float eps) noexcept {
  if (n == 0) return;
  const auto nf = static_cast<float>(n);
  float ss = 0.0f;
  for (std::size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float s = 1.0f / std::sqrt(ss / nf + eps);
  float sum_gx = 0.0f;  // Σ ĝ·x
  for (std::size_t i = 0; i < n; ++i) {
    sum_gx += dy[i] * (gamma != nullptr ? gamma[i] : 1.0f) * x[i];
    if (dgamma != nullptr) dgamma[i] += dy[i] * s * x[i];
  }
  const float c = s * s * s * sum_gx / nf;
  for (std::size_t i = 0; i < n; ++i) dx[i] = s * dy[i] * (gamma != nullptr ? gamma[i] : 1.0f) - x[i] * c;
}

}  // namespace polyformer::kernels
