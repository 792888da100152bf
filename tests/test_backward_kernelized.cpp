// Backward of kernelized attention (LinearAttention: elu + 1; Performer: FAVOR+) against central finite differences
// of a float64 evaluation of its definition, out_i = Σ_j (φ(q_i)·φ(k_j))·v_j / Σ_j φ(q_i)·φ(k_j) over the keys query
// i sees: bidirectional and causal across the chunk edges (64 causal, 256 bidirectional), after a prefix of keys,
// with keys whose exponents grow along the sequence (FAVOR+'s shift moves), key padding and key lengths, a whole
// chunk padded and nothing visible, GQA, odd head sizes, 1 and 2 threads; saved-forward and shape errors.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/attention/kernelized.hpp"

using namespace bwt;
using pf::Matrix;

namespace {

constexpr Index all_keys = std::numeric_limits<Index>::max();

/// One case: sizes, heads and masks.
struct Case {
  std::string name;
  Index n_q, n_k, heads, kv_heads, head_dim;
  bool causal = false;
  Index causal_offset = 0;
  bool padding = false;         // keys j % 5 == 0 padded (key 0 among them: causal query 0 sees no key)
  Index n_valid_keys = all_keys;
  Index padded_prefix = 0;      // keys j < padded_prefix padded as well
  double key_growth = 0.0;      // key j scaled by 1 + key_growth·j/n_k
};

/// φ of one row in float64, from the definitions: elu(x) + 1, or FAVOR+ exp(W·x′ − |x′|²/2)/√M with x′ = x·√scale
/// and no stabilizer.
struct FeatureMap {
  bool favor = false;
  MatD w;  // (M, d), FAVOR+ only
  double scale = 1.0;

  VecD operator()(const MatD& x, Index row, Index col0, Index d) const {
    if (!favor) {
      VecD phi(d);
      for (Index f = 0; f < d; ++f) {
        const double e = x(row, col0 + f);
        phi(f) = e > 0 ? e + 1 : std::exp(e);
      }
      return phi;
    }
    const double c = std::sqrt(scale);
    double sq = 0;
    for (Index f = 0; f < d; ++f) sq += (c * x(row, col0 + f)) * (c * x(row, col0 + f));
    VecD phi(w.rows());
    for (Index m = 0; m < w.rows(); ++m) {
      double dot = 0;
      for (Index f = 0; f < d; ++f) dot += w(m, f) * c * x(row, col0 + f);
      phi(m) = std::exp(dot - sq / 2) / std::sqrt(double(w.rows()));
    }
    return phi;
  }
};

/// The float64 forward, kept per (head, query) as numerator and normalizer so that a finite difference re-evaluates
/// only the rows a perturbation reaches.
struct Oracle {
  Index heads, kv_heads, dh;
  bool causal;
  Index offset;
  std::vector<bool> padded;  // (n_k)
  FeatureMap phi;
  MatD q, k, v, dout;
  std::vector<VecD> fq, fk;  // φ(q) (heads·n_q), φ(k) (kv_heads·n_k), head-major
  MatD num;                  // (n_q, heads·d)
  MatD den;                  // (n_q, heads)

  Index n_q() const { return q.rows(); }
  Index n_k() const { return k.rows(); }
  Index group() const { return heads / kv_heads; }
  bool visible(Index i, Index j) const { return !padded[std::size_t(j)] && (!causal || j <= i + offset); }

  void evaluate() {
    fq.assign(std::size_t(heads * n_q()), VecD());
    fk.assign(std::size_t(kv_heads * n_k()), VecD());
    for (Index h = 0; h < heads; ++h)
      for (Index i = 0; i < n_q(); ++i) fq[std::size_t(h * n_q() + i)] = phi(q, i, h * dh, dh);
    for (Index g = 0; g < kv_heads; ++g)
      for (Index j = 0; j < n_k(); ++j) fk[std::size_t(g * n_k() + j)] = phi(k, j, g * dh, dh);
    num = MatD::Zero(n_q(), heads * dh);
    den = MatD::Zero(n_q(), heads);
    for (Index h = 0; h < heads; ++h) {
      const Index g = h / group();
      for (Index i = 0; i < n_q(); ++i)
        for (Index j = 0; j < n_k(); ++j)
          if (visible(i, j)) {
            const double a = fq[std::size_t(h * n_q() + i)].dot(fk[std::size_t(g * n_k() + j)]);
            num.block(i, h * dh, 1, dh) += a * v.block(j, g * dh, 1, dh);
            den(i, h) += a;
          }
    }
  }

