// LSHAttention against the float64 oracle given the buckets it hashed: per round, sorted by (bucket,
// position), chunks seeing themselves and the previous chunk, no self unless alone; rounds combined by their
// log-sum-exp. The hashing itself, reproducibility, and the one-bucket limit.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "attention_oracle.hpp"
#include "polyformer/attention/lsh.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

// With a workspace `ws` (which then tells the buckets the call used), or without (one of the call's own).
Matrix run(const pf::LSHAttention& lsh, pf::LSHAttention::Workspace* ws, const Matrix& q, const Matrix& v, Index heads,
           Index kv_heads, Index dh, const pf::AttentionMask& mask, int threads) {
  pf::AttentionShape s{heads, kv_heads, dh, 1.0f / std::sqrt(float(dh))};
  Matrix out = Matrix::Constant(q.rows(), heads * dh, std::numeric_limits<float>::quiet_NaN());
  const Matrix k_unused = Matrix::Constant(q.rows(), kv_heads * dh, std::numeric_limits<float>::quiet_NaN());
  const pf::Context ctx{threads};
  if (ws) lsh.forward(s, pf::cview(q), pf::cview(k_unused), pf::cview(v), mask, pf::view(out), *ws, ctx);
  else lsh.forward(s, pf::cview(q), pf::cview(k_unused), pf::cview(v), mask, pf::view(out), ctx);
  return out;
}

// The unit-length queries of every head, (n, heads·d): Reformer's shared keys.
Matrix shared_keys(const Matrix& q, Index heads, Index dh) {
  Matrix k = q;
  for (Index i = 0; i < q.rows(); ++i)
    for (Index h = 0; h < heads; ++h) {
      const double norm = double(q.block(i, h * dh, 1, dh).norm());
      if (norm > 0) k.block(i, h * dh, 1, dh) /= float(norm);
    }
  return k;
}

// The oracle: for each round, the visibility implied by `buckets`, then the lse-weighted combination.
Matrix lsh_oracle(const Matrix& q, const Matrix& v, Index heads, Index kv_heads, Index dh, Index hashes, Index chunk,
                  const std::function<std::vector<int>(Index, Index)>& buckets, const pf::AttentionMask& mask) {
  const Index n = q.rows();
  const Matrix k = shared_keys(q, heads, dh);
  pft::OracleShape s{heads, heads, dh, 1.0 / std::sqrt(double(dh))};  // keys per query head
  Matrix vq(n, heads * dh);  // values laid out per query head
  for (Index h = 0; h < heads; ++h) vq.block(0, h * dh, n, dh) = v.block(0, (h / (heads / kv_heads)) * dh, n, dh);
  std::vector<Matrix> outs;
  std::vector<std::vector<double>> lses;
  for (Index r = 0; r < hashes; ++r) {
    // Sorted rank of every position, per head.
    std::vector<std::vector<Index>> rank(static_cast<std::size_t>(heads), std::vector<Index>(std::size_t(n)));
    for (Index h = 0; h < heads; ++h) {
      const std::vector<int> b = buckets(h, r);
      std::vector<Index> order(static_cast<std::size_t>(n));
      std::iota(order.begin(), order.end(), Index(0));
      std::sort(order.begin(), order.end(), [&](Index x, Index y) {
        return b[std::size_t(x)] != b[std::size_t(y)] ? b[std::size_t(x)] < b[std::size_t(y)] : x < y;
      });
      for (Index a = 0; a < n; ++a) rank[std::size_t(h)][std::size_t(order[std::size_t(a)])] = a;
    }
    const auto candidate = [&](Index h, Index i, Index j) {
      if (pft::oracle_padded(mask, j) || (mask.causal && j > i)) return false;
      const Index ci = rank[std::size_t(h)][std::size_t(i)] / chunk, cj = rank[std::size_t(h)][std::size_t(j)] / chunk;
      return cj == ci || cj + 1 == ci;
    };
    const auto visible = [&](Index h, Index i, Index j) {
      if (!candidate(h, i, j)) return false;
      if (j != i) return true;
      for (Index o = 0; o < n; ++o)  // itself only when alone
        if (o != i && candidate(h, i, o)) return false;
      return true;
    };
    std::vector<double> lse;
    outs.push_back(pft::masked_softmax_oracle(q, k, vq, s, visible, nullptr, &lse));
    lses.push_back(lse);
  }
  Matrix out = Matrix::Zero(n, heads * dh);
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < n; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (Index r = 0; r < hashes; ++r) m = std::max(m, lses[std::size_t(r)][std::size_t(h * n + i)]);
      if (std::isinf(m)) continue;
      double total = 0;
      for (Index r = 0; r < hashes; ++r) total += std::exp(lses[std::size_t(r)][std::size_t(h * n + i)] - m);
      for (Index r = 0; r < hashes; ++r) {
        const double w = std::exp(lses[std::size_t(r)][std::size_t(h * n + i)] - m) / total;
        out.block(i, h * dh, 1, dh) += float(w) * outs[std::size_t(r)].block(i, h * dh, 1, dh);
      }
    }
  return out;
}

}  // namespace

