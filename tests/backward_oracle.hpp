#pragma once
// backward_oracle: float64 forward and backward passes of the transformer building blocks, written from the
// formulas alone as plain loops (Eigen is only the container). It is the independent reference the library's
// gradients are tested against; tests/test_backward_oracle.cpp checks each backward here against central finite
// differences of the matching forward. Nothing here is shared with include/polyformer.
//
// Conventions: matrices are row-major, one token per row; "d" of an argument named dy/dout is d loss / d y.
// Every backward recomputes what it needs from the inputs (nothing is cached), so forward and backward can be
// called independently. Shape errors throw std::invalid_argument.

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <string>
#include <vector>

namespace backward_oracle {

using Index = Eigen::Index;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using VecD = Eigen::VectorXd;

namespace detail {

// Throws std::invalid_argument("backward_oracle: " + what) unless ok.
inline void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("backward_oracle: ") + what);
}

// σ(x) = 1 / (1 + e^−x), evaluated without overflow for either sign of x.
inline double sigmoid(double x) {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// a(i, j) += b(i, j) for every entry; shapes must match.
inline void add_into(MatD& a, const MatD& b) {
  require(a.rows() == b.rows() && a.cols() == b.cols(), "add_into: shape mismatch");
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) a(i, j) += b(i, j);
}

// a + b, entry by entry.
inline MatD sum(const MatD& a, const MatD& b) {
  MatD out = a;
  add_into(out, b);
  return out;
}

// Rows [first, first + count) of m, copied.                                 // (count, m.cols())
inline MatD rows_of(const MatD& m, Index first, Index count) {
  MatD out(count, m.cols());
  for (Index r = 0; r < count; ++r)
    for (Index c = 0; c < m.cols(); ++c) out(r, c) = m(first + r, c);
  return out;
}

// m(first + r, c) = block(r, c) for every entry of block.
inline void set_rows(MatD& m, Index first, const MatD& block) {
  for (Index r = 0; r < block.rows(); ++r)
    for (Index c = 0; c < block.cols(); ++c) m(first + r, c) = block(r, c);
}

}  // namespace detail

// ==== Linear ========================================================================================================

// y(i, o) = Σ_k x(i, k) · w(o, k) + b(o)        x (n, in), w (out, in), b (out) or empty -> y (n, out)
inline MatD linear(const MatD& x, const MatD& w, const VecD& b) {
  detail::require(x.cols() == w.cols(), "linear: x.cols() != w.cols()");
  detail::require(b.size() == 0 || b.size() == w.rows(), "linear: bias size != w.rows()");
  MatD y(x.rows(), w.rows());
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index o = 0; o < w.rows(); ++o) {
      double acc = b.size() != 0 ? b(o) : 0.0;
      for (Index k = 0; k < x.cols(); ++k) acc += x(i, k) * w(o, k);
      y(i, o) = acc;
    }
  }
  return y;
}

struct LinearGrad {
  MatD dx;  // (n, in)
  MatD dw;  // (out, in)
  VecD db;  // (out), empty when b was empty
};

// dx(i, k) = Σ_o dy(i, o) · w(o, k);  dw(o, k) = Σ_i dy(i, o) · x(i, k);  db(o) = Σ_i dy(i, o)      dy (n, out)
inline LinearGrad linear_backward(const MatD& x, const MatD& w, const VecD& b, const MatD& dy) {
  detail::require(x.cols() == w.cols(), "linear_backward: x.cols() != w.cols()");
  detail::require(b.size() == 0 || b.size() == w.rows(), "linear_backward: bias size != w.rows()");
  detail::require(dy.rows() == x.rows() && dy.cols() == w.rows(), "linear_backward: dy must be (n, out)");
  const Index n = x.rows(), in = x.cols(), out = w.rows();
  LinearGrad g;
  g.dx = MatD::Zero(n, in);
  g.dw = MatD::Zero(out, in);
  if (b.size() != 0) g.db = VecD::Zero(out);
  for (Index i = 0; i < n; ++i) {
    for (Index o = 0; o < out; ++o) {
      const double d = dy(i, o);
      for (Index k = 0; k < in; ++k) {
        g.dx(i, k) += d * w(o, k);
        g.dw(o, k) += d * x(i, k);
      }
      if (b.size() != 0) g.db(o) += d;
    }
  }
  return g;
}

// ==== Norms =========================================================================================================

// Per row: μ = Σ_j x_j / d, σ² = Σ_j (x_j − μ)² / d, y_j = (x_j − μ) / √(σ² + eps) · γ_j + β_j      x, y (n, d)
// (β may be empty: no shift, as torch.nn.LayerNorm(bias=False)).
inline MatD layer_norm(const MatD& x, const VecD& gamma, const VecD& beta, double eps) {
  const Index d = x.cols();
  detail::require(gamma.size() == d, "layer_norm: gamma size != x.cols()");
  detail::require(beta.size() == 0 || beta.size() == d, "layer_norm: beta size != x.cols()");
  MatD y(x.rows(), d);
  for (Index i = 0; i < x.rows(); ++i) {
    double mean = 0.0;
    for (Index j = 0; j < d; ++j) mean += x(i, j);
    mean /= double(d);
    double var = 0.0;
    for (Index j = 0; j < d; ++j) var += (x(i, j) - mean) * (x(i, j) - mean);
    var /= double(d);
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (Index j = 0; j < d; ++j) y(i, j) = (x(i, j) - mean) * rstd * gamma(j) + (beta.size() != 0 ? beta(j) : 0.0);
  }
  return y;
}