  /// out (n_q, heads·d); 0 for a query that sees no key.
  MatD out() const {
    MatD o = MatD::Zero(n_q(), heads * dh);
    for (Index h = 0; h < heads; ++h)
      for (Index i = 0; i < n_q(); ++i)
        if (den(i, h) > 0) o.block(i, h * dh, 1, dh) = num.block(i, h * dh, 1, dh) / den(i, h);
    return o;
  }

  /// dout_i·out_i of query i of head h from its numerator and normalizer.
  double row_loss(Index h, Index i, const MatD& numerator, double normalizer) const {
    return normalizer > 0 ? dout.block(i, h * dh, 1, dh).cwiseProduct(numerator).sum() / normalizer : 0.0;
  }

  static double step(double x) { return 1e-6 * std::max(1.0, std::abs(x)); }

  /// ∂L/∂q by central differences, L = Σ out ⊙ dout: q(i, h·d + f) reaches only out_i of head h.
  MatD dq() {
    MatD grad(n_q(), heads * dh);
    for (Index i = 0; i < n_q(); ++i)
      for (Index c = 0; c < heads * dh; ++c) {
        const Index h = c / dh, g = h / group();
        const double x = q(i, c), e = step(x);
        double loss[2];
        for (int side = 0; side < 2; ++side) {
          q(i, c) = side == 0 ? x + e : x - e;
          const VecD f = phi(q, i, h * dh, dh);
          MatD n = MatD::Zero(1, dh);
          double d = 0;
          for (Index j = 0; j < n_k(); ++j)
            if (visible(i, j)) {
              const double a = f.dot(fk[std::size_t(g * n_k() + j)]);
              n += a * v.block(j, g * dh, 1, dh);
              d += a;
            }
          loss[side] = row_loss(h, i, n, d);
        }
        q(i, c) = x;
        grad(i, c) = (loss[0] - loss[1]) / (2 * e);
      }
    return grad;
  }

