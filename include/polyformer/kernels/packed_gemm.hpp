#pragma once
/// \file GEMM against a right-hand operand packed ahead of time: C (m, n) = A (m, k) · B (k, n)
/// [+ C] [+ bias on every row]. B is stored once as column panels of NR floats (k rows of NR, the last
/// panel zero-padded), the layout the micro-kernel streams, so a weight is never repacked per product as a
/// BLAS call must do (≈ 15 % of a 128-row product). Register and cache blocking after Goto & van de Geijn
/// (2008), "Anatomy of High-Performance Matrix Multiplication", with the B packing hoisted out of the call:
/// a block of panels × kc rows stays in L2 while every strip of MR rows of A (kc deep, in L1) passes over it.
///
/// The code path is chosen at run time (kernels::isa(), cpu.hpp): AVX-512 (MR × NV = 8 × 3 vectors of 16),
/// AVX2 + FMA (6 × 2 vectors of 8), or the build's own target through xsimd (the compile-time path). A
/// PackedMatrix is laid out for one path, fixed when it is packed; the block sizes come from the cache
/// sizes CPUID reports. Reached through kernels::gemm (gemm.hpp); linear layers pack with pack_transposed.

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/detail/vector_ops.hpp"
#include "polyformer/kernels/simd.hpp"
#include "polyformer/kernels/weight_allocator.hpp"

namespace polyformer::kernels {

/// Register tile of the packed micro-kernel: MR rows × NV vectors of `lanes` floats. AVX-512 has 32 vector
/// registers (8 × 3 = 24 accumulators); AVX2 and SSE2 have 16 (6 × 2 = 12).
struct PackedTile {
  int rows = 0;           ///< MR
  int vectors = 0;        ///< NV
  std::size_t lanes = 0;  ///< floats a vector
  constexpr std::size_t panel_width() const noexcept { return static_cast<std::size_t>(vectors) * lanes; }
};

/// The tile of the build's own target (xsimd's default architecture): the compile-time path.
inline constexpr PackedTile portable_packed_tile{std::is_base_of_v<xsimd::avx512f, xsimd::default_arch> ? 8 : 6,
                                                 std::is_base_of_v<xsimd::avx512f, xsimd::default_arch> ? 3 : 2,
                                                 batch_f<xsimd::default_arch>::size};

/// The tile of the kernels of `isa`.
constexpr PackedTile packed_tile(Isa isa) noexcept {
  switch (isa) {
    case Isa::avx512: return {8, 3, 16};
    case Isa::avx2: return {6, 2, 8};
    default: return portable_packed_tile;
  }
}

/// B (k, n) packed in column panels for one kernel family (by default the one this process runs, isa()):
/// every panel panel_width() columns wide except the last, which is only as wide as the whole vectors its
/// columns need (so a 64-column weight is a 48- and a 16-column panel under AVX-512, not two of 48).
class PackedMatrix {
 public:
  PackedMatrix() = default;

  /// Packs B = Wᵀ for W (n, k) row-major with rows ldw floats apart: the nn.Linear weight (out, in).
  static PackedMatrix pack_transposed(const float* w, std::size_t n, std::size_t k, std::size_t ldw,
                                      Isa for_isa = kernels::isa()) {
    PackedMatrix p;
    p.repack_transposed(w, n, k, ldw, for_isa);
    return p;
  }

  /// B (k, n) of zeros laid out for `for_isa`: one zero-filled allocation, no packing pass (a layer built before
  /// its weights are loaded).
  static PackedMatrix zeros(std::size_t k, std::size_t n, Isa for_isa = kernels::isa()) {
    PackedMatrix p;
    p.reset("PackedMatrix::zeros", n, k, for_isa);  // a fresh buffer is value-initialized: every float 0
    return p;
  }

