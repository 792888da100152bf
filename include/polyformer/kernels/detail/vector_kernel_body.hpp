// No include guard: vector_kernels.hpp includes this body once per instruction set, with
//   POLYFORMER_VECTOR_KERNELS  the name of the struct to define,
//   POLYFORMER_VECTOR_TARGET   the function attribute that enables the set (empty for the build's own),
//   POLYFORMER_VECTOR_OPS      the vector operations (detail/vector_ops.hpp),
// and undefines the three macros at its end.

/// The element-wise kernels of one instruction set: exp, the sweeps of a softmax row, sums, the row norms, the
/// level-1 kernels (dot, axpy, scale, add), the activations, C = A·Bᵀ by dot products (gemm_nt), and
/// decoding attention over transposed keys and values.
struct POLYFORMER_VECTOR_KERNELS : POLYFORMER_VECTOR_OPS {
  using V = POLYFORMER_VECTOR_OPS;
  using Acc = typename V::acc;
  using Int = typename V::ivec;

  /// e^x lane-wise by the algorithm of exp.hpp's file comment (Cephes expf with the shifter rounding, and 2^k in
  /// two steps or one vscalefps); -inf → 0, large x → +inf, NaN → NaN.
  POLYFORMER_VECTOR_TARGET static Acc exp(Acc x) noexcept { return exp_sum<false>(x, x); }

  /// e^(hi + lo) without rounding hi + lo: lo joins after hi's reduction by k·ln2 (which is exact in its first step),
  /// so a large hi keeps its precision. |lo| up to a few units; hi clamped as exp's x, lo unclamped.
  POLYFORMER_VECTOR_TARGET static Acc exp(Acc hi, Acc lo) noexcept { return exp_sum<true>(hi, lo); }

  template <bool with_lo>
  POLYFORMER_VECTOR_TARGET static Acc exp_sum(Acc x, Acc lo) noexcept {
    // Clamp with the constant first: x86 min/max return their second operand when either is NaN, so a NaN x
    // passes through the clamp and propagates to the result without a separate select.
    const Acc xc = V::max(V::broadcast_a(exp_lo), V::min(V::broadcast_a(exp_hi), x));
    // k = round(x / ln2): the shifter makes the addition round; its low mantissa bits then hold k.
    const Acc t = V::fma(with_lo ? V::add(xc, lo) : xc, V::broadcast_a(exp_log2e), V::broadcast_a(exp_shifter));
    const Acc kf = V::sub(t, V::broadcast_a(exp_shifter));
    const Int k = V::isub(V::bits(t), V::iset(std::bit_cast<std::int32_t>(exp_shifter)));
    // r = x − k·ln2 in two steps (Cody–Waite): k·C1 is exact, so only the tiny k·C2 term rounds.
    Acc r = V::fnma(kf, V::broadcast_a(exp_c1), xc);
    r = V::fnma(kf, V::broadcast_a(exp_c2), r);
    if constexpr (with_lo) r = V::add(r, lo);
    // P(r) by Estrin's scheme: a dependency chain of 3 FMAs instead of Horner's 5.
    const Acc r2 = V::mul(r, r);
    const Acc a = V::fma(V::broadcast_a(exp_p0), r, V::broadcast_a(exp_p1));
    const Acc b = V::fma(V::broadcast_a(exp_p2), r, V::broadcast_a(exp_p3));
    const Acc c = V::fma(V::broadcast_a(exp_p4), r, V::broadcast_a(exp_p5));
    const Acc p = V::fma(V::fma(a, r2, b), r2, c);
    const Acc er = V::add(V::fma(p, r2, r), V::broadcast_a(1.0f));
    return scale_pow2(er, kf, k);
  }