struct NormGrad {
  MatD dx;      // (n, d)
  VecD dgamma;  // (d)
  VecD dbeta;   // (d); empty for RMSNorm and for a LayerNorm without beta
};

// With x̂ = (x − μ) / √(σ² + eps) and g = dy ⊙ γ, per row: dx_j = (g_j − mean(g) − x̂_j · mean(g ⊙ x̂)) / √(σ² + eps);
// dγ_j = Σ_rows dy_j · x̂_j;  dβ_j = Σ_rows dy_j.                                                    dy (n, d)
inline NormGrad layer_norm_backward(const MatD& x, const VecD& gamma, const VecD& beta, double eps, const MatD& dy) {
  const Index n = x.rows(), d = x.cols();
  detail::require(gamma.size() == d, "layer_norm_backward: gamma size != x.cols()");
  detail::require(beta.size() == 0 || beta.size() == d, "layer_norm_backward: beta size != x.cols()");
  detail::require(dy.rows() == n && dy.cols() == d, "layer_norm_backward: dy must have x's shape");
  NormGrad g;
  g.dx = MatD::Zero(n, d);
  g.dgamma = VecD::Zero(d);
  if (beta.size() != 0) g.dbeta = VecD::Zero(d);
  std::vector<double> xhat(static_cast<std::size_t>(d)), gx(static_cast<std::size_t>(d));
  for (Index i = 0; i < n; ++i) {
    double mean = 0.0;
    for (Index j = 0; j < d; ++j) mean += x(i, j);
    mean /= double(d);
    double var = 0.0;
    for (Index j = 0; j < d; ++j) var += (x(i, j) - mean) * (x(i, j) - mean);
    var /= double(d);
    const double rstd = 1.0 / std::sqrt(var + eps);
    double mean_g = 0.0, mean_g_xhat = 0.0;
    for (Index j = 0; j < d; ++j) {
      const auto s = static_cast<std::size_t>(j);
      xhat[s] = (x(i, j) - mean) * rstd;
      gx[s] = dy(i, j) * gamma(j);
      mean_g += gx[s];
      mean_g_xhat += gx[s] * xhat[s];
      g.dgamma(j) += dy(i, j) * xhat[s];
      if (beta.size() != 0) g.dbeta(j) += dy(i, j);
    }
    mean_g /= double(d);
    mean_g_xhat /= double(d);
    for (Index j = 0; j < d; ++j) {
      const auto s = static_cast<std::size_t>(j);
      g.dx(i, j) = rstd * (gx[s] - mean_g - xhat[s] * mean_g_xhat);
    }
  }
  return g;
}

// Per row: r = 1 / √(Σ_j x_j² / d + eps), y_j = x_j · r · γ_j                                       x, y (n, d)
inline MatD rms_norm(const MatD& x, const VecD& gamma, double eps) {
  const Index d = x.cols();
  detail::require(gamma.size() == d, "rms_norm: gamma size != x.cols()");
  MatD y(x.rows(), d);
  for (Index i = 0; i < x.rows(); ++i) {
    double mean_square = 0.0;
    for (Index j = 0; j < d; ++j) mean_square += x(i, j) * x(i, j);
    mean_square /= double(d);
    const double r = 1.0 / std::sqrt(mean_square + eps);
    for (Index j = 0; j < d; ++j) y(i, j) = x(i, j) * r * gamma(j);
  }
  return y;
}

// With g = dy ⊙ γ, per row: dx_j = r · g_j − x_j · r³ · (Σ_k g_k x_k) / d;  dγ_j = Σ_rows dy_j · x_j · r;  no dβ.
inline NormGrad rms_norm_backward(const MatD& x, const VecD& gamma, double eps, const MatD& dy) {
  const Index n = x.rows(), d = x.cols();
  detail::require(gamma.size() == d, "rms_norm_backward: gamma size != x.cols()");
  detail::require(dy.rows() == n && dy.cols() == d, "rms_norm_backward: dy must have x's shape");
  NormGrad g;
  g.dx = MatD::Zero(n, d);
  g.dgamma = VecD::Zero(d);
  for (Index i = 0; i < n; ++i) {
    double mean_square = 0.0;
    for (Index j = 0; j < d; ++j) mean_square += x(i, j) * x(i, j);
    mean_square /= double(d);
    const double r = 1.0 / std::sqrt(mean_square + eps);
    double g_dot_x = 0.0;
    for (Index j = 0; j < d; ++j) {
      g_dot_x += dy(i, j) * gamma(j) * x(i, j);
      g.dgamma(j) += dy(i, j) * x(i, j) * r;
    }
    for (Index j = 0; j < d; ++j) g.dx(i, j) = r * dy(i, j) * gamma(j) - x(i, j) * r * r * r * g_dot_x / double(d);
  }
  return g;
}

