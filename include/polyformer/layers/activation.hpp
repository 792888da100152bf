#pragma once
/// \file FFN activation policies. Plain ones map x → y; gated ones (SwiGLU, Shazeer 2020) combine a
/// gate and an up projection.

#include <cmath>
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

/// GeGLU with tanh GELU: y = gelu_tanh(gate) ⊙ up (Shazeer 2020), T5 v1.1's and FLAN-T5's "gated-gelu" FFN.
struct GeGLUTanh {
  static constexpr bool gated = true;
  static constexpr const char* name = "geglu_tanh";
  /// y may equal gate or up.
  static void apply(const float* gate, const float* up, float* y, std::size_t n) noexcept {
    constexpr std::size_t chunk = 256;
    float activated[chunk];
    for (std::size_t i = 0; i < n; i += chunk) {
      const std::size_t m = n - i < chunk ? n - i : chunk;
      kernels::gelu_tanh(gate + i, activated, m);
      for (std::size_t j = 0; j < m; ++j) y[i + j] = activated[j] * up[i + j];
    }
  }
  /// dgate = dy·up·gelu_tanh′(gate), dup = dy·gelu_tanh(gate); any output may equal any input.
  static void backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                       std::size_t n) noexcept {
    constexpr float k = 0.7978845608028654f, c = 0.044715f;  // √(2/π), the cubic's coefficient
    for (std::size_t i = 0; i < n; ++i) {
      const float x = gate[i], u = up[i], d = dy[i];
      const float t = std::tanh(k * (x + c * x * x * x));
      const float value = 0.5f * x * (1.0f + t), slope = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
      dgate[i] = d * u * slope;
      dup[i] = d * value;
    }
  }
};

static_assert(ActivationPolicy<ReLU> && ActivationPolicy<GELU> && ActivationPolicy<GELUTanh> &&
              ActivationPolicy<SwiGLU> && ActivationPolicy<GeGLUTanh>);

}  // namespace polyformer
