#pragma once
/// \file Element-wise activations: ReLU, GELU (erf and tanh forms), SiLU, SwiGLU. All take
/// x (n) → y (n) and may run in place (x == y).
///
/// Sources: GELU, Hendrycks & Gimpel 2016 (arXiv:1606.08415), exact form 0.5·x·(1 + erf(x/√2)) and
/// tanh approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as `torch.nn.GELU` (approximate=
/// 'none' / 'tanh'); SiLU, Elfwing, Uchibe & Doya 2017 (arXiv:1702.03118), x·σ(x); SwiGLU, Shazeer
/// 2020 (arXiv:2002.05202), silu(gate)·up, the FFN of llama2.c's `run.c`.
/// Rewrites used for accuracy (own derivations):
/// - 1 + erf(z) = erfc(-z), so exact GELU is 0.5·x·erfc(-x/√2): one erfc call, and no cancellation
///   for negative x where 1 + erf(z) would lose the small result.
/// - 0.5·(1 + tanh(u)) = σ(2u) = 1 / (1 + e^(-2u)), so tanh-GELU is x / (1 + e^(-2u)), which saturates
///   cleanly (e^(-2u) → +inf gives -0, → 0 gives x) with a single exp.
/// All but GELU-erf are chosen at run time (detail/vector_kernels.hpp) and take an `isa` (default: this process's,
/// kernels::isa()); GELU-erf is the build's own, as it rests on xsimd's erfc.

#include <cmath>
#include <cstddef>
#include <xsimd/xsimd.hpp>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"
#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

namespace detail {

inline constexpr float sqrt1_2 = 0.70710678118654752440f;   // 1/√2
inline constexpr float sqrt2_pi = 0.79788456080286535588f;  // √(2/π)
inline constexpr float gelu_tanh_c = 0.044715f;
static_assert(gelu_tanh_m2c1 == -2.0f * sqrt2_pi && gelu_tanh_m2c3 == -2.0f * sqrt2_pi * gelu_tanh_c);

/// Applies `f` (batch → batch) to x (n) → y (n), with a masked tail; x may equal y.
template <class Arch, class F>
inline void map(const float* x, float* y, std::size_t n, F f) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  std::size_t i = 0;
  for (; i + L <= n; i += L) f(B::load_unaligned(x + i)).store_unaligned(y + i);
  if (i < n) store_partial<Arch>(f(load_partial<Arch>(x + i, n - i, 0.0f)), y + i, n - i);
}

/// 0.5·x·erfc(-x/√2) lane-wise; xsimd's erfc (Boost.SIMD rational fits) is ≈ 2e-7 relative.
template <class Arch>
inline batch_f<Arch> gelu_erf_batch(batch_f<Arch> x) noexcept {
  using B = batch_f<Arch>;
  return B(0.5f) * x * xsimd::erfc(x * B(-sqrt1_2));
}

}  // namespace detail

/// y = max(x, 0) (scalar twin); NaN stays NaN.
inline void relu_scalar(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

/// y = max(x, 0); NaN stays NaN; x may equal y.
inline void relu(const float* x, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::template map<decltype(k)::relu>(x, y, n); });
}

/// y = 0.5·x·(1 + erf(x/√2)) (scalar twin, float std::erfc).
inline void gelu_erf_scalar(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * std::erfc(-x[i] * detail::sqrt1_2);
}

/// y = 0.5·x·(1 + erf(x/√2)), the exact GELU; ≈ 4e-7 abs / 1.2e-6 rel against double; x may equal y.
template <class Arch = xsimd::default_arch>
inline void gelu_erf(const float* x, float* y, std::size_t n) noexcept {
  detail::map<Arch>(x, y, n, [](batch_f<Arch> v) { return detail::gelu_erf_batch<Arch>(v); });
}

/// y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (scalar twin, via the σ(2u) form and std::exp).
inline void gelu_tanh_scalar(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float u = detail::sqrt2_pi * (v + detail::gelu_tanh_c * v * v * v);
    y[i] = v / (1.0f + std::exp(-2.0f * u));
  }
}

/// y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), the tanh-approximate GELU; x may equal y.
inline void gelu_tanh(const float* x, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::template map<decltype(k)::gelu_tanh>(x, y, n); });
}

/// y = x·σ(x) (scalar twin, std::exp).
inline void silu_scalar(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

/// y = x·σ(x) = x / (1 + e^(-x)) (SiLU / swish-1); x may equal y.
inline void silu(const float* x, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::template map<decltype(k)::silu>(x, y, n); });
}

/// y = elu(x) + 1 = x + 1 for x > 0, e^x otherwise (scalar twin): linear attention's feature map.
inline void elu_plus_one_scalar(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] + 1.0f : std::exp(x[i]);
}

/// y = elu(x) + 1 (Katharopoulos et al. 2020); NaN stays NaN; x may equal y.
inline void elu_plus_one(const float* x, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::template map<decltype(k)::elu_plus_one>(x, y, n); });
}

/// y = silu(gate)·up (scalar twin); gate, up, y: (n); y may equal gate or up.
inline void swiglu_scalar(const float* gate, const float* up, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

/// y = silu(gate)·up, the SwiGLU gating of a Llama FFN; gate, up, y: (n); y may equal gate or up.
inline void swiglu(const float* gate, const float* up, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::swiglu(gate, up, y, n); });
}

}  // namespace polyformer::kernels
