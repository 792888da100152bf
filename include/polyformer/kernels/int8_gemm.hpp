#pragma once
/// \file int8 GEMM for linear layers: C (m, n) = (Σ_k qa[i,k]·qw[j,k]) · sa[i] · sw[j] [+ bias[j]], where the
/// weight W (n, k) in the nn.Linear layout is quantized once, symmetrically per output channel, and the
/// activations A (m, k) per row on every call; the integer sum is exact (int32). Linear quantization after
/// Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
/// Inference" (arXiv:1712.05877), here with zero points 0 (symmetric) and float rescaling.
///
/// Quantization rule, shared by weights and activations, for one row x of length k:
///   a = max|x|;  scale = a / 127;  q = round_half_even(x · (127 / a)) clamped to [-127, 127]
/// with 127 / a rounded to float and the product rounded to float before rounding to an integer (the
/// default floating-point rounding mode). A row with a < 2^-120 (a zero row; 127 / a would overflow
/// below that) gets scale 0 and q = 0, so its outputs are 0 (plus bias). Non-finite inputs give
/// unspecified results.
///
/// Code paths, chosen at run time (int8_path(); every one reads the same QuantizedMatrix):
/// - AVX-512 VNNI: activations stored as u8 = q + 128 for `vpdpbusd` (u8 × s8, 4 products a lane per
///   instruction); the shift adds 128 · Σ_k qw[j,k] to column j, which the accumulators start from, negated
///   (QuantizedMatrix keeps those column sums);
/// - AVX2: both operands sign-extended to int16 and multiplied with `vpmaddwd` (exact; `vpmaddubsw` would
///   saturate its int16 pair sums);
/// - portable: a plain loop over the same packed layout.
/// Each path is a struct (its activation operand type, register tile, quantize_row and block) compiled under
/// `__attribute__((target))`; the drivers below are templates over it. Raw intrinsics live here only: xsimd 8.1
/// has no int8 dot products. AMX tile products are not written yet.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <Eigen/Core>

#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/packed_gemm.hpp"
#include "polyformer/kernels/simd.hpp"

#if POLYFORMER_RUNTIME_DISPATCH
#include <immintrin.h>
#endif

namespace polyformer::kernels {

/// Largest depth k whose int32 accumulation is exact on every path: 127² · k < 2³¹. (The VNNI path's shifted
/// sums, up to 255 · 127 · k, may wrap past 2³¹ on the way; integer wrap-around is exact modulo 2³², so the
/// final sum, back in range, is too.)
inline constexpr std::size_t int8_max_depth = 133144;

/// The int8 code paths.
enum class Int8Path { portable, avx2, avx512_vnni };

/// "portable", "avx2", "avx512-vnni".
inline const char* int8_path_name(Int8Path p) noexcept {
  switch (p) {
    case Int8Path::avx2: return "avx2";
    case Int8Path::avx512_vnni: return "avx512-vnni";
    default: return "portable";
  }
}

/// Whether this CPU runs path `p`.
inline bool cpu_supports(Int8Path p) noexcept {
  switch (p) {
    case Int8Path::avx2: return POLYFORMER_RUNTIME_DISPATCH && cpu().avx2;
    case Int8Path::avx512_vnni: return POLYFORMER_RUNTIME_DISPATCH && cpu().avx512_vnni;
    default: return true;
  }
}

/// The path this process uses: VNNI where the CPU has it and kernels::isa() is avx512, AVX2 where isa() allows
/// it, else portable (POLYFORMER_ISA caps it as it caps the fp32 kernels).
inline Int8Path int8_path() noexcept {
  if (isa() == Isa::avx512 && cpu_supports(Int8Path::avx512_vnni)) return Int8Path::avx512_vnni;
  if (isa() != Isa::portable && cpu_supports(Int8Path::avx2)) return Int8Path::avx2;
  return Int8Path::portable;
}

/// Name of the path this process uses (int8_path()).
inline const char* int8_gemm_path() noexcept { return int8_path_name(int8_path()); }

/// Scale of one row and the factor that quantizes it.
struct RowQuantization {
  float scale = 0.0f;    ///< max|x| / 127, or 0 for a zero row
  float inverse = 0.0f;  ///< 127 / max|x|, or 0 for a zero row
};

/// The quantization of a row whose largest magnitude is `absmax` (see the file comment).
inline RowQuantization row_quantization(float absmax) noexcept {
  if (!(absmax >= 0x1p-120f)) return {};  // zero (or NaN) row: 127 / absmax would overflow
  return {absmax / 127.0f, 127.0f / absmax};
}

/// round_half_even(x · inverse) clamped to [-127, 127]; NaN gives -127 like the SIMD conversions.
inline std::int8_t quantize_value(float x, float inverse) noexcept {
  const float r = std::nearbyint(x * inverse);
  if (!(r >= -127.0f)) return -127;
  return static_cast<std::int8_t>(r > 127.0f ? 127.0f : r);
}

/// Quantizes rows x (m, k), rows ldx floats apart, into q (m, k), rows ldq bytes apart, and their scales (m).
/// The scalar statement of the rule: the GEMM paths quantize their activations to the same values.
inline void quantize_rows(std::size_t m, std::size_t k, const float* x, std::size_t ldx, std::int8_t* q,
                          std::size_t ldq, float* scales) noexcept {
  for (std::size_t i = 0; i < m; ++i) {
    const float* xi = x + i * ldx;
    float absmax = 0.0f;
    for (std::size_t j = 0; j < k; ++j) absmax = std::max(absmax, std::fabs(xi[j]));
    const RowQuantization rq = row_quantization(absmax);
    scales[i] = rq.scale;
    for (std::size_t j = 0; j < k; ++j) q[i * ldq + j] = quantize_value(xi[j], rq.inverse);
  }
}

/// A weight W (n, k) in the nn.Linear layout, quantized per output channel and packed for the micro-kernels:
/// panels of 16 output columns; k padded with zeros to a multiple of 4; bytes ordered [k/4][column 0..15][k%4],
/// so one 64-byte row of a panel is 16 columns × 4 depths, the operand of one `vpdpbusd`. Columns past n
/// (in the last panel) are zero with scale 0.
class QuantizedMatrix {
 public:
  static constexpr std::size_t panel_width = 16;  ///< columns per panel
  static constexpr std::size_t group = 4;         ///< depths per 32-bit lane
  static constexpr std::size_t step_bytes = panel_width * group;  ///< bytes per depth group of a panel