  /// x·2^k for x in [0.5, 2) and k (kf: as float) in [−154, 128], rounded once: by vscalefps where the set has it,
  /// else as x·2^k1·2^k2 with k1 = k >> 1 (both halves normal, x·2^k1 exact).
  template <class Ops = V>
  POLYFORMER_VECTOR_TARGET static Acc scale_pow2(Acc x, Acc kf, Int k) noexcept {
    if constexpr (Ops::has_scalef) {
      return Ops::scalef(x, kf);
    } else {
      const Int k1 = Ops::template shift_right<1>(k);
      const Int k2 = Ops::isub(k, k1);
      const Acc s1 = Ops::from_bits(Ops::template shift_left<23>(Ops::iadd(k1, Ops::iset(127))));
      const Acc s2 = Ops::from_bits(Ops::template shift_left<23>(Ops::iadd(k2, Ops::iset(127))));
      return Ops::mul(Ops::mul(x, s1), s2);
    }
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

  /// Σ x[0, n) over four accumulators; 0 for n = 0.
  POLYFORMER_VECTOR_TARGET static float reduce_sum(const float* x, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    Acc s0 = V::zero(), s1 = V::zero(), s2 = V::zero(), s3 = V::zero();
    std::size_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      s0 = V::add(s0, V::load(x + i));
      s1 = V::add(s1, V::load(x + i + L));
      s2 = V::add(s2, V::load(x + i + 2 * L));
      s3 = V::add(s3, V::load(x + i + 3 * L));
    }
    for (; i + L <= n; i += L) s0 = V::add(s0, V::load(x + i));
    if (i < n) s1 = V::add(s1, V::load_partial(x + i, n - i));
    return V::hsum(V::add(V::add(s0, s1), V::add(s2, s3)));
  }