// ==== Activations ===================================================================================================

enum class Act { relu, gelu_erf, gelu_tanh, silu };

namespace detail {
inline constexpr double kGeluTanhCubic = 0.044715;
inline constexpr double kSqrt2OverPi = std::numbers::sqrt2 * std::numbers::inv_sqrtpi;  // √(2/π)
}  // namespace detail

// relu = max(x, 0); gelu_erf = ½x(1 + erf(x/√2)); gelu_tanh = ½x(1 + tanh(√(2/π)(x + 0.044715x³))); silu = x·σ(x)
inline double activation(Act a, double x) {
  switch (a) {
    case Act::relu:
      return x > 0.0 ? x : 0.0;
    case Act::gelu_erf:
      return 0.5 * x * (1.0 + std::erf(x / std::numbers::sqrt2));
    case Act::gelu_tanh:
      return 0.5 * x * (1.0 + std::tanh(detail::kSqrt2OverPi * (x + detail::kGeluTanhCubic * x * x * x)));
    case Act::silu:
      return x * detail::sigmoid(x);
  }
  throw std::invalid_argument("backward_oracle: activation: unknown Act");
}

// relu' = [x > 0]; gelu_erf' = Φ(x) + x·φ(x); gelu_tanh' = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²) with
// t = tanh(√(2/π)(x + 0.044715x³)); silu' = σ(x)(1 + x(1 − σ(x)))
inline double activation_grad(Act a, double x) {
  switch (a) {
    case Act::relu:
      return x > 0.0 ? 1.0 : 0.0;
    case Act::gelu_erf: {
      const double cdf = 0.5 * (1.0 + std::erf(x / std::numbers::sqrt2));
      const double pdf = std::exp(-0.5 * x * x) * std::numbers::inv_sqrtpi / std::numbers::sqrt2;  // φ(x)
      return cdf + x * pdf;
    }
    case Act::gelu_tanh: {
      const double t = std::tanh(detail::kSqrt2OverPi * (x + detail::kGeluTanhCubic * x * x * x));
      const double du_dx = detail::kSqrt2OverPi * (1.0 + 3.0 * detail::kGeluTanhCubic * x * x);
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx;
    }
    case Act::silu: {
      const double s = detail::sigmoid(x);
      return s * (1.0 + x * (1.0 - s));
    }
  }
  throw std::invalid_argument("backward_oracle: activation_grad: unknown Act");
}

// ==== Feed-forward ==================================================================================================

struct FFNWeights {
  MatD w_up;    // (f, d)
  VecD b_up;    // (f) or empty
  MatD w_down;  // (d, f)
  VecD b_down;  // (d) or empty
  MatD w_gate;  // (f, d), gated only
  VecD b_gate;  // (f) or empty, gated only
  Act act = Act::relu;  // plain only (gated always uses silu)
  bool gated = false;
};

namespace detail {

// The hidden layer: plain h = act(up), gated h = silu(gate) ⊙ up, with up = x·W_upᵀ + b_up, gate = x·W_gateᵀ + b_gate.
struct FFNHidden {
  MatD up;    // (n, f)
  MatD gate;  // (n, f), gated only
  MatD h;     // (n, f)
};

// Computes up, gate and h of FFNHidden for x (n, d).
inline FFNHidden ffn_hidden(const MatD& x, const FFNWeights& w) {
  FFNHidden z;
  z.up = linear(x, w.w_up, w.b_up);
  z.h = MatD(z.up.rows(), z.up.cols());
  if (w.gated) {
    z.gate = linear(x, w.w_gate, w.b_gate);
    require(z.gate.cols() == z.up.cols(), "ffn: w_gate and w_up must have the same number of rows");
  }
  for (Index i = 0; i < z.up.rows(); ++i)
    for (Index j = 0; j < z.up.cols(); ++j)
      z.h(i, j) = w.gated ? activation(Act::silu, z.gate(i, j)) * z.up(i, j) : activation(w.act, z.up(i, j));
  return z;
}

}  // namespace detail

// plain: y = down(act(up(x)));  gated: y = down(silu(gate(x)) ⊙ up(x))                             x, y (n, d)
inline MatD ffn(const MatD& x, const FFNWeights& w) {
  return linear(detail::ffn_hidden(x, w).h, w.w_down, w.b_down);
}

struct FFNGrad {
  MatD dx;                        // (n, d)
  MatD dw_up, dw_down, dw_gate;   // shapes of the weights; dw_gate empty unless gated
  VecD db_up, db_down, db_gate;   // empty when the bias is absent (db_gate also when not gated)
};

