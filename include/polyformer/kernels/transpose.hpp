#pragma once
/// \file Out-of-place matrix transpose in cache blocks: dst (cols, rows) = srcᵀ for src (rows, cols), both
/// row-major with strides. A block of 16 source rows stays in L1 while its columns are written out as
/// contiguous runs of 16, which the compiler vectorizes; a plain element loop would stride through dst.

#include <algorithm>
#include <cstddef>

namespace polyformer::kernels {

inline void transpose(const float* src, std::ptrdiff_t src_stride, std::ptrdiff_t rows, std::ptrdiff_t cols, float* dst,
                      std::ptrdiff_t dst_stride) noexcept {
  constexpr std::ptrdiff_t block = 16;
  for (std::ptrdiff_t r0 = 0; r0 < rows; r0 += block) {
    const std::ptrdiff_t r1 = std::min(rows, r0 + block);
    for (std::ptrdiff_t c = 0; c < cols; ++c) {
      float* out = dst + c * dst_stride;
      for (std::ptrdiff_t r = r0; r < r1; ++r) out[r] = src[r * src_stride + c];
    }
  }
}

}  // namespace polyformer::kernels
