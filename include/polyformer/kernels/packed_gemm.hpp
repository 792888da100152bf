#pragma once
/// \file GEMM against a right-hand operand packed ahead of time: C (m, n) = A (m, k) · B (k, n)
/// [+ C] [+ bias on every row]. B is stored once as column panels of NR floats (k rows of NR, the last
/// panel zero-padded), the layout the micro-kernel streams, so a weight is never repacked per product as a
/// BLAS call must do (≈ 15 % of a 128-row product). Register blocking after Goto & van de Geijn (2008),
/// with the B packing hoisted out of the call; rows of A are broadcast straight from memory.
/// Reached through kernels::gemm (gemm.hpp); linear layers pack their weights with pack_transposed.

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "polyformer/kernels/simd.hpp"

namespace polyformer::kernels {

/// Register tile of the packed micro-kernel for `Arch`: MR rows × NV vectors. AVX-512 has 32 vector
/// registers (8 × 3 = 24 accumulators); AVX2 and SSE2 have 16 (6 × 2 = 12).
template <class Arch>
struct PackedTile {
  static constexpr bool wide_register_file = std::is_base_of_v<xsimd::avx512f, Arch>;
  static constexpr int rows = wide_register_file ? 8 : 6;
  static constexpr int vectors = wide_register_file ? 3 : 2;
  static constexpr std::size_t panel_width = static_cast<std::size_t>(vectors) * batch_f<Arch>::size;
};

/// B (k, n) packed in column panels for the default architecture of this build: every panel panel_width
/// columns wide except the last, which is only as wide as the whole vectors its columns need (so a
/// 64-column weight is a 48- and a 16-column panel under AVX-512, not two of 48).
class PackedMatrix {
 public:
  /// Columns per full panel in this build (48 with AVX-512, 16 with AVX2, 8 with SSE2).
  static constexpr std::size_t panel_width = PackedTile<xsimd::default_arch>::panel_width;
  /// Columns of one vector; every panel is a whole number of them wide.
  static constexpr std::size_t vector_width = batch_f<xsimd::default_arch>::size;

  PackedMatrix() = default;

  /// Packs B = Wᵀ for W (n, k) row-major with rows ldw floats apart: the nn.Linear weight (out, in).
  static PackedMatrix pack_transposed(const float* w, std::size_t n, std::size_t k, std::size_t ldw) {
    PackedMatrix p;
    p.repack_transposed(w, n, k, ldw);
    return p;
  }

  /// The same into this object, reusing its storage when it is large enough (no allocation then): for callers
  /// that pack blocks of a weight on the fly.
  void repack_transposed(const float* w, std::size_t n, std::size_t k, std::size_t ldw) {
    k_ = k;
    n_ = n;
    data_.assign(n == 0 ? 0 : ((panels() - 1) * panel_width + panel_cols(panels() - 1)) * k, 0.0f);
    for (std::size_t panel = 0; panel < panels(); ++panel) {
      float* dst = data_.data() + panel * k * panel_width;
      const std::size_t col0 = panel * panel_width, cols = std::min(panel_width, n - col0);
      const std::size_t width = panel_cols(panel);
      for (std::size_t j = 0; j < cols; ++j) {
        const float* src = w + (col0 + j) * ldw;
        for (std::size_t r = 0; r < k; ++r) dst[r * width + j] = src[r];
      }
    }
  }

  std::size_t rows() const noexcept { return k_; }  ///< k
  std::size_t cols() const noexcept { return n_; }  ///< n
  std::size_t panels() const noexcept { return (n_ + panel_width - 1) / panel_width; }
  /// Stored width of panel p: panel_width, or for the last panel its columns rounded up to whole vectors.
  std::size_t panel_cols(std::size_t p) const noexcept {
    const std::size_t cols = std::min(panel_width, n_ - p * panel_width);
    return (cols + vector_width - 1) / vector_width * vector_width;
  }
  /// Panel p: k rows of panel_cols(p) floats, columns p·panel_width onwards.
  const float* panel(std::size_t p) const noexcept { return data_.data() + p * k_ * panel_width; }
  /// Floats stored (the bytes a product streams are 4× this).
  std::size_t size() const noexcept { return data_.size(); }
  /// B(r, j), for tests and the scalar twin.
  float at(std::size_t r, std::size_t j) const noexcept {
    const std::size_t p = j / panel_width;
    return panel(p)[r * panel_cols(p) + j % panel_width];
  }
  /// Unpacks Bᵀ = W into w (n, k) row-major with rows ldw floats apart: pack_transposed undone exactly.
  void unpack_transposed(float* w, std::size_t ldw) const noexcept {
    for (std::size_t p = 0; p < panels(); ++p) {
      const float* src = panel(p);
      const std::size_t col0 = p * panel_width, cols = std::min(panel_width, n_ - col0), width = panel_cols(p);
      for (std::size_t j = 0; j < cols; ++j)
        for (std::size_t r = 0; r < k_; ++r) w[(col0 + j) * ldw + r] = src[r * width + j];
    }
  }

