// Tiled online-softmax FullAttention against a separately written naive O(n²) float64 oracle.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

struct OracleMask {
  bool causal = false;
  const Matrix* additive = nullptr;           // (n_q, n_k)
  std::vector<int> padded;                    // (n_k) 1 = ignore, empty = none
  Index valid_keys = std::numeric_limits<Index>::max();
};

// Plain softmax attention in double: every score materialized, softmax by definition.
Matrix oracle(const Matrix& q, const Matrix& k, const Matrix& v, Index heads, Index kv_heads, Index dh,
              const OracleMask& m) {
  const Index n_q = q.rows(), n_k = k.rows(), group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  Matrix out = Matrix::Zero(n_q, heads * dh);
  for (Index h = 0; h < heads; ++h) {
    const Index g = h / group;
    for (Index i = 0; i < n_q; ++i) {
      std::vector<double> w(static_cast<std::size_t>(n_k), 0.0);
      std::vector<bool> seen(static_cast<std::size_t>(n_k), false);
      double best = -std::numeric_limits<double>::infinity();
      for (Index j = 0; j < n_k; ++j) {
        if (m.causal && j > i) continue;
        if (j >= m.valid_keys) continue;
        if (!m.padded.empty() && m.padded[std::size_t(j)]) continue;
        double s = 0;
        for (Index c = 0; c < dh; ++c) s += double(q(i, h * dh + c)) * double(k(j, g * dh + c));
        s *= scale;
        if (m.additive) s += double((*m.additive)(i, j));
        if (std::isinf(s) && s < 0) continue;
        w[std::size_t(j)] = s;
        seen[std::size_t(j)] = true;
        best = std::max(best, s);
      }
      double total = 0;
      for (Index j = 0; j < n_k; ++j)
        if (seen[std::size_t(j)]) total += (w[std::size_t(j)] = std::exp(w[std::size_t(j)] - best));
      if (total == 0) continue;  // nothing visible: zeros
      for (Index j = 0; j < n_k; ++j)
        if (seen[std::size_t(j)])
          for (Index c = 0; c < dh; ++c)
            out(i, h * dh + c) += float(w[std::size_t(j)] / total * double(v(j, g * dh + c)));
    }
  }
  return out;
}

Matrix run(pf::FullAttention& attn, const Matrix& q, const Matrix& k, const Matrix& v, Index heads, Index kv_heads,
           Index dh, const pf::AttentionMask& mask, int threads) {
  pf::AttentionShape shape{heads, kv_heads, dh, 1.0f / std::sqrt(static_cast<float>(dh))};
  Matrix out = Matrix::Constant(q.rows(), heads * dh, std::numeric_limits<float>::quiet_NaN());
  attn.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), pf::Context{threads});
  return out;
}

// Scores of O(1) keep softmax away from saturation; 2e-5 covers float32 accumulation over 300 keys.
constexpr double tol = 2e-5;

void check_all_masks(Index n_q, Index n_k, Index heads, Index kv_heads, Index dh, pf::FullAttention::Tiles tiles,
                     unsigned seed) {
  INFO("n_q " << n_q << " n_k " << n_k << " heads " << heads << "/" << kv_heads << " dh " << dh << " tiles "
              << tiles.query_block << "x" << tiles.key_block);
  const Matrix q = pft::random_matrix(n_q, heads * dh, seed);
  const Matrix k = pft::random_matrix(n_k, kv_heads * dh, seed + 1);
  const Matrix v = pft::random_matrix(n_k, kv_heads * dh, seed + 2);
  pf::FullAttention attn(tiles);
  for (int threads : {1, 2}) {
    INFO("threads " << threads);
    {  // no mask
      CHECK(pft::max_abs_diff(run(attn, q, k, v, heads, kv_heads, dh, {}, threads),
                              oracle(q, k, v, heads, kv_heads, dh, {})) < tol);
    }
    if (n_q == n_k) {  // causal
      pf::AttentionMask m;
      m.causal = true;
      OracleMask o;
      o.causal = true;
      CHECK(pft::max_abs_diff(run(attn, q, k, v, heads, kv_heads, dh, m, threads),
                              oracle(q, k, v, heads, kv_heads, dh, o)) < tol);
    }
    {  // additive mask with some −inf, plus key padding
      Matrix additive = pft::random_matrix(n_q, n_k, seed + 3, 0.5f);
      std::vector<float> pad(static_cast<std::size_t>(n_k), 0.0f);
      OracleMask o;
      o.additive = &additive;
      o.padded.assign(static_cast<std::size_t>(n_k), 0);
      for (Index j = 0; j < n_k; ++j) {
        if ((j * 7 + seed) % 5 == 0) additive(j % n_q, j) = -std::numeric_limits<float>::infinity();
        if ((j * 3 + seed) % 4 == 1 && j > 0) pad[std::size_t(j)] = 1.0f, o.padded[std::size_t(j)] = 1;
      }
      pf::AttentionMask m;
      m.additive = additive.data();
      m.additive_stride = additive.cols();
      m.key_padding = pad.data();
      o.causal = m.causal = n_q == n_k;
      const Matrix got = run(attn, q, k, v, heads, kv_heads, dh, m, threads);
      CHECK(got.allFinite());
      CHECK(pft::max_abs_diff(got, oracle(q, k, v, heads, kv_heads, dh, o)) < tol);
    }
    {  // per-sequence length
      pf::AttentionMask m;
      m.n_valid_keys = (n_k + 1) / 2;
      OracleMask o;
      o.valid_keys = m.n_valid_keys;
      CHECK(pft::max_abs_diff(run(attn, q, k, v, heads, kv_heads, dh, m, threads),
                              oracle(q, k, v, heads, kv_heads, dh, o)) < tol);
    }
  }
}

}  // namespace