  /// LayerNorm of one row by norm.hpp's definition: the mean, then the mean of squared deviations (two passes),
  /// then y = (x − mean)·rstd·gamma + beta; gamma and beta may be null (1 and 0); x may equal y.
  POLYFORMER_VECTOR_TARGET static void layer_norm(const float* x, float* y, const float* gamma, const float* beta,
                                                  std::size_t n, float eps) noexcept {
    constexpr std::size_t L = V::lanes;
    if (n == 0) return;
    const auto nf = static_cast<float>(n);
    const float mean = reduce_sum(x, n) / nf;  // divide, not multiply by 1/n: one rounding
    // Σ (x − mean)²; padding lanes hold `mean`, so they add exactly 0.
    const Acc mb = V::broadcast_a(mean);
    Acc s0 = V::zero(), s1 = V::zero();
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const Acc d0 = V::sub(V::load(x + i), mb), d1 = V::sub(V::load(x + i + L), mb);
      s0 = V::fma(d0, d0, s0);
      s1 = V::fma(d1, d1, s1);
    }
    if (i + L <= n) {
      const Acc d = V::sub(V::load(x + i), mb);
      s0 = V::fma(d, d, s0);
      i += L;
    }
    if (i < n) {
      const Acc d = V::sub(V::load_partial(x + i, n - i, mean), mb);
      s1 = V::fma(d, d, s1);
    }
    const float rstd = 1.0f / std::sqrt(V::hsum(V::add(s0, s1)) / nf + eps);
    // The affine pass reads x[i] before writing y[i] at the same index, so x == y is safe.
    if (gamma != nullptr && beta != nullptr) layer_norm_apply<true, true>(x, y, gamma, beta, n, mean, rstd);
    else if (gamma != nullptr) layer_norm_apply<true, false>(x, y, gamma, beta, n, mean, rstd);
    else if (beta != nullptr) layer_norm_apply<false, true>(x, y, gamma, beta, n, mean, rstd);
    else layer_norm_apply<false, false>(x, y, gamma, beta, n, mean, rstd);
  }

  /// y = (x − mean)·rstd·gamma + beta, specialized on which affine parts exist.
  template <bool HasGamma, bool HasBeta>
  POLYFORMER_VECTOR_TARGET static void layer_norm_apply(const float* x, float* y, const float* gamma, const float* beta,
                                                        std::size_t n, float mean, float rstd) noexcept {
    constexpr std::size_t L = V::lanes;
    const Acc mb = V::broadcast_a(mean), rb = V::broadcast_a(rstd);
    std::size_t i = 0;
    for (; i + L <= n; i += L) {
      const Acc g = HasGamma ? V::load(gamma + i) : V::zero(), b = HasBeta ? V::load(beta + i) : V::zero();
      V::store(y + i, affine<HasGamma, HasBeta>(V::mul(V::sub(V::load(x + i), mb), rb), g, b));
    }
    if (i < n) {
      const std::size_t r = n - i;
      const Acc g = HasGamma ? V::load_partial(gamma + i, r) : V::zero(), b = HasBeta ? V::load_partial(beta + i, r) : V::zero();
      V::store_partial(y + i, affine<HasGamma, HasBeta>(V::mul(V::sub(V::load_partial(x + i, r, mean), mb), rb), g, b), r);
    }
  }

  /// t·g + b with the parts that exist.
  template <bool HasGamma, bool HasBeta>
  POLYFORMER_VECTOR_TARGET static Acc affine(Acc t, Acc g, Acc b) noexcept {
    if constexpr (HasGamma) return HasBeta ? V::fma(t, g, b) : V::mul(t, g);
    else return HasBeta ? V::add(t, b) : t;
  }

  /// RMSNorm of one row in llama2.c's order: scale = 1/sqrt(Σx²/n + eps), y = gamma · (scale · x); gamma may be
  /// null (1); x may equal y.
  POLYFORMER_VECTOR_TARGET static void rms_norm(const float* x, float* y, const float* gamma, std::size_t n,
                                                float eps) noexcept {
    constexpr std::size_t L = V::lanes;
    if (n == 0) return;
    Acc s0 = V::zero(), s1 = V::zero();
    std::size_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      const Acc v0 = V::load(x + i), v1 = V::load(x + i + L);
      s0 = V::fma(v0, v0, s0);
      s1 = V::fma(v1, v1, s1);
    }
    if (i + L <= n) {
      const Acc v = V::load(x + i);
      s0 = V::fma(v, v, s0);
      i += L;
    }
    if (i < n) {
      const Acc v = V::load_partial(x + i, n - i);
      s1 = V::fma(v, v, s1);
    }
    const Acc sb = V::broadcast_a(1.0f / std::sqrt(V::hsum(V::add(s0, s1)) / static_cast<float>(n) + eps));
    for (i = 0; i + L <= n; i += L) {
      const Acc v = V::mul(sb, V::load(x + i));
      V::store(y + i, gamma != nullptr ? V::mul(V::load(gamma + i), v) : v);
    }
    if (i < n) {
      const Acc v = V::mul(sb, V::load_partial(x + i, n - i));
      V::store_partial(y + i, gamma != nullptr ? V::mul(V::load_partial(gamma + i, n - i), v) : v, n - i);
    }
  }

  /// Σ a[i]·b[i] over four accumulators (as OpenBLAS' sdot kernels keep them); 0 for n = 0.
  POLYFORMER_VECTOR_TARGET static float dot(const float* a, const float* b, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    Acc s0 = V::zero(), s1 = V::zero(), s2 = V::zero(), s3 = V::zero();
    std::size_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      s0 = V::fma(V::load(a + i), V::load(b + i), s0);
      s1 = V::fma(V::load(a + i + L), V::load(b + i + L), s1);
      s2 = V::fma(V::load(a + i + 2 * L), V::load(b + i + 2 * L), s2);
      s3 = V::fma(V::load(a + i + 3 * L), V::load(b + i + 3 * L), s3);
    }
    for (; i + L <= n; i += L) s0 = V::fma(V::load(a + i), V::load(b + i), s0);
    if (i < n) s1 = V::fma(V::load_partial(a + i, n - i), V::load_partial(b + i, n - i), s1);
    return V::hsum(V::add(V::add(s0, s1), V::add(s2, s3)));
  }

  /// y[i] += alpha·x[i], fused.
  POLYFORMER_VECTOR_TARGET static void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    const Acc a = V::broadcast_a(alpha);
    std::size_t i = 0;
    for (; i + L <= n; i += L) V::store(y + i, V::fma(a, V::load(x + i), V::load(y + i)));
    if (i < n) V::store_partial(y + i, V::fma(a, V::load_partial(x + i, n - i), V::load_partial(y + i, n - i)), n - i);
  }

  /// x[i] *= s.
  POLYFORMER_VECTOR_TARGET static void scale(float* x, float s, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    const Acc sb = V::broadcast_a(s);
    std::size_t i = 0;
    for (; i + L <= n; i += L) V::store(x + i, V::mul(V::load(x + i), sb));
    if (i < n) V::store_partial(x + i, V::mul(V::load_partial(x + i, n - i), sb), n - i);
  }

  /// ds[i] = p[i]·(ds[i] − delta): softmax's backward of one row from dP in ds, P in p.
  POLYFORMER_VECTOR_TARGET static void softmax_backward(const float* p, float* ds, float delta, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    const Acc d = V::broadcast_a(delta);
    std::size_t i = 0;
    for (; i + L <= n; i += L) V::store(ds + i, V::mul(V::load(p + i), V::sub(V::load(ds + i), d)));
    if (i < n) V::store_partial(ds + i, V::mul(V::load_partial(p + i, n - i), V::sub(V::load_partial(ds + i, n - i), d)), n - i);
  }

  /// y[i] += x[i]; x may equal y.
  POLYFORMER_VECTOR_TARGET static void add(const float* x, float* y, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    std::size_t i = 0;
    for (; i + L <= n; i += L) V::store(y + i, V::add(V::load(y + i), V::load(x + i)));
    if (i < n) V::store_partial(y + i, V::add(V::load_partial(y + i, n - i), V::load_partial(x + i, n - i)), n - i);
  }

  /// y = F(x) lane-wise, with a partial tail; x may equal y.
  template <Acc (*F)(Acc) noexcept>
  POLYFORMER_VECTOR_TARGET static void map(const float* x, float* y, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    std::size_t i = 0;
    for (; i + L <= n; i += L) V::store(y + i, F(V::load(x + i)));
    if (i < n) V::store_partial(y + i, F(V::load_partial(x + i, n - i)), n - i);
  }

  /// max(x, 0) with x as max's second operand, which x86 returns when either is NaN: NaN stays NaN, −0 stays −0.
  POLYFORMER_VECTOR_TARGET static Acc relu(Acc x) noexcept { return V::max(V::zero(), x); }

  /// x·σ(x) = x / (1 + e^(−x)).
  POLYFORMER_VECTOR_TARGET static Acc silu(Acc x) noexcept {
    return V::div(x, V::add(V::broadcast_a(1.0f), exp(V::sub(V::zero(), x))));
  }

  /// x / (1 + e^(−2u)), u = √(2/π)·(x + 0.044715·x³): tanh-GELU by activation.hpp's rewrite.
  POLYFORMER_VECTOR_TARGET static Acc gelu_tanh(Acc x) noexcept {
    const Acc m2u = V::mul(x, V::fma(V::mul(x, x), V::broadcast_a(gelu_tanh_m2c3), V::broadcast_a(gelu_tanh_m2c1)));
    return V::div(x, V::add(V::broadcast_a(1.0f), exp(m2u)));
  }

  /// elu(x) + 1 = max(x, 0) + e^min(x, 0): x + 1 above 0, e^x at or below (NaN stays NaN).
  POLYFORMER_VECTOR_TARGET static Acc elu_plus_one(Acc x) noexcept {
    return V::add(V::max(V::zero(), x), exp(V::min(x, V::zero())));
  }

  /// y = silu(gate)·up; y may equal gate or up.
  POLYFORMER_VECTOR_TARGET static void swiglu(const float* gate, const float* up, float* y, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    std::size_t i = 0;
    for (; i + L <= n; i += L) V::store(y + i, V::mul(silu(V::load(gate + i)), V::load(up + i)));
    if (i < n)
      V::store_partial(y + i, V::mul(silu(V::load_partial(gate + i, n - i)), V::load_partial(up + i, n - i)), n - i);
  }

  /// dx = D(x)·dy lane-wise, D an activation's derivative; dx may equal dy.
  template <Acc (*D)(Acc) noexcept>
  POLYFORMER_VECTOR_TARGET static void map_grad(const float* x, const float* dy, float* dx, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    std::size_t i = 0;
    for (; i + L <= n; i += L) V::store(dx + i, V::mul(D(V::load(x + i)), V::load(dy + i)));
    if (i < n) V::store_partial(dx + i, V::mul(D(V::load_partial(x + i, n - i)), V::load_partial(dy + i, n - i)), n - i);
  }

  /// σ(x) lane-wise, as 1 / (1 + e^(−x)).
  POLYFORMER_VECTOR_TARGET static Acc sigmoid(Acc x) noexcept {
    return V::div(V::broadcast_a(1.0f), V::add(V::broadcast_a(1.0f), exp(V::sub(V::zero(), x))));
  }

  /// d silu / dx = σ(x)·(1 + x·(1 − σ(x))).
  POLYFORMER_VECTOR_TARGET static Acc silu_grad(Acc x) noexcept {
    const Acc s = sigmoid(x), one = V::broadcast_a(1.0f);
    return V::mul(s, V::fma(x, V::sub(one, s), one));
  }

  /// erfc(−x/√2) = 2·Φ(x) for x clamped to ±gelu_erf_clamp, and e^(−x²/2) in `gauss` when asked. x is split as
  /// xh + xl with xh on a grid of 2^−7 (12 bits at most, as |x| <= 20), so x²/2 = xh²/2 + xl·(xh + xl/2) with the
  /// first part exact and the second below 0.08: e^(−x²/2) is as exact as e^(−xh²/2) even where it is tiny (a
  /// rounded x²/2 near 100 would cost 1e-5 relative), with or without an FMA. For z = |x|/√2,
  /// erfc(z) = t·e^(−x²/2)·e^(P(t)) with t = 2/(2 + z) (erfc_p); x > 0 takes 2 − erfc(z), which never cancels.
  template <bool with_gauss>
  POLYFORMER_VECTOR_TARGET static Acc two_phi(Acc xc, Acc& gauss) noexcept {
    const Acc zero = V::zero(), half = V::broadcast_a(0.5f), two = V::broadcast_a(2.0f);
    const Acc grid = V::broadcast_a(gelu_erf_grid);
    const Acc xh = V::sub(V::add(xc, grid), grid), xl = V::sub(xc, xh);
    const Acc h_hi = V::mul(V::mul(half, xh), xh), h_lo = V::mul(xl, V::fma(half, xl, xh));
    const Acc z = V::mul(V::max(xc, V::sub(zero, xc)), V::broadcast_a(gelu_sqrt1_2));
    const Acc t = V::div(two, V::add(two, z));
    // P(t) by Estrin's scheme (erfc_p[9 − k] is the coefficient of t^k): a chain of 4 FMAs instead of 9.
    Acc c[10];
#pragma GCC unroll 10
    for (int k = 0; k < 10; ++k) c[k] = V::broadcast_a(erfc_p[9 - k]);
    const Acc t2 = V::mul(t, t), t4 = V::mul(t2, t2), t8 = V::mul(t4, t4);
    const Acc q0 = V::fma(c[1], t, c[0]), q1 = V::fma(c[3], t, c[2]), q2 = V::fma(c[5], t, c[4]);
    const Acc q3 = V::fma(c[7], t, c[6]), q4 = V::fma(c[9], t, c[8]);
    const Acc p = V::fma(q4, t8, V::fma(V::fma(q3, t2, q2), t4, V::fma(q1, t2, q0)));
    if constexpr (with_gauss) gauss = exp(V::sub(zero, h_hi), V::sub(zero, h_lo));
    const Acc erfc_z = V::mul(t, exp(V::sub(zero, h_hi), V::sub(p, h_lo)));
    return V::select_negative(V::sub(zero, xc), V::sub(two, erfc_z), erfc_z);
  }

  /// x clamped to ±gelu_erf_clamp; NaN passes through (the constant is the first operand of min and max).
  POLYFORMER_VECTOR_TARGET static Acc gelu_erf_input(Acc x) noexcept {
    return V::max(V::broadcast_a(-gelu_erf_clamp), V::min(V::broadcast_a(gelu_erf_clamp), x));
  }

  /// Exact GELU, 0.5·x·erfc(−x/√2) (activation.hpp's rewrite).
  POLYFORMER_VECTOR_TARGET static Acc gelu_erf(Acc x) noexcept {
    Acc gauss = V::zero();
    return V::mul(V::mul(V::broadcast_a(0.5f), x), two_phi<false>(gelu_erf_input(x), gauss));
  }

  /// d GELU-erf / dx = Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π).
  POLYFORMER_VECTOR_TARGET static Acc gelu_erf_grad(Acc x) noexcept {
    Acc gauss = V::zero();
    const Acc phi2 = two_phi<true>(gelu_erf_input(x), gauss);
    return V::fma(x, V::mul(gauss, V::broadcast_a(inv_sqrt_2pi)), V::mul(V::broadcast_a(0.5f), phi2));
  }

  /// d tanh-GELU / dx = s + x·s·(1 − s)·2u′ with s = σ(2u), 2u′ = −(m2c1 + 3·m2c3·x²) (gelu_tanh's −2u).
  POLYFORMER_VECTOR_TARGET static Acc gelu_tanh_grad(Acc x) noexcept {
    const Acc x2 = V::mul(x, x), one = V::broadcast_a(1.0f);
    const Acc m2u = V::mul(x, V::fma(x2, V::broadcast_a(gelu_tanh_m2c3), V::broadcast_a(gelu_tanh_m2c1)));
    const Acc s = V::div(one, V::add(one, exp(m2u)));
    const Acc du2 = V::fma(x2, V::broadcast_a(-3.0f * gelu_tanh_m2c3), V::broadcast_a(-gelu_tanh_m2c1));
    return V::fma(V::mul(V::mul(x, s), V::sub(one, s)), du2, s);
  }

  /// One vector of SwiGLU's backward: dg = d·u·silu′(g), du = d·silu(g).
  POLYFORMER_VECTOR_TARGET static void swiglu_grad(Acc g, Acc u, Acc d, Acc& dg, Acc& du) noexcept {
    const Acc s = sigmoid(g), one = V::broadcast_a(1.0f);
    dg = V::mul(V::mul(d, u), V::mul(s, V::fma(g, V::sub(one, s), one)));
    du = V::mul(d, V::mul(g, s));
  }

  /// SwiGLU's backward: dgate = dy·up·silu′(gate), dup = dy·silu(gate); dgate may equal gate, dup may equal up
  /// (each lane reads all three inputs before it writes).
  POLYFORMER_VECTOR_TARGET static void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate,
                                                       float* dup, std::size_t n) noexcept {
    constexpr std::size_t L = V::lanes;
    std::size_t i = 0;
    Acc dg = V::zero(), du = V::zero();
    for (; i + L <= n; i += L) {
      swiglu_grad(V::load(gate + i), V::load(up + i), V::load(dy + i), dg, du);
      V::store(dgate + i, dg);
      V::store(dup + i, du);
    }
    if (i < n) {
      const std::size_t r = n - i;
      swiglu_grad(V::load_partial(gate + i, r), V::load_partial(up + i, r), V::load_partial(dy + i, r), dg, du);
      V::store_partial(dgate + i, dg, r);
      V::store_partial(dup + i, du, r);
    }
  }

  /// C (m, n) = A (m, k) · Bᵀ for B (n, k): blocks of up to 4 rows of A × 4 rows of B, 16 vector accumulators
  /// over k, summed across lanes at the end (gemm_nt.hpp's file comment).
  POLYFORMER_VECTOR_TARGET static void gemm_nt(std::size_t m, std::size_t n, std::size_t k, const float* a,
                                               std::size_t lda, const float* b, std::size_t ldb, float* c,
                                               std::size_t ldc) noexcept {
    std::size_t i = 0;
    for (; i + 4 <= m; i += 4) gemm_nt_rows<4>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
    switch (m - i) {
      case 3: gemm_nt_rows<3>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
      case 2: gemm_nt_rows<2>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
      case 1: gemm_nt_rows<1>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
      default: break;
    }
  }

  template <int MR>
  POLYFORMER_VECTOR_TARGET static void gemm_nt_rows(std::size_t n, std::size_t k, const float* a, std::size_t lda,
                                                    const float* b, std::size_t ldb, float* c, std::size_t ldc) noexcept {
    std::size_t j = 0;
    for (; j + 4 <= n; j += 4) gemm_nt_block<MR, 4>(k, a, lda, b + j * ldb, ldb, c + j, ldc);
    for (; j < n; ++j) gemm_nt_block<MR, 1>(k, a, lda, b + j * ldb, ldb, c + j, ldc);
  }

  template <int MR, int NR>
  POLYFORMER_NOINLINE POLYFORMER_VECTOR_TARGET static void gemm_nt_block(std::size_t k, const float* a, std::size_t lda,
                                                                         const float* b, std::size_t ldb, float* c,
                                                                         std::size_t ldc) noexcept {
    constexpr std::size_t L = V::lanes;
    Acc acc[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
    for (std::size_t r = 0; r < k; r += L) {
      const std::size_t width = k - r < L ? k - r : L;
      Acc bv[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        const float* p = b + std::size_t(j) * ldb + r;
        bv[j] = width == L ? V::load(p) : V::load_partial(p, width);
      }
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const float* p = a + std::size_t(i) * lda + r;
        const Acc av = width == L ? V::load(p) : V::load_partial(p, width);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) c[std::size_t(i) * ldc + std::size_t(j)] = V::hsum(acc[i][j]);
  }

  /// Softmax attention of `rows` queries that share one key/value head over its first n positions, stored
  /// transposed: keys_t and values_t (head_dim, n…) with rows ld floats apart. scores (rows, n…), rows lds apart,
  /// is scratch; out (rows, head_dim), rows ldo apart, gets Σ_j softmax_j(scale·q_r·k_j)·v_j. n ≥ 1.
  POLYFORMER_VECTOR_TARGET static void attend_transposed(std::size_t rows, std::size_t head_dim, std::size_t n,
                                                         float scale, const float* q, std::size_t ldq,
                                                         const float* keys_t, const float* values_t, std::size_t ld,
                                                         float* scores, std::size_t lds, float* out,
                                                         std::size_t ldo) noexcept {
    for (std::size_t r = 0; r < rows;) {  // rows two at a time: every key and value vector loaded feeds both
      const float* qr = q + r * ldq;
      float* sc = scores + r * lds;
      float* o = out + r * ldo;
      if (rows - r >= 2) {
        attend_rows<2>(head_dim, n, scale, qr, ldq, keys_t, values_t, ld, sc, lds, o, ldo);
        r += 2;
      } else {
        attend_rows<1>(head_dim, n, scale, qr, ldq, keys_t, values_t, ld, sc, lds, o, ldo);
        r += 1;
      }
    }
  }

  /// attend_transposed for R rows: the scores and their maxima in one pass, the R softmax rows side by side (R
  /// independent exp chains), then the weighted values.
  template <int R>
  POLYFORMER_VECTOR_TARGET static void attend_rows(std::size_t head_dim, std::size_t n, float scale, const float* q,
                                                   std::size_t ldq, const float* keys_t, const float* values_t,
                                                   std::size_t ld, float* scores, std::size_t lds, float* out,
                                                   std::size_t ldo) noexcept {
    constexpr std::size_t L = V::lanes;
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    Acc mx[R];
    score_rows<R>(head_dim, n, scale, q, ldq, keys_t, ld, scores, lds, mx);
    Acc shift[R], sum[R];
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
      shift[r] = V::broadcast_a(V::hmax(mx[r]));  // the max score itself gives e^0 = 1: the sum is >= 1
      sum[r] = V::zero();
    }
    for (std::size_t j = 0; j < n; j += L) {
      const std::size_t width = n - j < L ? n - j : L;
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) {
        float* row = scores + std::size_t(r) * lds + j;
        if (width == L) {
          const Acc e = exp(V::sub(V::load(row), shift[r]));
          V::store(row, e);
          sum[r] = V::add(sum[r], e);
        } else {  // padding lanes are −inf: they add e^−inf = 0
          const Acc e = exp(V::sub(V::load_partial(row, width, ninf), shift[r]));
          V::store_partial(row, e, width);
          sum[r] = V::add(sum[r], e);
        }
      }
    }
    // out (R, head_dim) = weights (R, n) · values_tᵀ, as dot products over the keys, then each row over its sum.
    gemm_nt_rows<R>(head_dim, n, scores, lds, values_t, ld, out, ldo);
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r)  // (the parameter `scale` hides the member)
      POLYFORMER_VECTOR_KERNELS::scale(out + std::size_t(r) * ldo, 1.0f / V::hsum(sum[r]), head_dim);
  }

  /// scores (R, n) = scale · q (R, head_dim) · keys_t (head_dim, n), vectorized over the keys; mx[r] gets lane-wise
  /// maxima of row r (the lanes past n hold −inf). Keys go C vectors at a time: each score is a chain of head_dim
  /// dependent FMAs, and R·C chains side by side keep the FMA units busy where one vector of keys at a time waited
  /// on each chain's latency (a small head_dim gives no other parallelism). Every score is summed over d in order,
  /// whichever way its keys are grouped.
  template <int R>
  POLYFORMER_VECTOR_TARGET static void score_rows(std::size_t head_dim, std::size_t n, float scale, const float* q,
                                                  std::size_t ldq, const float* keys_t, std::size_t ld, float* scores,
                                                  std::size_t lds, Acc* mx) noexcept {
    constexpr std::size_t L = V::lanes;
    constexpr int C = 4;
    constexpr float ninf = -std::numeric_limits<float>::infinity();
    const Acc s = V::broadcast_a(scale);
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) mx[r] = V::broadcast_a(ninf);
    std::size_t j = 0;
    for (; j + C * L <= n; j += C * L) {
      Acc acc[R][C];
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[r][c] = V::zero();
      for (std::size_t d = 0; d < head_dim; ++d) {
        const float* k = keys_t + d * ld + j;
        Acc kv[C];
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) kv[c] = V::load(k + std::size_t(c) * L);
#pragma GCC unroll 2
        for (int r = 0; r < R; ++r) {
          const Acc qd = V::broadcast_a(q[std::size_t(r) * ldq + d]);
#pragma GCC unroll 4
          for (int c = 0; c < C; ++c) acc[r][c] = V::fma(qd, kv[c], acc[r][c]);
        }
      }
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
          const Acc v = V::mul(acc[r][c], s);
          V::store(scores + std::size_t(r) * lds + j + std::size_t(c) * L, v);
          mx[r] = V::max(mx[r], v);
        }
    }
    for (; j < n; j += L) {
      const std::size_t width = n - j < L ? n - j : L;
      Acc acc[R];
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) acc[r] = V::zero();
      for (std::size_t d = 0; d < head_dim; ++d) {
        const float* k = keys_t + d * ld + j;
        const Acc kv = width == L ? V::load(k) : V::load_partial(k, width);
#pragma GCC unroll 2
        for (int r = 0; r < R; ++r) acc[r] = V::fma(V::broadcast_a(q[std::size_t(r) * ldq + d]), kv, acc[r]);
      }
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) {
        float* row = scores + std::size_t(r) * lds + j;
        const Acc v = V::mul(acc[r], s);
        if (width == L) {
          V::store(row, v);
          mx[r] = V::max(mx[r], v);
        } else {
          V::store_partial(row, v, width);
          mx[r] = V::max(mx[r], V::load_partial(row, width, ninf));
        }
      }
    }
  }

};

#undef POLYFORMER_VECTOR_KERNELS
#undef POLYFORMER_VECTOR_TARGET
#undef POLYFORMER_VECTOR_OPS
