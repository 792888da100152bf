#pragma once
/// \file Softmax attention of a few queries over keys and values stored transposed, as a KV cache holds them for
/// decoding: the scores vectorized over keys, the softmax in place, then the weighted values as dot products
/// over keys. Chosen at run time (detail/vector_kernels.hpp).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"

namespace polyformer::kernels {

/// out (rows, head_dim) = softmax(scale · q · keys_tᵀᵀ) · values_tᵀ for `rows` queries q (rows, head_dim; rows ldq
/// apart) over n ≥ 1 positions of keys_t and values_t (head_dim, n…; rows ld apart). scores (rows, n…; rows lds
/// apart) is scratch and holds the softmax weights afterwards; out rows are ldo apart. Scalar twin, one float
/// accumulator per sum.
inline void attend_transposed_scalar(std::size_t rows, std::size_t head_dim, std::size_t n, float scale, const float* q,
                                     std::size_t ldq, const float* keys_t, const float* values_t, std::size_t ld,
                                     float* scores, std::size_t lds, float* out, std::size_t ldo) noexcept {
  for (std::size_t r = 0; r < rows; ++r) {
    float* row = scores + r * lds;
    float m = -std::numeric_limits<float>::infinity();
    for (std::size_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (std::size_t d = 0; d < head_dim; ++d) s += q[r * ldq + d] * keys_t[d * ld + j];
      row[j] = s * scale;
      m = std::max(m, row[j]);
    }
    float sum = 0.0f;
    for (std::size_t j = 0; j < n; ++j) sum += row[j] = std::exp(row[j] - m);
    for (std::size_t d = 0; d < head_dim; ++d) {
      float s = 0.0f;
      for (std::size_t j = 0; j < n; ++j) s += row[j] * values_t[d * ld + j];
      out[r * ldo + d] = s / sum;
    }
  }
}

/// As attend_transposed_scalar, vectorized over the keys; `isa` picks the kernels (default: this process's,
/// kernels::isa()).
inline void attend_transposed(std::size_t rows, std::size_t head_dim, std::size_t n, float scale, const float* q,
                              std::size_t ldq, const float* keys_t, const float* values_t, std::size_t ld,
                              float* scores, std::size_t lds, float* out, std::size_t ldo,
                              Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto k) {
    decltype(k)::attend_transposed(rows, head_dim, n, scale, q, ldq, keys_t, values_t, ld, scores, lds, out, ldo);
  });
}

}  // namespace polyformer::kernels
