#pragma once
/// \file Register-blocked GEMM micro-kernels for products too small for a BLAS call to pay off (the
/// attention tiles: 128 × 256 × 64). C (m, n) = alpha · A (m, k) · B (k, n) [+ C], all row-major with
/// strides, no packing: rows of A are broadcast, rows of B loaded as vectors — the register blocking of
/// Goto & van de Geijn (2008), without its cache-blocking layers. Reached through kernels::gemm. The kernels
/// are chosen at run time like the packed ones: AVX-512 (6 rows × 4 vectors of 16), AVX2 + FMA (6 × 2 of 8), or
/// the build's own target through xsimd (6 × 2); one body, detail/small_kernel_body.hpp, compiled for each.

#include <cstddef>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_ops.hpp"
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

#define POLYFORMER_SMALL_KERNELS PortableSmallKernels
#define POLYFORMER_SMALL_TARGET
#define POLYFORMER_SMALL_OPS PortableVectorOps
#define POLYFORMER_SMALL_ROWS 6  // 6 rows × 2 vectors = 12 accumulators: fits 16 registers (SSE2, AVX2)
#define POLYFORMER_SMALL_VECTORS 2
#include "polyformer/kernels/detail/small_kernel_body.hpp"  // undefines the five macros

#if POLYFORMER_RUNTIME_DISPATCH
#define POLYFORMER_SMALL_KERNELS Avx2SmallKernels
#define POLYFORMER_SMALL_TARGET POLYFORMER_TARGET_AVX2
#define POLYFORMER_SMALL_OPS Avx2VectorOps
#define POLYFORMER_SMALL_ROWS 6
#define POLYFORMER_SMALL_VECTORS 2
#include "polyformer/kernels/detail/small_kernel_body.hpp"  // undefines the five macros

// 6 rows × 4 vectors = 24 accumulators of 32 registers; 64 columns, one attention head of 64, per block.
#define POLYFORMER_SMALL_KERNELS Avx512SmallKernels
#define POLYFORMER_SMALL_TARGET POLYFORMER_TARGET_AVX512
#define POLYFORMER_SMALL_OPS Avx512VectorOps
#define POLYFORMER_SMALL_ROWS 6
#define POLYFORMER_SMALL_VECTORS 4
#include "polyformer/kernels/detail/small_kernel_body.hpp"  // undefines the five macros
#endif

/// All columns of an R-row strip: blocks of NV vectors, then one narrower block whose last vector is masked.
template <class K, int R, bool Acc>
void small_gemm_rows(std::size_t n, std::size_t k, float alpha, const float* a, std::size_t lda, const float* b,
                     std::size_t ldb, float* c, std::size_t ldc) noexcept {
  constexpr int NV = K::vectors;
  constexpr std::size_t W = K::lanes, NR = NV * W;
  std::size_t j = 0;
  for (; j + NR <= n; j += NR) K::template block<R, NV, false, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, 0);
  const std::size_t rest = n - j;
  if (rest == 0) return;
  const std::size_t nv = (rest + W - 1) / W, tail = rest - (nv - 1) * W;  // tail: 1..W
  static_assert(NV >= 1 && NV <= 4);
  switch (nv) {  // 1..NV
    case 1: K::template block<R, 1, true, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, tail); break;
    case 2:
      if constexpr (NV >= 2) K::template block<R, 2, true, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, tail);
      break;
    case 3:
      if constexpr (NV >= 3) K::template block<R, 3, true, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, tail);
      break;
    default:
      if constexpr (NV >= 4) K::template block<R, 4, true, Acc>(k, alpha, a, lda, b + j, ldb, c + j, ldc, tail);
      break;
  }
}

template <class K, int R>
void small_gemm_rows(std::size_t n, std::size_t k, float alpha, const float* a, std::size_t lda, const float* b,
                     std::size_t ldb, bool accumulate, float* c, std::size_t ldc) noexcept {
  if (accumulate) small_gemm_rows<K, R, true>(n, k, alpha, a, lda, b, ldb, c, ldc);
  else small_gemm_rows<K, R, false>(n, k, alpha, a, lda, b, ldb, c, ldc);
}

/// Every row of C with kernel set K: strips of K::rows, then the remaining rows as one strip.
template <class K>
void small_gemm_with(std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a, std::size_t lda,
                     const float* b, std::size_t ldb, bool accumulate, float* c, std::size_t ldc) noexcept {
  constexpr int MR = K::rows;
  static_assert(MR == 6, "the row remainders below are written for 6-row strips");
  std::size_t i = 0;
  for (; i + MR <= m; i += MR)
    small_gemm_rows<K, MR>(n, k, alpha, a + i * lda, lda, b, ldb, accumulate, c + i * ldc, ldc);
  const float* ai = a + i * lda;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 5: small_gemm_rows<K, 5>(n, k, alpha, ai, lda, b, ldb, accumulate, ci, ldc); break;
    case 4: small_gemm_rows<K, 4>(n, k, alpha, ai, lda, b, ldb, accumulate, ci, ldc); break;
    case 3: small_gemm_rows<K, 3>(n, k, alpha, ai, lda, b, ldb, accumulate, ci, ldc); break;
    case 2: small_gemm_rows<K, 2>(n, k, alpha, ai, lda, b, ldb, accumulate, ci, ldc); break;
    case 1: small_gemm_rows<K, 1>(n, k, alpha, ai, lda, b, ldb, accumulate, ci, ldc); break;
    default: break;
  }
}

}  // namespace detail

/// C (m, n) = alpha · A (m, k) · B (k, n), plus the old C when `accumulate`. Rows of A, B, C are
/// lda, ldb, ldc floats apart. `isa` picks the kernels (default: this process's, kernels::isa()); tests pass
/// each family the CPU runs.
inline void small_gemm(std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a, std::size_t lda,
                       const float* b, std::size_t ldb, bool accumulate, float* c, std::size_t ldc,
                       Isa isa = kernels::isa()) noexcept {
  switch (isa) {
#if POLYFORMER_RUNTIME_DISPATCH
    case Isa::avx512:
      if (cpu().avx512) {
        detail::small_gemm_with<detail::Avx512SmallKernels>(m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
        return;
      }
      break;
    case Isa::avx2:
      if (cpu().avx2) {
        detail::small_gemm_with<detail::Avx2SmallKernels>(m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
        return;
      }
      break;
#endif
    default: break;
  }
  detail::small_gemm_with<detail::PortableSmallKernels>(m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
}

}  // namespace polyformer::kernels
