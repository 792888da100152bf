#pragma once
/// \file Numerically stable in-place softmax of one row, with an optional additive mask.
///
/// Algorithm: the max-subtracted softmax softmax(x)_i = e^(x_i - m) / Σ_j e^(x_j - m), m = max_j x_j
/// (Goodfellow, Bengio & Courville, "Deep Learning", §4.1; PyTorch's `aten/src/ATen/native/cpu/
/// SoftMaxKernel.cpp` does the same three passes: max, exp-and-sum, scale). A row whose entries are
/// all -inf (fully masked) has no finite max; it is defined here as all zeros instead of 0/0 = NaN
/// (a query that may attend to nothing contributes nothing).

#include <cstddef>
#include <cmath>
#include <limits>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/reduce.hpp"

namespace polyformer::kernels {

/// In place x = softmax(x + additive_mask) over n entries (scalar twin, std::exp); mask may be null.
inline void softmax_scalar(float* x, std::size_t n, const float* additive_mask = nullptr) noexcept {
  // x, additive_mask: (n)
  if (additive_mask != nullptr)
    for (std::size_t i = 0; i < n; ++i) x[i] += additive_mask[i];
  const float m = reduce_max_scalar(x, n);
  if (m == -std::numeric_limits<float>::infinity()) {  // fully masked (or empty) row
    for (std::size_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  const float sum = exp_shifted_sum_scalar(x, n, m);  // >= 1: the max entry contributes e^0
  const float inv = 1.0f / sum;
  for (std::size_t i = 0; i < n; ++i) x[i] *= inv;
}

/// In place x = softmax(x + additive_mask) over n entries; -inf entries give 0, a fully masked row
/// gives all zeros (never NaN). additive_mask (n) may be null; NaN or +inf in x give NaN. `isa` picks the kernels
/// (default: this process's, kernels::isa()).
inline void softmax(float* x, std::size_t n, const float* additive_mask = nullptr, Isa isa = kernels::isa()) noexcept {
  // x, additive_mask: (n)
  if (additive_mask != nullptr) add(additive_mask, x, n, isa);
  const float m = reduce_max(x, n, isa);
  if (m == -std::numeric_limits<float>::infinity()) {  // fully masked (or empty) row: zeros rather than 0/0
    for (std::size_t i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  const float sum = exp_shifted_sum(x, n, m, isa);  // >= 1: the max entry contributes e^0
  scale(x, 1.0f / sum, n, isa);
}

/// ds[i] = p[i]·(ds[i] − delta) over n entries (scalar twin): the gradient of a softmax row's inputs from its
/// output gradient's dP = dO·Vᵀ in ds, its weights p and delta = Σ p·dP (= dO·O).
inline void softmax_backward_scalar(const float* p, float* ds, float delta, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) ds[i] = p[i] * (ds[i] - delta);  // p, ds: (n)
}

/// ds[i] = p[i]·(ds[i] − delta) over n entries.
inline void softmax_backward(const float* p, float* ds, float delta, std::size_t n, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) { decltype(k)::softmax_backward(p, ds, delta, n); });
}

}  // namespace polyformer::kernels