  /// ∂L/∂k (of_keys) or ∂L/∂v by central differences: row j of kv head g reaches the queries that see key j in the
  /// group's heads, through one term of their sums.
  MatD dkv(bool of_keys) {
    MatD& x = of_keys ? k : v;
    MatD grad(n_k(), kv_heads * dh);
    for (Index j = 0; j < n_k(); ++j)
      for (Index c = 0; c < kv_heads * dh; ++c) {
        const Index g = c / dh;
        const VecD& f0 = fk[std::size_t(g * n_k() + j)];
        const MatD v0 = v.block(j, g * dh, 1, dh);
        const double x0 = x(j, c), e = step(x0);
        VecD f[2];
        MatD vj[2];
        for (int side = 0; side < 2; ++side) {
          x(j, c) = side == 0 ? x0 + e : x0 - e;
          f[side] = phi(k, j, g * dh, dh);
          vj[side] = v.block(j, g * dh, 1, dh);
        }
        x(j, c) = x0;
        double diff = 0;  // Σ over the reached rows of the loss's change
        for (Index h = g * group(); h < (g + 1) * group(); ++h)
          for (Index i = 0; i < n_q(); ++i) {
            if (!visible(i, j)) continue;
            const VecD& fqi = fq[std::size_t(h * n_q() + i)];
            const double a0 = fqi.dot(f0);
            double loss[2];
            for (int side = 0; side < 2; ++side) {
              const double a = fqi.dot(f[side]);
              const MatD n = num.block(i, h * dh, 1, dh) - a0 * v0 + a * vj[side];
              loss[side] = row_loss(h, i, n, den(i, h) - a0 + a);
            }
            diff += loss[0] - loss[1];
          }
        grad(j, c) = diff / (2 * e);
      }
    return grad;
  }
};

struct Inputs {
  Matrix q, k, v, dout;
  std::vector<float> padding;
  pf::AttentionMask mask;
};

Inputs make_inputs(const Case& c, unsigned seed) {
  Inputs in;
  in.q = pft::random_matrix(c.n_q, c.heads * c.head_dim, seed, 0.8f);
  in.k = pft::random_matrix(c.n_k, c.kv_heads * c.head_dim, seed + 1, 0.8f);
  in.v = pft::random_matrix(c.n_k, c.kv_heads * c.head_dim, seed + 2);
  in.dout = pft::random_matrix(c.n_q, c.heads * c.head_dim, seed + 3);
  for (Index j = 0; j < c.n_k; ++j) in.k.row(j) *= float(1.0 + c.key_growth * double(j) / double(c.n_k));
  in.mask.causal = c.causal;
  in.mask.causal_offset = c.causal_offset;
  in.mask.n_valid_keys = c.n_valid_keys;
  if (c.padding || c.padded_prefix > 0) {
    in.padding.assign(std::size_t(c.n_k), 0.0f);
    for (Index j = 0; j < c.n_k; ++j)
      if ((c.padding && j % 5 == 0) || j < c.padded_prefix) in.padding[std::size_t(j)] = 1.0f;
    in.mask.key_padding = in.padding.data();
  }
  return in;
}

template <typename Attention>
void check_case(const Case& c, Attention attention, unsigned seed) {
  INFO(Attention::name << ": " << c.name);
  const Inputs in = make_inputs(c, seed);
  const Index qd = c.heads * c.head_dim, kd = c.kv_heads * c.head_dim;
  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  const pf::AttentionShape shape{c.heads, c.kv_heads, c.head_dim, scale};
  typename Attention::Workspace ws;

  // The float64 reference, with the W the object draws into its workspace (M, d and the seed decide it).
  Oracle oracle{c.heads, c.kv_heads, c.head_dim, c.causal, c.causal_offset, {}, {}, f64(in.q), f64(in.k), f64(in.v),
                f64(in.dout), {}, {}, {}, {}};
  for (Index j = 0; j < c.n_k; ++j)
    oracle.padded.push_back(j >= c.n_valid_keys || (in.mask.key_padding && in.padding[std::size_t(j)] != 0.0f));
  if constexpr (std::is_same_v<Attention, pf::Performer>) {
    oracle.phi.favor = true;
    oracle.phi.w = f64(attention.feature_map().projection_for(c.head_dim, ws.features).w);
    oracle.phi.scale = scale;  // the float the object uses, widened
  }
  oracle.evaluate();
  const MatD want_out = oracle.out(), want_dq = oracle.dq(), want_dk = oracle.dkv(true), want_dv = oracle.dkv(false);

  for (const int threads : {1, 2}) {
    INFO("threads " << threads);
    const pf::Context ctx{threads};
    typename Attention::Saved saved;
    Matrix out(c.n_q, qd), plain(c.n_q, qd);
    attention.forward_train(shape, pf::cview(in.q), pf::cview(in.k), pf::cview(in.v), in.mask, pf::view(out), saved,
                            ws, ctx);
    attention.forward(shape, pf::cview(in.q), pf::cview(in.k), pf::cview(in.v), in.mask, pf::view(plain), ws, ctx);
    CHECK(out == plain);
    BWT_CHECK_GRAD(out, want_out);
    Matrix dq = Matrix::Constant(c.n_q, qd, 7.0f), dk = Matrix::Constant(c.n_k, kd, 7.0f);
    Matrix dv = Matrix::Constant(c.n_k, kd, 7.0f);  // written, not added to
    attention.backward(shape, pf::cview(in.q), pf::cview(in.k), pf::cview(in.v), in.mask, pf::cview(out),
                       pf::cview(in.dout), saved, pf::view(dq), pf::view(dk), pf::view(dv), ws, ctx);
    BWT_CHECK_GRAD(dq, want_dq);
    BWT_CHECK_GRAD(dk, want_dk);
    BWT_CHECK_GRAD(dv, want_dv);
  }
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"one query", 1, 6, 2, 1, 4},
      {"one query, causal, at offset 5", 1, 6, 2, 1, 4, true, 5},
      {"n = 2, causal", 2, 2, 1, 1, 3, true},
      {"n = 7, GQA 4 over 2, odd head size, padding", 7, 7, 4, 2, 5, false, 0, true},
      {"n = 7 causal, GQA 4 over 2, odd head size, padding", 7, 7, 4, 2, 5, true, 0, true},
      {"cross lengths, key lengths", 13, 29, 4, 2, 5, false, 0, false, 20},
      {"bidirectional past one chunk (256 + 3), GQA 2 over 1, padding, key lengths", 259, 259, 2, 1, 3, false, 0, true,
       250},
      {"causal, chunk + 3, GQA 3 over 1, padding, key lengths", 67, 67, 3, 1, 4, true, 0, true, 60},
      {"causal, three chunks, keys growing along the sequence", 150, 150, 2, 2, 4, true, 0, false, all_keys, 0, 2.0},
      {"causal after a prefix of 70 keys, padding", 9, 79, 2, 2, 3, true, 70, true},
      {"causal, the first chunk padded whole", 80, 80, 2, 1, 4, true, 0, false, all_keys, 66},
      {"bidirectional, no key visible", 5, 5, 2, 1, 4, false, 0, false, 0},
      {"causal, no key visible", 5, 5, 2, 1, 4, true, 0, false, 0},
  };
  return all;
}

}  // namespace

