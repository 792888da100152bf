#pragma once
/// \file The element-wise kernels chosen at run time: the body detail/vector_kernel_body.hpp compiled for the
/// build's own target (xsimd), AVX2 + FMA and AVX-512, and `with_vector_kernels`, which runs a callable with the
/// set of a kernel family. exp.hpp, reduce.hpp, norm.hpp, dot.hpp, activation.hpp, gemm_nt.hpp, softmax.hpp and
/// cached_attention.hpp expose them; the constants of exp and of the GELUs live here.

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_ops.hpp"

namespace polyformer::kernels::detail {

// Cephes expf constants.
inline constexpr float exp_log2e = 1.44269504088896341f;
inline constexpr float exp_c1 = 0.693359375f;     // ln2 high part, 9 significant bits
inline constexpr float exp_c2 = -2.12194440e-4f;  // ln2 - C1
inline constexpr float exp_p0 = 1.9875691500e-4f;
inline constexpr float exp_p1 = 1.3981999507e-3f;
inline constexpr float exp_p2 = 8.3334519073e-3f;
inline constexpr float exp_p3 = 4.1665795894e-2f;
inline constexpr float exp_p4 = 1.6666665459e-1f;
inline constexpr float exp_p5 = 5.0000001201e-1f;
// Clamp range: above 88.8 the result overflows to +inf anyway, below -104 it underflows to 0
// (e^-104 < 2^-150); clamping keeps |k| small enough for the shifter and for the 2-step scaling.
inline constexpr float exp_hi = 88.8f;
inline constexpr float exp_lo = -104.0f;
inline constexpr float exp_shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
// tanh-GELU's −2u = x·(−2√(2/π) − 2√(2/π)·0.044715·x²).
inline constexpr float gelu_tanh_m2c1 = -2.0f * 0.79788456080286535588f;
inline constexpr float gelu_tanh_m2c3 = -2.0f * 0.79788456080286535588f * 0.044715f;
// erfc(z) = t·e^(−z²)·e^(P(t)) for z >= 0, t = 2/(2 + z) (the form of Numerical Recipes' erfcc, §6.2): P is our
// least-squares fit of degree 9 in t over [0.15, 1] (z up to 11.3, past which erfc underflows) to ln(erfc(z)·e^(z²)/t),
// made by tests/erfc_fit.py; with its coefficients rounded to float it is 1.8e-7 off in double.
inline constexpr float erfc_p[10] = {1.541917324e-01f, -7.310593128e-01f, 1.274361610e+00f, -8.518794179e-01f,
                                     4.750860855e-02f, -6.602827460e-02f, 5.724634975e-02f, 3.819639087e-01f,
                                     9.991688132e-01f, -1.265473843e+00f};
// GELU-erf's inputs are clamped to ±20 before Φ(x): Φ is 0 or 1 in float well before, and x² stays finite.
inline constexpr float gelu_erf_clamp = 20.0f;
inline constexpr float gelu_erf_grid = 98304.0f;  // 1.5·2^16: x + it − it rounds x (|x| <= 20) to a multiple of 2^−7
inline constexpr float inv_sqrt_2pi = 0.39894228040143267794f;  // 1/√(2π)
inline constexpr float gelu_sqrt1_2 = 0.70710678118654752440f;  // 1/√2

#define POLYFORMER_VECTOR_KERNELS PortableVectorKernels
#define POLYFORMER_VECTOR_TARGET
#define POLYFORMER_VECTOR_OPS PortableVectorOps
#include "polyformer/kernels/detail/vector_kernel_body.hpp"  // undefines the three macros

#if POLYFORMER_RUNTIME_DISPATCH
#define POLYFORMER_VECTOR_KERNELS Avx2VectorKernels
#define POLYFORMER_VECTOR_TARGET POLYFORMER_TARGET_AVX2
#define POLYFORMER_VECTOR_OPS Avx2VectorOps
#include "polyformer/kernels/detail/vector_kernel_body.hpp"  // undefines the three macros

#define POLYFORMER_VECTOR_KERNELS Avx512VectorKernels
#define POLYFORMER_VECTOR_TARGET POLYFORMER_TARGET_AVX512
#define POLYFORMER_VECTOR_OPS Avx512VectorOps
#include "polyformer/kernels/detail/vector_kernel_body.hpp"  // undefines the three macros
#endif

/// f(kernels) with the element-wise kernel set of `isa` (a family the CPU lacks falls back to the build's own).
template <class F>
decltype(auto) with_vector_kernels(Isa isa, F&& f) {
#if POLYFORMER_RUNTIME_DISPATCH
  if (isa == Isa::avx512 && cpu().avx512) return f(Avx512VectorKernels{});
  if (isa == Isa::avx2 && cpu().avx2) return f(Avx2VectorKernels{});
#endif
  return f(PortableVectorKernels{});
}

}  // namespace polyformer::kernels::detail
