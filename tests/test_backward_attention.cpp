// Backward of attention against the float64 oracle (backward_oracle.hpp): FullAttention's tiled backward over
// shapes that cross every tile edge, with every mask, GQA and 1 and 2 threads; MultiHeadAttention self- and
// cross-attention with batches, key padding and RoPE in both conventions; saved-forward errors.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/attention/full.hpp"
#include "polyformer/attention/multi_head.hpp"
#include "polyformer/layers/rotary.hpp"
#include "polyformer/linear/dense.hpp"

using namespace bwt;
namespace oracle = backward_oracle;
using pf::Matrix;
using pf::Vector;

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// One attention case: sizes, heads and masks, as polyformer and the oracle each take them.
struct Case {
  std::string name;
  Index n_q, n_k, heads, kv_heads, head_dim;
  bool causal = false;
  Index causal_offset = 0;
  bool additive = false;     // random −inf entries, and one query row masked whole
  bool padding = false;      // every fifth key padded
  Index n_valid_keys = std::numeric_limits<Index>::max();
};

void check_full_attention(const Case& c, pf::FullAttention::Tiles tiles, int threads) {
  INFO(c.name << ", tiles (" << tiles.query_block << ", " << tiles.key_block << "), threads " << threads);
  const Index qd = c.heads * c.head_dim, kd = c.kv_heads * c.head_dim;
  const Matrix q = pft::random_matrix(c.n_q, qd, 1), k = pft::random_matrix(c.n_k, kd, 2);
  const Matrix v = pft::random_matrix(c.n_k, kd, 3), dout = pft::random_matrix(c.n_q, qd, 4);
  const pf::AttentionShape shape{c.heads, c.kv_heads, c.head_dim, 1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  pf::AttentionMask mask;
  oracle::AttnMask omask;
  mask.causal = omask.causal = c.causal;
  mask.causal_offset = omask.causal_offset = c.causal_offset;
  mask.n_valid_keys = omask.n_valid_keys = c.n_valid_keys;
  Matrix additive;
  if (c.additive) {
    std::mt19937 rng(5);
    additive = pft::random_matrix(c.n_q, c.n_k, 6, 0.5f);
    for (Index i = 0; i < additive.size(); ++i)
      if (rng() % 7 == 0) additive.data()[i] = neg_inf;
    additive.row(c.n_q / 2).setConstant(neg_inf);  // a query that sees no key
    mask.additive = additive.data();
    mask.additive_stride = c.n_k;
    omask.additive = f64(additive);
  }
  std::vector<float> padding;
  if (c.padding) {
    padding.assign(static_cast<std::size_t>(c.n_k), 0.0f);
    omask.key_padding.assign(static_cast<std::size_t>(c.n_k), false);
    for (Index j = 1; j < c.n_k; j += 5) padding[std::size_t(j)] = 1.0f, omask.key_padding[std::size_t(j)] = true;
    mask.key_padding = padding.data();
  }
  const pf::FullAttention attention(tiles);
  pf::FullAttention::Saved saved;
  pf::FullAttention::Workspace ws;
  const pf::Context ctx{threads};
  Matrix out(c.n_q, qd), dq(c.n_q, qd), dk(c.n_k, kd), dv(c.n_k, kd);
  attention.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), saved, ws, ctx);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  BWT_CHECK_GRAD(out, oracle::attention(f64(q), f64(k), f64(v), c.heads, c.kv_heads, scale, omask));
  attention.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::cview(out), pf::cview(dout), saved,
                     pf::view(dq), pf::view(dk), pf::view(dv), ws, ctx);
  const auto want = oracle::attention_backward(f64(q), f64(k), f64(v), c.heads, c.kv_heads, scale, omask, f64(dout));
  BWT_CHECK_GRAD(dq, want.dq);
  BWT_CHECK_GRAD(dk, want.dk);
  BWT_CHECK_GRAD(dv, want.dv);
}

}  // namespace