  /// Columns [begin, end) of a packed matrix.
  struct Columns {
    const PackedMatrix* from = nullptr;
    std::size_t begin = 0, end = 0;
  };
  /// The runs of columns `runs` — of packed matrices of the same rows, laid out for one kernel family — side by
  /// side, packed anew: one product with it computes those columns of each product, each sum over the same rows in
  /// the same order as there. Copied panel row by panel row, without unpacking. Throws config_error for runs of
  /// different rows or families, or past their matrix's columns.
  static PackedMatrix gather_columns(std::initializer_list<Columns> runs) {
    const char* func = "PackedMatrix::gather_columns";
    if (runs.size() == 0) return PackedMatrix();
    const PackedMatrix& first = *runs.begin()->from;
    std::size_t n = 0;
    for (const Columns& c : runs) {
      if (c.from == nullptr || c.from->rows() != first.rows() || c.from->isa() != first.isa() || c.begin > c.end ||
          c.end > c.from->cols())
        throw config_error(polyformer::detail::cat(func, ": a run of columns ", c.begin, "..", c.end,
                                                   " is not within a matrix of ", first.rows(), " rows packed for ",
                                                   isa_name(first.isa())));
      n += c.end - c.begin;
    }
    PackedMatrix p;
    p.reset(func, n, first.rows(), first.isa());
    const std::size_t k = first.rows(), width = p.panel_width();
    std::size_t j = 0;  // the next column of p
    for (const Columns& c : runs) {
      const PackedMatrix& b = *c.from;
      for (std::size_t col = c.begin; col < c.end;) {  // a stretch within one panel of b and one of p
        const std::size_t bp = col / b.panel_width(), bo = col % b.panel_width(), pp = j / width, po = j % width;
        const std::size_t len = std::min({b.panel_width() - bo, width - po, c.end - col});
        const float* src = b.panel(bp) + bo;
        float* dst = p.data_.data() + pp * k * width + po;
        const std::size_t ls = b.panel_cols(bp), ld = p.panel_cols(pp);
        for (std::size_t r = 0; r < k; ++r) std::copy_n(src + r * ls, len, dst + r * ld);
        col += len;
        j += len;
      }
    }
    return p;
  }

  /// The same into this object, reusing its storage when it is large enough (no allocation then): for callers
  /// that pack blocks of a weight on the fly.
  /// Throws config_error when this CPU cannot run `for_isa`'s kernels (so do the other packers).
  void repack_transposed(const float* w, std::size_t n, std::size_t k, std::size_t ldw, Isa for_isa = kernels::isa()) {
    reset("PackedMatrix::repack_transposed", n, k, for_isa);
    const std::size_t nr = panel_width();
    for (std::size_t panel = 0; panel < panels(); ++panel) {
      float* dst = data_.data() + panel * k * nr;
      const std::size_t col0 = panel * nr, cols = std::min(nr, n - col0);
      const std::size_t width = panel_cols(panel);
      for (std::size_t j = 0; j < cols; ++j) {
        const float* src = w + (col0 + j) * ldw;
        for (std::size_t r = 0; r < k; ++r) dst[r * width + j] = src[r];
      }
    }
  }

  /// Packs B (k, n) itself, row-major with rows ldb floats apart, reusing this object's storage.
  void repack(const float* b, std::size_t k, std::size_t n, std::size_t ldb, Isa for_isa = kernels::isa()) {
    reset("PackedMatrix::repack", n, k, for_isa);
    const std::size_t nr = panel_width();
    for (std::size_t panel = 0; panel < panels(); ++panel) {
      float* dst = data_.data() + panel * k * nr;
      const std::size_t col0 = panel * nr, cols = std::min(nr, n - col0), width = panel_cols(panel);
      for (std::size_t r = 0; r < k; ++r) std::copy_n(b + r * ldb + col0, cols, dst + r * width);
    }
  }

  /// Multiplies every packed value by s (the zero padding stays zero): a product with s·B at no extra pass over C.
  void scale(float s) noexcept {
    for (float& v : data_) v *= s;
  }

