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
/// - GELU-erf's erfc is our own (detail/vector_kernel_body.hpp, two_phi): e^(−x²/2) times a fitted factor, with
///   x²/2 carried as an exact part and a small remainder, so the tail x → −∞ stays accurate relative to its size.
/// All are chosen at run time (detail/vector_kernels.hpp) and take an `isa` (default: this process's,
/// kernels::isa()).

#include <cmath>
#include <cstddef>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"

namespace polyformer::kernels {

namespace detail {

inline constexpr float sqrt2_pi = 0.79788456080286535588f;  // √(2/π)
inline constexpr float gelu_tanh_c = 0.044715f;
static_assert(gelu_tanh_m2c1 == -2.0f * sqrt2_pi && gelu_tanh_m2c3 == -2.0f * sqrt2_pi * gelu_tanh_c);

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
  for (std::size_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * std::erfc(-x[i] * detail::gelu_sqrt1_2);
}

/// y = 0.5·x·(1 + erf(x/√2)), the exact GELU, within 1e-6 relative of double (tests/test_kernels_activation.cpp);
/// x may equal y.
inline void gelu_erf(const float* x, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::template map<decltype(k)::gelu_erf>(x, y, n); });
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