 private:
  std::size_t k_ = 0, n_ = 0;
  std::vector<float, Eigen::aligned_allocator<float>> data_;  // full panels, then the last one
};

/// Plain triple loop over the packed layout, the reference for packed_gemm.
inline void packed_gemm_scalar(std::size_t m, const float* a, std::size_t lda, const PackedMatrix& b,
                               const float* bias, bool accumulate, float* c, std::size_t ldc) noexcept {
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < b.cols(); ++j) {
      float s = 0.0f;
      for (std::size_t p = 0; p < b.rows(); ++p) s += a[i * lda + p] * b.at(p, j);
      if (bias) s += bias[j];
      c[i * ldc + j] = s + (accumulate ? c[i * ldc + j] : 0.0f);
    }
}

namespace detail {

/// One R × (NV·lanes) block of C from R rows of A and one whole panel. All flags are template
/// parameters so the accumulators stay in registers (see small_gemm_block).
template <class Arch, int R, int NV, bool Accumulate, bool Bias>
POLYFORMER_NOINLINE void packed_block(std::size_t k, const float* a, std::size_t lda, const float* panel,
                                      const float* bias, float* c, std::size_t ldc) noexcept {
  using B = batch_f<Arch>;
  constexpr std::size_t W = B::size, NR = NV * W;
  // Few rows leave too few independent accumulators to hide the FMA latency (a matrix-vector product
  // would wait 4 cycles per step): split k over U interleaved accumulator sets, summed at the end.
  constexpr int U = R == 1 ? 4 : (R == 2 ? 2 : 1);
  B acc[U][R][NV];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[u][r][v] = B(0.0f);
  const auto step = [&](std::size_t p, B(&sums)[R][NV]) {
    B bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = B::load_unaligned(panel + p * NR + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const B ar(a[r * lda + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) sums[r][v] = xsimd::fma(ar, bv[v], sums[r][v]);
    }
  };
  std::size_t p = 0;
  for (; p + U <= k; p += U)
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) step(p + std::size_t(u), acc[u]);
  for (; p < k; ++p) step(p, acc[0]);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* dst = c + r * ldc + v * W;
      B out = acc[0][r][v];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) out += acc[u][r][v];
      if constexpr (Bias) out += B::load_unaligned(bias + v * W);
      if constexpr (Accumulate) out += B::load_unaligned(dst);
      out.store_unaligned(dst);
    }
}

/// R rows of C from one panel `nv` vectors wide holding `cols` valid columns from column col0.
template <class Arch, int R, int NV, bool Accumulate, bool Bias>
void packed_panel(const float* a, std::size_t lda, std::size_t k, const float* panel, std::size_t col0, std::size_t cols,
                  const float* bias, float* c, std::size_t ldc) noexcept {
  constexpr std::size_t NR = static_cast<std::size_t>(NV) * batch_f<Arch>::size;
  if (cols == NR) {
    packed_block<Arch, R, NV, Accumulate, Bias>(k, a, lda, panel, bias + (Bias ? col0 : 0), c + col0, ldc);
    return;
  }
  // Columns short of a whole vector: the kernel writes a full tile, the valid columns are copied out.
  alignas(64) float tile[R * NR];
  packed_block<Arch, R, NV, false, false>(k, a, lda, panel, nullptr, tile, NR);
  for (int r = 0; r < R; ++r)
    for (std::size_t j = 0; j < cols; ++j) {
      float s = tile[std::size_t(r) * NR + j];
      if constexpr (Bias) s += bias[col0 + j];
      float& dst = c[std::size_t(r) * ldc + col0 + j];
      dst = Accumulate ? dst + s : s;
    }
}

