#pragma once
/// \file The activations' backward: dx = f′(x)·dy element-wise, from the activation's input x (n) and the gradient
/// dy (n) of its output; dx may equal dy. Derivatives (own): relu′ = [x > 0] (0 at the kink, as torch);
/// GELU-erf′ = Φ(x) + x·φ(x); tanh-GELU′ = s + x·s·(1 − s)·2u′ with s = σ(2u) (activation.hpp's rewrite);
/// silu′ = σ(x)·(1 + x·(1 − σ(x))); SwiGLU: dgate = dy·up·silu′(gate), dup = dy·silu(gate).
/// GELU-erf, tanh-GELU, SiLU and SwiGLU are chosen at run time (detail/vector_kernels.hpp); ReLU's is a plain loop
/// the compiler vectorizes.

#include <cstddef>

#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"

namespace polyformer::kernels {

/// dx = dy where x > 0, else 0; dx may equal dy.
inline void relu_backward(const float* x, const float* dy, float* dx, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

/// dx = (Φ(x) + x·φ(x))·dy, Φ(x) = 0.5·erfc(−x/√2), φ(x) = e^(−x²/2)/√(2π); dx may equal dy.
inline void gelu_erf_backward(const float* x, const float* dy, float* dx, std::size_t n,
                              Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) {
    decltype(k)::template map_grad<decltype(k)::gelu_erf_grad>(x, dy, dx, n);
  });
}

/// dx = tanh-GELU′(x)·dy; dx may equal dy.
inline void gelu_tanh_backward(const float* x, const float* dy, float* dx, std::size_t n,
                               Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) {
    decltype(k)::template map_grad<decltype(k)::gelu_tanh_grad>(x, dy, dx, n);
  });
}

/// dx = silu′(x)·dy; dx may equal dy.
inline void silu_backward(const float* x, const float* dy, float* dx, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::template map_grad<decltype(k)::silu_grad>(x, dy, dx, n); });
}

/// SwiGLU's backward: dgate = dy·up·silu′(gate), dup = dy·silu(gate); all (n); dgate may equal gate or dy, dup may
/// equal up or dy.
inline void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                            std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::swiglu_backward(gate, up, dy, dgate, dup, n); });
}

}  // namespace polyformer::kernels
