#pragma once
/// \file Horizontal reductions of a float array: max and sum.
///
/// Algorithm: lane-parallel partial reductions folded at the end (the vertical-then-horizontal
/// scheme of CTranslate2's `src/cpu/kernels.cc` reduce_max/reduce_sum); two accumulator batches
/// break the add/max dependency chain.

#include <cstddef>
#include <limits>
#include <xsimd/xsimd.hpp>

#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

/// max over x[0..n) (scalar twin); -inf for n = 0. NaN handling is unspecified.
inline float reduce_max_scalar(const float* x, std::size_t n) noexcept {
  float m = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;  // x: (n)
  return m;
}

/// max over x[0..n); -inf for n = 0. NaN handling is unspecified.
template <class Arch = xsimd::default_arch>
inline float reduce_max(const float* x, std::size_t n) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  B m0(ninf), m1(ninf);
  std::size_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    m0 = xsimd::max(m0, B::load_unaligned(x + i));
    m1 = xsimd::max(m1, B::load_unaligned(x + i + L));
  }
  if (i + L <= n) {
    m0 = xsimd::max(m0, B::load_unaligned(x + i));
    i += L;
  }
  if (i < n) m1 = xsimd::max(m1, load_partial<Arch>(x + i, n - i, ninf));
  return hmax<Arch>(xsimd::max(m0, m1));
}

/// Σ x[0..n) (scalar twin, one float accumulator); 0 for n = 0.
inline float reduce_sum_scalar(const float* x, std::size_t n) noexcept {
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += x[i];  // x: (n)
  return s;
}

/// Σ x[0..n); 0 for n = 0.
template <class Arch = xsimd::default_arch>
inline float reduce_sum(const float* x, std::size_t n) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  B s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
  std::size_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    s0 += B::load_unaligned(x + i);
    s1 += B::load_unaligned(x + i + L);
    s2 += B::load_unaligned(x + i + 2 * L);
    s3 += B::load_unaligned(x + i + 3 * L);
  }
  for (; i + L <= n; i += L) s0 += B::load_unaligned(x + i);
  if (i < n) s1 += load_partial<Arch>(x + i, n - i, 0.0f);
  return hsum<Arch>((s0 + s1) + (s2 + s3));
}

}  // namespace polyformer::kernels