/// R rows of C over panels [p0, p1).
template <class Arch, int R, bool Accumulate, bool Bias>
void packed_strip(const float* a, std::size_t lda, const PackedMatrix& b, std::size_t p0, std::size_t p1,
                  const float* bias, float* c, std::size_t ldc) noexcept {
  constexpr int NV = PackedTile<Arch>::vectors;
  constexpr std::size_t NR = PackedTile<Arch>::panel_width, W = batch_f<Arch>::size;
  const std::size_t k = b.rows(), n = b.cols();
  for (std::size_t p = p0; p < p1; ++p) {
    const std::size_t col0 = p * NR, cols = std::min(NR, n - col0);
    const float* panel = b.panel(p);
    switch (b.panel_cols(p) / W) {  // only the last panel is narrower than NV vectors
      case 1: packed_panel<Arch, R, 1, Accumulate, Bias>(a, lda, k, panel, col0, cols, bias, c, ldc); break;
      case 2:
        if constexpr (NV >= 2) packed_panel<Arch, R, 2, Accumulate, Bias>(a, lda, k, panel, col0, cols, bias, c, ldc);
        break;
      default:
        if constexpr (NV >= 3) packed_panel<Arch, R, NV, Accumulate, Bias>(a, lda, k, panel, col0, cols, bias, c, ldc);
        break;
    }
  }
}

/// Rows [0, m) of C over panels [p0, p1): row blocks that stay in L2, strips of MR rows, then the remainder.
template <class Arch, bool Accumulate, bool Bias>
void packed_gemm_panels(std::size_t m, const float* a, std::size_t lda, const PackedMatrix& b, std::size_t p0,
                        std::size_t p1, const float* bias, float* c, std::size_t ldc) noexcept {
  constexpr int MR = PackedTile<Arch>::rows;
  constexpr std::size_t row_block = 24 * MR;  // ≈ 192 rows of A: (192, k ≤ 1024) stays in L2 across panels
  for (std::size_t i0 = 0; i0 < m; i0 += row_block) {
    const std::size_t i1 = std::min(m, i0 + row_block);
    std::size_t i = i0;
    for (; i + MR <= i1; i += MR)
      packed_strip<Arch, MR, Accumulate, Bias>(a + i * lda, lda, b, p0, p1, bias, c + i * ldc, ldc);
    const std::size_t rest = i1 - i;
    if (rest == 0) continue;
    const float* ai = a + i * lda;
    float* ci = c + i * ldc;
    // Remainders 1..MR-1 (MR ≤ 8).
    switch (rest) {
      case 1: packed_strip<Arch, 1, Accumulate, Bias>(ai, lda, b, p0, p1, bias, ci, ldc); break;
      case 2: packed_strip<Arch, 2, Accumulate, Bias>(ai, lda, b, p0, p1, bias, ci, ldc); break;
      case 3: packed_strip<Arch, 3, Accumulate, Bias>(ai, lda, b, p0, p1, bias, ci, ldc); break;
      case 4: packed_strip<Arch, 4, Accumulate, Bias>(ai, lda, b, p0, p1, bias, ci, ldc); break;
      case 5: packed_strip<Arch, 5, Accumulate, Bias>(ai, lda, b, p0, p1, bias, ci, ldc); break;
      case 6:
        if constexpr (MR > 6) packed_strip<Arch, 6, Accumulate, Bias>(ai, lda, b, p0, p1, bias, ci, ldc);
        break;
      case 7:
        if constexpr (MR > 7) packed_strip<Arch, 7, Accumulate, Bias>(ai, lda, b, p0, p1, bias, ci, ldc);
        break;
      default: break;
    }
  }
}

}  // namespace detail

/// C (m, n) = A (m, k) · B, plus bias (n) on every row when bias is not null, plus the old C when
/// `accumulate`; only panels [p0, p1) of B (columns p0·panel_width …) are computed. Rows of A and C are
/// lda and ldc floats apart. On the calling thread; kernels::gemm splits panels over threads.
inline void packed_gemm(std::size_t m, const float* a, std::size_t lda, const PackedMatrix& b, std::size_t p0,
                        std::size_t p1, const float* bias, bool accumulate, float* c, std::size_t ldc) noexcept {
  using Arch = xsimd::default_arch;
  if (m == 0 || p1 <= p0) return;
  if (b.rows() == 0) {  // an empty sum: C = bias (+ C)
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = p0 * PackedMatrix::panel_width; j < std::min(b.cols(), p1 * PackedMatrix::panel_width); ++j)
        c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0.0f) + (bias ? bias[j] : 0.0f);
    return;
  }
  if (accumulate) {
    if (bias) detail::packed_gemm_panels<Arch, true, true>(m, a, lda, b, p0, p1, bias, c, ldc);
    else detail::packed_gemm_panels<Arch, true, false>(m, a, lda, b, p0, p1, bias, c, ldc);
  } else {
    if (bias) detail::packed_gemm_panels<Arch, false, true>(m, a, lda, b, p0, p1, bias, c, ldc);
    else detail::packed_gemm_panels<Arch, false, false>(m, a, lda, b, p0, p1, bias, c, ldc);
  }
}

}  // namespace polyformer::kernels
