#pragma once
/// \file bf16 GEMM for linear layers: C (m, n) = bf16(A) (m, k) · B (k, n) [+ bias on every row], with B = Wᵀ
/// stored once in bf16 (half of fp32's bytes) and A rounded to bf16 on every call; products of bf16 pairs are
/// summed in fp32. bf16 is fp32 with the low 16 bits of the significand dropped (8 significant bits), rounded
/// to nearest even here (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training").
///
/// Layout: panels of 48 columns (the last one as wide as the whole 16-column vectors it needs), each holding
/// the depth in pairs: for pair q, column j stores B(2q, j), B(2q + 1, j) side by side — the operand order of
/// `vdpbf16ps`, which adds a·b + a'·b' of one pair into an fp32 lane. An odd depth is padded with a zero row.
/// Code paths, chosen at run time (bf16_path()): AVX512-BF16 (`vdpbf16ps`, 8 × 3 register tile, the fp32
/// micro-kernel's body in detail/packed_kernel_body.hpp with bf16 operations, and its cache blocking) or portable
/// C++ over the same layout (fp32 arithmetic on the widened values). AMX tile products are not written yet.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <Eigen/Core>

#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/packed_gemm.hpp"

namespace polyformer::kernels {

/// bf16 bits of x, rounded to nearest even; a NaN stays a (quiet) NaN.
inline std::uint16_t to_bf16(float x) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// The float a bf16 value stands for (exact).
inline float from_bf16(std::uint16_t h) noexcept {
  const std::uint32_t u = std::uint32_t{h} << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

/// x[r] and x[r + 1] (0 past k) as one 32-bit bf16 pair, the first in the low half.
inline std::uint32_t bf16_pair(const float* x, std::size_t r, std::size_t k) noexcept {
  return std::uint32_t{to_bf16(x[r])} | (r + 1 < k ? std::uint32_t{to_bf16(x[r + 1])} << 16 : 0u);
}

/// The bf16 code paths: "avx512-bf16" or "portable".
enum class Bf16Path { portable, avx512_bf16 };

inline const char* bf16_path_name(Bf16Path p) noexcept { return p == Bf16Path::avx512_bf16 ? "avx512-bf16" : "portable"; }

/// Whether this CPU runs path `p`.
inline bool cpu_supports(Bf16Path p) noexcept { return p == Bf16Path::portable || cpu().avx512_bf16; }

/// The path this process uses: AVX512-BF16 where the CPU has it (and POLYFORMER_ISA does not cap the kernels
/// below avx512), else portable.
inline Bf16Path bf16_path() noexcept {
  return cpu().avx512_bf16 && isa() == Isa::avx512 ? Bf16Path::avx512_bf16 : Bf16Path::portable;
}

/// B (k, n) = Wᵀ in bf16, in the panels of the file comment.
class Bf16Matrix {
 public:
  static constexpr PackedTile tile{8, 3, 16};  ///< 8 rows × 48 columns of C per micro-kernel call
  static constexpr std::size_t panel_width = tile.panel_width(), vector_width = tile.lanes;

  Bf16Matrix() = default;

  /// Packs Wᵀ for W (n, k) row-major floats, rows ldw apart, each rounded to bf16.
  static Bf16Matrix pack_transposed(const float* w, std::size_t n, std::size_t k, std::size_t ldw) {
    Bf16Matrix p;
    p.repack_transposed(w, n, k, ldw);
    return p;
  }

  /// The same into this object, reusing its storage when it is large enough (no allocation then): for callers that
  /// pack operands on every call (attention's keys).
  void repack_transposed(const float* w, std::size_t n, std::size_t k, std::size_t ldw) {
    reset(n, k);
    for (std::size_t p = 0; p < panels(); ++p) {
      std::uint16_t* dst = data_.data() + p * pairs() * panel_width * 2;
      const std::size_t width = panel_cols(p), j0 = p * panel_width, cols = std::min(panel_width, n - j0);
      for (std::size_t j = 0; j < cols; ++j) {  // column j of the panel: row j0 + j of W, pair by pair
        const float* src = w + (j0 + j) * ldw;
        std::uint16_t* col = dst + 2 * j;
        for (std::size_t r = 0; r < k; ++r) col[(r / 2) * width * 2 + r % 2] = to_bf16(src[r]);
      }
    }
  }

  /// Packs B (k, n) itself, row-major floats with rows ldb apart, each rounded to bf16, reusing this object's
  /// storage (attention's values).
  void repack(const float* b, std::size_t k, std::size_t n, std::size_t ldb) {
    reset(n, k);
    for (std::size_t p = 0; p < panels(); ++p) {
      std::uint16_t* dst = data_.data() + p * pairs() * panel_width * 2;
      const std::size_t width = panel_cols(p), j0 = p * panel_width, cols = std::min(panel_width, n - j0);
      for (std::size_t r = 0; r < k; ++r) {  // row r of B into the even or odd halves of its pair row
        const float* src = b + r * ldb + j0;
        std::uint16_t* row = dst + (r / 2) * width * 2 + r % 2;
        for (std::size_t j = 0; j < cols; ++j) row[2 * j] = to_bf16(src[j]);
      }
    }
  }

  /// Packs Wᵀ for W (n, k) given as little-endian bf16 values (2 bytes each, rows ldw values apart, any
  /// alignment): a BF16 checkpoint tensor, copied bit for bit, never widened to float.
  static Bf16Matrix pack_transposed_bf16(const std::byte* w, std::size_t n, std::size_t k, std::size_t ldw) {
    Bf16Matrix p(n, k);
    for (std::size_t j = 0; j < n; ++j)
      for (std::size_t r = 0; r < k; ++r) {
        const auto* src = reinterpret_cast<const unsigned char*>(w) + 2 * (j * ldw + r);
        p.slot(r, j) = static_cast<std::uint16_t>(src[0] | (src[1] << 8));
      }
    return p;
  }

  std::size_t rows() const noexcept { return k_; }               ///< k
  std::size_t cols() const noexcept { return n_; }               ///< n
  std::size_t pairs() const noexcept { return (k_ + 1) / 2; }    ///< depth in pairs
  std::size_t panels() const noexcept { return (n_ + panel_width - 1) / panel_width; }
  /// Stored width of panel p: 48, or for the last panel its columns rounded up to whole vectors.
  std::size_t panel_cols(std::size_t p) const noexcept {
    const std::size_t cols = std::min(panel_width, n_ - p * panel_width);
    return (cols + vector_width - 1) / vector_width * vector_width;
  }
  /// Panel p: pairs() rows of panel_cols(p) column pairs (2 bf16 values each).
  const std::uint16_t* panel(std::size_t p) const noexcept { return data_.data() + p * pairs() * panel_width * 2; }
  /// Bytes stored.
  std::size_t bytes() const noexcept { return data_.size() * 2; }
  /// B(r, j) as bf16 bits.
  std::uint16_t bits(std::size_t r, std::size_t j) const noexcept {
    const std::size_t p = j / panel_width;
    return panel(p)[(r / 2) * panel_cols(p) * 2 + (j % panel_width) * 2 + r % 2];
  }
  /// B(r, j) as a float (exact).
  float at(std::size_t r, std::size_t j) const noexcept { return from_bf16(bits(r, j)); }
  /// Writes Bᵀ = W (n, k), widened to float, rows ldw apart.
  void unpack_transposed(float* w, std::size_t ldw) const noexcept {
    for (std::size_t j = 0; j < n_; ++j)
      for (std::size_t r = 0; r < k_; ++r) w[j * ldw + r] = at(r, j);
  }

 private:
  Bf16Matrix(std::size_t n, std::size_t k) { reset(n, k); }
  /// Sized for B (k, n), every slot zero (the padding of an odd depth and of the last panel stays so).
  void reset(std::size_t n, std::size_t k) {
    k_ = k;
    n_ = n;
    data_.assign(n == 0 ? 0 : ((panels() - 1) * panel_width + panel_cols(panels() - 1)) * pairs() * 2, 0);
  }
  std::uint16_t& slot(std::size_t r, std::size_t j) noexcept {
    const std::size_t p = j / panel_width;
    return data_[p * pairs() * panel_width * 2 + (r / 2) * panel_cols(p) * 2 + (j % panel_width) * 2 + r % 2];
  }

  std::size_t k_ = 0, n_ = 0;
  std::vector<std::uint16_t, WeightAllocator<std::uint16_t>> data_;  // on huge pages from 2 MiB (weight_allocator.hpp)
};

namespace detail {

/// Depth and panel access shared by the bf16 kernel sets: A as bf16 pairs (one 32-bit word per pair, low half
/// first), B as the panels of Bf16Matrix.
struct Bf16Layout {
  using a_type = std::uint32_t;
  using b_type = std::uint16_t;
  static constexpr std::size_t lanes = Bf16Matrix::vector_width;
  static std::size_t depth(const Bf16Matrix& b) noexcept { return b.pairs(); }
  static const std::uint16_t* panel_rows(const Bf16Matrix& b, std::size_t p, std::size_t q0) noexcept {
    return b.panel(p) + q0 * b.panel_cols(p) * 2;
  }
};

/// Portable kernels: fp32 arithmetic on the widened bf16 values, vectorized by the compiler.
struct PortableBf16Kernels : Bf16Layout {
  static constexpr int rows = Bf16Matrix::tile.rows, vectors = Bf16Matrix::tile.vectors;

  template <int R, int NV>
  POLYFORMER_NOINLINE static void block(std::size_t kp, const std::uint32_t* a, std::size_t lda,
                                        const std::uint16_t* panel, const float* bias, bool load_c, float* c,
                                        std::size_t ldc) noexcept {
    constexpr std::size_t NR = std::size_t(NV) * lanes;
    float acc[R][NR] = {};
    for (std::size_t q = 0; q < kp; ++q) {
      const std::uint16_t* row = panel + q * NR * 2;
      for (int r = 0; r < R; ++r) {
        const std::uint32_t pair = a[std::size_t(r) * lda + q];
        const float a0 = from_bf16(static_cast<std::uint16_t>(pair)), a1 = from_bf16(static_cast<std::uint16_t>(pair >> 16));
        for (std::size_t j = 0; j < NR; ++j) acc[r][j] += a0 * from_bf16(row[2 * j]) + a1 * from_bf16(row[2 * j + 1]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (std::size_t j = 0; j < NR; ++j) {
        float& dst = c[std::size_t(r) * ldc + j];
        float s = acc[r][j] + (bias ? bias[j] : 0.0f);
        dst = load_c ? dst + s : s;
      }
  }
};

#if POLYFORMER_RUNTIME_DISPATCH
#define POLYFORMER_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")))

/// AVX512-BF16 operations: `vdpbf16ps` adds one pair of products a lane per instruction.
struct Avx512Bf16Ops : Bf16Layout {
  using acc = __m512;
  using operand = __m512bh;
  static constexpr std::size_t step = 2;  // a bf16 pair a column per depth step
  POLYFORMER_TARGET_AVX512_BF16 static acc zero() noexcept { return _mm512_setzero_ps(); }
  POLYFORMER_TARGET_AVX512_BF16 static acc load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  POLYFORMER_TARGET_AVX512_BF16 static operand load_b(const std::uint16_t* p) noexcept {
    return reinterpret_cast<operand>(_mm512_loadu_si512(p));
  }
  POLYFORMER_TARGET_AVX512_BF16 static operand broadcast_a(std::uint32_t pair) noexcept {
    return reinterpret_cast<operand>(_mm512_set1_epi32(static_cast<int>(pair)));
  }
  POLYFORMER_TARGET_AVX512_BF16 static acc fma(operand a, operand b, acc c) noexcept { return _mm512_dpbf16_ps(c, a, b); }
  POLYFORMER_TARGET_AVX512_BF16 static acc add(acc a, acc b) noexcept { return _mm512_add_ps(a, b); }
  POLYFORMER_TARGET_AVX512_BF16 static void store(float* p, acc v) noexcept { _mm512_storeu_ps(p, v); }

  /// Row x (k floats) as bf16 pairs, rounded to nearest even by `vcvtne2ps2bf16`; a zero pads an odd k.
  POLYFORMER_TARGET_AVX512_BF16 static void convert_row(const float* x, std::size_t k, std::uint32_t* out) noexcept {
    std::size_t r = 0;
    for (; r + 32 <= k; r += 32) {
      const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + r + 16), _mm512_loadu_ps(x + r));
      _mm512_storeu_si512(out + r / 2, reinterpret_cast<__m512i>(h));
    }
    for (; r < k; r += 2) out[r / 2] = bf16_pair(x, r, k);
  }
};

#define POLYFORMER_PACKED_KERNELS Avx512Bf16Kernels
#define POLYFORMER_PACKED_TARGET POLYFORMER_TARGET_AVX512_BF16
#define POLYFORMER_PACKED_OPS Avx512Bf16Ops
#define POLYFORMER_PACKED_ROWS 8
#define POLYFORMER_PACKED_VECTORS 3
#include "polyformer/kernels/detail/packed_kernel_body.hpp"  // undefines the five macros
#undef POLYFORMER_TARGET_AVX512_BF16
#endif

/// Grow-only per-thread buffer of A's bf16 pairs.
inline std::vector<std::uint32_t>& bf16_workspace() {
  thread_local std::vector<std::uint32_t> pairs;
  return pairs;
}

}  // namespace detail

/// Row x (k floats) as (k + 1) / 2 bf16 pairs, rounded to nearest even; a zero pads an odd k. `path` must be one
/// this CPU runs.
inline void bf16_pairs(const float* x, std::size_t k, std::uint32_t* out, Bf16Path path = bf16_path()) noexcept {
#if POLYFORMER_RUNTIME_DISPATCH
  if (path == Bf16Path::avx512_bf16) {
    detail::Avx512Bf16Ops::convert_row(x, k, out);
    return;
  }
#endif
  (void)path;
  for (std::size_t r = 0; r < k; r += 2) out[r / 2] = bf16_pair(x, r, k);
}

/// C (m, n) = A · B, plus the old C when `accumulate`, for A given as bf16 pairs (m rows of b.pairs() words, lda
/// words apart; bf16_pairs makes them), on the calling thread: for callers that convert A once and reuse it
/// (attention tiles). Throws config_error for a path this CPU lacks.
inline void bf16_gemm_pairs(std::size_t m, const std::uint32_t* a, std::size_t lda, const Bf16Matrix& b,
                            bool accumulate, float* c, std::size_t ldc, Bf16Path path = bf16_path()) {
  if (!cpu_supports(path))
    throw config_error(polyformer::detail::cat("bf16_gemm_pairs: path is ", bf16_path_name(path),
                                               ", which this CPU does not support"));
  if (m == 0 || b.cols() == 0) return;
  if (b.rows() == 0) {
    for (std::size_t i = 0; i < m && !accumulate; ++i) std::fill(c + i * ldc, c + i * ldc + b.cols(), 0.0f);
    return;
  }
  const PackedBlocking blocking = product_blocking(Bf16Matrix::tile, m, b.pairs(), b.panels());
#if POLYFORMER_RUNTIME_DISPATCH
  if (path == Bf16Path::avx512_bf16) {
    detail::packed_gemm_blocked<detail::Avx512Bf16Kernels>(m, a, lda, b, 0, b.panels(), nullptr, accumulate, c, ldc,
                                                           blocking);
    return;
  }
#endif
  detail::packed_gemm_blocked<detail::PortableBf16Kernels>(m, a, lda, b, 0, b.panels(), nullptr, accumulate, c, ldc,
                                                           blocking);
}

/// C (m, n) = bf16(x) (m, k) · B [+ bias (n) on every row], C overwritten; rows of x and C are ldx and ldc floats
/// apart. Split over `threads` threads by column panels (rows when B has too few); below ~1 MFLOP on the calling
/// thread. `path` defaults to this process's (bf16_path()); tests pass each one the CPU runs.
inline void bf16_gemm(std::size_t m, const float* x, std::size_t ldx, const Bf16Matrix& b, const float* bias, float* c,
                      std::size_t ldc, int threads = 1, Bf16Path path = bf16_path()) {
  const std::size_t n = b.cols(), k = b.rows(), kp = b.pairs();
  if (m == 0 || n == 0) return;
  if (!cpu_supports(path))
    throw config_error(polyformer::detail::cat("bf16_gemm: path is ", bf16_path_name(path),
                                               ", which this CPU does not support"));
  if (k == 0) {
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = 0; j < n; ++j) c[i * ldc + j] = bias ? bias[j] : 0.0f;
    return;
  }
  std::vector<std::uint32_t>& ws = detail::bf16_workspace();
  if (ws.size() < m * kp) ws.resize(m * kp);
  std::uint32_t* pairs = ws.data();
  for (std::size_t i = 0; i < m; ++i) bf16_pairs(x + i * ldx, k, pairs + i * kp, path);

  split_packed_product(m, b.panels(), 2.0 * double(m) * double(n) * double(k), threads, false,
                       [&](std::size_t r0, std::size_t r1, std::size_t p0, std::size_t p1) {
                         // Blocked for this thread's rows, as packed_gemm blocks its own.
                         const PackedBlocking blocking = product_blocking(Bf16Matrix::tile, r1 - r0, kp, b.panels());
#if POLYFORMER_RUNTIME_DISPATCH
                         if (path == Bf16Path::avx512_bf16) {
                           detail::packed_gemm_blocked<detail::Avx512Bf16Kernels>(
                               r1 - r0, pairs + r0 * kp, kp, b, p0, p1, bias, false, c + r0 * ldc, ldc, blocking);
                           return;
                         }
#endif
                         detail::packed_gemm_blocked<detail::PortableBf16Kernels>(
                             r1 - r0, pairs + r0 * kp, kp, b, p0, p1, bias, false, c + r0 * ldc, ldc, blocking);
                       });
}

}  // namespace polyformer::kernels