  QuantizedMatrix() = default;

  /// Quantizes and packs W (n, k) row-major with rows ldw floats apart (k ≤ int8_max_depth).
  static QuantizedMatrix quantize(const float* w, std::size_t n, std::size_t k, std::size_t ldw) {
    POLYFORMER_ASSERT(k <= int8_max_depth);
    QuantizedMatrix p;
    p.n_ = n;
    p.k_ = k;
    const std::size_t padded_n = p.panels() * panel_width;
    p.data_.assign(padded_n * p.steps() * group, 0);
    p.scales_.assign(padded_n, 0.0f);
    p.column_sums_.assign(padded_n, 0);
    std::vector<std::int8_t> row(k);
    for (std::size_t j = 0; j < n; ++j) {
      quantize_rows(1, k, w + j * ldw, ldw, row.data(), k, &p.scales_[j]);
      std::int8_t* dst = p.data_.data() + (j / panel_width) * p.panel_bytes() + (j % panel_width) * group;
      std::int32_t sum = 0;
      for (std::size_t r = 0; r < k; ++r) {
        dst[(r / group) * step_bytes + r % group] = row[r];
        sum += row[r];
      }
      p.column_sums_[j] = sum;
    }
    return p;
  }

  std::size_t rows() const noexcept { return k_; }  ///< k: the depth (in_features)
  std::size_t cols() const noexcept { return n_; }  ///< n: the output columns (out_features)
  std::size_t steps() const noexcept { return (k_ + group - 1) / group; }  ///< depth groups of 4
  std::size_t panels() const noexcept { return (n_ + panel_width - 1) / panel_width; }
  std::size_t panel_bytes() const noexcept { return steps() * step_bytes; }
  /// Panel p: steps() × 16 columns × 4 depths, int8.
  const std::int8_t* panel(std::size_t p) const noexcept { return data_.data() + p * panel_bytes(); }
  /// Per-column scales, zero-padded to panels() · 16.
  const float* scales() const noexcept { return scales_.data(); }
  /// Per-column sums of the quantized weights Σ_k qw[j, k], zero-padded to panels() · 16.
  const std::int32_t* column_sums() const noexcept { return column_sums_.data(); }
  /// Bytes of packed weights (what a product streams).
  std::size_t size() const noexcept { return data_.size(); }