// dh = dy·W_down; plain: d_up = dh ⊙ act'(up); gated: d_up = dh ⊙ silu(gate), d_gate = dh ⊙ up ⊙ silu'(gate);
// dx = d_up·W_up (+ d_gate·W_gate), each projection's weight/bias gradient as in linear_backward.   dy (n, d)
inline FFNGrad ffn_backward(const MatD& x, const FFNWeights& w, const MatD& dy) {
  const detail::FFNHidden z = detail::ffn_hidden(x, w);
  const LinearGrad down = linear_backward(z.h, w.w_down, w.b_down, dy);
  const Index n = z.up.rows(), f = z.up.cols();
  MatD d_up(n, f), d_gate;
  if (w.gated) d_gate = MatD(n, f);
  for (Index i = 0; i < n; ++i) {
    for (Index j = 0; j < f; ++j) {
      const double dh = down.dx(i, j);
      if (w.gated) {
        d_up(i, j) = dh * activation(Act::silu, z.gate(i, j));
        d_gate(i, j) = dh * z.up(i, j) * activation_grad(Act::silu, z.gate(i, j));
      } else {
        d_up(i, j) = dh * activation_grad(w.act, z.up(i, j));
      }
    }
  }
  const LinearGrad up = linear_backward(x, w.w_up, w.b_up, d_up);
  FFNGrad g;
  g.dx = up.dx;
  g.dw_up = up.dw;
  g.db_up = up.db;
  g.dw_down = down.dw;
  g.db_down = down.db;
  if (w.gated) {
    const LinearGrad gate = linear_backward(x, w.w_gate, w.b_gate, d_gate);
    detail::add_into(g.dx, gate.dx);
    g.dw_gate = gate.dw;
    g.db_gate = gate.db;
  }
  return g;
}

// ==== Scaled dot-product attention (one sequence) ==================================================================

struct AttnMask {
  bool causal = false;
  Index causal_offset = 0;
  MatD additive;                  // (n_q, n_k) or empty
  std::vector<bool> key_padding;  // (n_k), true = padded, or empty
  Index n_valid_keys = std::numeric_limits<Index>::max();
};

namespace detail {

// Key j is visible to query i: j < n_valid_keys, not padded, j ≤ i + causal_offset (causal), additive(i, j) ≠ −∞.
inline bool visible(const AttnMask& mask, Index i, Index j) {
  if (j >= mask.n_valid_keys) return false;
  if (!mask.key_padding.empty() && mask.key_padding[static_cast<std::size_t>(j)]) return false;
  if (mask.causal && j > i + mask.causal_offset) return false;
  if (mask.additive.size() != 0 && mask.additive(i, j) == -std::numeric_limits<double>::infinity()) return false;
  return true;
}

// The sizes of one attention call, checked: H query heads and G kv heads of d (q, k) and dv (v) columns each.
struct AttnShape {
  Index n_q, n_k, H, G, d, dv;
  Index kv_head(Index h) const { return h / (H / G); }  // query head h reads kv head h / (H / G)
};

// Checks the shapes of q (n_q, H·d), k (n_k, G·d), v (n_k, G·dv) and of the mask against them.
inline AttnShape attention_shape(const MatD& q, const MatD& k, const MatD& v, Index H, Index G, const AttnMask& mask) {
  require(H > 0 && G > 0 && H % G == 0, "attention: need H > 0, G > 0 and H % G == 0");
  require(q.cols() % H == 0 && k.cols() % G == 0 && v.cols() % G == 0, "attention: columns must split into heads");
  const AttnShape s{q.rows(), k.rows(), H, G, q.cols() / H, v.cols() / G};
  require(k.cols() / G == s.d, "attention: q and k heads must have the same width");
  require(v.rows() == s.n_k, "attention: k and v must have the same number of rows");
  require(mask.additive.size() == 0 || (mask.additive.rows() == s.n_q && mask.additive.cols() == s.n_k),
          "attention: additive mask must be (n_q, n_k)");
  require(mask.key_padding.empty() || Index(mask.key_padding.size()) == s.n_k,
          "attention: key_padding must have n_k entries");
  return s;
}

// p_j = softmax over the visible keys j of scale·<q_i^h, k_j^g> + additive(i, j), 0 for hidden keys, for query i of
// head h (kv head g). Returns false, with p all zero, when query i sees no key.                     p (n_k)
inline bool attention_probs(const MatD& q, const MatD& k, const AttnShape& s, Index h, Index i, double scale,
                            const AttnMask& mask, std::vector<double>& p) {
  const Index g = s.kv_head(h);
  p.assign(static_cast<std::size_t>(s.n_k), 0.0);
  std::vector<char> seen(static_cast<std::size_t>(s.n_k), 0);
  double max_score = -std::numeric_limits<double>::infinity();
  bool any = false;
  for (Index j = 0; j < s.n_k; ++j) {
    if (!visible(mask, i, j)) continue;
    double score = 0.0;
    for (Index c = 0; c < s.d; ++c) score += q(i, h * s.d + c) * k(j, g * s.d + c);
    score *= scale;
    if (mask.additive.size() != 0) score += mask.additive(i, j);
    const auto js = static_cast<std::size_t>(j);
    p[js] = score;
    seen[js] = 1;
    if (score > max_score) max_score = score;
    any = true;
  }
  if (!any) return false;
  double total = 0.0;
  for (std::size_t j = 0; j < p.size(); ++j) {
    p[j] = seen[j] ? std::exp(p[j] - max_score) : 0.0;
    total += p[j];
  }
  for (double& pj : p) pj /= total;
  return true;
}

}  // namespace detail

