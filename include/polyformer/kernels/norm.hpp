#pragma once
/// \file Row normalizations: LayerNorm and RMSNorm over one row of n features.
///
/// LayerNorm (Ba, Kiros & Hinton 2016, arXiv:1607.06450): y = (x - mean) / sqrt(var + eps) · gamma +
/// beta with the biased variance, computed in two passes (mean, then mean of squared deviations) as
/// `torch.nn.LayerNorm` defines it; the two-pass form avoids the cancellation of E[x²] - E[x]².
/// RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467): y = x / sqrt(mean(x²) + eps) · gamma, in the
/// order of llama2.c's `rmsnorm` (`run.c`): scale = 1/sqrt(ss/n + eps), y = gamma · (scale · x).

#include <cmath>
#include <cstddef>
#include <xsimd/xsimd.hpp>

#include "polyformer/kernels/reduce.hpp"
#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

/// LayerNorm of one row (scalar twin): x, y, gamma, beta: (n); gamma/beta null mean 1/0; x may equal y.
inline void layer_norm_scalar(const float* x, float* y, const float* gamma, const float* beta, std::size_t n,
                              float eps) noexcept {
  if (n == 0) return;
  const auto nf = static_cast<float>(n);
  float sum = 0.0f;
  for (std::size_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / nf;
  float ss = 0.0f;
  for (std::size_t i = 0; i < n; ++i) ss += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / std::sqrt(ss / nf + eps);
  for (std::size_t i = 0; i < n; ++i) {
    const float g = gamma != nullptr ? gamma[i] : 1.0f;
    const float b = beta != nullptr ? beta[i] : 0.0f;
    y[i] = (x[i] - mean) * rstd * g + b;
  }
}

namespace detail {

/// Pass 3 of layer_norm, y = (x - mean)·rstd·gamma + beta, specialized on which affine parts exist.
template <class Arch, bool HasGamma, bool HasBeta>
inline void layer_norm_apply(const float* x, float* y, const float* gamma, const float* beta, std::size_t n,
                             float mean, float rstd) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  const B mb(mean), rb(rstd);
  auto f = [&](B v, B g, B b) {
    const B t = (v - mb) * rb;
    if constexpr (HasGamma) {
      return HasBeta ? xsimd::fma(t, g, b) : t * g;
    } else {
      return HasBeta ? t + b : t;
    }
  };
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    const B g = HasGamma ? B::load_unaligned(gamma + i) : B(1.0f);
    const B b = HasBeta ? B::load_unaligned(beta + i) : B(0.0f);
    f(B::load_unaligned(x + i), g, b).store_unaligned(y + i);
  }
  if (i < n) {
    const std::size_t r = n - i;
    const B g = HasGamma ? load_partial<Arch>(gamma + i, r, 1.0f) : B(1.0f);
    const B b = HasBeta ? load_partial<Arch>(beta + i, r, 0.0f) : B(0.0f);
    store_partial<Arch>(f(load_partial<Arch>(x + i, r, mean), g, b), y + i, r);
  }
}

}  // namespace detail

/// LayerNorm of one row: x, y, gamma, beta: (n); gamma/beta null mean 1/0; x may equal y.
template <class Arch = xsimd::default_arch>
inline void layer_norm(const float* x, float* y, const float* gamma, const float* beta, std::size_t n,
                       float eps) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  if (n == 0) return;
  const auto nf = static_cast<float>(n);
  const float mean = reduce_sum<Arch>(x, n) / nf;  // divide, not multiply by 1/n: one rounding
  // Pass 2: Σ (x - mean)²; padding lanes hold `mean`, so they add exactly 0.
  const B mb(mean);
  B s0(0.0f), s1(0.0f);
  std::size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const B d0 = B::load_unaligned(x + i) - mb;
    const B d1 = B::load_unaligned(x + i + L) - mb;
    s0 = xsimd::fma(d0, d0, s0);
    s1 = xsimd::fma(d1, d1, s1);
  }
  if (i + L <= n) {
    const B d = B::load_unaligned(x + i) - mb;
    s0 = xsimd::fma(d, d, s0);
    i += L;
  }
  if (i < n) {
    const B d = load_partial<Arch>(x + i, n - i, mean) - mb;
    s1 = xsimd::fma(d, d, s1);
  }
  const float var = hsum<Arch>(s0 + s1) / nf;
  const float rstd = 1.0f / std::sqrt(var + eps);
  // Pass 3 reads x[i] before writing y[i] at the same index, so x == y is safe.
  if (gamma != nullptr && beta != nullptr) {
    detail::layer_norm_apply<Arch, true, true>(x, y, gamma, beta, n, mean, rstd);
  } else if (gamma != nullptr) {
    detail::layer_norm_apply<Arch, true, false>(x, y, gamma, beta, n, mean, rstd);
  } else if (beta != nullptr) {
    detail::layer_norm_apply<Arch, false, true>(x, y, gamma, beta, n, mean, rstd);
  } else {
    detail::layer_norm_apply<Arch, false, false>(x, y, gamma, beta, n, mean, rstd);
  }
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
/// x may equal y.
template <class Arch = xsimd::default_arch>
inline void rms_norm(const float* x, float* y, const float* gamma, std::size_t n, float eps) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  if (n == 0) return;
  B s0(0.0f), s1(0.0f);
  std::size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const B v0 = B::load_unaligned(x + i);
    const B v1 = B::load_unaligned(x + i + L);
    s0 = xsimd::fma(v0, v0, s0);
    s1 = xsimd::fma(v1, v1, s1);
  }
  if (i + L <= n) {
    const B v = B::load_unaligned(x + i);
    s0 = xsimd::fma(v, v, s0);
    i += L;
  }
  if (i < n) {
    const B v = load_partial<Arch>(x + i, n - i, 0.0f);
    s1 = xsimd::fma(v, v, s1);
  }
  const float scale = 1.0f / std::sqrt(hsum<Arch>(s0 + s1) / static_cast<float>(n) + eps);
  const B sb(scale);
  i = 0;
  if (gamma != nullptr) {
    for (; i + L <= n; i += L) (B::load_unaligned(gamma + i) * (sb * B::load_unaligned(x + i))).store_unaligned(y + i);
    if (i < n) {
      const std::size_t r = n - i;
      store_partial<Arch>(load_partial<Arch>(gamma + i, r, 1.0f) * (sb * load_partial<Arch>(x + i, r, 0.0f)), y + i, r);
    }
  } else {
    for (; i + L <= n; i += L) (sb * B::load_unaligned(x + i)).store_unaligned(y + i);
    if (i < n) store_partial<Arch>(sb * load_partial<Arch>(x + i, n - i, 0.0f), y + i, n - i);
  }
}

}  // namespace polyformer::kernels