  /// The quantized weight qw[j, r] (output column j, depth r).
  std::int8_t at(std::size_t j, std::size_t r) const noexcept {
    return panel(j / panel_width)[(r / group) * step_bytes + (j % panel_width) * group + r % group];
  }
  /// Writes the dequantized weight qw · scale, (n, k) with rows ldw floats apart.
  void dequantize(float* w, std::size_t ldw) const noexcept {
    for (std::size_t j = 0; j < n_; ++j)
      for (std::size_t r = 0; r < k_; ++r) w[j * ldw + r] = static_cast<float>(at(j, r)) * scales_[j];
  }

 private:
  std::size_t n_ = 0, k_ = 0;
  std::vector<std::int8_t, WeightAllocator<std::int8_t>> data_;  // panels, each panel_bytes(); huge pages from 2 MiB
  std::vector<float> scales_;                                             // (panels · 16)
  std::vector<std::int32_t> column_sums_;                                 // (panels · 16)
};

/// The reference twin of int8_gemm: quantize_rows, then a plain loop over QuantizedMatrix::at.
/// C (m, n) with rows ldc floats apart; bias (n) or null.
inline void int8_gemm_scalar(std::size_t m, const float* x, std::size_t ldx, const QuantizedMatrix& w,
                             const float* bias, float* c, std::size_t ldc) {
  const std::size_t n = w.cols(), k = w.rows();
  std::vector<std::int8_t> q(m * k);
  std::vector<float> scales(m);
  quantize_rows(m, k, x, ldx, q.data(), k, scales.data());
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      std::int32_t s = 0;
      for (std::size_t r = 0; r < k; ++r) s += std::int32_t(q[i * k + r]) * std::int32_t(w.at(j, r));
      c[i * ldc + j] = static_cast<float>(s) * scales[i] * w.scales()[j] + (bias ? bias[j] : 0.0f);
    }
}

namespace detail {

/// The quantized activations of one product, as the path's operand type: rows of `stride` operands (k padded to
/// a multiple of 4), and their scales. One per thread, grow-only, so a steady stream of products allocates nothing.
struct Int8Workspace {
  std::vector<std::byte, Eigen::aligned_allocator<std::byte>> q;  // (m, stride) operands
  std::vector<float> scales;                                      // (m)