TEST_CASE("backward: FullAttention against the oracle, across tile edges, masks, GQA and threads", "[backward][attention]") {
  const Index none = std::numeric_limits<Index>::max();
  const std::vector<Case> cases = {
      {"plain", 37, 70, 4, 4, 8},
      {"GQA 4 over 2", 37, 70, 4, 2, 8},
      {"GQA 6 over 1, odd head size", 29, 33, 6, 1, 5},
      {"causal", 70, 70, 4, 2, 8, true},
      {"causal with offset (decoding after a prefix)", 37, 70, 2, 2, 16, true, 33},
      {"additive with -inf and a query that sees nothing", 37, 70, 4, 2, 8, false, 0, true},
      {"key padding", 37, 70, 3, 3, 8, false, 0, false, true},
      {"valid keys", 37, 70, 4, 4, 8, false, 0, false, false, 50},
      {"all masks together", 45, 45, 4, 2, 8, true, 0, true, true, 40},
      {"one query", 1, 33, 2, 1, 8, false, 0, false, true, none},
  };
  for (const Case& c : cases)
    for (const int threads : {1, 2}) check_full_attention(c, pf::FullAttention::Tiles{16, 32}, threads);
  // The default tiles, with a length past them.
  check_full_attention({"default tiles", 300, 300, 2, 1, 16, true}, pf::FullAttention::Tiles{}, 2);
}

TEST_CASE("backward: FullAttention saved-forward errors", "[backward][attention][errors]") {
  const pf::AttentionShape shape{2, 2, 4, 0.5f};
  const Matrix q = pft::random_matrix(5, 8, 1), k = pft::random_matrix(6, 8, 2), v = pft::random_matrix(6, 8, 3);
  Matrix out(5, 8), dq(5, 8), dk(6, 8), dv(6, 8);
  const pf::FullAttention attention;
  pf::FullAttention::Saved saved;
  pf::FullAttention::Workspace ws;
  const auto backward = [&] {
    attention.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), {}, pf::cview(out), pf::cview(out), saved,
                       pf::view(dq), pf::view(dk), pf::view(dv), ws, {});
  };
  CHECK_THROWS_WITH(backward(), Catch::Contains("FullAttention::backward: no saved forward"));
  attention.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), {}, pf::view(out), saved, ws, {});
  backward();
  CHECK_THROWS_WITH(backward(), Catch::Contains("FullAttention::backward: no saved forward"));
  saved.keep = true;
  attention.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), {}, pf::view(out), saved, ws, {});
  backward();
  const Matrix first = dq;
  backward();  // kept: runs again, the same
  CHECK(dq == first);
  Matrix bad_dk(5, 8);
  CHECK_THROWS_WITH(attention.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), {}, pf::cview(out),
                                       pf::cview(out), saved, pf::view(dq), pf::view(bad_dk), pf::view(dv), ws, {}),
                    Catch::Contains("FullAttention::backward: dk has shape (5, 8), expected (6, 8)"));
}

