// FFN variants, norms and grouped-query multi-head attention against plain float64 formulas.

#include <catch2/catch.hpp>

#include <cmath>

#include "polyformer/polyformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

MatrixD linear_d(const MatrixD& x, const pf::Dense& l) {
  MatrixD y = x * l.weight().cast<double>().transpose();
  if (l.has_bias()) y.rowwise() += l.bias().cast<double>().transpose();
  return y;
}

pf::Dense dense(Index in, Index out, unsigned seed, bool bias = true) {
  return pf::Dense(pft::random_matrix(out, in, seed, 0.3f), bias ? pf::Vector(pft::random_matrix(out, 1, seed + 99)) : pf::Vector());
}

}  // namespace

TEST_CASE("layers/ffn: SwiGLU and GELU FFNs equal their formulas", "[layers][ffn]") {
  const Index n = 7, d = 12, h = 20;
  const Matrix x = pft::random_matrix(n, d, 1);
  const MatrixD xd = x.cast<double>();
  {
    pf::FeedForward<pf::Dense, pf::SwiGLU> ffn(dense(d, h, 2, false), dense(d, h, 3, false), dense(h, d, 4, false));
    Matrix y(n, d);
    ffn.forward(pf::cview(x), pf::view(y), {});
    const MatrixD g = linear_d(xd, ffn.gate()), u = linear_d(xd, ffn.up());
    MatrixD a = g.unaryExpr([](double v) { return v / (1.0 + std::exp(-v)); }).cwiseProduct(u);
    CHECK(pft::max_abs_diff(y, linear_d(a, ffn.down())) < 1e-5);
  }
  {
    const pf::FeedForward<pf::Dense, pf::GELU> ffn(dense(d, h, 5), dense(h, d, 6));
    Matrix y(n, d);
    pf::FeedForward<pf::Dense, pf::GELU>::Workspace ws;
    ffn.forward(pf::cview(x), pf::view(y), ws, pf::Context{2});
    MatrixD a = linear_d(xd, ffn.up()).unaryExpr([](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); });
    CHECK(pft::max_abs_diff(y, linear_d(a, ffn.down())) < 1e-5);
    CHECK(pft::max_abs_diff(ws.hidden, a) < 1e-5);  // the activated hidden state, kept in the workspace
    Matrix y_own(n, d);
    ffn.forward(pf::cview(x), pf::view(y_own), pf::Context{2});  // a workspace of the call's own: the same
    CHECK((y_own.array() == y.array()).all());
  }
}

TEST_CASE("layers/norm: RMSNorm and LayerNorm equal their formulas", "[layers][norm]") {
  const Index n = 5, d = 33;
  const Matrix x = pft::random_matrix(n, d, 8, 3.0f);
  pf::RMSNorm rms(pf::Vector(pft::random_matrix(d, 1, 9)), 1e-6f);
  pf::LayerNorm ln(pf::Vector(pft::random_matrix(d, 1, 10)), pf::Vector(pft::random_matrix(d, 1, 11)), 1e-5f);
  Matrix y(n, d), z(n, d);
  rms.forward(pf::cview(x), pf::view(y));
  ln.forward(pf::cview(x), pf::view(z));
  for (Index r = 0; r < n; ++r) {
    const Eigen::VectorXd row = x.row(r).cast<double>().transpose();
    const double ms = row.squaredNorm() / double(d), mean = row.mean();
    const double var = (row.array() - mean).square().mean();
    for (Index c = 0; c < d; ++c) {
      CHECK(y(r, c) == Approx(row(c) / std::sqrt(ms + 1e-6) * rms.gamma()(c)).margin(1e-5));
      CHECK(z(r, c) == Approx((row(c) - mean) / std::sqrt(var + 1e-5) * ln.gamma()(c) + ln.beta()(c)).margin(1e-5));
    }
  }
}

TEST_CASE("attention/multi_head: grouped-query attention with RoPE equals a float64 reference", "[attention][gqa]") {
  const Index d = 24, heads = 6, kv_heads = 2, dh = 4, n = 11, batch = 2;
  using MHA = pf::MultiHeadAttention<pf::FullAttention, pf::Dense, pf::RoPE<pf::RotaryStyle::half_split>>;
  MHA mha(dense(d, heads * dh, 1), dense(d, kv_heads * dh, 2), dense(d, kv_heads * dh, 3), dense(heads * dh, d, 4),
          pf::HeadConfig{heads, kv_heads, dh});
  const Matrix x = pft::random_matrix(batch * n, d, 5);
  Matrix y(batch * n, d);
  MHA::Workspace ws;
  mha.forward(pf::cview(x), batch, pf::MaskSpec::causal_mask(), pf::view(y), ws, pf::Context{2});

  // Reference: float64 projections, rotation by (a, b) → (a cos − b sin, a sin + b cos) on (k, k + dh/2).
  const MatrixD xd = x.cast<double>();
  MatrixD q = linear_d(xd, mha.q_proj()), k = linear_d(xd, mha.k_proj()), v = linear_d(xd, mha.v_proj());
  auto rotate = [&](MatrixD& m, Index h_count) {
    for (Index r = 0; r < m.rows(); ++r)
      for (Index h = 0; h < h_count; ++h)
        for (Index i = 0; i < dh / 2; ++i) {
          const double angle = double(r % n) * std::pow(10000.0, -2.0 * double(i) / double(dh));
          double& a = m(r, h * dh + i);
          double& b = m(r, h * dh + i + dh / 2);
          const double a0 = a, b0 = b;
          a = a0 * std::cos(angle) - b0 * std::sin(angle);
          b = a0 * std::sin(angle) + b0 * std::cos(angle);
        }
  };
  rotate(q, heads);
  rotate(k, kv_heads);
  MatrixD ctx = MatrixD::Zero(batch * n, heads * dh);
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < heads; ++h) {
      const Index g = h / (heads / kv_heads);
      for (Index i = 0; i < n; ++i) {
        Eigen::VectorXd s(i + 1);
        for (Index j = 0; j <= i; ++j)
          s(j) = q.row(b * n + i).segment(h * dh, dh).dot(k.row(b * n + j).segment(g * dh, dh)) / std::sqrt(double(dh));
        s = (s.array() - s.maxCoeff()).exp();
        s /= s.sum();
        for (Index j = 0; j <= i; ++j) ctx.row(b * n + i).segment(h * dh, dh) += s(j) * v.row(b * n + j).segment(g * dh, dh);
      }
    }
  CHECK(pft::max_abs_diff(y, linear_d(ctx, mha.o_proj())) < 1e-5);
}