// out_i^h = Σ_{visible j} softmax_j(scale·<q_i^h, k_j^g> + additive(i, j)) · v_j^g, g = h / (H / G); 0 if none visible
// q (n_q, H·d), k (n_k, G·d), v (n_k, G·dv) -> out (n_q, H·dv)   (the interface has dv = d; a different dv works too)
inline MatD attention(const MatD& q, const MatD& k, const MatD& v, Index H, Index G, double scale,
                      const AttnMask& mask) {
  const detail::AttnShape s = detail::attention_shape(q, k, v, H, G, mask);
  MatD out = MatD::Zero(s.n_q, H * s.dv);
  std::vector<double> p;
  for (Index h = 0; h < H; ++h) {
    const Index g = s.kv_head(h);
    for (Index i = 0; i < s.n_q; ++i) {
      if (!detail::attention_probs(q, k, s, h, i, scale, mask, p)) continue;
      for (Index j = 0; j < s.n_k; ++j) {
        const double pj = p[static_cast<std::size_t>(j)];
        for (Index c = 0; c < s.dv; ++c) out(i, h * s.dv + c) += pj * v(j, g * s.dv + c);
      }
    }
  }
  return out;
}

struct AttnGrad {
  MatD dq;  // (n_q, H·d)
  MatD dk;  // (n_k, G·d)
  MatD dv;  // (n_k, G·dv)
};

// Per head h and query i with probabilities p: dP_j = <dout_i^h, v_j^g>, dv_j^g += p_j·dout_i^h,
// dS_j = p_j(dP_j − Σ_k p_k dP_k), dq_i^h += scale·Σ_j dS_j·k_j^g, dk_j^g += scale·dS_j·q_i^h.   dout (n_q, H·dv)
inline AttnGrad attention_backward(const MatD& q, const MatD& k, const MatD& v, Index H, Index G, double scale,
                                   const AttnMask& mask, const MatD& dout) {
  const detail::AttnShape s = detail::attention_shape(q, k, v, H, G, mask);
  detail::require(dout.rows() == s.n_q && dout.cols() == H * s.dv, "attention_backward: dout must be (n_q, H·dv)");
  AttnGrad grad;
  grad.dq = MatD::Zero(q.rows(), q.cols());
  grad.dk = MatD::Zero(k.rows(), k.cols());
  grad.dv = MatD::Zero(v.rows(), v.cols());
  std::vector<double> p, dp(static_cast<std::size_t>(s.n_k));
  for (Index h = 0; h < H; ++h) {
    const Index g = s.kv_head(h);
    for (Index i = 0; i < s.n_q; ++i) {
      if (!detail::attention_probs(q, k, s, h, i, scale, mask, p)) continue;  // output is constant 0: no gradient
      double p_dot_dp = 0.0;
      for (Index j = 0; j < s.n_k; ++j) {
        const auto js = static_cast<std::size_t>(j);
        double dpj = 0.0;
        for (Index c = 0; c < s.dv; ++c) {
          dpj += dout(i, h * s.dv + c) * v(j, g * s.dv + c);
          grad.dv(j, g * s.dv + c) += p[js] * dout(i, h * s.dv + c);
        }
        dp[js] = dpj;
        p_dot_dp += p[js] * dpj;
      }
      for (Index j = 0; j < s.n_k; ++j) {
        const auto js = static_cast<std::size_t>(j);
        const double ds = p[js] * (dp[js] - p_dot_dp);  // 0 for hidden keys, since p_j = 0 there
        for (Index c = 0; c < s.d; ++c) {
          grad.dq(i, h * s.d + c) += scale * ds * k(j, g * s.d + c);
          grad.dk(j, g * s.d + c) += scale * ds * q(i, h * s.d + c);
        }
      }
    }
  }
  return grad;
}

// ==== Multi-head attention module ===================================================================================

struct MHAWeights {
  MatD wq, wk, wv, wo;  // (H·hd, d_model), (G·hd, d_kv), (G·hd, d_kv), (d_model, H·hd)
  VecD bq, bk, bv, bo;  // matching biases, each may be empty
  Index H = 1, G = 1, head_dim = 0;  // head_dim 0: taken as wq.rows() / H
};