TEST_CASE("LSHAttention equals the oracle of its buckets for n = 1..1000", "[attention][lsh]") {
  unsigned seed = 40;
  for (Index n : {1, 2, 5, 31, 64, 100, 257, 600, 1000}) {
    for (int variant = 0; variant < 3; ++variant) {
      const Index heads = 2, kv_heads = variant == 1 ? 1 : 2, dh = 8, hashes = variant == 2 ? 1 : 3;
      const Index chunk = variant == 0 ? 16 : 32;
      const Matrix q = pft::random_matrix(n, heads * dh, seed++), v = pft::random_matrix(n, kv_heads * dh, seed++);
      pf::AttentionMask mask;
      mask.causal = variant == 1;
      std::vector<float> padding(static_cast<std::size_t>(n), 0.0f);
      if (variant == 2) {
        for (Index j = 2; j < n; j += 7) padding[std::size_t(j)] = 1.0f;
        mask.key_padding = padding.data();
      }
      const pf::LSHAttention lsh(pf::LSHOptions{hashes, chunk, variant == 2 ? 8 : 0, 99});
      pf::LSHAttention::Workspace ws;
      const Matrix got = run(lsh, &ws, q, v, heads, kv_heads, dh, mask, 2);
      const auto buckets = [&](Index h, Index r) {
        const auto b = ws.buckets(h, r);
        return std::vector<int>(b.begin(), b.end());
      };
      INFO("n " << n << " variant " << variant << " buckets " << ws.last_n_buckets());
      CHECK(pft::rel_max_error(got, lsh_oracle(q, v, heads, kv_heads, dh, hashes, chunk, buckets, mask)) < 1e-5);
    }
  }
}

TEST_CASE("LSHAttention hashes by argmax over [xR; -xR], reproducibly", "[attention][lsh]") {
  const Index n = 200, heads = 2, dh = 16;
  const Matrix q = pft::random_matrix(n, heads * dh, 5), v = pft::random_matrix(n, heads * dh, 6);
  const pf::LSHAttention lsh(pf::LSHOptions{2, 32, 8, 123});
  pf::LSHAttention::Workspace ws;
  const Matrix a = run(lsh, &ws, q, v, heads, heads, dh, {}, 1);
  for (Index h = 0; h < heads; ++h)
    for (Index r = 0; r < 2; ++r) {
      const Matrix& rot = ws.rotation(h, r);
      REQUIRE(rot.rows() == dh);
      REQUIRE(rot.cols() == 4);
      const auto b = ws.buckets(h, r);
      std::vector<int> counts(8, 0);
      for (Index i = 0; i < n; ++i) {
        double best = -1e300;
        int arg = -1;
        for (Index c = 0; c < 8; ++c) {
          double x = 0;
          for (Index f = 0; f < dh; ++f) x += double(q(i, h * dh + f)) * double(rot(f, c % 4));
          if (c >= 4) x = -x;
          if (x > best) best = x, arg = int(c);
        }
        CHECK(b[std::size_t(i)] == arg);
        ++counts[std::size_t(b[std::size_t(i)])];
      }
      CHECK(*std::max_element(counts.begin(), counts.end()) < n);  // the hash spreads positions
    }
  const pf::LSHAttention same(pf::LSHOptions{2, 32, 8, 123}), other(pf::LSHOptions{2, 32, 8, 124});
  CHECK(run(same, nullptr, q, v, heads, heads, dh, {}, 2) == a);  // bitwise, and independent of threads
  CHECK(run(lsh, &ws, q, v, heads, heads, dh, {}, 2) == a);      // and of the workspace's reuse
  pf::LSHAttention::Workspace other_ws = ws;  // rotations drawn for seed 123: redrawn for 124
  run(other, &other_ws, q, v, heads, heads, dh, {}, 1);
  bool differs = false;
  for (Index i = 0; i < n; ++i) differs |= other_ws.buckets(0, 0)[std::size_t(i)] != ws.buckets(0, 0)[std::size_t(i)];
  CHECK(differs);
}

