#pragma once
/// \file Horizontal reductions of a float array: max and sum.
///
/// Algorithm: lane-parallel partial reductions folded at the end (the vertical-then-horizontal
/// scheme of CTranslate2's `src/cpu/kernels.cc` reduce_max/reduce_sum); two accumulator batches
/// break the add/max dependency chain. Chosen at run time (detail/vector_kernels.hpp).

#include <cstddef>
#include <limits>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"
#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

/// max over x[0..n) (scalar twin); -inf for n = 0. NaN handling is unspecified.
inline float reduce_max_scalar(const float* x, std::size_t n) noexcept {
  float m = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;  // x: (n)
  return m;
}

/// max over x[0..n); -inf for n = 0. NaN handling is unspecified. `isa` picks the kernels (default: this
/// process's, kernels::isa()).
inline float reduce_max(const float* x, std::size_t n, Isa isa = kernels::isa()) noexcept {
  return detail::with_vector_kernels(isa, [&](auto k) { return decltype(k)::reduce_max(x, n); });
}

/// Σ x[0..n) (scalar twin, one float accumulator); 0 for n = 0.
inline float reduce_sum_scalar(const float* x, std::size_t n) noexcept {
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += x[i];  // x: (n)
  return s;
}

/// Σ x[0..n); 0 for n = 0. `isa` picks the kernels (default: this process's, kernels::isa()).
inline float reduce_sum(const float* x, std::size_t n, Isa isa = kernels::isa()) noexcept {
  return detail::with_vector_kernels(isa, [&](auto k) { return decltype(k)::reduce_sum(x, n); });
}

}  // namespace polyformer::kernels