namespace detail {

// The attention mask of sequence b: causal, causal_offset, additive and n_valid_keys from `mask`, key padding from
// row b of key_padding (batch, n_k; nonzero = padded) or none when key_padding is empty. mask.key_padding is not used.
inline AttnMask sequence_mask(const AttnMask& mask, const MatD& key_padding, Index b, Index n_k) {
  AttnMask m = mask;
  m.key_padding.clear();
  if (key_padding.size() != 0) {
    m.key_padding.resize(static_cast<std::size_t>(n_k));
    for (Index j = 0; j < n_k; ++j) m.key_padding[static_cast<std::size_t>(j)] = key_padding(b, j) != 0.0;
  }
  return m;
}

// The per-sequence sizes of an MHA call, checked.
struct MHAShape {
  Index n_q, n_k, head_dim;
  double scale;  // 1 / √head_dim
};

inline MHAShape mha_shape(const MatD& x, const MatD& kv, Index batch, const MHAWeights& w, const MatD& key_padding) {
  require(batch > 0 && x.rows() % batch == 0 && kv.rows() % batch == 0, "mha: rows must be batch·seq");
  require(w.H > 0 && w.G > 0 && w.H % w.G == 0, "mha: need H > 0, G > 0 and H % G == 0");
  const Index head_dim = w.head_dim > 0 ? w.head_dim : w.wq.rows() / w.H;
  require(head_dim > 0 && w.wq.rows() == w.H * head_dim, "mha: wq must have H·head_dim rows");
  require(w.wk.rows() == w.G * head_dim && w.wv.rows() == w.G * head_dim, "mha: wk and wv must have G·head_dim rows");
  require(w.wo.cols() == w.H * head_dim, "mha: wo must have H·head_dim columns");
  const Index n_k = kv.rows() / batch;
  require(key_padding.size() == 0 || (key_padding.rows() == batch && key_padding.cols() == n_k),
          "mha: key_padding must be (batch, n_k)");
  return {x.rows() / batch, n_k, head_dim, 1.0 / std::sqrt(double(head_dim))};
}

}  // namespace detail

// Rows b·n_q.. of x and b·n_k.. of kv are sequence b: q = x·Wqᵀ + bq, k = kv·Wkᵀ + bk, v = kv·Wvᵀ + bv,
// context_b = attention(q_b, k_b, v_b, H, G, 1/√hd, mask with key padding row b), y = context·Woᵀ + bo.
// x (batch·n_q, d_model), kv (batch·n_k, d_kv) -> y (batch·n_q, wo.rows())
inline MatD mha(const MatD& x, const MatD& kv, Index batch, const MHAWeights& w, const AttnMask& mask,
                const MatD& key_padding) {
  const detail::MHAShape s = detail::mha_shape(x, kv, batch, w, key_padding);
  const MatD q = linear(x, w.wq, w.bq), k = linear(kv, w.wk, w.bk), v = linear(kv, w.wv, w.bv);
  MatD context(x.rows(), w.H * s.head_dim);
  for (Index b = 0; b < batch; ++b) {
    const AttnMask m = detail::sequence_mask(mask, key_padding, b, s.n_k);
    detail::set_rows(context, b * s.n_q,
                     attention(detail::rows_of(q, b * s.n_q, s.n_q), detail::rows_of(k, b * s.n_k, s.n_k),
                               detail::rows_of(v, b * s.n_k, s.n_k), w.H, w.G, s.scale, m));
  }
  return linear(context, w.wo, w.bo);
}

struct MHAGrad {
  MatD dx, dkv;            // through the query path only / through keys and values only
  MatD dwq, dwk, dwv, dwo;
  VecD dbq, dbk, dbv, dbo;  // empty when the bias is absent
};

// d_context = dy·Wo; per sequence attention_backward gives dq, dk, dv; dx = dq·Wq, dkv = dk·Wk + dv·Wv, and each
// projection's weight/bias gradient as in linear_backward.                                    dy (batch·n_q, d_model)
inline MHAGrad mha_backward(const MatD& x, const MatD& kv, Index batch, const MHAWeights& w, const AttnMask& mask,
                            const MatD& key_padding, const MatD& dy) {
  const detail::MHAShape s = detail::mha_shape(x, kv, batch, w, key_padding);
  const MatD q = linear(x, w.wq, w.bq), k = linear(kv, w.wk, w.bk), v = linear(kv, w.wv, w.bv);
  MatD context(x.rows(), w.H * s.head_dim);
  MatD dq(q.rows(), q.cols()), dk(k.rows(), k.cols()), dv(v.rows(), v.cols());
  for (Index b = 0; b < batch; ++b) {
    const AttnMask m = detail::sequence_mask(mask, key_padding, b, s.n_k);
    const MatD qb = detail::rows_of(q, b * s.n_q, s.n_q);
    const MatD kb = detail::rows_of(k, b * s.n_k, s.n_k), vb = detail::rows_of(v, b * s.n_k, s.n_k);
    detail::set_rows(context, b * s.n_q, attention(qb, kb, vb, w.H, w.G, s.scale, m));
  }
  const LinearGrad out = linear_backward(context, w.wo, w.bo, dy);
  for (Index b = 0; b < batch; ++b) {
    const AttnMask m = detail::sequence_mask(mask, key_padding, b, s.n_k);
    const MatD qb = detail::rows_of(q, b * s.n_q, s.n_q);
    const MatD kb = detail::rows_of(k, b * s.n_k, s.n_k), vb = detail::rows_of(v, b * s.n_k, s.n_k);
    const AttnGrad a =
        attention_backward(qb, kb, vb, w.H, w.G, s.scale, m, detail::rows_of(out.dx, b * s.n_q, s.n_q));
    detail::set_rows(dq, b * s.n_q, a.dq);
    detail::set_rows(dk, b * s.n_k, a.dk);
    detail::set_rows(dv, b * s.n_k, a.dv);
  }
  const LinearGrad gq = linear_backward(x, w.wq, w.bq, dq);
  const LinearGrad gk = linear_backward(kv, w.wk, w.bk, dk);
  const LinearGrad gv = linear_backward(kv, w.wv, w.bv, dv);
  MHAGrad g;
  g.dx = gq.dx;
  g.dkv = detail::sum(gk.dx, gv.dx);
  g.dwq = gq.dw;
  g.dwk = gk.dw;
  g.dwv = gv.dw;
  g.dwo = out.dw;
  g.dbq = gq.db;
  g.dbk = gk.db;
  g.dbv = gv.db;
  g.dbo = out.db;
  return g;
}

