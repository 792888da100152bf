#pragma once
/// \file Register-blocked GEMM micro-kernels for products too small for a BLAS call to pay off (the
/// attention tiles: 128 × 256 × 64). C (m, n) = alpha · A (m, k) · B (k, n) [+ C], all row-major with
/// strides, no packing: rows of A are broadcast, rows of B loaded as vectors — the register blocking of
/// Goto & van de Geijn (2008), without its cache-blocking layers. Reached through kernels::gemm.

#include <cstddef>

#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

/// Plain triple loop, the reference for small_gemm.
inline void small_gemm_scalar(std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a,
                              std::size_t lda, const float* b, std::size_t ldb, bool accumulate, float* c,
                              std::size_t ldc) noexcept {
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (std::size_t p = 0; p < k; ++p) s += a[i * lda + p] * b[p * ldb + j];
      c[i * ldc + j] = alpha * s + (accumulate ? c[i * ldc + j] : 0.0f);
    }
}

namespace detail {

/// One MR × (NV·lanes) block of C. With Tail, the last vector covers only `tail` (< lanes) columns; the
/// full-width instantiation has no tail logic at all, so its accumulators stay in registers.
/// Every branch is on a template parameter: a run-time flag in the epilogue keeps g++ from unrolling it,
/// and the accumulator array then lives on the stack instead of in registers (3× slower).
template <class Arch, int MR, int NV, bool Tail, bool Accumulate>
POLYFORMER_NOINLINE void small_gemm_block(std::size_t k, float alpha, const float* a, std::size_t lda, const float* b,
                             std::size_t ldb, float* c, std::size_t ldc, std::size_t tail) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t W = B::size;
  B acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = B(0.0f);
  for (std::size_t p = 0; p < k; ++p) {
    const float* brow = b + p * ldb;
    B bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = (Tail && v == NV - 1) ? load_partial<Arch>(brow + v * W, tail, 0.0f) : B::load_unaligned(brow + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const B ar(a[r * lda + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = xsimd::fma(ar, bv[v], acc[r][v]);
    }
  }
  const B al(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* dst = c + r * ldc + v * W;
      if (Tail && v == NV - 1) {
        B out = acc[r][v] * al;
        if constexpr (Accumulate) out += load_partial<Arch>(dst, tail, 0.0f);
        store_partial<Arch>(out, dst, tail);
      } else {
        B out = acc[r][v] * al;
        if constexpr (Accumulate) out += B::load_unaligned(dst);
        out.store_unaligned(dst);
      }
    }
}

/// All columns of an MR-row strip.
template <class Arch, int MR, bool Acc>
inline void small_gemm_rows(std::size_t n, std::size_t k, float alpha, const float* a, std::size_t lda,
                            const float* b, std::size_t ldb, float* c, std::size_t ldc) noexcept {
  constexpr std::size_t W = batch_f<Arch>::size;
  std::size_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) small_gemm_block<Arch, MR, 2, false, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, 0);
  const std::size_t rest = n - j;
  if (rest > W) small_gemm_block<Arch, MR, 2, true, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, rest - W);
  else if (rest == W) small_gemm_block<Arch, MR, 1, false, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, 0);
  else if (rest > 0) small_gemm_block<Arch, MR, 1, true, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, rest);
}

template <class Arch, int MR>
inline void small_gemm_rows(std::size_t n, std::size_t k, float alpha, const float* a, std::size_t lda,
                            const float* b, std::size_t ldb, bool accumulate, float* c, std::size_t ldc) noexcept {
  if (accumulate) small_gemm_rows<Arch, MR, true>(n, k, alpha, a, lda, b, ldb, c, ldc);
  else small_gemm_rows<Arch, MR, false>(n, k, alpha, a, lda, b, ldb, c, ldc);
}

}  // namespace detail

/// C (m, n) = alpha · A (m, k) · B (k, n), plus the old C when `accumulate`. Rows of A, B, C are
/// lda, ldb, ldc floats apart.
template <class Arch = xsimd::default_arch>
inline void small_gemm(std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a, std::size_t lda,
                       const float* b, std::size_t ldb, bool accumulate, float* c, std::size_t ldc) noexcept {
  constexpr int MR = 6;  // 6 rows × 2 vectors = 12 accumulators: fits 16 registers (SSE2, AVX2) and 32 (AVX-512)
  std::size_t i = 0;
  for (; i + MR <= m; i += MR)
    detail::small_gemm_rows<Arch, MR>(n, k, alpha, a + i * lda, lda, b, ldb, accumulate, c + i * ldc, ldc);
  switch (m - i) {
    case 5: detail::small_gemm_rows<Arch, 5>(n, k, alpha, a + i * lda, lda, b, ldb, accumulate, c + i * ldc, ldc); break;
    case 4: detail::small_gemm_rows<Arch, 4>(n, k, alpha, a + i * lda, lda, b, ldb, accumulate, c + i * ldc, ldc); break;
    case 3: detail::small_gemm_rows<Arch, 3>(n, k, alpha, a + i * lda, lda, b, ldb, accumulate, c + i * ldc, ldc); break;
    case 2: detail::small_gemm_rows<Arch, 2>(n, k, alpha, a + i * lda, lda, b, ldb, accumulate, c + i * ldc, ldc); break;
    case 1: detail::small_gemm_rows<Arch, 1>(n, k, alpha, a + i * lda, lda, b, ldb, accumulate, c + i * ldc, ldc); break;
    default: break;
  }
}

}  // namespace polyformer::kernels