TEST_CASE("backward: LinearAttention against finite differences of its definition",
          "[backward][attention][kernelized]") {
  unsigned seed = 100;
  for (const Case& c : cases()) check_case(c, pf::LinearAttention{}, seed += 10);
}

TEST_CASE("backward: Performer against finite differences of its definition", "[backward][attention][kernelized]") {
  unsigned seed = 500;
  for (const Case& c : cases()) check_case(c, pf::Performer(pf::PositiveRandomFeatures(12, 3)), seed += 10);
}

TEST_CASE("backward: kernelized attention's saved-forward and shape errors",
          "[backward][attention][kernelized][errors]") {
  const pf::AttentionShape shape{2, 1, 4, 0.5f};
  const Matrix q = pft::random_matrix(5, 8, 1), k = pft::random_matrix(6, 4, 2), v = pft::random_matrix(6, 4, 3);
  const Matrix dout = pft::random_matrix(5, 8, 4);
  Matrix out(5, 8), dq(5, 8), dk(6, 4), dv(6, 4);
  const pf::Performer attention(pf::PositiveRandomFeatures(8, 1));
  pf::Performer::Saved saved;
  pf::Performer::Workspace ws;
  const pf::AttentionMask none;
  const auto forward_train = [&](const pf::AttentionMask& mask) {
    attention.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), saved, ws, {});
  };
  const auto backward = [&](const pf::AttentionMask& mask, const Matrix& grad_out, Matrix& grad_q) {
    attention.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::cview(out), pf::cview(grad_out),
                       saved, pf::view(grad_q), pf::view(dk), pf::view(dv), ws, {});
  };
  CHECK_THROWS_AS(backward(none, dout, dq), pf::config_error);
  CHECK_THROWS_WITH(backward(none, dout, dq), Catch::Contains("Kernelized::backward: no saved forward"));
  forward_train(none);
  backward(none, dout, dq);
  CHECK_THROWS_AS(backward(none, dout, dq), pf::config_error);  // used once

  // Misshaped gradients throw before the saved forward is used: it serves the next, well-shaped call.
  forward_train(none);
  Matrix bad_dout(4, 8), bad_dq(5, 9);
  CHECK_THROWS_AS(backward(none, bad_dout, dq), pf::shape_error);
  CHECK_THROWS_WITH(backward(none, bad_dout, dq),
                    Catch::Contains("Kernelized::backward: dout has shape (4, 8), expected (5, 8)"));
  CHECK_THROWS_WITH(backward(none, dout, bad_dq),
                    Catch::Contains("Kernelized::backward: dq has shape (5, 9), expected (5, 8)"));
  backward(none, dout, dq);

  // saved.keep: the same forward serves again, with the same result.
  saved.keep = true;
  forward_train(none);
  backward(none, dout, dq);
  const Matrix first = dq;
  backward(none, dout, dq);
  CHECK(dq == first);

  // A mask that differs from the forward's in causality, or one forward cannot honour.
  pf::AttentionMask causal;
  causal.causal = true;
  causal.causal_offset = 1;
  CHECK_THROWS_WITH(backward(causal, dout, dq),
                    Catch::Contains("Kernelized::backward: the saved forward is bidirectional, the mask causal"));
  const Matrix additive = Matrix::Zero(5, 6);
  pf::AttentionMask with_additive;
  with_additive.additive = additive.data();
  with_additive.additive_stride = 6;
  CHECK_THROWS_AS(forward_train(with_additive), pf::config_error);
  CHECK_THROWS_AS(backward(with_additive, dout, dq), pf::config_error);
  pf::AttentionMask misplaced;
  misplaced.causal = true;  // 5 queries at offset 0 over 6 keys
  CHECK_THROWS_AS(forward_train(misplaced), pf::shape_error);
  CHECK_THROWS_WITH(forward_train(misplaced), Catch::Contains("Kernelized::forward_train: causal with 5 queries"));
  forward_train(causal);
  backward(causal, dout, dq);
  CHECK(dq.allFinite());
}