// ==== Encoder layer =================================================================================================

struct EncoderWeights {
  MHAWeights attn;
  FFNWeights ffn;
  VecD norm1_gamma, norm1_beta, norm2_gamma, norm2_beta;
  double eps = 1e-5;
  bool pre_norm = false;
};

// post-norm: h = LN1(x + SA(x)), y = LN2(h + FF(h));  pre-norm: h = x + SA(LN1(x)), y = h + FF(LN2(h)),
// SA(z) = mha(z, z, ...).                                                                  x, y (batch·seq, d_model)
inline MatD encoder_layer(const MatD& x, Index batch, const EncoderWeights& w, const AttnMask& mask,
                          const MatD& key_padding) {
  if (w.pre_norm) {
    const MatD n1 = layer_norm(x, w.norm1_gamma, w.norm1_beta, w.eps);
    const MatD h = detail::sum(x, mha(n1, n1, batch, w.attn, mask, key_padding));
    return detail::sum(h, ffn(layer_norm(h, w.norm2_gamma, w.norm2_beta, w.eps), w.ffn));
  }
  const MatD h = layer_norm(detail::sum(x, mha(x, x, batch, w.attn, mask, key_padding)), w.norm1_gamma, w.norm1_beta,
                            w.eps);
  return layer_norm(detail::sum(h, ffn(h, w.ffn)), w.norm2_gamma, w.norm2_beta, w.eps);
}

struct EncoderGrad {
  MatD dx;
  MHAGrad attn;          // its dx / dkv are the query / key-value parts at the attention's input
  FFNGrad ffn;           // its dx is the gradient at the FFN's input
  NormGrad norm1, norm2;  // their dx are the gradients at each norm's input
};

// Reverse of encoder_layer by the chain rule; a residual branch adds its gradient to the skip path:
// post-norm: dr2 = LN2'(dy), dh = dr2 + FF'(dr2), dr1 = LN1'(dh), dx = dr1 + SA'_x(dr1) + SA'_kv(dr1);
// pre-norm:  dh = dy + LN2'(FF'(dy)), dn1 = SA'_x(dh) + SA'_kv(dh), dx = dh + LN1'(dn1).        dy (batch·seq, d_model)
inline EncoderGrad encoder_layer_backward(const MatD& x, Index batch, const EncoderWeights& w, const AttnMask& mask,
                                          const MatD& key_padding, const MatD& dy) {
  EncoderGrad g;
  if (w.pre_norm) {
    const MatD n1 = layer_norm(x, w.norm1_gamma, w.norm1_beta, w.eps);
    const MatD h = detail::sum(x, mha(n1, n1, batch, w.attn, mask, key_padding));
    const MatD n2 = layer_norm(h, w.norm2_gamma, w.norm2_beta, w.eps);
    g.ffn = ffn_backward(n2, w.ffn, dy);
    g.norm2 = layer_norm_backward(h, w.norm2_gamma, w.norm2_beta, w.eps, g.ffn.dx);
    const MatD dh = detail::sum(dy, g.norm2.dx);
    g.attn = mha_backward(n1, n1, batch, w.attn, mask, key_padding, dh);
    g.norm1 = layer_norm_backward(x, w.norm1_gamma, w.norm1_beta, w.eps, detail::sum(g.attn.dx, g.attn.dkv));
    g.dx = detail::sum(dh, g.norm1.dx);
    return g;
  }
  const MatD r1 = detail::sum(x, mha(x, x, batch, w.attn, mask, key_padding));
  const MatD h = layer_norm(r1, w.norm1_gamma, w.norm1_beta, w.eps);
  const MatD r2 = detail::sum(h, ffn(h, w.ffn));
  g.norm2 = layer_norm_backward(r2, w.norm2_gamma, w.norm2_beta, w.eps, dy);
  g.ffn = ffn_backward(h, w.ffn, g.norm2.dx);
  const MatD dh = detail::sum(g.norm2.dx, g.ffn.dx);
  g.norm1 = layer_norm_backward(r1, w.norm1_gamma, w.norm1_beta, w.eps, dh);
  g.attn = mha_backward(x, x, batch, w.attn, mask, key_padding, g.norm1.dx);
  g.dx = detail::sum(g.norm1.dx, detail::sum(g.attn.dx, g.attn.dkv));
  return g;
}