namespace {

/// Multi-head attention weights drawn once, as polyformer layers and as the oracle's.
struct MHAWeights {
  Matrix wq, wk, wv, wo;
  Vector bq, bk, bv, bo;
  MHAWeights(Index d_model, Index d_kv, Index heads, Index kv_heads, Index head_dim)
      : wq(pft::random_matrix(heads * head_dim, d_model, 11, 0.3f)),
        wk(pft::random_matrix(kv_heads * head_dim, d_kv, 12, 0.3f)),
        wv(pft::random_matrix(kv_heads * head_dim, d_kv, 13, 0.3f)),
        wo(pft::random_matrix(d_model, heads * head_dim, 14, 0.3f)),
        bq(random_vector(heads * head_dim, 15, 0.1f)), bk(random_vector(kv_heads * head_dim, 16, 0.1f)),
        bv(random_vector(kv_heads * head_dim, 17, 0.1f)), bo(random_vector(d_model, 18, 0.1f)) {}
};

/// The oracle's multi-head self-attention with rotary positions on q and k, composed from its pieces, and its
/// backward: returns y and fills the gradients.
struct RotaryOracle {
  MatD y, dx, dwq, dwk, dwv, dwo;
  VecD dbq, dbk, dbv, dbo;
};
RotaryOracle rotary_mha_oracle(const MHAWeights& w, const MatD& x, Index batch, Index heads, Index kv_heads,
                               Index head_dim, bool interleaved, const oracle::AttnMask& mask, const MatD& key_padding,
                               const MatD& dy) {
  const Index n = x.rows() / batch, qd = heads * head_dim, kd = kv_heads * head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const MatD q = oracle::linear(x, f64(w.wq), f64(w.bq)), k = oracle::linear(x, f64(w.wk), f64(w.bk));
  const MatD v = oracle::linear(x, f64(w.wv), f64(w.bv));
  MatD context(x.rows(), qd), dq(x.rows(), qd), dk(x.rows(), kd), dv(x.rows(), kd);
  std::vector<oracle::AttnMask> masks;
  for (Index b = 0; b < batch; ++b) {
    oracle::AttnMask m = mask;
    for (Index j = 0; j < n; ++j) m.key_padding.push_back(key_padding(b, j) != 0.0);
    masks.push_back(m);
    const MatD qb = oracle::rope(q.middleRows(b * n, n), heads, head_dim, 0, interleaved);
    const MatD kb = oracle::rope(k.middleRows(b * n, n), kv_heads, head_dim, 0, interleaved);
    context.middleRows(b * n, n) = oracle::attention(qb, kb, v.middleRows(b * n, n), heads, kv_heads, scale, m);
  }
  RotaryOracle r;
  r.y = oracle::linear(context, f64(w.wo), f64(w.bo));
  const auto out = oracle::linear_backward(context, f64(w.wo), f64(w.bo), dy);
  r.dwo = out.dw;
  r.dbo = out.db;
  for (Index b = 0; b < batch; ++b) {
    const MatD qb = oracle::rope(q.middleRows(b * n, n), heads, head_dim, 0, interleaved);
    const MatD kb = oracle::rope(k.middleRows(b * n, n), kv_heads, head_dim, 0, interleaved);
    const auto g = oracle::attention_backward(qb, kb, v.middleRows(b * n, n), heads, kv_heads, scale,
                                              masks[std::size_t(b)], out.dx.middleRows(b * n, n));
    dq.middleRows(b * n, n) = oracle::rope_backward(g.dq, heads, head_dim, 0, interleaved);
    dk.middleRows(b * n, n) = oracle::rope_backward(g.dk, kv_heads, head_dim, 0, interleaved);
    dv.middleRows(b * n, n) = g.dv;
  }
  const auto gq = oracle::linear_backward(x, f64(w.wq), f64(w.bq), dq);
  const auto gk = oracle::linear_backward(x, f64(w.wk), f64(w.bk), dk);
  const auto gv = oracle::linear_backward(x, f64(w.wv), f64(w.bv), dv);
  r.dx = gq.dx + gk.dx + gv.dx;
  r.dwq = gq.dw, r.dwk = gk.dw, r.dwv = gv.dw;
  r.dbq = gq.db, r.dbk = gk.db, r.dbv = gv.db;
  return r;
}

template <typename Rot>
void check_rotary_mha(bool interleaved, int threads) {
  INFO((interleaved ? "interleaved" : "half split") << " RoPE, threads " << threads);
  const Index d = 32, heads = 4, kv_heads = 2, head_dim = 8, batch = 2, n = 21;
  const MHAWeights w(d, d, heads, kv_heads, head_dim);
  using MHA = pf::MultiHeadAttention<pf::FullAttention, pf::Dense, Rot>;
  const MHA mha(pf::Dense(w.wq, w.bq), pf::Dense(w.wk, w.bk), pf::Dense(w.wv, w.bv), pf::Dense(w.wo, w.bo),
                pf::HeadConfig{heads, kv_heads, head_dim}, pf::FullAttention(pf::FullAttention::Tiles{8, 16}));
  const Matrix x = pft::random_matrix(batch * n, d, 19), dy = pft::random_matrix(batch * n, d, 20);
  Matrix padding = Matrix::Zero(batch, n);
  padding.block(1, n - 4, 1, 4).setOnes();
  pf::MaskSpec mask = pf::MaskSpec::causal_mask();
  mask.key_padding = pf::cview(padding);
  typename MHA::Saved saved;
  auto g = mha.make_gradients();
  Matrix y(batch * n, d), dx(batch * n, d);
  const pf::Context ctx{threads};
  mha.forward_train(pf::cview(x), batch, mask, pf::view(y), saved, ctx);
  mha.backward(pf::cview(x), batch, mask, pf::cview(dy), pf::view(dx), g, saved, ctx);
  oracle::AttnMask omask;
  omask.causal = true;
  const RotaryOracle want =
      rotary_mha_oracle(w, f64(x), batch, heads, kv_heads, head_dim, interleaved, omask, f64(padding), f64(dy));
  BWT_CHECK_GRAD(y, want.y);
  BWT_CHECK_GRAD(dx, want.dx);
  BWT_CHECK_GRAD(g.q.weight, want.dwq);
  BWT_CHECK_GRAD(g.k.weight, want.dwk);
  BWT_CHECK_GRAD(g.v.weight, want.dwv);
  BWT_CHECK_GRAD(g.o.weight, want.dwo);
  BWT_CHECK_GRAD(g.q.bias, want.dbq);
  BWT_CHECK_GRAD(g.v.bias, want.dbv);
  BWT_CHECK_GRAD(g.o.bias, want.dbo);
  // The key bias shifts every score of a query alike, so softmax cancels it: its gradient is 0 up to rounding.
  BWT_CHECK_GRAD(g.k.bias, want.dbk, want.dbq.norm());
}

}  // namespace