  template <class Operand>
  Operand* reserve(std::size_t m, std::size_t stride) {
    if (q.size() < m * stride * sizeof(Operand)) q.resize(m * stride * sizeof(Operand));
    if (scales.size() < m) scales.resize(m);
    return reinterpret_cast<Operand*>(q.data());
  }
};

inline Int8Workspace& int8_workspace() {
  thread_local Int8Workspace ws;
  return ws;
}

inline std::uint32_t load_u32(const void* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline std::int64_t load_i64(const void* p) noexcept {
  std::int64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// What a micro-kernel call computes: rows of quantized activations against a group of consecutive panels.
template <class Operand>
struct Int8Block {
  const Operand* a;         // first row, rows lda operands apart
  std::size_t lda;
  const float* a_scales;    // (rows)
  const std::int8_t* panel; // first panel of the group, panels panel_bytes apart
  std::size_t panel_bytes;
  std::size_t steps;        // depth groups of 4
  const float* w_scales;    // first column of the group (padded: whole panels readable)
  const std::int32_t* column_sums;
  const float* bias;        // first column of the group, or null; only valid columns are read
  float* c;                 // row 0, first column of the group
  std::size_t ldc;
  std::size_t last_cols;    // valid columns of the group's last panel, 1..16
};

/// The portable path: int8 operands, one row × one panel per call.
struct PortableInt8 {
  using operand = std::int8_t;
  static constexpr int rows = 1, panels = 1;
  static constexpr int gemv_panels = 1;

  /// Quantizes row x (k) into q (stride ≥ k, padded with the operand of 0) and returns its scale.
  static float quantize_row(const float* x, std::size_t k, std::size_t stride, operand* q) noexcept {
    float absmax = 0.0f;
    for (std::size_t i = 0; i < k; ++i) absmax = std::max(absmax, std::fabs(x[i]));
    const RowQuantization rq = row_quantization(absmax);
    for (std::size_t i = 0; i < k; ++i) q[i] = quantize_value(x[i], rq.inverse);
    for (std::size_t i = k; i < stride; ++i) q[i] = 0;
    return rq.scale;
  }

  template <int R, int NV>
  static void block(const Int8Block<operand>& b) noexcept {
    static_assert(R == 1 && NV == 1);
    std::int32_t acc[16] = {};
    for (std::size_t s = 0; s < b.steps; ++s) {
      const std::int8_t* w = b.panel + s * 64;
      const operand* a = b.a + 4 * s;
      for (std::size_t j = 0; j < 16; ++j)
        for (std::size_t g = 0; g < 4; ++g) acc[j] += std::int32_t(a[g]) * std::int32_t(w[4 * j + g]);
    }
    for (std::size_t j = 0; j < b.last_cols; ++j)
      b.c[j] = static_cast<float>(acc[j]) * b.a_scales[0] * b.w_scales[j] + (b.bias ? b.bias[j] : 0.0f);
  }
};

#if POLYFORMER_RUNTIME_DISPATCH
#define POLYFORMER_TARGET_AVX512_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")))

/// The AVX2 path: activations as int16, rows × half-panels of 8 columns (6 × 2 = 12 accumulators of 16 ymm).
struct Avx2Int8 {
  using operand = std::int16_t;
  static constexpr int rows = 6, panels = 1;
  static constexpr int gemv_panels = 1;

  POLYFORMER_TARGET_AVX2 static float quantize_row(const float* x, std::size_t k, std::size_t stride,
                                                   operand* q) noexcept {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m0 = _mm256_setzero_ps();
    std::size_t i = 0;
    for (; i + 8 <= k; i += 8) m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m0);
    float absmax = 0.0f;
    for (float v : lanes) absmax = std::max(absmax, v);
    for (std::size_t j = i; j < k; ++j) absmax = std::max(absmax, std::fabs(x[j]));
    const RowQuantization rq = row_quantization(absmax);
    const __m256 inverse = _mm256_set1_ps(rq.inverse);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    for (i = 0; i + 8 <= k; i += 8) {
      __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inverse));
      v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
      // packs interleaves the 128-bit lanes: gather quadwords 0 and 2 for the 8 int16 in order.
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(v, v), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm256_castsi256_si128(packed));
    }
    for (; i < k; ++i) q[i] = quantize_value(x[i], rq.inverse);
    for (i = k; i < stride; ++i) q[i] = 0;
    return rq.scale;
  }

  /// R rows × 8 columns (half h of each 64-byte step) from one panel, `cols` (1..8) of them valid.
  template <int R>
  POLYFORMER_NOINLINE POLYFORMER_TARGET_AVX2 static void half_block(const Int8Block<operand>& b, std::size_t h,
                                                                    std::size_t cols) noexcept {
    __m256i acc[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const std::int8_t* w = b.panel + 32 * h;
    for (std::size_t s = 0; s < b.steps; ++s) {
      // 16 bytes = 4 columns × 4 depths, sign-extended to int16; vpmaddwd sums depth pairs of a column exactly.
      const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + s * 64)));
      const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + s * 64 + 16)));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i a = _mm256_set1_epi64x(load_i64(b.a + std::size_t(r) * b.lda + 4 * s));  // 4 int16 depths, 4 times
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(a, w0));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(a, w1));
      }
    }
    const __m256 sw = _mm256_loadu_ps(b.w_scales + 8 * h);
    alignas(32) float bias[8] = {};
    if (b.bias)
      for (std::size_t j = 0; j < cols; ++j) bias[j] = b.bias[8 * h + j];
    const __m256 bv = _mm256_load_ps(bias);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      // Lanes hold (column, depth pair) sums: hadd folds the pairs, the permute puts columns 0..7 in order.
      const __m256i sum = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
      const __m256 sa = _mm256_set1_ps(b.a_scales[r]);
      const __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sum), sa), sw), bv);
      float* dst = b.c + std::size_t(r) * b.ldc + 8 * h;
      if (cols == 8) {
        _mm256_storeu_ps(dst, y);
      } else {
        alignas(32) float tile[8];
        _mm256_store_ps(tile, y);
        for (std::size_t j = 0; j < cols; ++j) dst[j] = tile[j];
      }
    }
  }

  /// R rows × one panel (NV = 1): its two halves, skipping a half with no valid column.
  template <int R, int NV>
  static void block(const Int8Block<operand>& b) noexcept {
    static_assert(NV == 1);
    half_block<R>(b, 0, std::min<std::size_t>(8, b.last_cols));
    if (b.last_cols > 8) half_block<R>(b, 1, b.last_cols - 8);
  }
};