TEST_CASE("LSHAttention factorizes many automatic buckets into two hashes", "[attention][lsh]") {
  const Index n = 3000, dh = 8;
  const Matrix q = pft::random_matrix(n, dh, 15), v = pft::random_matrix(n, dh, 16);
  const pf::LSHAttention lsh(pf::LSHOptions{1, 16, 0, 7});
  pf::LSHAttention::Workspace ws;
  run(lsh, &ws, q, v, 1, 1, dh, {}, 2);
  // 2·⌈3000/16⌉ = 376 buckets wanted: b = 20 (even, b² ≥ 376), 400 buckets as 20 × 20.
  REQUIRE(ws.bucket_factors() == std::pair<Index, Index>(20, 20));
  CHECK(ws.last_n_buckets() == 400);
  const Matrix& rot = ws.rotation(0, 0);
  REQUIRE(rot.cols() == 20);
  const auto argmax = [&](Index i, Index c0) {  // over [xR; -xR] of columns c0..c0+9
    double best = -1e300;
    int arg = -1;
    for (Index c = 0; c < 20; ++c) {
      double x = 0;
      for (Index f = 0; f < dh; ++f) x += double(q(i, f)) * double(rot(f, c0 + c % 10));
      if (c >= 10) x = -x;
      if (x > best) best = x, arg = int(c);
    }
    return arg;
  };
  const auto b = ws.buckets(0, 0);
  std::vector<int> used(400, 0);
  for (Index i = 0; i < n; ++i) {
    CHECK(b[std::size_t(i)] == argmax(i, 0) + 20 * argmax(i, 10));
    used[std::size_t(b[std::size_t(i)])] = 1;
  }
  CHECK(std::count(used.begin(), used.end(), 1) > 100);
}

TEST_CASE("LSHAttention with one bucket is full shared-QK attention", "[attention][lsh]") {
  const Index n = 150, heads = 3, dh = 8;
  const Matrix q = pft::random_matrix(n, heads * dh, 8), v = pft::random_matrix(n, heads * dh, 9);
  for (bool causal : {false, true}) {
    pf::AttentionMask mask;
    mask.causal = causal;
    const pf::LSHAttention lsh(pf::LSHOptions{2, n, 1, 3});
    const Matrix k = shared_keys(q, heads, dh);
    const auto visible = [&](Index, Index i, Index j) { return (!causal || j <= i) && (j != i || (causal && i == 0)); };
    const Matrix expected =
        pft::masked_softmax_oracle(q, k, v, pft::OracleShape{heads, heads, dh, 1.0 / std::sqrt(double(dh))}, visible);
    INFO("causal " << causal);
    CHECK(pft::rel_max_error(run(lsh, nullptr, q, v, heads, heads, dh, mask, 2), expected) < 1e-5);
  }
}

TEST_CASE("LSHAttention rejects bad options and cross-attention", "[attention][lsh]") {
  CHECK_THROWS_WITH(pf::LSHAttention(pf::LSHOptions{0, 64, 0, 1}), Catch::Contains("n_hashes is 0"));
  CHECK_THROWS_WITH(pf::LSHAttention(pf::LSHOptions{1, 0, 0, 1}), Catch::Contains("chunk is 0"));
  CHECK_THROWS_WITH(pf::LSHAttention(pf::LSHOptions{1, 8, 3, 1}), Catch::Contains("n_buckets is 3"));
  const pf::LSHAttention lsh;
  const Matrix q = pft::random_matrix(4, 8, 1), k = pft::random_matrix(5, 8, 2);
  Matrix out(4, 8);
  const pf::AttentionMask none;
  CHECK_THROWS_WITH(lsh.forward(pf::AttentionShape{1, 1, 8, 0.3f}, pf::cview(q), pf::cview(k), pf::cview(k), none,
                                pf::view(out), pf::Context{1}),
                    Catch::Contains("LSHAttention::forward") && Catch::Contains("4 queries and 5 keys"));
}