  std::size_t rows() const noexcept { return k_; }  ///< k
  std::size_t cols() const noexcept { return n_; }  ///< n
  Isa isa() const noexcept { return isa_; }         ///< the kernel family it is laid out for
  PackedTile tile() const noexcept { return tile_; }
  /// Columns per full panel (48 for AVX-512, 16 for AVX2, the build's own otherwise).
  std::size_t panel_width() const noexcept { return tile_.panel_width(); }
  /// Columns of one vector; every panel is a whole number of them wide.
  std::size_t vector_width() const noexcept { return tile_.lanes; }
  std::size_t panels() const noexcept { return n_ == 0 ? 0 : (n_ + panel_width() - 1) / panel_width(); }
  /// Stored width of panel p: panel_width(), or for the last panel its columns rounded up to whole vectors.
  std::size_t panel_cols(std::size_t p) const noexcept {
    const std::size_t cols = std::min(panel_width(), n_ - p * panel_width());
    return (cols + vector_width() - 1) / vector_width() * vector_width();
  }
  /// Panel p: k rows of panel_cols(p) floats, columns p·panel_width() onwards.
  const float* panel(std::size_t p) const noexcept { return data_.data() + p * k_ * panel_width(); }
  /// Floats stored (the bytes a product streams are 4× this).
  std::size_t size() const noexcept { return data_.size(); }
  /// B(r, j), for tests and the scalar twin.
  float at(std::size_t r, std::size_t j) const noexcept {
    const std::size_t p = j / panel_width();
    return panel(p)[r * panel_cols(p) + j % panel_width()];
  }
  /// Unpacks B into b (k, n) row-major with rows ldb floats apart: contiguous runs of each panel's rows.
  void unpack(float* b, std::size_t ldb) const noexcept {
    for (std::size_t p = 0; p < panels(); ++p) {
      const float* src = panel(p);
      const std::size_t col0 = p * panel_width(), cols = std::min(panel_width(), n_ - col0), width = panel_cols(p);
      for (std::size_t r = 0; r < k_; ++r) std::copy_n(src + r * width, cols, b + r * ldb + col0);
    }
  }
  /// Unpacks Bᵀ = W into w (n, k) row-major with rows ldw floats apart: pack_transposed undone exactly.
  void unpack_transposed(float* w, std::size_t ldw) const noexcept {
    for (std::size_t p = 0; p < panels(); ++p) {
      const float* src = panel(p);
      const std::size_t col0 = p * panel_width(), cols = std::min(panel_width(), n_ - col0), width = panel_cols(p);
      for (std::size_t j = 0; j < cols; ++j)
        for (std::size_t r = 0; r < k_; ++r) w[(col0 + j) * ldw + r] = src[r * width + j];
    }
  }

 private:
  /// Sizes this object for B (k, n) laid out for `for_isa`, keeping its storage, with the last panel's padding
  /// columns zero (the packers write every other float: a repack does not clear the buffer first).
  void reset(const char* func, std::size_t n, std::size_t k, Isa for_isa) {
    if (!cpu_supports(for_isa))
      throw config_error(polyformer::detail::cat(func, ": for_isa is ", isa_name(for_isa),
                                                 ", which this CPU does not support"));
    isa_ = for_isa;
    tile_ = packed_tile(for_isa);
    k_ = k;
    n_ = n;
    if (n == 0) {
      data_.clear();
      return;
    }
    const std::size_t last = panels() - 1, width = panel_cols(last), cols = n - last * panel_width();
    data_.resize((last * panel_width() + width) * k);
    float* tail = data_.data() + last * k * panel_width();
    for (std::size_t r = 0; r < k && cols < width; ++r) std::fill(tail + r * width + cols, tail + (r + 1) * width, 0.0f);
  }