/// The AVX-512 VNNI path: activations as u8 = q + 128, rows × panels of 16 columns (8 × 3 = 24 accumulators of
/// 32 zmm).
struct VnniInt8 {
  using operand = std::uint8_t;
  static constexpr int rows = 8, panels = 3;
  static constexpr int gemv_panels = 4;  // m = 1: four streams of weights

  /// acc + Σ₄ u8(a) · s8(w) per 32-bit lane (vpdpbusd). Spelled in asm: g++ 12 allocates the intrinsic's
  /// accumulator so badly (copies and stack spills of every accumulator on every step) that the register-blocked
  /// kernel ran at half speed.
  POLYFORMER_TARGET_AVX512_VNNI static __m512i dpbusd(__m512i acc, __m512i a, __m512i w) noexcept {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(w));
    return acc;
  }

  /// round_half_even(v · inverse) as int32 lanes: cvtps rounds half to even (the MXCSR default) like
  /// std::nearbyint; NaN becomes INT_MIN, clamped to −127 by the callers.
  POLYFORMER_TARGET_AVX512_VNNI static __m512i round16(__m512 v, __m512 inverse) noexcept {
    return _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse));
  }

  /// 16 lanes rounded, clamped to [−127, 127], shifted by 128 and narrowed to bytes in registers (a masked
  /// vpmovdb to memory is slow on AMD Zen).
  POLYFORMER_TARGET_AVX512_VNNI static __m128i narrow16(__m512 v, __m512 inverse) noexcept {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), shift = _mm512_set1_epi32(128);
    return _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(round16(v, inverse), lo), hi), shift));
  }

  POLYFORMER_TARGET_AVX512_VNNI static float quantize_row(const float* x, std::size_t k, std::size_t stride,
                                                          operand* q) noexcept {
    std::size_t i = 0;
    __m512 m0 = _mm512_setzero_ps(), m1 = _mm512_setzero_ps();
    for (; i + 32 <= k; i += 32) {
      m0 = _mm512_max_ps(m0, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
      m1 = _mm512_max_ps(m1, _mm512_abs_ps(_mm512_loadu_ps(x + i + 16)));
    }
    for (; i < k; i += 16) {  // masked: never reads past x[k - 1]
      const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
      m0 = _mm512_max_ps(m0, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, x + i)));
    }
    const RowQuantization rq = row_quantization(_mm512_reduce_max_ps(_mm512_max_ps(m0, m1)));
    const __m512 inverse = _mm512_set1_ps(rq.inverse);
    // 64 at a time: saturating packs narrow four vectors at once, max(·, -127) clamps, a permute restores the
    // order the packs interleave by 128-bit lane, and flipping the sign bit adds 128.
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i lo8 = _mm512_set1_epi8(-127), sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
    for (i = 0; i + 64 <= k; i += 64) {
      const __m512i ab = _mm512_packs_epi32(round16(_mm512_loadu_ps(x + i), inverse),
                                            round16(_mm512_loadu_ps(x + i + 16), inverse));
      const __m512i cd = _mm512_packs_epi32(round16(_mm512_loadu_ps(x + i + 32), inverse),
                                            round16(_mm512_loadu_ps(x + i + 48), inverse));
      const __m512i bytes = _mm512_max_epi8(_mm512_packs_epi16(ab, cd), lo8);
      _mm512_storeu_si512(q + i, _mm512_xor_si512(_mm512_permutexvar_epi32(order, bytes), sign_bit));
    }
    for (; i + 16 <= k; i += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), narrow16(_mm512_loadu_ps(x + i), inverse));
    if (i < k) {  // masked load: never reads past x[k - 1]
      alignas(16) std::uint8_t tail[16];
      const __mmask16 mask = __mmask16((1u << (k - i)) - 1);
      _mm_store_si128(reinterpret_cast<__m128i*>(tail), narrow16(_mm512_maskz_loadu_ps(mask, x + i), inverse));
      std::memcpy(q + i, tail, k - i);
    }
    for (i = k; i < stride; ++i) q[i] = 128;
    return rq.scale;
  }

  /// R rows × NV panels: C = (Σ u8(a) · s8(w) − 128 · colsum) · sa · sw [+ bias].
  template <int R, int NV>
  POLYFORMER_NOINLINE POLYFORMER_TARGET_AVX512_VNNI static void block(const Int8Block<operand>& b) noexcept {
    __m512i acc[R][NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      // Start from −128 · colsum: the u8 shift of the activations, removed before it is added.
      const __m512i start = _mm512_sub_epi32(
          _mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512(b.column_sums + 16 * v), 7));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][v] = start;
    }
    const std::int8_t* w = b.panel;
    const operand* a = b.a;
    for (std::size_t s = 0; s < b.steps; ++s, w += 64, a += 4) {
      __m512i wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(w + std::size_t(v) * b.panel_bytes);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512i av = _mm512_set1_epi32(static_cast<int>(load_u32(a + std::size_t(r) * b.lda)));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = dpbusd(acc[r][v], av, wv[v]);
      }
    }

    const __mmask16 last = b.last_cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << b.last_cols) - 1);
    __m512 sw[NV], bias[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      sw[v] = _mm512_loadu_ps(b.w_scales + 16 * v);
      const __mmask16 mask = v == NV - 1 ? last : __mmask16(0xFFFF);
      bias[v] = b.bias ? _mm512_maskz_loadu_ps(mask, b.bias + 16 * v) : _mm512_setzero_ps();
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 sa = _mm512_set1_ps(b.a_scales[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][v]), sa), sw[v], bias[v]);
        float* dst = b.c + std::size_t(r) * b.ldc + 16 * std::size_t(v);
        if (v == NV - 1) _mm512_mask_storeu_ps(dst, last, y);
        else _mm512_storeu_ps(dst, y);
      }
    }
  }
};
#undef POLYFORMER_TARGET_AVX512_VNNI
#endif

