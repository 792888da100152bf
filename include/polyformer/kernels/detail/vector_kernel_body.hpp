// No include guard: vector_kernels.hpp includes this body once per instruction set, with
//   POLYFORMER_VECTOR_KERNELS  the name of the struct to define,
//   POLYFORMER_VECTOR_TARGET   the function attribute that enables the set (empty for the build's own),
//   POLYFORMER_VECTOR_OPS      the vector operations (detail/vector_ops.hpp),
// and undefines the three macros at its end.

/// The element-wise kernels of one instruction set: exp, and the two sweeps of a softmax row.
struct POLYFORMER_VECTOR_KERNELS : POLYFORMER_VECTOR_OPS {
  using V = POLYFORMER_VECTOR_OPS;
  using Acc = typename V::acc;
  using Int = typename V::ivec;

  /// e^x lane-wise by the algorithm of exp.hpp's file comment (Cephes expf with the shifter rounding and the
  /// two-step 2^k); -inf → 0, large x → +inf, NaN → NaN.
  POLYFORMER_VECTOR_TARGET static Acc exp(Acc x) noexcept {
    // Clamp with the constant first: x86 min/max return their second operand when either is NaN, so a NaN x
    // passes through the clamp and propagates to the result without a separate select.
    const Acc xc = V::max(V::broadcast_a(exp_lo), V::min(V::broadcast_a(exp_hi), x));
    // k = round(x / ln2): the shifter makes the addition round; its low mantissa bits then hold k.
    const Acc t = V::fma(xc, V::broadcast_a(exp_log2e), V::broadcast_a(exp_shifter));
    const Acc kf = V::sub(t, V::broadcast_a(exp_shifter));
    const Int k = V::isub(V::bits(t), V::iset(std::bit_cast<std::int32_t>(exp_shifter)));
    // r = x − k·ln2 in two steps (Cody–Waite): k·C1 is exact, so only the tiny k·C2 term rounds.
    Acc r = V::fnma(kf, V::broadcast_a(exp_c1), xc);
    r = V::fnma(kf, V::broadcast_a(exp_c2), r);
    // P(r) by Estrin's scheme: a dependency chain of 3 FMAs instead of Horner's 5.
    const Acc r2 = V::mul(r, r);
    const Acc a = V::fma(V::broadcast_a(exp_p0), r, V::broadcast_a(exp_p1));
    const Acc b = V::fma(V::broadcast_a(exp_p2), r, V::broadcast_a(exp_p3));
    const Acc c = V::fma(V::broadcast_a(exp_p4), r, V::broadcast_a(exp_p5));
    const Acc p = V::fma(V::fma(a, r2, b), r2, c);
    const Acc er = V::add(V::fma(p, r2, r), V::broadcast_a(1.0f));
    // 2^k = 2^k1 · 2^k2 with k1 = k >> 1: both halves stay normal for k in [−150, 128].
    const Int k1 = V::template shift_right<1>(k);
    const Int k2 = V::isub(k, k1);
    const Acc s1 = V::from_bits(V::template shift_left<23>(V::iadd(k1, V::iset(127))));
    const Acc s2 = V::from_bits(V::template shift_left<23>(V::iadd(k2, V::iset(127))));
    return V::mul(V::mul(er, s1), s2);
  }

  /// max over x[0, n); −inf for n = 0.
  POLYFORMER_VECTOR_TARGET static float reduce_max(const float* x, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    Acc m0 = V::broadcast_a(ninf), m1 = m0;
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      m0 = V::max(m0, V::load(x + i));
      m1 = V::max(m1, V::load(x + i + L));
    }
    if (i + L <= n) {
      m0 = V::max(m0, V::load(x + i));
      i += L;
    }
    if (i < n) m1 = V::max(m1, V::load_partial(x + i, n - i, ninf));
    return V::hmax(V::max(m0, m1));
  }

  /// In place x[i] = e^(x[i] − shift) for i < n; returns their sum. x[i] = −inf gives 0 (shift must be finite).
  POLYFORMER_VECTOR_TARGET static float exp_shifted_sum(float* x, std::size_t n, float shift) noexcept {
    constexpr std::size_t L = V::lanes;
    const Acc s = V::broadcast_a(shift);
    Acc acc0 = V::zero(), acc1 = V::zero();  // two chains so consecutive exps overlap
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const Acc e0 = exp(V::sub(V::load(x + i), s));
      const Acc e1 = exp(V::sub(V::load(x + i + L), s));
      V::store(x + i, e0);
      V::store(x + i + L, e1);
      acc0 = V::add(acc0, e0);
      acc1 = V::add(acc1, e1);
    }
    if (i + L <= n) {
      const Acc e0 = exp(V::sub(V::load(x + i), s));
      V::store(x + i, e0);
      acc0 = V::add(acc0, e0);
      i += L;
    }
    if (i < n) {  // padding lanes are −inf: they add e^−inf = 0
      const Acc e = exp(V::sub(V::load_partial(x + i, n - i, -std::numeric_limits<float>::infinity()), s));
      V::store_partial(x + i, e, n - i);
      acc1 = V::add(acc1, e);
    }
    return V::hsum(V::add(acc0, acc1));
  }
};

#undef POLYFORMER_VECTOR_KERNELS
#undef POLYFORMER_VECTOR_TARGET
#undef POLYFORMER_VECTOR_OPS
