// No include guard: packed_gemm.hpp includes this body once per instruction set, with
//   POLYFORMER_PACKED_KERNELS  the name of the struct to define,
//   POLYFORMER_PACKED_TARGET   the function attribute that enables the set (empty for the build's own),
//   POLYFORMER_PACKED_VEC      the vector-operations type (zero, load, broadcast, fma, add, store, lanes),
//   POLYFORMER_PACKED_ROWS / POLYFORMER_PACKED_VECTORS  the register tile (rows of C × vectors of columns),
// so the register-blocked micro-kernel is written once and compiled for each set in one translation unit.

/// The packed micro-kernel for one instruction set.
struct POLYFORMER_PACKED_KERNELS {
  using V = POLYFORMER_PACKED_VEC;
  static constexpr int rows = POLYFORMER_PACKED_ROWS;        ///< MR
  static constexpr int vectors = POLYFORMER_PACKED_VECTORS;  ///< NV
  static constexpr std::size_t lanes = V::lanes;
  using a_type = float;
  using b_type = float;

  /// Depth steps of a packed matrix (its rows k), and panel p from depth step d0 on.
  static std::size_t depth(const PackedMatrix& b) noexcept { return b.rows(); }
  static const float* panel_rows(const PackedMatrix& b, std::size_t p, std::size_t d0) noexcept {
    return b.panel(p) + d0 * b.panel_cols(p);
  }

  /// One R × (NV·lanes) block of C from R rows of A over depth k and the matching k rows of one panel
  /// (rows NV·lanes floats apart). The store stage adds the bias (if not null) and the old C (if `load_c`).
  template <int R, int NV>
  POLYFORMER_NOINLINE POLYFORMER_PACKED_TARGET static void block(std::size_t k, const float* a, std::size_t lda,
                                                                 const float* panel, const float* bias, bool load_c,
                                                                 float* c, std::size_t ldc) noexcept {
    using B = typename V::type;
    constexpr std::size_t W = V::lanes, NR = NV * W;
    // Few rows leave too few independent accumulators to hide the FMA latency (a matrix-vector product would
    // wait 4 cycles a step): split k over U interleaved accumulator sets, summed at the end.
    constexpr int U = R == 1 ? 4 : (R == 2 ? 2 : 1);
    // The C tile is read or written only at the end: start bringing it in now (Goto & van de Geijn, §6).
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) __builtin_prefetch(c + r * ldc + v * W, 1);
    B acc[U][R][NV];
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
        B bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = V::load(panel + (p + u) * NR + v * W);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const B ar = V::broadcast(a[r * lda + p + u]);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[u][r][v] = V::fma(ar, bv[v], acc[u][r][v]);
        }
      }
    }
    for (; p < k; ++p) {
      B bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = V::load(panel + p * NR + v * W);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const B ar = V::broadcast(a[r * lda + p]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[0][r][v] = V::fma(ar, bv[v], acc[0][r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* dst = c + r * ldc + v * W;
        B out = acc[0][r][v];
#pragma GCC unroll 4
        for (int u = 1; u < U; ++u) out = V::add(out, acc[u][r][v]);
        if (bias) out = V::add(out, V::load(bias + v * W));
        if (load_c) out = V::add(out, V::load(dst));
        V::store(dst, out);
      }
  }
};
