#pragma once
/// \file C = A·Bᵀ for A (m, k) and B (n, k) both row-major with k contiguous, by register-blocked dot products:
/// for a few rows of A against many rows of B, each row of B read once from memory (a tied classifier over its
/// embedding matrix, which is stored for row lookups and not packed). Blocks of up to 4 rows of A × 4 rows of
/// B keep 16 vector accumulators, so each loaded vector feeds 4 FMAs; the lanes are summed at the end. Chosen at
/// run time (detail/vector_kernels.hpp).

#include <cstddef>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_kernels.hpp"

namespace polyformer::kernels {

/// C (m, n) = A (m, k) · Bᵀ, B (n, k); rows lda, ldb, ldc floats apart (scalar twin, one accumulator each).
inline void gemm_nt_scalar(std::size_t m, std::size_t n, std::size_t k, const float* a, std::size_t lda,
                           const float* b, std::size_t ldb, float* c, std::size_t ldc) noexcept {
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (std::size_t r = 0; r < k; ++r) s += a[i * lda + r] * b[j * ldb + r];
      c[i * ldc + j] = s;
    }
}

/// C (m, n) = A (m, k) · Bᵀ, B (n, k); rows lda, ldb, ldc floats apart. Rows of A go four at a time, so B is
/// read ⌈m/4⌉ times (a caller passes blocks of B small enough to stay in L2 between them): meant for small m.
/// (Eight rows against two of B, tried on Zen 5, ran at half the speed of four against four.) `isa` picks the
/// kernels (default: this process's, kernels::isa()).
inline void gemm_nt(std::size_t m, std::size_t n, std::size_t k, const float* a, std::size_t lda, const float* b,
                    std::size_t ldb, float* c, std::size_t ldc, Isa isa = kernels::isa()) noexcept {
  detail::with_vector_kernels(isa, [&](auto kernels) { decltype(kernels)::gemm_nt(m, n, k, a, lda, b, ldb, c, ldc); });
}

}  // namespace polyformer::kernels
