// Linformer against a float64 oracle (K' = E·K, V' = F·V over the leading n columns, padded keys zero),
// in each sharing mode; the identity limit; its errors.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "attention_oracle.hpp"
#include "polyformer/attention/full.hpp"
#include "polyformer/attention/linformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

Matrix run(pf::Linformer& p, const Matrix& q, const Matrix& k, const Matrix& v, Index heads, Index kv_heads, Index dh,
           const pf::AttentionMask& mask = {}, int threads = 2) {
  pf::AttentionShape s{heads, kv_heads, dh, 1.0f / std::sqrt(float(dh))};
  Matrix out = Matrix::Constant(q.rows(), heads * dh, std::numeric_limits<float>::quiet_NaN());
  p.forward(s, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), pf::Context{threads});
  return out;
}

// Projected keys/values per query head in double, then plain softmax attention over them.
Matrix linformer_oracle(const Matrix& q, const Matrix& k, const Matrix& v, Index heads, Index kv_heads, Index dh,
                        Index kp, const Matrix& e, const Matrix& f, const pf::AttentionMask& mask) {
  const Index n = k.rows();
  const bool per_head = e.rows() == heads * kp;
  Matrix pk(kp, heads * dh), pv(kp, heads * dh);
  for (Index h = 0; h < heads; ++h) {
    const Index g = h / (heads / kv_heads), r0 = per_head ? h * kp : 0;
    for (Index a = 0; a < kp; ++a)
      for (Index c = 0; c < dh; ++c) {
        double sk = 0, sv = 0;
        for (Index j = 0; j < n; ++j) {
          if (pft::oracle_padded(mask, j)) continue;
          sk += double(e(r0 + a, j)) * double(k(j, g * dh + c));
          sv += double(f(r0 + a, j)) * double(v(j, g * dh + c));
        }
        pk(a, h * dh + c) = float(sk);
        pv(a, h * dh + c) = float(sv);
      }
  }
  return pft::masked_softmax_oracle(q, pk, pv, pft::OracleShape{heads, heads, dh, 1.0 / std::sqrt(double(dh))},
                                    [](Index, Index, Index) { return true; });
}

}  // namespace

TEST_CASE("Linformer equals the projected oracle in every sharing mode, n = 1..1000", "[attention][linformer]") {
  unsigned seed = 70;
  const Index n_max = 1000, kp = 16;
  for (Index n : {1, 3, 64, 257, 1000}) {
    for (int mode = 0; mode < 4; ++mode) {  // headwise, per head, key-value shared, padded
      const Index heads = 4, kv_heads = mode == 1 ? 2 : 4, dh = 8;
      const Matrix q = pft::random_matrix(n, heads * dh, seed++), k = pft::random_matrix(n, kv_heads * dh, seed++),
                   v = pft::random_matrix(n, kv_heads * dh, seed++);
      const Index rows = mode == 1 ? heads * kp : kp;
      const Matrix e = pft::random_matrix(rows, n_max, seed++, 0.25f);
      const Matrix f = mode == 2 ? e : pft::random_matrix(rows, n_max, seed++, 0.25f);
      pf::Linformer p = mode == 2 ? pf::Linformer::key_value_shared(kp, e) : pf::Linformer(kp, e, f);
      pf::AttentionMask mask;
      std::vector<float> padding(static_cast<std::size_t>(n), 0.0f);
      if (mode == 3) {
        for (Index j = 0; j < n; j += 3) padding[std::size_t(j)] = 1.0f;
        mask.key_padding = padding.data();
        mask.n_valid_keys = n - n / 5;
      }
      INFO("n " << n << " mode " << mode);
      CHECK(pft::rel_max_error(run(p, q, k, v, heads, kv_heads, dh, mask),
                               linformer_oracle(q, k, v, heads, kv_heads, dh, kp, e, f, mask)) < 1e-5);
    }
  }
}

TEST_CASE("Linformer with k = n and E = F = I is FullAttention", "[attention][linformer]") {
  const Index n = 200, heads = 4, dh = 16;
  const Matrix q = pft::random_matrix(n, heads * dh, 1), k = pft::random_matrix(n, heads * dh, 2),
               v = pft::random_matrix(n, heads * dh, 3);
  pf::Linformer p(n, Matrix::Identity(n, n), Matrix::Identity(n, n));
  pf::FullAttention full;
  pf::AttentionShape s{heads, heads, dh, 0.25f};
  Matrix expected(n, heads * dh);
  full.forward(s, pf::cview(q), pf::cview(k), pf::cview(v), pf::AttentionMask{}, pf::view(expected), pf::Context{1});
  CHECK(pft::rel_max_error(run(p, q, k, v, heads, heads, dh), expected) < 1e-5);
}

TEST_CASE("Linformer layerwise sharing holds one pair of projections", "[attention][linformer]") {
  auto e = std::make_shared<const Matrix>(pft::random_matrix(8, 50, 1));
  auto f = std::make_shared<const Matrix>(pft::random_matrix(8, 50, 2));
  pf::Linformer layer1(8, e, f), layer2(8, e, f);
  CHECK(layer1.e().get() == layer2.e().get());
  CHECK(layer1.f().get() == layer2.f().get());
  CHECK(layer1.n_max() == 50);
}

TEST_CASE("Linformer errors name what was expected", "[attention][linformer]") {
  const Matrix q = pft::random_matrix(20, 16, 1);
  pf::Linformer unset;
  CHECK_THROWS_WITH(run(unset, q, q, q, 2, 2, 8), Catch::Contains("no projections"));
  pf::Linformer p(4, pft::random_matrix(4, 10, 2), pft::random_matrix(4, 10, 3));
  CHECK_THROWS_WITH(run(p, q, q, q, 2, 2, 8), Catch::Contains("20 keys, expected at most n_max 10"));
  pf::AttentionMask causal;
  causal.causal = true;
  const Matrix q8 = pft::random_matrix(8, 16, 1);
  CHECK_THROWS_WITH(run(p, q8, q8, q8, 2, 2, 8, causal), Catch::Contains("bidirectional only"));
  CHECK_THROWS_WITH(pf::Linformer(4, pft::random_matrix(6, 10, 2), pft::random_matrix(6, 10, 3)),
                    Catch::Contains("projection has shape (6, 10)"));
  pf::Linformer three_heads(4, pft::random_matrix(12, 10, 2), pft::random_matrix(12, 10, 3));
  CHECK_THROWS_WITH(run(three_heads, q8, q8, q8, 2, 2, 8), Catch::Contains("projections for 3 heads, expected 1 or 2"));
}
