#pragma once
/// \file fp32 vector operations, one struct per instruction set, for the micro-kernel bodies that are written
/// once and compiled per set (detail/packed_kernel_body.hpp, detail/small_kernel_body.hpp): the build's own
/// target through xsimd, and AVX2 + FMA and AVX-512 through intrinsics under `__attribute__((target))`, which
/// run only after kernels::cpu() says the CPU has the set. Each provides
///   lanes                                   floats a vector
///   acc, operand                            vector types (the same for fp32)
///   zero(), load(p), load_b(p), broadcast_a(x), store(p, v)
///   fma(a, b, c) = a·b + c, fnma(a, b, c) = c − a·b, add, sub, mul, min, max   (min/max return b when a lane
///                                           of either is NaN, as x86's minps/maxps do)
///   hsum(v), hmax(v)                        sum and maximum of the lanes
///   load_partial(p, n, fill = 0)            the first n (1..lanes) floats at p, `fill` after; never reads past p[n − 1]
///   store_partial(p, v, n)                  the first n (1..lanes) lanes of v; never writes past p[n − 1]
///   ivec, bits(v), from_bits(i)             int32 lanes, and the float bits reinterpreted either way
///   iset(x), iadd, isub, shift_right<S>(i) (arithmetic), shift_left<S>(i)
///   select_negative(s, a, b)                a where s < 0, b elsewhere (−0 and NaN lanes of s take b)
///   has_scalef, scalef(x, kf)               where true: x·2^kf for integral kf in one instruction, one rounding

#include <cstddef>
#include <cstdint>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/simd.hpp"

#if POLYFORMER_RUNTIME_DISPATCH
#include <immintrin.h>
#endif

