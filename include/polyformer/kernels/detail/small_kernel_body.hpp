// No include guard: small_gemm.hpp includes this body once per instruction set, with
//   POLYFORMER_SMALL_KERNELS  the name of the struct to define,
//   POLYFORMER_SMALL_TARGET   the function attribute that enables the set (empty for the build's own),
//   POLYFORMER_SMALL_OPS      the vector operations (detail/vector_ops.hpp),
//   POLYFORMER_SMALL_ROWS / POLYFORMER_SMALL_VECTORS  the register tile (rows of C × vectors of columns),
// and undefines the five macros at its end.

/// The unpacked micro-kernel for one instruction set: rows of A broadcast, rows of B loaded as vectors.
struct POLYFORMER_SMALL_KERNELS : POLYFORMER_SMALL_OPS {
  using V = POLYFORMER_SMALL_OPS;
  static constexpr int rows = POLYFORMER_SMALL_ROWS;        ///< MR
  static constexpr int vectors = POLYFORMER_SMALL_VECTORS;  ///< NV

  /// One R × (NV·lanes) block of C = alpha · A (R, k) · B (k, NV·lanes) [+ C]. With Tail, the last vector covers
  /// only `tail` (1..lanes) columns, read and written masked. Every branch is on a template parameter: a run-time
  /// flag in the epilogue keeps g++ from unrolling it, and the accumulators then live on the stack (3× slower).
  template <int R, int NV, bool Tail, bool Accumulate>
  POLYFORMER_NOINLINE POLYFORMER_SMALL_TARGET static void block(std::size_t k, float alpha, const float* a,
                                                                std::size_t lda, const float* b, std::size_t ldb,
                                                                float* c, std::size_t ldc, std::size_t tail) noexcept {
    using Acc = typename V::acc;
    constexpr std::size_t W = V::lanes;
    Acc acc[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
    for (std::size_t p = 0; p < k; ++p) {
      const float* brow = b + p * ldb;
      Acc bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        bv[v] = (Tail && v == NV - 1) ? V::load_partial(brow + v * W, tail) : V::load_b(brow + v * W);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Acc ar = V::broadcast_a(a[r * lda + p]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(ar, bv[v], acc[r][v]);
      }
    }
    const Acc al = V::broadcast_a(alpha);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* dst = c + r * ldc + v * W;
        Acc out = V::mul(acc[r][v], al);
        if (Tail && v == NV - 1) {
          if constexpr (Accumulate) out = V::add(out, V::load_partial(dst, tail));
          V::store_partial(dst, out, tail);
        } else {
          if constexpr (Accumulate) out = V::add(out, V::load(dst));
          V::store(dst, out);
        }
      }
  }
};

#undef POLYFORMER_SMALL_KERNELS
#undef POLYFORMER_SMALL_TARGET
#undef POLYFORMER_SMALL_OPS
#undef POLYFORMER_SMALL_ROWS
#undef POLYFORMER_SMALL_VECTORS
