#pragma once
/// \file fp32 vector operations, one struct per instruction set, for the micro-kernel bodies that are written
/// once and compiled per set (detail/packed_kernel_body.hpp, detail/small_kernel_body.hpp): the build's own
/// target through xsimd, and AVX2 + FMA and AVX-512 through intrinsics under `__attribute__((target))`, which
/// run only after kernels::cpu() says the CPU has the set. Each provides
///   lanes                                   floats a vector
///   acc, operand                            vector types (the same for fp32)
///   zero(), load(p), load_b(p), broadcast_a(x), fma(a, b, c) = a·b + c, add, mul, store(p, v)
///   load_partial(p, n)                      the first n (1..lanes) floats at p, zeros after; never reads past p[n − 1]
///   store_partial(p, v, n)                  the first n (1..lanes) lanes of v; never writes past p[n − 1]

#include <cstddef>

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
  static acc add(acc a, acc b) noexcept { return a + b; }
  static acc mul(acc a, acc b) noexcept { return a * b; }
  static void store(float* p, acc v) noexcept { v.store_unaligned(p); }
  static acc load_partial(const float* p, std::size_t n) noexcept {
    return n == lanes ? load(p) : kernels::load_partial<xsimd::default_arch>(p, n, 0.0f);
  }
  static void store_partial(float* p, acc v, std::size_t n) noexcept {
    if (n == lanes) store(p, v);
    else kernels::store_partial<xsimd::default_arch>(v, p, n);
  }
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
  POLYFORMER_TARGET_AVX2 static acc add(acc a, acc b) noexcept { return _mm256_add_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static acc mul(acc a, acc b) noexcept { return _mm256_mul_ps(a, b); }
  POLYFORMER_TARGET_AVX2 static void store(float* p, acc v) noexcept { _mm256_storeu_ps(p, v); }
  /// Lanes [0, n) set: vmaskmov neither reads nor faults on the others.
  POLYFORMER_TARGET_AVX2 static __m256i mask(std::size_t n) noexcept {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  POLYFORMER_TARGET_AVX2 static acc load_partial(const float* p, std::size_t n) noexcept {
    return _mm256_maskload_ps(p, mask(n));
  }
  POLYFORMER_TARGET_AVX2 static void store_partial(float* p, acc v, std::size_t n) noexcept {
    _mm256_maskstore_ps(p, mask(n), v);
  }
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
  POLYFORMER_TARGET_AVX512 static acc add(acc a, acc b) noexcept { return _mm512_add_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static acc mul(acc a, acc b) noexcept { return _mm512_mul_ps(a, b); }
  POLYFORMER_TARGET_AVX512 static void store(float* p, acc v) noexcept { _mm512_storeu_ps(p, v); }
  POLYFORMER_TARGET_AVX512 static __mmask16 mask(std::size_t n) noexcept {
    return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  }
  POLYFORMER_TARGET_AVX512 static acc load_partial(const float* p, std::size_t n) noexcept {
    return _mm512_maskz_loadu_ps(mask(n), p);
  }
  POLYFORMER_TARGET_AVX512 static void store_partial(float* p, acc v, std::size_t n) noexcept {
    _mm512_mask_storeu_ps(p, mask(n), v);
  }
};
#endif

}  // namespace polyformer::kernels::detail