// ==== Rotary positions ==============================================================================================

namespace detail {

// Rotates each pair (a, b) of every head of row r by sign·θ, θ = (first + r)·base^(−2i/d) for pair i:
// a' = a·cos − b·sin, b' = a·sin + b·cos. Pairs are (2i, 2i+1) when interleaved, else (i, i + d/2).   x (n, heads·d)
inline MatD rotate_pairs(const MatD& x, Index heads, Index head_dim, Index first, bool interleaved, double base,
                         double sign) {
  require(heads > 0 && head_dim > 0 && head_dim % 2 == 0, "rope: need heads > 0 and an even head_dim > 0");
  require(x.cols() == heads * head_dim, "rope: x must have heads·head_dim columns");
  MatD y = x;
  const Index half = head_dim / 2;
  for (Index r = 0; r < x.rows(); ++r) {
    const double position = double(first + r);
    for (Index i = 0; i < half; ++i) {
      const double angle = sign * position * std::pow(base, -2.0 * double(i) / double(head_dim));
      const double c = std::cos(angle), s = std::sin(angle);
      for (Index hd = 0; hd < heads; ++hd) {
        const Index ia = hd * head_dim + (interleaved ? 2 * i : i);
        const Index ib = hd * head_dim + (interleaved ? 2 * i + 1 : i + half);
        y(r, ia) = x(r, ia) * c - x(r, ib) * s;
        y(r, ib) = x(r, ia) * s + x(r, ib) * c;
      }
    }
  }
  return y;
}

}  // namespace detail

// y = each pair of x rotated by +θ (see detail::rotate_pairs), positions first..first+n−1        x, y (n, heads·d)
inline MatD rope(const MatD& x, Index heads, Index head_dim, Index first, bool interleaved, double base = 10000.0) {
  return detail::rotate_pairs(x, heads, head_dim, first, interleaved, base, +1.0);
}

// dx = Rᵀ·dy per pair = dy rotated by −θ (a rotation's transpose is its inverse)                  dy, dx (n, heads·d)
inline MatD rope_backward(const MatD& dy, Index heads, Index head_dim, Index first, bool interleaved,
                          double base = 10000.0) {
  return detail::rotate_pairs(dy, heads, head_dim, first, interleaved, base, -1.0);
}

// ==== Cross-entropy =================================================================================================

namespace detail {

// The number of counted rows (target ≥ 0), after checking targets against logits (n, classes).
inline Index counted_rows(const MatD& logits, const std::vector<Index>& targets) {
  require(Index(targets.size()) == logits.rows(), "cross_entropy: one target per row");
  Index counted = 0;
  for (const Index t : targets) {
    require(t < logits.cols(), "cross_entropy: target >= number of classes");
    if (t >= 0) ++counted;
  }
  return counted;
}

// log Σ_j exp(logits(i, j)), shifted by the row's maximum.
inline double log_sum_exp(const MatD& logits, Index i) {
  double max_logit = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < logits.cols(); ++j) max_logit = std::max(max_logit, logits(i, j));
  double total = 0.0;
  for (Index j = 0; j < logits.cols(); ++j) total += std::exp(logits(i, j) - max_logit);
  return max_logit + std::log(total);
}

}  // namespace detail

// L = (1/m) Σ_{i: t_i ≥ 0} (log Σ_j exp(logits(i, j)) − logits(i, t_i)), m = #counted rows; 0 when m = 0 (torch: NaN)
// logits (n, classes), targets (n)
inline double cross_entropy(const MatD& logits, const std::vector<Index>& targets) {
  const Index counted = detail::counted_rows(logits, targets);
  if (counted == 0) return 0.0;
  double total = 0.0;
  for (Index i = 0; i < logits.rows(); ++i) {
    const Index t = targets[static_cast<std::size_t>(i)];
    if (t >= 0) total += detail::log_sum_exp(logits, i) - logits(i, t);
  }
  return total / double(counted);
}

// dL/dlogits(i, j) = (softmax(logits_i)_j − [j = t_i]) / m for counted rows, 0 for ignored rows.   -> (n, classes)
inline MatD cross_entropy_backward(const MatD& logits, const std::vector<Index>& targets) {
  const Index counted = detail::counted_rows(logits, targets);
  MatD grad = MatD::Zero(logits.rows(), logits.cols());
  for (Index i = 0; i < logits.rows(); ++i) {
    const Index t = targets[static_cast<std::size_t>(i)];
    if (t < 0) continue;
    const double lse = detail::log_sum_exp(logits, i);
    for (Index j = 0; j < logits.cols(); ++j)
      grad(i, j) = (std::exp(logits(i, j) - lse) - (j == t ? 1.0 : 0.0)) / double(counted);
  }
  return grad;
}

}  // namespace backward_oracle