TEST_CASE("backward: MultiHeadAttention with RoPE, GQA, causal and key padding", "[backward][attention]") {
  for (const int threads : {1, 2}) {
    check_rotary_mha<pf::RoPE<pf::RotaryStyle::interleaved>>(true, threads);
    check_rotary_mha<pf::RoPE<pf::RotaryStyle::half_split>>(false, threads);
  }
}

TEST_CASE("backward: MultiHeadAttention cross-attention against the oracle", "[backward][attention]") {
  const Index d = 24, d_kv = 20, heads = 3, head_dim = 8, batch = 2, n_q = 13, n_k = 37;
  const MHAWeights w(d, d_kv, heads, heads, head_dim);
  using MHA = pf::MultiHeadAttention<pf::FullAttention, pf::Dense>;
  const MHA mha(pf::Dense(w.wq, w.bq), pf::Dense(w.wk, w.bk), pf::Dense(w.wv, w.bv), pf::Dense(w.wo, w.bo),
                pf::HeadConfig{heads, heads, head_dim}, pf::FullAttention(pf::FullAttention::Tiles{8, 16}));
  const Matrix x = pft::random_matrix(batch * n_q, d, 21), memory = pft::random_matrix(batch * n_k, d_kv, 22);
  const Matrix dy = pft::random_matrix(batch * n_q, d, 23);
  Matrix padding = Matrix::Zero(batch, n_k);
  padding.block(0, 30, 1, 7).setOnes();
  pf::MaskSpec mask;
  mask.key_padding = pf::cview(padding);
  for (const int threads : {1, 2}) {
    INFO("threads " << threads);
    typename MHA::Saved saved;
    auto g = mha.make_gradients();
    Matrix y(batch * n_q, d), dx(batch * n_q, d), dmemory(batch * n_k, d_kv);
    const pf::Context ctx{threads};
    mha.forward_train(pf::cview(x), batch, pf::cview(memory), mask, pf::view(y), saved, ctx);
    mha.backward(pf::cview(x), batch, pf::cview(memory), mask, pf::cview(dy), pf::view(dx), pf::view(dmemory), g, saved,
                 ctx);
    const oracle::MHAWeights ow{f64(w.wq), f64(w.wk), f64(w.wv), f64(w.wo), f64(w.bq), f64(w.bk), f64(w.bv),
                                f64(w.bo), heads, heads, head_dim};
    BWT_CHECK_GRAD(y, oracle::mha(f64(x), f64(memory), batch, ow, {}, f64(padding)));
    const auto want = oracle::mha_backward(f64(x), f64(memory), batch, ow, {}, f64(padding), f64(dy));
    BWT_CHECK_GRAD(dx, want.dx);
    BWT_CHECK_GRAD(dmemory, want.dkv);
    BWT_CHECK_GRAD(g.q.weight, want.dwq);
    BWT_CHECK_GRAD(g.k.weight, want.dwk);
    BWT_CHECK_GRAD(g.v.weight, want.dwv);
    BWT_CHECK_GRAD(g.o.weight, want.dwo);
    BWT_CHECK_GRAD(g.v.bias, want.dbv);
    BWT_CHECK_GRAD(g.k.bias, want.dbk, want.dbq.norm());
    CHECK_THROWS_WITH(mha.backward(pf::cview(x), batch, pf::cview(memory), mask, pf::cview(dy), pf::view(dx),
                                   pf::view(dmemory), g, saved, ctx),
                      Catch::Contains("MultiHeadAttention::backward (cross): no saved forward"));
  }
}
