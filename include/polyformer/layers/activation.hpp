#pragma once
/// \file FFN activation policies. Plain ones map x → y; gated ones (SwiGLU, Shazeer 2020) combine a
/// gate and an up projection.

#include <cstddef>

#include "polyformer/core/concepts.hpp"
#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/activation_backward.hpp"

namespace polyformer {

/// max(x, 0).
struct ReLU {
  static constexpr bool gated = false;
  static constexpr const char* name = "relu";
  static void apply(const float* x, float* y, std::size_t n) noexcept { kernels::relu(x, y, n); }
  /// dx = f′(x)·dy; dx may equal dy.
  static void backward(const float* x, const float* dy, float* dx, std::size_t n) noexcept {
    kernels::relu_backward(x, dy, dx, n);
  }
};

/// Exact GELU 0.5·x·(1 + erf(x/√2)) (Hendrycks & Gimpel 2016), torch's default.
struct GELU {
  static constexpr bool gated = false;
  static constexpr const char* name = "gelu";
  static void apply(const float* x, float* y, std::size_t n) noexcept { kernels::gelu_erf(x, y, n); }
  /// dx = f′(x)·dy; dx may equal dy.
  static void backward(const float* x, const float* dy, float* dx, std::size_t n) noexcept {
    kernels::gelu_erf_backward(x, dy, dx, n);
  }
};

/// GELU with the tanh approximation (torch's approximate='tanh').
struct GELUTanh {
  static constexpr bool gated = false;
  static constexpr const char* name = "gelu_tanh";
  static void apply(const float* x, float* y, std::size_t n) noexcept { kernels::gelu_tanh(x, y, n); }
  /// dx = f′(x)·dy; dx may equal dy.
  static void backward(const float* x, const float* dy, float* dx, std::size_t n) noexcept {
    kernels::gelu_tanh_backward(x, dy, dx, n);
  }
};

/// SwiGLU: y = silu(gate) ⊙ up, the Llama FFN (w2(silu(w1 x) ⊙ w3 x)).
struct SwiGLU {
  static constexpr bool gated = true;
  static constexpr const char* name = "swiglu";
  static void apply(const float* gate, const float* up, float* y, std::size_t n) noexcept {
    kernels::swiglu(gate, up, y, n);
  }
  /// dgate = dy·up·silu′(gate), dup = dy·silu(gate); dgate may equal gate, dup may equal up.
  static void backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                       std::size_t n) noexcept {
    kernels::swiglu_backward(gate, up, dy, dgate, dup, n);
  }
};

static_assert(ActivationPolicy<ReLU> && ActivationPolicy<GELU> && ActivationPolicy<GELUTanh> &&
              ActivationPolicy<SwiGLU>);

}  // namespace polyformer