  Isa isa_ = Isa::portable;
  PackedTile tile_ = portable_packed_tile;
  std::size_t k_ = 0, n_ = 0;
  std::vector<float, WeightAllocator<float>> data_;  // full panels, then the last one
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

/// Cache blocking of a packed product: kc rows of B at a time (a strip of MR rows of A, kc deep, fills at most a
/// quarter of L1, leaving room for the panel rows streaming past it) and `panels` panels at a time (kc × that
/// many panels fill at most half of L2).
struct PackedBlocking {
  std::size_t kc = 0;
  std::size_t panels = 0;
};

/// The blocking for tile `tile` on a CPU with the given per-core L1d and L2 sizes.
constexpr PackedBlocking packed_blocking(PackedTile tile, std::size_t l1d_bytes, std::size_t l2_bytes) noexcept {
  const std::size_t strip_row_bytes = static_cast<std::size_t>(tile.rows) * sizeof(float);
  std::size_t kc = std::max<std::size_t>(64, l1d_bytes / 4 / strip_row_bytes) / 16 * 16;
  const std::size_t panel_row_bytes = tile.panel_width() * sizeof(float);
  const std::size_t panels = std::max<std::size_t>(1, l2_bytes / 2 / (kc * panel_row_bytes));
  return {kc, panels};
}

/// The blocking of a product of m rows over B with `depth` steps and `panels` panels: fewer rows than the register
/// tile (a matrix-vector product when decoding) reuse nothing of B, so B streams once, each panel read whole, one
/// after the other (depth blocks would turn that one sequential stream into one per panel, each restarting the
/// hardware prefetcher); more rows block for this CPU's caches (packed_blocking).
inline PackedBlocking product_blocking(PackedTile tile, std::size_t m, std::size_t depth, std::size_t panels) noexcept {
  if (m < static_cast<std::size_t>(tile.rows)) return {std::max<std::size_t>(depth, 1), std::max<std::size_t>(panels, 1)};
  return packed_blocking(tile, cpu().l1d_bytes, cpu().l2_bytes);
}

namespace detail {

/// What every fp32 kernel set shares: float A and B, one float a column per depth step, PackedMatrix's layout.
struct Fp32Layout {
  using a_type = float;
  using b_type = float;
  static constexpr std::size_t step = 1;
  /// Depth steps of a packed matrix (its rows k), and panel p from depth step d0 on.
  static std::size_t depth(const PackedMatrix& b) noexcept { return b.rows(); }
  static const float* panel_rows(const PackedMatrix& b, std::size_t p, std::size_t d0) noexcept {
    return b.panel(p) + d0 * b.panel_cols(p);
  }
};

/// The fp32 kernel sets: PackedMatrix's layout with each instruction set's vector operations (vector_ops.hpp).
struct PortableOps : Fp32Layout, PortableVectorOps {};
#if POLYFORMER_RUNTIME_DISPATCH
struct Avx2Ops : Fp32Layout, Avx2VectorOps {};      // run only where cpu().avx2
struct Avx512Ops : Fp32Layout, Avx512VectorOps {};  // run only where cpu().avx512
#endif

#define POLYFORMER_PACKED_KERNELS PortablePackedKernels
#define POLYFORMER_PACKED_TARGET
#define POLYFORMER_PACKED_OPS PortableOps
#define POLYFORMER_PACKED_ROWS portable_packed_tile.rows
#define POLYFORMER_PACKED_VECTORS portable_packed_tile.vectors
#include "polyformer/kernels/detail/packed_kernel_body.hpp"  // undefines the five macros

#if POLYFORMER_RUNTIME_DISPATCH
#define POLYFORMER_PACKED_KERNELS Avx2PackedKernels
#define POLYFORMER_PACKED_TARGET POLYFORMER_TARGET_AVX2
#define POLYFORMER_PACKED_OPS Avx2Ops
#define POLYFORMER_PACKED_ROWS 6
#define POLYFORMER_PACKED_VECTORS 2
#include "polyformer/kernels/detail/packed_kernel_body.hpp"  // undefines the five macros

#define POLYFORMER_PACKED_KERNELS Avx512PackedKernels
#define POLYFORMER_PACKED_TARGET POLYFORMER_TARGET_AVX512
#define POLYFORMER_PACKED_OPS Avx512Ops
#define POLYFORMER_PACKED_ROWS 8
#define POLYFORMER_PACKED_VECTORS 3
#include "polyformer/kernels/detail/packed_kernel_body.hpp"  // undefines the five macros
#endif

/// R rows of C from kb depth steps of one panel (its rows from the block's depth on), which holds `cols` valid
/// columns from column col0. The bias (if not null) and the old C (if load_c) are added at the store. K is a
/// kernel set: its element types, its block<R, NV>, and how its matrix type is laid out (depth, panel_rows).
template <class K, int R, int NV>
void packed_panel(const typename K::a_type* a, std::size_t lda, std::size_t kb, const typename K::b_type* panel,
                  std::size_t col0, std::size_t cols, const float* bias, bool load_c, float* c, std::size_t ldc) noexcept {
  constexpr std::size_t NR = static_cast<std::size_t>(NV) * K::lanes;
  if (cols == NR) {
    K::template block<R, NV>(kb, a, lda, panel, bias ? bias + col0 : nullptr, load_c, c + col0, ldc);
    return;
  }
  // Columns short of a whole vector: the kernel writes a full tile, the valid columns are copied out.
  alignas(64) float tile[R * NR];
  K::template block<R, NV>(kb, a, lda, panel, nullptr, false, tile, NR);
  for (int r = 0; r < R; ++r)
    for (std::size_t j = 0; j < cols; ++j) {
      float s = tile[std::size_t(r) * NR + j];
      if (bias) s += bias[col0 + j];
      float& dst = c[std::size_t(r) * ldc + col0 + j];
      dst = load_c ? dst + s : s;
    }
}

/// R rows of C over panels [p0, p1), depth steps [d0, d0 + kb).
template <class K, int R, class PackedB>
void packed_strip(const typename K::a_type* a, std::size_t lda, const PackedB& b, std::size_t p0, std::size_t p1,
                  std::size_t d0, std::size_t kb, const float* bias, bool load_c, float* c, std::size_t ldc) noexcept {
  constexpr int NV = K::vectors;
  constexpr std::size_t NR = static_cast<std::size_t>(NV) * K::lanes;
  const std::size_t n = b.cols();
  for (std::size_t p = p0; p < p1; ++p) {
    const std::size_t col0 = p * NR, cols = std::min(NR, n - col0);
    const auto* panel = K::panel_rows(b, p, d0);
    switch (b.panel_cols(p) / K::lanes) {  // only the last panel is narrower than NV vectors
      case 1: packed_panel<K, R, 1>(a + d0, lda, kb, panel, col0, cols, bias, load_c, c, ldc); break;
      case 2:
        if constexpr (NV >= 2) packed_panel<K, R, 2>(a + d0, lda, kb, panel, col0, cols, bias, load_c, c, ldc);
        break;
      default:
        if constexpr (NV >= 3) packed_panel<K, R, NV>(a + d0, lda, kb, panel, col0, cols, bias, load_c, c, ldc);
        break;
    }
  }
}

/// Rows [0, m) of C over panels [p0, p1): blocks of panels that stay in L2, depth blocks of kc steps whose
/// strips of A stay in L1, strips of MR rows, then the remaining rows. Rows of A are lda elements apart.
template <class K, class PackedB>
void packed_gemm_blocked(std::size_t m, const typename K::a_type* a, std::size_t lda, const PackedB& b, std::size_t p0,
                         std::size_t p1, const float* bias, bool accumulate, float* c, std::size_t ldc,
                         PackedBlocking blocking) noexcept {
  constexpr int MR = K::rows;
  static_assert(MR >= 1 && MR <= 8, "packed_gemm_blocked handles row remainders up to 7");
  const std::size_t k = K::depth(b), kc = blocking.kc;
  for (std::size_t j0 = p0; j0 < p1; j0 += blocking.panels) {
    const std::size_t j1 = std::min(p1, j0 + blocking.panels);
    std::size_t kb = 0;
    for (std::size_t d0 = 0; d0 < k; d0 += kb) {
      kb = k - d0 <= kc + kc / 4 ? k - d0 : kc;  // a last block under kc / 4 joins the one before it
      const float* block_bias = d0 == 0 ? bias : nullptr;
      const bool load_c = d0 != 0 || accumulate;
      std::size_t i = 0;
      for (; i + MR <= m; i += MR)
        packed_strip<K, MR>(a + i * lda, lda, b, j0, j1, d0, kb, block_bias, load_c, c + i * ldc, ldc);
      const auto* ai = a + i * lda;
      float* ci = c + i * ldc;
      switch (m - i) {
        case 1: packed_strip<K, 1>(ai, lda, b, j0, j1, d0, kb, block_bias, load_c, ci, ldc); break;
        case 2: packed_strip<K, 2>(ai, lda, b, j0, j1, d0, kb, block_bias, load_c, ci, ldc); break;
        case 3: packed_strip<K, 3>(ai, lda, b, j0, j1, d0, kb, block_bias, load_c, ci, ldc); break;
        case 4: packed_strip<K, 4>(ai, lda, b, j0, j1, d0, kb, block_bias, load_c, ci, ldc); break;
        case 5: packed_strip<K, 5>(ai, lda, b, j0, j1, d0, kb, block_bias, load_c, ci, ldc); break;
        case 6:
          if constexpr (MR > 6) packed_strip<K, 6>(ai, lda, b, j0, j1, d0, kb, block_bias, load_c, ci, ldc);
          break;
        case 7:
          if constexpr (MR > 7) packed_strip<K, 7>(ai, lda, b, j0, j1, d0, kb, block_bias, load_c, ci, ldc);
          break;
        default: break;
      }
    }
  }
}

}  // namespace detail

/// Below this many flops a packed product runs on the calling thread: a second thread costs more than it saves.
inline constexpr double packed_split_min_flops = 1e6;

/// The thread split every packed product uses: run(r0, r1, p0, p1) over rows [0, m) and panels [0, panels) on
/// up to `threads` threads — by panels when there are at least two a thread (or too few rows to split), else by
/// rows; by rows whenever `prefer_rows` (a product bound by C's traffic). Below packed_split_min_flops (`flops`)
/// on the calling thread.
template <class Run>
void split_packed_product(std::size_t m, std::size_t panels, double flops, int threads, bool prefer_rows, Run&& run) {
  const int t = flops < packed_split_min_flops ? 1 : effective_threads(threads);
  const auto tt = static_cast<std::size_t>(t);
  if (t == 1) {
    run(std::size_t{0}, m, std::size_t{0}, panels);
  } else if (!prefer_rows && (panels >= 2 * tt || m < 2 * tt)) {
    parallel_chunks(static_cast<Index>(panels), t,
                    [&](Index p0, Index p1, int) { run(std::size_t{0}, m, std::size_t(p0), std::size_t(p1)); });
  } else {
    parallel_chunks(static_cast<Index>(m), t,
                    [&](Index r0, Index r1, int) { run(std::size_t(r0), std::size_t(r1), std::size_t{0}, panels); });
  }
}

/// C (m, n) = A (m, k) · B, plus bias (n) on every row when bias is not null, plus the old C when
/// `accumulate`; only panels [p0, p1) of B (columns p0·panel_width() …) are computed. Rows of A and C are
/// lda and ldc floats apart. On the calling thread with the kernels B was packed for; kernels::gemm splits
/// panels over threads. `blocking` is chosen by product_blocking when left {} (tests pass small blocks).
inline void packed_gemm(std::size_t m, const float* a, std::size_t lda, const PackedMatrix& b, std::size_t p0,
                        std::size_t p1, const float* bias, bool accumulate, float* c, std::size_t ldc,
                        PackedBlocking blocking = {}) noexcept {
  if (m == 0 || p1 <= p0) return;
  if (blocking.kc == 0 || blocking.panels == 0) blocking = product_blocking(b.tile(), m, b.rows(), b.panels());
  if (b.rows() == 0) {  // an empty sum: C = bias (+ C)
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = p0 * b.panel_width(); j < std::min(b.cols(), p1 * b.panel_width()); ++j)
        c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0.0f) + (bias ? bias[j] : 0.0f);
    return;
  }
  switch (b.isa()) {
#if POLYFORMER_RUNTIME_DISPATCH
    case Isa::avx512:
      detail::packed_gemm_blocked<detail::Avx512PackedKernels>(m, a, lda, b, p0, p1, bias, accumulate, c, ldc,
                                                                        blocking);
      return;
    case Isa::avx2:
      detail::packed_gemm_blocked<detail::Avx2PackedKernels>(m, a, lda, b, p0, p1, bias, accumulate, c, ldc,
                                                                        blocking);
      return;
#endif
    default:
      detail::packed_gemm_blocked<detail::PortablePackedKernels>(m, a, lda, b, p0, p1, bias, accumulate, c, ldc,
                                                                        blocking);
      return;
  }
}

}  // namespace polyformer::kernels
