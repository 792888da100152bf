#pragma once
/// \file BLAS level-1 kernels on raw float arrays: dot, axpy, scale, add.
///
/// Algorithms: the reference BLAS routines SDOT/SAXPY/SSCAL (netlib, Dongarra et al. 1979); dot
/// keeps four independent accumulator batches, as OpenBLAS' x86 sdot microkernels do, so the FMA
/// latency (4 cycles) is hidden and the summation tree is shallower (better rounding too).

#include <cstddef>
#include <xsimd/xsimd.hpp>

#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

/// Σ a[i]·b[i] over i < n (scalar twin, one float accumulator).
inline float dot_scalar(const float* a, const float* b, std::size_t n) noexcept {
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];  // a, b: (n)
  return s;
}

/// Σ a[i]·b[i] over i < n; 0 for n = 0.
template <class Arch = xsimd::default_arch>
inline float dot(const float* a, const float* b, std::size_t n) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  B acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
  std::size_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    acc0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), acc0);
    acc1 = xsimd::fma(B::load_unaligned(a + i + L), B::load_unaligned(b + i + L), acc1);
    acc2 = xsimd::fma(B::load_unaligned(a + i + 2 * L), B::load_unaligned(b + i + 2 * L), acc2);
    acc3 = xsimd::fma(B::load_unaligned(a + i + 3 * L), B::load_unaligned(b + i + 3 * L), acc3);
  }
  for (; i + L <= n; i += L) acc0 = xsimd::fma(B::load_unaligned(a + i), B::load_unaligned(b + i), acc0);
  if (i < n) acc1 = xsimd::fma(load_partial<Arch>(a + i, n - i, 0.0f), load_partial<Arch>(b + i, n - i, 0.0f), acc1);
  return hsum<Arch>((acc0 + acc1) + (acc2 + acc3));
}

/// y[i] += alpha·x[i] for i < n (scalar twin).
inline void axpy_scalar(float alpha, const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] += alpha * x[i];  // x, y: (n)
}

/// y[i] += alpha·x[i] for i < n (fused multiply-add where the ISA has it).
template <class Arch = xsimd::default_arch>
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  const B a(alpha);
  std::size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    xsimd::fma(a, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
    xsimd::fma(a, B::load_unaligned(x + i + L), B::load_unaligned(y + i + L)).store_unaligned(y + i + L);
  }
  for (; i + L <= n; i += L) xsimd::fma(a, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
  if (i < n) {
    const std::size_t r = n - i;
    store_partial<Arch>(xsimd::fma(a, load_partial<Arch>(x + i, r, 0.0f), load_partial<Arch>(y + i, r, 0.0f)), y + i, r);
  }
}

/// x[i] *= s for i < n (scalar twin).
inline void scale_scalar(float* x, float s, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) x[i] *= s;  // x: (n)
}

/// x[i] *= s for i < n.
template <class Arch = xsimd::default_arch>
inline void scale(float* x, float s, std::size_t n) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  const B sb(s);
  std::size_t i = 0;
  for (; i + L <= n; i += L) (B::load_unaligned(x + i) * sb).store_unaligned(x + i);
  if (i < n) store_partial<Arch>(load_partial<Arch>(x + i, n - i, 0.0f) * sb, x + i, n - i);
}

/// y[i] += x[i] for i < n (scalar twin).
inline void add_scalar(const float* x, float* y, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) y[i] += x[i];  // x, y: (n)
}

/// y[i] += x[i] for i < n (residual connections, bias rows).
template <class Arch = xsimd::default_arch>
inline void add(const float* x, float* y, std::size_t n) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  std::size_t i = 0;
  for (; i + L <= n; i += L) (B::load_unaligned(y + i) + B::load_unaligned(x + i)).store_unaligned(y + i);
  if (i < n) {
    const std::size_t r = n - i;
    store_partial<Arch>(load_partial<Arch>(y + i, r, 0.0f) + load_partial<Arch>(x + i, r, 0.0f), y + i, r);
  }
}

}  // namespace polyformer::kernels
