// No include guard: packed_gemm.hpp and bf16_gemm.hpp include this body once per instruction set, with
//   POLYFORMER_PACKED_KERNELS  the name of the struct to define,
//   POLYFORMER_PACKED_TARGET   the function attribute that enables the set (empty for the build's own),
//   POLYFORMER_PACKED_OPS      the element and vector operations (below),
//   POLYFORMER_PACKED_ROWS / POLYFORMER_PACKED_VECTORS  the register tile (rows of C × vectors of columns),
// so the register-blocked micro-kernel is written once and compiled for each set and element type in one
// translation unit. It undefines the five macros at its end. The operations type provides:
//   lanes                      fp32 lanes of an accumulator (columns of C a vector covers)
//   a_type, b_type             elements of A's rows and of B's panels; one depth step of a panel row is
//   step                       `step` b_type values a column (1 for fp32, 2 for a bf16 pair)
//   acc, operand               accumulator and B-operand vector types
//   zero(), load_b(p), broadcast_a(x), fma(a, b, acc) = acc + a·b, add, load(float*), store(float*, acc)
//   depth(b), panel_rows(b, p, d0)  the packed matrix's depth steps and panel p from step d0

/// The packed micro-kernel for one instruction set and element type.
struct POLYFORMER_PACKED_KERNELS : POLYFORMER_PACKED_OPS {
  using V = POLYFORMER_PACKED_OPS;
  static constexpr int rows = POLYFORMER_PACKED_ROWS;        ///< MR
  static constexpr int vectors = POLYFORMER_PACKED_VECTORS;  ///< NV

  /// One R × (NV·lanes) block of C from R rows of A over k depth steps and the matching steps of one panel.
  /// The store stage adds the bias (if not null) and the old C (if `load_c`).
  template <int R, int NV>
  POLYFORMER_NOINLINE POLYFORMER_PACKED_TARGET static void block(std::size_t k, const typename V::a_type* a,
                                                                 std::size_t lda, const typename V::b_type* panel,
                                                                 const float* bias, bool load_c, float* c,
                                                                 std::size_t ldc) noexcept {
    using Acc = typename V::acc;
    using Operand = typename V::operand;
    constexpr std::size_t W = V::lanes, NR = NV * W * V::step;  // b_type values per depth step of the panel
    // Few rows leave too few independent accumulators to hide the FMA latency (a matrix-vector product would
    // wait 4 cycles a step): split k over U interleaved accumulator sets, summed at the end.
    constexpr int U = R == 1 ? 4 : (R == 2 ? 2 : 1);
    // The C tile is read or written only at the end: start bringing it in now (Goto & van de Geijn, §6).
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) __builtin_prefetch(c + r * ldc + v * W, 1);
    Acc acc[U][R][NV];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[u][r][v] = V::zero();
    std::size_t p = 0;
    for (; p + U <= k; p += U) {
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        Operand bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = V::load_b(panel + (p + u) * NR + v * W * V::step);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const Operand ar = V::broadcast_a(a[r * lda + p + u]);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[u][r][v] = V::fma(ar, bv[v], acc[u][r][v]);
        }
      }
    }
    for (; p < k; ++p) {
      Operand bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = V::load_b(panel + p * NR + v * W * V::step);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Operand ar = V::broadcast_a(a[r * lda + p]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[0][r][v] = V::fma(ar, bv[v], acc[0][r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* dst = c + r * ldc + v * W;
        Acc out = acc[0][r][v];
#pragma GCC unroll 4
        for (int u = 1; u < U; ++u) out = V::add(out, acc[u][r][v]);
        if (bias) out = V::add(out, V::load(bias + v * W));
        if (load_c) out = V::add(out, V::load(dst));
        V::store(dst, out);
      }
  }
};

#undef POLYFORMER_PACKED_KERNELS
#undef POLYFORMER_PACKED_TARGET
#undef POLYFORMER_PACKED_OPS
#undef POLYFORMER_PACKED_ROWS
#undef POLYFORMER_PACKED_VECTORS