namespace polyformer::kernels::detail {

/// The build's own target (xsimd's default architecture).
struct PortableVectorOps {
  using acc = batch_f<xsimd::default_arch>;
  using operand = acc;
  static constexpr std::size_t lanes = acc::size;
  static acc zero() noexcept { return acc(0.0f); }
  static acc load(const float* p) noexcept { return acc::load_unaligned(p); }
  static acc load_b(const float* p) noexcept { return acc::load_unaligned(p); }
  static acc broadcast_a(float x) noexcept { return acc(x); }
  static acc fma(acc a, acc b, acc c) noexcept { return xsimd::fma(a, b, c); }
  static acc fnma(acc a, acc b, acc c) noexcept { return xsimd::fnma(a, b, c); }
  static acc add(acc a, acc b) noexcept { return a + b; }
  static acc sub(acc a, acc b) noexcept { return a - b; }
  static acc mul(acc a, acc b) noexcept { return a * b; }
  static acc div(acc a, acc b) noexcept { return a / b; }
  static acc min(acc a, acc b) noexcept { return xsimd::min(a, b); }
  static acc max(acc a, acc b) noexcept { return xsimd::max(a, b); }
  static float hsum(acc v) noexcept { return kernels::hsum<xsimd::default_arch>(v); }
  static float hmax(acc v) noexcept { return kernels::hmax<xsimd::default_arch>(v); }
  static void store(float* p, acc v) noexcept { v.store_unaligned(p); }
  static acc load_partial(const float* p, std::size_t n, float fill = 0.0f) noexcept {
    return n == lanes ? load(p) : kernels::load_partial<xsimd::default_arch>(p, n, fill);
  }
  static void store_partial(float* p, acc v, std::size_t n) noexcept {
    if (n == lanes) store(p, v);
    else kernels::store_partial<xsimd::default_arch>(v, p, n);
  }
  using ivec = xsimd::batch<std::int32_t, xsimd::default_arch>;
  static ivec bits(acc v) noexcept { return xsimd::bitwise_cast<ivec>(v); }
  static acc from_bits(ivec i) noexcept { return xsimd::bitwise_cast<acc>(i); }
  static ivec iset(std::int32_t x) noexcept { return ivec(x); }
  static ivec iadd(ivec a, ivec b) noexcept { return a + b; }
  static ivec isub(ivec a, ivec b) noexcept { return a - b; }
  template <int S> static ivec shift_right(ivec i) noexcept { return i >> S; }
  template <int S> static ivec shift_left(ivec i) noexcept { return i << S; }
  static acc select_negative(acc s, acc a, acc b) noexcept { return xsimd::select(s < acc(0.0f), a, b); }
  static constexpr bool has_scalef = false;
};

#if POLYFORMER_RUNTIME_DISPATCH
/// AVX2 + FMA (run only where cpu().avx2).
struct Avx2VectorOps {
  using acc = __m256;
  using operand = acc;
  static constexpr std::size_t lanes = 8;
  POLYFORMER_TARGET_AVX2 static acc zero() noexcept { return _mm256_setzero_ps(); }
  POLYFORMER_TARGET_AVX2 static acc load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  POLYFORMER_TARGET_AVX2 static acc load_b(const float* p) noexcept { return _mm256_loadu_ps(p); }
  POLYFORMER_TARGET_AVX2 static acc broadcast_a(float x) noexcept { return _mm256_set1_ps(x); }
  POLYFORMER_TARGET_AVX2 static acc fma(acc a, acc b, acc c) noexcept { return _mm256_fmadd_ps(a, b, c); }
  POLYFORMER_TARGET_AVX2 static acc fnma(acc a, acc b, acc c) noexcept { return _mm256_fnmadd_ps(a, b, c); }
  POLYFORMER_TARGET_AVX2 static acc add(acc a, acc b) noexcept { return _mm256_add_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static acc sub(acc a, acc b) noexcept { return _mm256_sub_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static acc mul(acc a, acc b) noexcept { return _mm256_mul_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static acc div(acc a, acc b) noexcept { return _mm256_div_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static acc min(acc a, acc b) noexcept { return _mm256_min_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static acc max(acc a, acc b) noexcept { return _mm256_max_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static float hsum(acc v) noexcept {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  POLYFORMER_TARGET_AVX2 static float hmax(acc v) noexcept {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  POLYFORMER_TARGET_AVX2 static void store(float* p, acc v) noexcept { _mm256_storeu_ps(p, v); }
  /// Lanes [0, n) set: vmaskmov neither reads nor faults on the others.
  POLYFORMER_TARGET_AVX2 static __m256i mask(std::size_t n) noexcept {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  POLYFORMER_TARGET_AVX2 static acc load_partial(const float* p, std::size_t n, float fill = 0.0f) noexcept {
    const __m256i m = mask(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  POLYFORMER_TARGET_AVX2 static void store_partial(float* p, acc v, std::size_t n) noexcept {
    _mm256_maskstore_ps(p, mask(n), v);
  }
  using ivec = __m256i;
  POLYFORMER_TARGET_AVX2 static ivec bits(acc v) noexcept { return _mm256_castps_si256(v); }
  POLYFORMER_TARGET_AVX2 static acc from_bits(ivec i) noexcept { return _mm256_castsi256_ps(i); }
  POLYFORMER_TARGET_AVX2 static ivec iset(std::int32_t x) noexcept { return _mm256_set1_epi32(x); }
  POLYFORMER_TARGET_AVX2 static ivec iadd(ivec a, ivec b) noexcept { return _mm256_add_epi32(a, b); }
  POLYFORMER_TARGET_AVX2 static ivec isub(ivec a, ivec b) noexcept { return _mm256_sub_epi32(a, b); }
  template <int S> POLYFORMER_TARGET_AVX2 static ivec shift_right(ivec i) noexcept { return _mm256_srai_epi32(i, S); }
  template <int S> POLYFORMER_TARGET_AVX2 static ivec shift_left(ivec i) noexcept { return _mm256_slli_epi32(i, S); }
  POLYFORMER_TARGET_AVX2 static acc select_negative(acc s, acc a, acc b) noexcept {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_LT_OQ));
  }
  static constexpr bool has_scalef = false;
};

/// AVX-512 F/BW/DQ/VL (run only where cpu().avx512).
struct Avx512VectorOps {
  using acc = __m512;
  using operand = acc;
  static constexpr std::size_t lanes = 16;
  POLYFORMER_TARGET_AVX512 static acc zero() noexcept { return _mm512_setzero_ps(); }
  POLYFORMER_TARGET_AVX512 static acc load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  POLYFORMER_TARGET_AVX512 static acc load_b(const float* p) noexcept { return _mm512_loadu_ps(p); }
  POLYFORMER_TARGET_AVX512 static acc broadcast_a(float x) noexcept { return _mm512_set1_ps(x); }
  POLYFORMER_TARGET_AVX512 static acc fma(acc a, acc b, acc c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  POLYFORMER_TARGET_AVX512 static acc fnma(acc a, acc b, acc c) noexcept { return _mm512_fnmadd_ps(a, b, c); }
  POLYFORMER_TARGET_AVX512 static acc add(acc a, acc b) noexcept { return _mm512_add_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static acc sub(acc a, acc b) noexcept { return _mm512_sub_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static acc mul(acc a, acc b) noexcept { return _mm512_mul_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static acc div(acc a, acc b) noexcept { return _mm512_div_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static acc min(acc a, acc b) noexcept { return _mm512_min_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static acc max(acc a, acc b) noexcept { return _mm512_max_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static float hsum(acc v) noexcept { return _mm512_reduce_add_ps(v); }
  POLYFORMER_TARGET_AVX512 static float hmax(acc v) noexcept { return _mm512_reduce_max_ps(v); }
  POLYFORMER_TARGET_AVX512 static void store(float* p, acc v) noexcept { _mm512_storeu_ps(p, v); }
  POLYFORMER_TARGET_AVX512 static __mmask16 mask(std::size_t n) noexcept {
    return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  }
  POLYFORMER_TARGET_AVX512 static acc load_partial(const float* p, std::size_t n, float fill = 0.0f) noexcept {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask(n), p);
  }
  POLYFORMER_TARGET_AVX512 static void store_partial(float* p, acc v, std::size_t n) noexcept {
    _mm512_mask_storeu_ps(p, mask(n), v);
  }
  using ivec = __m512i;
  POLYFORMER_TARGET_AVX512 static ivec bits(acc v) noexcept { return _mm512_castps_si512(v); }
  POLYFORMER_TARGET_AVX512 static acc from_bits(ivec i) noexcept { return _mm512_castsi512_ps(i); }
  POLYFORMER_TARGET_AVX512 static ivec iset(std::int32_t x) noexcept { return _mm512_set1_epi32(x); }
  POLYFORMER_TARGET_AVX512 static ivec iadd(ivec a, ivec b) noexcept { return _mm512_add_epi32(a, b); }
  POLYFORMER_TARGET_AVX512 static ivec isub(ivec a, ivec b) noexcept { return _mm512_sub_epi32(a, b); }
  template <int S> POLYFORMER_TARGET_AVX512 static ivec shift_right(ivec i) noexcept { return _mm512_srai_epi32(i, S); }
  template <int S> POLYFORMER_TARGET_AVX512 static ivec shift_left(ivec i) noexcept { return _mm512_slli_epi32(i, S); }
  POLYFORMER_TARGET_AVX512 static acc select_negative(acc s, acc a, acc b) noexcept {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_LT_OQ), b, a);
  }
  static constexpr bool has_scalef = true;
  POLYFORMER_TARGET_AVX512 static acc scalef(acc x, acc kf) noexcept { return _mm512_scalef_ps(x, kf); }
};
#endif

}  // namespace polyformer::kernels::detail
