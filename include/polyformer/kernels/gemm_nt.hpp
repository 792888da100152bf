#pragma once
/// \file C = A·Bᵀ for A (m, k) and B (n, k) both row-major with k contiguous, by register-blocked dot products:
/// for a few rows of A against many rows of B, each row of B read once from memory (a tied classifier over its
/// embedding matrix, which is stored for row lookups and not packed). Blocks of up to 4 rows of A × 4 rows of
/// B keep 16 vector accumulators, so each loaded vector feeds 4 FMAs; the lanes are summed at the end.

#include <cstddef>
#include <xsimd/xsimd.hpp>

#include "polyformer/kernels/simd.hpp"

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

namespace detail {

/// One block: MR rows of A (MR ≤ 4) against NR rows of B (NR ≤ 4).
template <class Arch, std::size_t MR, std::size_t NR>
POLYFORMER_NOINLINE void gemm_nt_block(std::size_t k, const float* a, std::size_t lda, const float* b, std::size_t ldb, float* c,
                          std::size_t ldc) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t L = B::size;
  B acc[MR][NR];
  for (std::size_t i = 0; i < MR; ++i)
    for (std::size_t j = 0; j < NR; ++j) acc[i][j] = B(0.0f);
  std::size_t r = 0;
  for (; r + L <= k; r += L) {
    B bv[NR];
    for (std::size_t j = 0; j < NR; ++j) bv[j] = B::load_unaligned(b + j * ldb + r);
    for (std::size_t i = 0; i < MR; ++i) {
      const B av = B::load_unaligned(a + i * lda + r);
      for (std::size_t j = 0; j < NR; ++j) acc[i][j] = xsimd::fma(av, bv[j], acc[i][j]);
    }
  }
  if (r < k) {
    B bv[NR];
    for (std::size_t j = 0; j < NR; ++j) bv[j] = load_partial<Arch>(b + j * ldb + r, k - r, 0.0f);
    for (std::size_t i = 0; i < MR; ++i) {
      const B av = load_partial<Arch>(a + i * lda + r, k - r, 0.0f);
      for (std::size_t j = 0; j < NR; ++j) acc[i][j] = xsimd::fma(av, bv[j], acc[i][j]);
    }
  }
  for (std::size_t i = 0; i < MR; ++i)
    for (std::size_t j = 0; j < NR; ++j) c[i * ldc + j] = hsum<Arch>(acc[i][j]);
}

/// MR rows of A (MR ≤ 4) against every row of B, four at a time.
template <class Arch, std::size_t MR>
inline void gemm_nt_rows(std::size_t n, std::size_t k, const float* a, std::size_t lda, const float* b,
                         std::size_t ldb, float* c, std::size_t ldc) noexcept {
  constexpr std::size_t NR = 4;
  std::size_t j = 0;
  for (; j + NR <= n; j += NR) gemm_nt_block<Arch, MR, NR>(k, a, lda, b + j * ldb, ldb, c + j, ldc);
  for (; j < n; ++j) gemm_nt_block<Arch, MR, 1>(k, a, lda, b + j * ldb, ldb, c + j, ldc);
}

}  // namespace detail

/// C (m, n) = A (m, k) · Bᵀ, B (n, k); rows lda, ldb, ldc floats apart. Rows of A go four at a time, so B is
/// read ⌈m/4⌉ times (a caller passes blocks of B small enough to stay in L2 between them): meant for small m.
/// (Eight rows against two of B, tried on Zen 5, ran at half the speed of four against four.)
template <class Arch = xsimd::default_arch>
inline void gemm_nt(std::size_t m, std::size_t n, std::size_t k, const float* a, std::size_t lda, const float* b,
                    std::size_t ldb, float* c, std::size_t ldc) noexcept {
  std::size_t i = 0;
  for (; i + 4 <= m; i += 4) detail::gemm_nt_rows<Arch, 4>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
  const float* ai = a + i * lda;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 3: detail::gemm_nt_rows<Arch, 3>(n, k, ai, lda, b, ldb, ci, ldc); break;
    case 2: detail::gemm_nt_rows<Arch, 2>(n, k, ai, lda, b, ldb, ci, ldc); break;
    case 1: detail::gemm_nt_rows<Arch, 1>(n, k, ai, lda, b, ldb, ci, ldc); break;
    default: break;
  }
}

}  // namespace polyformer::kernels
