#pragma once
/// \file Shared SIMD helpers for the kernels: batch alias, horizontal reductions, partial (tail) load/store.
///
/// Every xsimd version difference lives here: Debian's xsimd 8.1 has `hadd` but neither `reduce_add`
/// nor `reduce_max` (both arrive in 9.0), and `xsimd::load_unaligned<Arch>(p)` does not compile for
/// avx512 (use `batch::load_unaligned(p)`).

#include <cstddef>
#include <xsimd/xsimd.hpp>

/// Keeps a register-blocked micro-kernel out of its caller, so the register allocator sees the kernel's
/// loop alone (inlined into a large caller, g++ 12 spills the accumulators).
#if defined(__GNUC__) || defined(__clang__)
#define POLYFORMER_NOINLINE __attribute__((noinline))
#else
#define POLYFORMER_NOINLINE
#endif

namespace polyformer::kernels {

/// A batch of floats for the architecture `Arch`.
template <class Arch>
using batch_f = xsimd::batch<float, Arch>;

/// Number of float lanes in one batch of `Arch`.
template <class Arch = xsimd::default_arch>
inline constexpr std::size_t lanes_v = batch_f<Arch>::size;

/// Sum of all lanes of `v` (xsimd 8.1's `hadd`; `reduce_add` from 9.0 on).
template <class Arch>
inline float hsum(const batch_f<Arch>& v) noexcept {
  return xsimd::hadd(v);
}

/// Maximum of all lanes of `v`; which lane wins when a lane is NaN is unspecified.
template <class Arch>
inline float hmax(const batch_f<Arch>& v) noexcept {
  // xsimd 8.1 has no reduce_max: spill to an aligned buffer and fold. Used once per row, so the
  // store/reload is not on any hot path.
  alignas(Arch::alignment()) float buf[batch_f<Arch>::size];
  v.store_aligned(buf);
  float m = buf[0];
  for (std::size_t i = 1; i < batch_f<Arch>::size; ++i) m = buf[i] > m ? buf[i] : m;
  return m;
}

/// Loads the first `n` (< lanes) floats at `p` into a batch, filling the other lanes with `fill`.
/// Never reads past p[n - 1]: this is the masked tail load that xsimd 8.1 lacks.
template <class Arch>
inline batch_f<Arch> load_partial(const float* p, std::size_t n, float fill) noexcept {
  alignas(Arch::alignment()) float buf[batch_f<Arch>::size];
  for (std::size_t i = 0; i < batch_f<Arch>::size; ++i) buf[i] = i < n ? p[i] : fill;
  return batch_f<Arch>::load_aligned(buf);
}

/// Stores the first `n` (< lanes) lanes of `v` to `p`; never writes past p[n - 1].
template <class Arch>
inline void store_partial(const batch_f<Arch>& v, float* p, std::size_t n) noexcept {
  alignas(Arch::alignment()) float buf[batch_f<Arch>::size];
  v.store_aligned(buf);
  for (std::size_t i = 0; i < n; ++i) p[i] = buf[i];
}

}  // namespace polyformer::kernels