TEST_CASE("attention/full: tiled online softmax equals the naive oracle, n = 1..300", "[attention][full]") {
  std::vector<Index> lengths;
  for (Index n = 1; n <= 40; ++n) lengths.push_back(n);
  for (Index n : {63, 64, 65, 127, 128, 129, 200, 255, 256, 257, 300}) lengths.push_back(n);
  for (Index n : lengths) {
    check_all_masks(n, n, 2, 2, 16, {}, static_cast<unsigned>(n));
    check_all_masks(n, n, 4, 2, 8, {16, 32}, static_cast<unsigned>(n) + 1000);  // many tiles, grouped query
  }
}

namespace {

/// x rounded to the nearest bf16, as a float.
float bf16(float x) { return pf::kernels::from_bf16(pf::kernels::to_bf16(x)); }
Matrix bf16(const Matrix& m) { return m.unaryExpr([](float x) { return bf16(x); }); }

// bf16 products against the float64 oracle on the operands the kernels see (the scaled queries, the keys and the
// values rounded to bf16): what is left is the rounding of the softmax weights to bf16, at most 2^-9 of each weight,
// so at most 2^-9 of the largest value (a margin of 2 below).
void check_bf16_products(Index n_q, Index n_k, Index heads, Index kv_heads, Index dh, pf::FullAttention::Tiles tiles,
                         unsigned seed) {
  INFO("bf16 products: n_q " << n_q << " n_k " << n_k << " heads " << heads << "/" << kv_heads << " dh " << dh
                             << " tiles " << tiles.query_block << "x" << tiles.key_block);
  const Matrix q = pft::random_matrix(n_q, heads * dh, seed);
  const Matrix k = pft::random_matrix(n_k, kv_heads * dh, seed + 1);
  const Matrix v = pft::random_matrix(n_k, kv_heads * dh, seed + 2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const Matrix q_seen = bf16(Matrix(q * scale)) / scale, k_seen = bf16(k), v_seen = bf16(v);
  const double tol = std::ldexp(1.0, -8) * v_seen.cwiseAbs().maxCoeff() + 2e-5;
  pf::FullAttention attn(tiles, pf::FullAttention::Products::bf16);
  for (int threads : {1, 2}) {
    INFO("threads " << threads);
    CHECK(pft::max_abs_diff(run(attn, q, k, v, heads, kv_heads, dh, {}, threads),
                            oracle(q_seen, k_seen, v_seen, heads, kv_heads, dh, {})) < tol);
    if (n_q == n_k) {
      pf::AttentionMask m;
      m.causal = true;
      std::vector<float> pad(static_cast<std::size_t>(n_k), 0.0f);
      OracleMask o;
      o.causal = true;
      o.padded.assign(static_cast<std::size_t>(n_k), 0);
      for (Index j = 1; j < n_k; j += 5) pad[std::size_t(j)] = 1.0f, o.padded[std::size_t(j)] = 1;
      m.key_padding = pad.data();
      const Matrix got = run(attn, q, k, v, heads, kv_heads, dh, m, threads);
      CHECK(got.allFinite());
      CHECK(pft::max_abs_diff(got, oracle(q_seen, k_seen, v_seen, heads, kv_heads, dh, o)) < tol);
    }
  }
}

}  // namespace

TEST_CASE("attention/full: bf16 products equal the oracle on bf16 operands, every tile tail", "[attention][full][bf16]") {
  if (pf::kernels::bf16_path() == pf::kernels::Bf16Path::portable)
    WARN("attention/full bf16 products: this CPU has no AVX512-BF16, the portable bf16 kernels ran");
  for (Index n : {1, 5, 6, 17, 33, 64, 65, 130, 257}) {
    check_bf16_products(n, n, 2, 2, 16, {}, static_cast<unsigned>(n) + 500);
    check_bf16_products(n, n, 4, 2, 9, {16, 32}, static_cast<unsigned>(n) + 600);  // odd head size, causal tile cuts
  }
  check_bf16_products(33, 257, 3, 1, 12, {16, 48}, 7);  // cross-attention: key tiles of exactly one panel
}

TEST_CASE("attention/full: cross-attention with different query and key lengths", "[attention][full]") {
  for (auto [n_q, n_k] : {std::pair<Index, Index>{1, 300}, {7, 3}, {130, 45}, {33, 257}})
    check_all_masks(n_q, n_k, 3, 1, 12, {16, 64}, static_cast<unsigned>(n_q * 31 + n_k));
}

TEST_CASE("attention/full: a fully masked or fully padded query gives zeros, never NaN", "[attention][full]") {
  const Index n = 37, dh = 8;
  const Matrix q = pft::random_matrix(n, 2 * dh, 1), k = pft::random_matrix(n, 2 * dh, 2),
               v = pft::random_matrix(n, 2 * dh, 3);
  pf::FullAttention attn({8, 16});
  pf::AttentionMask none_valid;
  none_valid.n_valid_keys = 0;
  Matrix out = run(attn, q, k, v, 2, 2, dh, none_valid, 2);
  CHECK(out.allFinite());
  CHECK(out.cwiseAbs().maxCoeff() == 0.0f);

  std::vector<float> all_padded(static_cast<std::size_t>(n), 1.0f);
  pf::AttentionMask padded;
  padded.key_padding = all_padded.data();
  out = run(attn, q, k, v, 2, 2, dh, padded, 1);
  CHECK(out.allFinite());
  CHECK(out.cwiseAbs().maxCoeff() == 0.0f);

  Matrix additive = Matrix::Zero(n, n);
  additive.row(5).setConstant(-std::numeric_limits<float>::infinity());  // query 5 sees nothing
  pf::AttentionMask row_masked;
  row_masked.additive = additive.data();
  row_masked.additive_stride = n;
  out = run(attn, q, k, v, 2, 2, dh, row_masked, 1);
  CHECK(out.allFinite());
  CHECK(out.row(5).cwiseAbs().maxCoeff() == 0.0f);
  CHECK(out.row(4).cwiseAbs().maxCoeff() > 0.0f);
}

TEST_CASE("attention/full: forward_cached over a reused KV cache equals the oracle", "[attention][kv_cache]") {
  const Index heads = 4, kv_heads = 2, dh = 24, n = 37;
  const pf::AttentionShape shape{heads, kv_heads, dh, 1.0f / std::sqrt(static_cast<float>(dh))};
  pf::FullAttention attn;
  pf::KVCache cache(64, kv_heads, dh);
  // An earlier sequence leaves NaN behind in the buffers; a new sequence must never read it.
  const Matrix poison = Matrix::Constant(40, kv_heads * dh, std::numeric_limits<float>::quiet_NaN());
  cache.append(pf::cview(poison), pf::cview(poison));
  cache.clear();
  const Matrix q = pft::random_matrix(n, heads * dh, 21), k = pft::random_matrix(n, kv_heads * dh, 22),
               v = pft::random_matrix(n, kv_heads * dh, 23);
  OracleMask causal;
  causal.causal = true;
  const Matrix want = oracle(q, k, v, heads, kv_heads, dh, causal);
  // Chunks of 1..4 decode, longer ones prefill through the tiles.
  Index at = 0;
  for (Index chunk : {3, 1, 9, 4, 20}) {
    Matrix out(chunk, heads * dh);
    attn.forward_cached(shape, pf::block(pf::cview(q), at, 0, chunk, heads * dh),
                        pf::block(pf::cview(k), at, 0, chunk, kv_heads * dh),
                        pf::block(pf::cview(v), at, 0, chunk, kv_heads * dh), cache, pf::view(out), pf::Context{2});
    INFO("chunk of " << chunk << " at " << at);
    REQUIRE(out.allFinite());
    CHECK((out - want.middleRows(at, chunk)).cwiseAbs().maxCoeff() < tol);
    at += chunk;
  }
  CHECK(cache.size() == n);
  REQUIRE_THROWS_WITH(cache.append(pf::cview(poison), pf::cview(poison)),
                      Catch::Contains("holds 37 of 64 positions, cannot append 40"));
}