/// Rows [0, R) against panels [p0, p1) in groups of NV, with path P's kernels.
template <class P, int R, int NV>
void int8_strip(Int8Block<typename P::operand> b, const QuantizedMatrix& w, std::size_t p0, std::size_t p1,
                const float* bias, float* c) noexcept {
  static_assert(NV >= 1 && NV <= 4);
  constexpr std::size_t W = QuantizedMatrix::panel_width;
  for (std::size_t p = p0; p < p1; p += NV) {
    const std::size_t nv = std::min<std::size_t>(NV, p1 - p), last = p + nv - 1;
    b.panel = w.panel(p);
    b.w_scales = w.scales() + p * W;
    b.column_sums = w.column_sums() + p * W;
    b.bias = bias ? bias + p * W : nullptr;
    b.c = c + p * W;
    b.last_cols = std::min(W, w.cols() - last * W);
    switch (nv) {  // only the last group of the range is narrower than NV panels
      case 1: P::template block<R, 1>(b); break;
      case 2: if constexpr (NV >= 2) P::template block<R, 2>(b); break;
      case 3: if constexpr (NV >= 3) P::template block<R, 3>(b); break;
      default: if constexpr (NV >= 4) P::template block<R, NV>(b); break;
    }
  }
}

/// Remainder rows 1..MR-1 as one strip of `rest` rows.
template <class P, int NV, int MR>
void int8_rest(std::size_t rest, const Int8Block<typename P::operand>& b, const QuantizedMatrix& w, std::size_t p0,
               std::size_t p1, const float* bias, float* c) noexcept {
  if constexpr (MR > 1) {
    if (rest == MR - 1) int8_strip<P, MR - 1, NV>(b, w, p0, p1, bias, c);
    else int8_rest<P, NV, MR - 1>(rest, b, w, p0, p1, bias, c);
  }
}

