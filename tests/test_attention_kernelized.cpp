// LinearAttention (elu+1) and Performer (FAVOR+) against float64 evaluations of their feature-map
// definitions, bidirectional and causal, with padding; recurrent decoding; FAVOR+'s error against exact
// softmax attention falling as the features grow; the orthogonal features.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "attention_oracle.hpp"
#include "polyformer/attention/full.hpp"
#include "polyformer/attention/kernelized.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

template <typename P>
Matrix run(P& p, const Matrix& q, const Matrix& k, const Matrix& v, Index heads, Index kv_heads, Index dh,
           const pf::AttentionMask& mask = {}, int threads = 2) {
  pf::AttentionShape s{heads, kv_heads, dh, 1.0f / std::sqrt(float(dh))};
  Matrix out = Matrix::Constant(q.rows(), heads * dh, std::numeric_limits<float>::quiet_NaN());
  p.forward(s, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), pf::Context{threads});
  return out;
}

double elu1(double x) { return x > 0 ? x + 1 : std::exp(x); }

// φ(x) = exp(W·x′ − |x′|²/2)/√M, x′ = x·d^(−1/4), in double.
std::vector<double> favor(const Matrix& w, const Matrix& x, Index row, Index col0, Index dh) {
  const double c = std::pow(double(dh), -0.25);
  double sq = 0;
  for (Index f = 0; f < dh; ++f) sq += std::pow(double(x(row, col0 + f)) * c, 2);
  std::vector<double> phi(static_cast<std::size_t>(w.rows()));
  for (Index m = 0; m < w.rows(); ++m) {
    double dot = 0;
    for (Index f = 0; f < dh; ++f) dot += double(w(m, f)) * double(x(row, col0 + f)) * c;
    phi[std::size_t(m)] = std::exp(dot - sq / 2) / std::sqrt(double(w.rows()));
  }
  return phi;
}

}  // namespace

TEST_CASE("Kernelized attention equals its feature-map definition, n = 1..1000", "[attention][kernelized]") {
  unsigned seed = 300;
  for (Index n : {1, 2, 63, 64, 65, 200, 1000}) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool causal = variant % 2 == 1, padded = variant >= 2;
      const Index heads = 4, kv_heads = variant == 3 ? 2 : 4, dh = 8;
      const Matrix q = pft::random_matrix(n, heads * dh, seed++, 0.7f), k = pft::random_matrix(n, kv_heads * dh, seed++, 0.7f),
                   v = pft::random_matrix(n, kv_heads * dh, seed++);
      pf::AttentionMask mask;
      mask.causal = causal;
      std::vector<float> padding(static_cast<std::size_t>(n), 0.0f);
      if (padded) {
        for (Index j = 1; j < n; j += 4) padding[std::size_t(j)] = 1.0f;
        mask.key_padding = padding.data();
      }
      const auto visible = [&](Index, Index i, Index j) { return !pft::oracle_padded(mask, j) && (!causal || j <= i); };
      const pft::OracleShape os{heads, kv_heads, dh, 1.0};
      pf::LinearAttention linear;
      const auto elu_q = [&](Index h, Index i) {
        std::vector<double> x(static_cast<std::size_t>(dh));
        for (Index f = 0; f < dh; ++f) x[std::size_t(f)] = elu1(q(i, h * dh + f));
        return x;
      };
      const auto elu_k = [&](Index g, Index j) {
        std::vector<double> x(static_cast<std::size_t>(dh));
        for (Index f = 0; f < dh; ++f) x[std::size_t(f)] = elu1(k(j, g * dh + f));
        return x;
      };
      INFO("n " << n << " variant " << variant);
      CHECK(pft::rel_max_error(run(linear, q, k, v, heads, kv_heads, dh, mask), pft::feature_oracle(v, n, os, elu_q, elu_k, visible)) < 1e-5);
      pf::Performer performer(pf::PositiveRandomFeatures(48, 7));
      const Matrix got = run(std::as_const(performer), q, k, v, heads, kv_heads, dh, mask);
      performer.feature_map().prepare(dh);  // the W the forward drew in its workspace: (M, d, seed) decide it
      const Matrix& w = performer.feature_map().projection();
      REQUIRE(w.rows() == 48);
      REQUIRE(w.cols() == dh);
      const auto fq = [&](Index h, Index i) { return favor(w, q, i, h * dh, dh); };
      const auto fk = [&](Index g, Index j) { return favor(w, k, j, g * dh, dh); };
      CHECK(pft::rel_max_error(got, pft::feature_oracle(v, n, os, fq, fk, visible)) < 1e-5);
    }
  }
}

