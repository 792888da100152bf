#pragma once
/// \file BLAS level-1 kernels on raw float arrays: dot, axpy, scale, add.
///
/// Algorithms: the reference BLAS routines SDOT/SAXPY/SSCAL (netlib, Dongarra et al. 1979); dot
/// keeps four independent accumulator batches, as OpenBLAS' x86 sdot microkernels do, so the FMA
/// latency (4 cycles) is hidden and the summation tree is shallower (better rounding too). Chosen at run time
/// (detail/vector_kernels.hpp).

#include <cstddef>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"

namespace polyformer::kernels {

/// Σ a[i]·b[i] over i < n (scalar twin, one float accumulator).
inline float dot_scalar(const float* a, const float* b, std::size_t n) noexcept {
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];  // a, b: (n)
  return s;
}

/// Σ a[i]·b[i] over i < n; 0 for n = 0. `isa` picks the kernels (default: this process's, kernels::isa()).
inline float dot(const float* a, const float* b, std::size_t n, Isa isa = kernels::isa()) noexcept {
  return detail::with_vector_kernels(isa, [&](auto k) { return decltype(k)::dot(a, b, n); });
}

/// y[i] += alpha·x[i] for i < n (scalar twin).
inline void axpy_scalar(float alpha, const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] += alpha * x[i];  // x, y: (n)
}

/// y[i] += alpha·x[i] for i < n, fused multiply-adds.
inline void axpy(float alpha, const float* x, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::axpy(alpha, x, y, n); });
}

/// x[i] *= s for i < n (scalar twin).
inline void scale_scalar(float* x, float s, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) x[i] *= s;  // x: (n)
}

/// x[i] *= s for i < n.
inline void scale(float* x, float s, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::scale(x, s, n); });
}

/// y[i] += x[i] for i < n (scalar twin).
inline void add_scalar(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] += x[i];  // x, y: (n)
}

/// y[i] += x[i] for i < n (residual connections, bias rows); x may equal y.
inline void add(const float* x, float* y, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::add(x, y, n); });
}

}  // namespace polyformer::kernels