/// Rows [0, m) of C against panels [p0, p1), from quantized activations q (rows `stride` apart).
template <class P>
void int8_panels(std::size_t m, const typename P::operand* q, std::size_t stride, const float* scales,
                 const QuantizedMatrix& w, std::size_t p0, std::size_t p1, const float* bias, float* c,
                 std::size_t ldc) noexcept {
  constexpr int MR = P::rows, NV = P::panels;
  Int8Block<typename P::operand> b{};
  b.lda = stride;
  b.panel_bytes = w.panel_bytes();
  b.steps = w.steps();
  b.ldc = ldc;
  if (m == 1) {  // the decode case: stream the weights once, several panels at a time
    b.a = q;
    b.a_scales = scales;
    int8_strip<P, 1, P::gemv_panels>(b, w, p0, p1, bias, c);
    return;
  }
  // Row blocks of ≈ 256 KiB of activations stay in L2 while every panel of the range passes by.
  const std::size_t row_bytes = stride * sizeof(typename P::operand);
  const std::size_t row_block = std::max<std::size_t>(MR, (std::size_t(256) << 10) / row_bytes / MR * MR);
  for (std::size_t i0 = 0; i0 < m; i0 += row_block) {
    const std::size_t i1 = std::min(m, i0 + row_block);
    for (std::size_t p = p0; p < p1; p += NV) {
      const std::size_t pe = std::min(p1, p + NV);
      std::size_t i = i0;
      for (; i + MR <= i1; i += MR) {
        b.a = q + i * stride;
        b.a_scales = scales + i;
        int8_strip<P, MR, NV>(b, w, p, pe, bias, c + i * ldc);
      }
      if (i < i1) {
        b.a = q + i * stride;
        b.a_scales = scales + i;
        int8_rest<P, NV, MR>(i1 - i, b, w, p, pe, bias, c + i * ldc);
      }
    }
  }
}

/// int8_gemm with path P: the activations quantized (split by rows), then the product split as every packed
/// product is (split_packed_product).
template <class P>
void int8_gemm_with(std::size_t m, const float* x, std::size_t ldx, const QuantizedMatrix& w, const float* bias,
                    float* c, std::size_t ldc, int threads) {
  const std::size_t n = w.cols(), k = w.rows();
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int t = flops < 1e6 ? 1 : effective_threads(threads);
  const std::size_t stride = w.steps() * QuantizedMatrix::group;
  Int8Workspace& ws = int8_workspace();
  typename P::operand* q = ws.reserve<typename P::operand>(m, stride);
  float* scales = ws.scales.data();
  const auto quantize = [&](Index r0, Index r1, int) {
    for (auto i = static_cast<std::size_t>(r0); i < static_cast<std::size_t>(r1); ++i)
      scales[i] = P::quantize_row(x + i * ldx, k, stride, q + i * stride);
  };
  const auto rows = static_cast<Index>(m);
  if (t > 1 && m >= 2 * std::size_t(t) && m * k >= (std::size_t(1) << 16)) parallel_chunks(rows, t, quantize);
  else quantize(0, rows, 0);
  split_packed_product(m, w.panels(), flops, threads, false,
                       [&](std::size_t r0, std::size_t r1, std::size_t p0, std::size_t p1) {
                         int8_panels<P>(r1 - r0, q + r0 * stride, stride, scales + r0, w, p0, p1, bias, c + r0 * ldc,
                                        ldc);
                       });
}

}  // namespace detail

/// C (m, n) = dequantized int8 product of x (m, k), quantized per row here, and w (n, k) [+ bias (n) on every
/// row, when not null]. Rows of x and C are ldx and ldc floats apart; C is overwritten (x is fully read first).
/// Split over `threads` threads by column panels (rows when w has too few panels); below ~1 MFLOP on the
/// calling thread. The quantized activations live in a grow-only per-thread workspace. `path` defaults to this
/// process's (int8_path()); tests pass each one the CPU runs. Throws config_error for a path this CPU lacks.
inline void int8_gemm(std::size_t m, const float* x, std::size_t ldx, const QuantizedMatrix& w, const float* bias,
                      float* c, std::size_t ldc, int threads = 1, Int8Path path = int8_path()) {
  if (!cpu_supports(path))
    throw config_error(polyformer::detail::cat("int8_gemm: path is ", int8_path_name(path),
                                               ", which this CPU does not support"));
  if (m == 0 || w.cols() == 0) return;
  switch (path) {
#if POLYFORMER_RUNTIME_DISPATCH
    case Int8Path::avx512_vnni: detail::int8_gemm_with<detail::VnniInt8>(m, x, ldx, w, bias, c, ldc, threads); return;
    case Int8Path::avx2: detail::int8_gemm_with<detail::Avx2Int8>(m, x, ldx, w, bias, c, ldc, threads); return;
#endif
    default: detail::int8_gemm_with<detail::PortableInt8>(m, x, ldx, w, bias, c, ldc, threads); return;
  }
}

}  // namespace polyformer::kernels