TEST_CASE("Kernelized attention decodes with a recurrent state exactly as its causal forward", "[attention][kernelized][decode]") {
  const Index n = 300, heads = 4, kv_heads = 2, dh = 8;
  // Keys whose exponents grow along the sequence make the running shift rescale the state.
  Matrix q = pft::random_matrix(n, heads * dh, 1), k = pft::random_matrix(n, kv_heads * dh, 2);
  const Matrix v = pft::random_matrix(n, kv_heads * dh, 3);
  for (Index j = 0; j < n; ++j) k.row(j) *= 0.5f + 3.0f * float(j) / float(n);
  pf::AttentionMask causal;
  causal.causal = true;
  const auto check = [&](auto policy) {
    const Matrix expected = run(policy, q, k, v, heads, kv_heads, dh, causal, 1);
    REQUIRE(expected.allFinite());
    pf::AttentionShape s{heads, kv_heads, dh, 1.0f / std::sqrt(float(dh))};
    auto state = policy.make_state(7, kv_heads, dh);  // capacity is irrelevant: O(1) state
    for (Index chunk : {1, 5, 64, 300}) {
      state.clear();
      Matrix out(n, heads * dh);
      for (Index p = 0; p < n; p += chunk) {
        const Index m = std::min(chunk, n - p);
        policy.forward_cached(s, pf::block(pf::cview(q), p, 0, m, heads * dh), pf::block(pf::cview(k), p, 0, m, kv_heads * dh),
                              pf::block(pf::cview(v), p, 0, m, kv_heads * dh), state,
                              pf::block(pf::view(out), p, 0, m, heads * dh), pf::Context{2});
      }
      INFO(decltype(policy)::name << " chunk " << chunk);
      CHECK(state.size() == n);
      CHECK(pft::rel_max_error(out, expected) < 1e-5);
    }
  };
  check(pf::LinearAttention{});
  check(pf::Performer(pf::PositiveRandomFeatures(64, 3)));
}

TEST_CASE("Performer's error against softmax attention falls as the features grow", "[attention][kernelized]") {
  const Index n = 256, heads = 4, dh = 16;
  const Matrix q = pft::random_matrix(n, heads * dh, 21, 0.5f), k = pft::random_matrix(n, heads * dh, 22, 0.5f),
               v = pft::random_matrix(n, heads * dh, 23);
  pf::FullAttention full;
  const Matrix exact = run(full, q, k, v, heads, heads, dh, {}, 1);
  std::vector<double> errors;
  for (Index m : {8, 32, 128, 512, 2048}) {
    double sum = 0;
    for (unsigned seed = 1; seed <= 4; ++seed) {
      pf::Performer p(pf::PositiveRandomFeatures(m, seed));
      sum += double((run(p, q, k, v, heads, heads, dh) - exact).norm() / exact.norm());
    }
    errors.push_back(sum / 4);
  }
  INFO("mean relative errors for M = 8..2048: " << errors[0] << " " << errors[1] << " " << errors[2] << " "
                                                << errors[3] << " " << errors[4]);
  for (std::size_t i = 1; i < errors.size(); ++i) CHECK(errors[i] < errors[i - 1]);
  CHECK(errors.back() < errors.front() / 4);  // 256× the features: measured 0.52 → 0.072 here
}

TEST_CASE("Performer's features are orthogonal in blocks, seeded and redrawable", "[attention][kernelized]") {
  pf::PositiveRandomFeatures a(40, 5), b(40, 5);
  a.prepare(16);
  b.prepare(16);
  CHECK(a.projection() == b.projection());
  const Matrix& w = a.projection();
  REQUIRE(w.rows() == 40);
  const Matrix gram = w.topRows(16) * w.topRows(16).transpose();
  for (Index i = 0; i < 16; ++i)
    for (Index j = 0; j < 16; ++j)
      if (i != j) CHECK(std::abs(gram(i, j)) < 1e-3 * std::sqrt(gram(i, i) * gram(j, j)));
  b.redraw(16, 6);
  CHECK(b.projection() != a.projection());
  CHECK_THROWS_WITH(pf::PositiveRandomFeatures(0), Catch::Contains("features is 0"));
  pf::Performer fixed;
  fixed.feature_map().set_projection(pft::random_matrix(10, 4, 1));
  const Matrix x = pft::random_matrix(5, 8, 2);
  CHECK_THROWS_WITH(run(fixed, x, x, x, 1, 1, 8), Catch::Contains("expected (10, 8)"));
  pf::LinearAttention linear;
  Matrix additive = Matrix::Zero(5, 5);
  pf::AttentionMask mask;
  mask.additive = additive.data();
  mask.additive_stride = 5;
  CHECK_THROWS_WITH(run(linear, x, x, x, 1, 1, 8, mask), Catch::Contains("additive mask"));
}
