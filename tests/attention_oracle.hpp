#pragma once
// Naive float64 references for the attention policies, written apart from the library: every score is
// materialized and every mask is a plain predicate written from the policy's definition.

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "polyformer/attention/mask.hpp"
#include "polyformer/core/tensor.hpp"

namespace pft {

using polyformer::Index;
using polyformer::Matrix;

/// Which key j query i of head h may see.
using Visibility = std::function<bool(Index h, Index i, Index j)>;

/// The layout of one attention call: q (n_q, heads·d), k and v (n_k, kv_heads·d).
struct OracleShape {
  Index heads = 1, kv_heads = 1, dh = 1;
  double scale = 1.0;
  Index kv(Index h) const { return h / (heads / kv_heads); }
};

/// softmax over the visible keys of scale·q·k (+ additive), times v, in double. lse (heads·n_q), if given,
/// receives each row's log Σ exp (−inf when nothing is visible; the row is then zero).
inline Matrix masked_softmax_oracle(const Matrix& q, const Matrix& k, const Matrix& v, const OracleShape& s,
                                    const Visibility& visible, const Matrix* additive = nullptr,
                                    std::vector<double>* lse = nullptr) {
  const Index n_q = q.rows(), n_k = k.rows();
  Matrix out = Matrix::Zero(n_q, s.heads * s.dh);
  if (lse) lse->assign(std::size_t(s.heads * n_q), -std::numeric_limits<double>::infinity());
  std::vector<double> score(static_cast<std::size_t>(n_k));
  std::vector<char> seen(static_cast<std::size_t>(n_k));
  for (Index h = 0; h < s.heads; ++h) {
    const Index g = s.kv(h);
    for (Index i = 0; i < n_q; ++i) {
      double best = -std::numeric_limits<double>::infinity();
      for (Index j = 0; j < n_k; ++j) {
        seen[std::size_t(j)] = 0;
        if (!visible(h, i, j)) continue;
        double x = 0;
        for (Index c = 0; c < s.dh; ++c) x += double(q(i, h * s.dh + c)) * double(k(j, g * s.dh + c));
        x *= s.scale;
        if (additive) x += double((*additive)(i, j));
        if (std::isinf(x) && x < 0) continue;
        score[std::size_t(j)] = x;
        seen[std::size_t(j)] = 1;
        best = std::max(best, x);
      }
      if (best == -std::numeric_limits<double>::infinity()) continue;
      double total = 0;
      for (Index j = 0; j < n_k; ++j)
        if (seen[std::size_t(j)]) total += (score[std::size_t(j)] = std::exp(score[std::size_t(j)] - best));
      for (Index c = 0; c < s.dh; ++c) {
        double acc = 0;
        for (Index j = 0; j < n_k; ++j)
          if (seen[std::size_t(j)]) acc += score[std::size_t(j)] * double(v(j, g * s.dh + c));
        out(i, h * s.dh + c) = float(acc / total);
      }
      if (lse) (*lse)[std::size_t(h * n_q + i)] = best + std::log(total);
    }
  }
  return out;
}

/// Kernelized attention by its definition: out_i = Σ_j w_ij v_j / Σ_j w_ij with w_ij = φ(q_i)·φ(k_j) over the
/// visible keys; phi_q(h, i) and phi_k(g, j) return feature vectors.
inline Matrix feature_oracle(const Matrix& v, Index n_q, const OracleShape& s,
                             const std::function<std::vector<double>(Index, Index)>& phi_q,
                             const std::function<std::vector<double>(Index, Index)>& phi_k, const Visibility& visible) {
  const Index n_k = v.rows();
  Matrix out = Matrix::Zero(n_q, s.heads * s.dh);
  for (Index h = 0; h < s.heads; ++h) {
    const Index g = s.kv(h);
    std::vector<std::vector<double>> fk(static_cast<std::size_t>(n_k));
    for (Index j = 0; j < n_k; ++j) fk[std::size_t(j)] = phi_k(g, j);
    for (Index i = 0; i < n_q; ++i) {
      const std::vector<double> fq = phi_q(h, i);
      double den = 0;
      std::vector<double> num(static_cast<std::size_t>(s.dh), 0.0);
      for (Index j = 0; j < n_k; ++j) {
        if (!visible(h, i, j)) continue;
        double w = 0;
        for (std::size_t f = 0; f < fq.size(); ++f) w += fq[f] * fk[std::size_t(j)][f];
        den += w;
        for (Index c = 0; c < s.dh; ++c) num[std::size_t(c)] += w * double(v(j, g * s.dh + c));
      }
      if (den > 0)
        for (Index c = 0; c < s.dh; ++c) out(i, h * s.dh + c) = float(num[std::size_t(c)] / den);
    }
  }
  return out;
}

/// Largest |a − b| relative to the largest |b| (1 when b is all zero).
inline double rel_max_error(const Matrix& a, const Matrix& b) {
  const double scale = std::max(1e-30, double(b.cwiseAbs().maxCoeff()));
  return double((a - b).cwiseAbs().maxCoeff()) / (b.size() ? scale : 1.0);
}

/// Key j is padded under `mask` (n_valid_keys or key_padding).
inline bool oracle_padded(const polyformer::AttentionMask& mask, Index j) {
  return j >= mask.n_valid_keys || (mask.key_padding && mask.key_padding[j] != 0.0f);
}

}  // namespace pft
