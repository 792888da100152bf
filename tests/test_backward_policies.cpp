// Backward of the efficient softmax-attention policies against the float64 oracle (backward_oracle.hpp):
// - Blockwise, SlidingWindow, LSHAttention: each policy's visibility pattern, written here from its definition,
//   becomes −∞ entries (LSH: log of the rounds' counts) of the oracle's additive mask, so the oracle is plain softmax
//   attention over exactly the keys the policy lets a query see;
// - Linformer: the oracle projects keys and values by E and F in float64 and attends over them, E's and F's gradients
//   by the chain rule.
// Tile edges crossed, every mask a policy takes, GQA, 1 and 2 threads. (Linear attention and Performer:
// test_backward_kernelized.cpp.)

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/attention/blockwise.hpp"
#include "polyformer/attention/linformer.hpp"
#include "polyformer/attention/multi_head.hpp"
#include "polyformer/attention/lsh.hpp"
#include "polyformer/attention/sliding_window.hpp"
#include "polyformer/linear/dense.hpp"

using namespace bwt;
namespace oracle = backward_oracle;
using pf::Matrix;

namespace {

constexpr double neg_inf = -std::numeric_limits<double>::infinity();

/// One case: sizes, heads and the masks a block would pass.
struct Case {
  std::string name;
  Index n, heads, kv_heads, head_dim;
  bool causal = false;
  Index causal_offset = 0;
  bool additive = false;  // random −∞ entries and small values
  bool padding = false;   // every seventh key padded
  Index n_valid_keys = std::numeric_limits<Index>::max();
};

/// The masks of a case, as the policy and as the oracle take them.
struct Masks {
  pf::AttentionMask mask;
  oracle::AttnMask omask;
  Matrix additive;
  std::vector<float> padding;
};

void make_masks(const Case& c, Masks& m) {
  m.mask.causal = m.omask.causal = c.causal;
  m.mask.causal_offset = m.omask.causal_offset = c.causal_offset;
  m.mask.n_valid_keys = m.omask.n_valid_keys = c.n_valid_keys;
  m.omask.additive = MatD::Zero(c.n, c.n);
  if (c.additive) {
    std::mt19937 rng(5);
    m.additive = pft::random_matrix(c.n, c.n, 6, 0.5f);
    for (Index i = 0; i < m.additive.size(); ++i)
      if (rng() % 9 == 0) m.additive.data()[i] = -std::numeric_limits<float>::infinity();
    m.mask.additive = m.additive.data();
    m.mask.additive_stride = c.n;
    m.omask.additive = f64(m.additive);
  }
  if (c.padding) {
    m.padding.assign(std::size_t(c.n), 0.0f);
    m.omask.key_padding.assign(std::size_t(c.n), false);
    for (Index j = 2; j < c.n; j += 7) m.padding[std::size_t(j)] = 1.0f, m.omask.key_padding[std::size_t(j)] = true;
    m.mask.key_padding = m.padding.data();
  }
}

/// forward_train and backward of `policy` against the oracle whose extra visibility is `sees(h, i, j)` (one
/// additive mask per head, so a head-dependent pattern — dilation — is one oracle call per head).
template <typename Policy>
void check_local(const Policy& policy, const Case& c, int threads,
                 const std::function<bool(Index h, Index i, Index j)>& sees) {
  INFO(c.name << ", threads " << threads);
  const Index qd = c.heads * c.head_dim, kd = c.kv_heads * c.head_dim;
  const Matrix q = pft::random_matrix(c.n, qd, 11), k = pft::random_matrix(c.n, kd, 12);
  const Matrix v = pft::random_matrix(c.n, kd, 13), dout = pft::random_matrix(c.n, qd, 14);
  const pf::AttentionShape shape{c.heads, c.kv_heads, c.head_dim, 1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  Masks m;
  make_masks(c, m);
  typename Policy::Saved saved;
  typename Policy::Workspace ws;
  const pf::Context ctx{threads};
  // Outputs start nonzero: backward writes them.
  Matrix out(c.n, qd), dq = Matrix::Constant(c.n, qd, 7.0f), dk = Matrix::Constant(c.n, kd, 7.0f);
  Matrix dv = Matrix::Constant(c.n, kd, 7.0f);
  policy.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), m.mask, pf::view(out), saved, ws, ctx);
  Matrix plain(c.n, qd);
  policy.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), m.mask, pf::view(plain), ctx);
  CHECK(plain == out);
  policy.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), m.mask, pf::cview(out), pf::cview(dout), saved,
                  pf::view(dq), pf::view(dk), pf::view(dv), ws, ctx);
  // The oracle one head at a time (head h reads kv head h / group), summing the kv heads' gradients.
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  const Index group = c.heads / c.kv_heads, dh = c.head_dim;
  MatD want_out(c.n, qd), want_dq(c.n, qd), want_dk = MatD::Zero(c.n, kd), want_dv = MatD::Zero(c.n, kd);
  for (Index h = 0; h < c.heads; ++h) {
    oracle::AttnMask om = m.omask;
    for (Index i = 0; i < c.n; ++i)
      for (Index j = 0; j < c.n; ++j)
        if (!sees(h, i, j)) om.additive(i, j) = neg_inf;
    const Index g = h / group;
    const MatD qh = f64(q).middleCols(h * dh, dh), kh = f64(k).middleCols(g * dh, dh), vh = f64(v).middleCols(g * dh, dh);
    want_out.middleCols(h * dh, dh) = oracle::attention(qh, kh, vh, 1, 1, scale, om);
    const auto grad = oracle::attention_backward(qh, kh, vh, 1, 1, scale, om, f64(dout).middleCols(h * dh, dh));
    want_dq.middleCols(h * dh, dh) = grad.dq;
    want_dk.middleCols(g * dh, dh) += grad.dk;
    want_dv.middleCols(g * dh, dh) += grad.dv;
  }
  // A query that sees one key has zero dq and gives zero dk (its softmax is constant), and the float result is the
  // rounding of dP − delta: the error is measured against a hundredth of dout's norm rather than against zero, i.e.
  // an absolute bound of 1e-6·|dout| wherever the gradient's own norm is smaller than that floor.
  const double floor = 1e-2 * f64(dout).norm();
  BWT_CHECK_GRAD(out, want_out);
  BWT_CHECK_GRAD(dq, want_dq, floor);
  BWT_CHECK_GRAD(dk, want_dk, floor);
  BWT_CHECK_GRAD(dv, want_dv);
}

/// The wide cases exist for the two-thread paths: run them on two threads only.
bool skip(const Case& c, int threads) { return c.n > 100 && threads == 1; }

std::vector<Case> cases() {
  std::vector<Case> all;
  all.push_back({"plain", 70, 2, 2, 8});
  all.push_back({"GQA 4/2, odd head size", 45, 4, 2, 5});
  all.push_back({"GQA 3/1, causal", 61, 3, 1, 8, true});
  all.push_back({"causal offset, padding", 40, 2, 2, 8, true, 9, false, true});
  all.push_back({"additive and key lengths", 53, 2, 1, 6, false, 0, true, false, 47});
  all.push_back({"one query", 1, 2, 2, 4});
  // Enough work for two threads: kv heads in parallel (8 over 2), then one kv head's tasks with summed shares.
  all.push_back({"wide, GQA 8/2", 300, 8, 2, 16});
  all.push_back({"wide, GQA 8/1, causal, padding", 260, 8, 1, 16, true, 0, false, true});
  return all;
}

}  // namespace

TEST_CASE("Blockwise backward matches the float64 oracle", "[backward][attention][blockwise]") {
  for (const bool previous : {false, true})
    for (const Index b : {Index(1), Index(16), Index(37), Index(200)})
      for (const Case& c : cases())
        for (const int threads : {1, 2}) {
          if (skip(c, threads) || (c.n > 100 && (b == 1 || previous))) continue;
          INFO("block " << b << (previous ? ", previous block" : ""));
          const pf::Blockwise policy(b, previous);
          check_local(policy, c, threads, [&](Index, Index i, Index j) {
            const Index bi = (i + c.causal_offset) / b, bj = j / b;
            return bj == bi || (previous && bj == bi - 1);
          });
        }
}

TEST_CASE("SlidingWindow backward matches the float64 oracle", "[backward][attention][sliding]") {
  struct Shape {
    Index window;
    bool dilated;  // dilation 1, 2, 3, 1, ... by head
    std::vector<Index> globals;
  };
  const std::vector<Shape> shapes = {{0, false, {}}, {3, false, {}}, {20, false, {}}, {2, true, {}},
                                     {4, false, {0, 17, 30}}, {3, true, {5, 38}}};
  for (const Shape& sh : shapes)
    for (const Case& c : cases())
      for (const int threads : {1, 2}) {
        if (skip(c, threads) || (c.n > 100 && sh.window < 3)) continue;
        INFO("window " << sh.window << (sh.dilated ? ", dilated" : "") << ", " << sh.globals.size() << " globals");
        pf::SlidingWindowOptions o;
        o.window = sh.window;
        o.global_positions = sh.globals;
        o.query_block = 8;  // several blocks per residue class
        if (sh.dilated) {
          o.dilation.clear();
          for (Index h = 0; h < c.heads; ++h) o.dilation.push_back(h % 3 + 1);
        }
        const pf::SlidingWindow policy(o);
        const auto global = [&](Index p) {
          return std::find(sh.globals.begin(), sh.globals.end(), p) != sh.globals.end();
        };
        check_local(policy, c, threads, [&](Index h, Index i, Index j) {
          const Index D = sh.dilated ? h % 3 + 1 : 1, p = i + c.causal_offset;
          if (global(p) || global(j)) return true;
          return (p - j) % D == 0 && std::abs(p - j) <= D * sh.window;
        });
      }
}

namespace {

/// LSH: the keys are head h's queries scaled to unit length, and a query's softmax runs over the multiset of keys its
/// rounds' chunks offer (chunk c sees chunks c − 1 and c of the order sorted by (bucket, position); itself only when
/// nothing else is visible), i.e. plain attention with log(count) added to each score. The buckets are the forward's.
void check_lsh(const pf::LSHOptions& o, const Case& c, int threads) {
  INFO(c.name << ", threads " << threads << ", " << o.n_hashes << " rounds, chunk " << o.chunk);
  const Index qd = c.heads * c.head_dim, kd = c.kv_heads * c.head_dim, n = c.n, dh = c.head_dim;
  Matrix q = pft::random_matrix(n, qd, 21);
  q.row(n / 2).head(dh).setZero();  // a zero query: its key stays zero and passes no gradient
  const Matrix v = pft::random_matrix(n, kd, 23), dout = pft::random_matrix(n, qd, 24);
  const pf::AttentionShape shape{c.heads, c.kv_heads, dh, 1.0f / std::sqrt(static_cast<float>(dh))};
  Masks m;
  make_masks(c, m);
  m.mask.causal_offset = m.omask.causal_offset = 0;  // self-attention
  const pf::LSHAttention policy(o);
  pf::LSHAttention::Saved saved;
  pf::LSHAttention::Workspace ws;
  const pf::Context ctx{threads};
  Matrix out(n, qd), dq = Matrix::Constant(n, qd, 7.0f), dk = Matrix::Constant(n, kd, 7.0f);
  Matrix dv = Matrix::Constant(n, kd, 7.0f);
  policy.forward_train(shape, pf::cview(q), pf::cview(v), pf::cview(v), m.mask, pf::view(out), saved, ws, ctx);
  // The backward with a workspace of its own: it must not depend on the forward's.
  pf::LSHAttention::Workspace fresh;
  policy.backward(shape, pf::cview(q), pf::cview(v), pf::cview(v), m.mask, pf::cview(out), pf::cview(dout), saved,
                  pf::view(dq), pf::view(dk), pf::view(dv), fresh, ctx);
  CHECK(dk.isZero(0.0f));
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const Index group = c.heads / c.kv_heads;
  MatD want_out(n, qd), want_dq(n, qd), want_dv = MatD::Zero(n, kd);
  for (Index h = 0; h < c.heads; ++h) {
    // Visibility counts over the rounds.
    MatD count = MatD::Zero(n, n);
    for (Index r = 0; r < o.n_hashes; ++r) {
      const auto buckets = ws.buckets(h, r);
      std::vector<Index> order(static_cast<std::size_t>(n));
      for (Index i = 0; i < n; ++i) order[std::size_t(i)] = i;
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
        return buckets[std::size_t(a)] < buckets[std::size_t(b)];
      });
      for (Index a = 0; a < n; ++a) {
        const Index chunk = a / o.chunk, i = order[std::size_t(a)];
        std::vector<Index> keys;
        for (Index b = std::max<Index>(chunk - 1, 0) * o.chunk; b < std::min(n, (chunk + 1) * o.chunk); ++b)
          keys.push_back(order[std::size_t(b)]);
        bool other = false;
        for (Index j : keys) other |= j != i && oracle::detail::visible(m.omask, i, j);
        for (Index j : keys)
          if (j != i || !other) count(i, j) += 1.0;
      }
    }
    oracle::AttnMask om = m.omask;
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < n; ++j) om.additive(i, j) += count(i, j) > 0 ? std::log(count(i, j)) : neg_inf;
    const Index g = h / group;
    const MatD qh = f64(q).middleCols(h * dh, dh), vh = f64(v).middleCols(g * dh, dh);
    MatD keys = qh;
    for (Index i = 0; i < n; ++i)
      if (qh.row(i).norm() > 0) keys.row(i) /= qh.row(i).norm();
    want_out.middleCols(h * dh, dh) = oracle::attention(qh, keys, vh, 1, 1, scale, om);
    const auto grad = oracle::attention_backward(qh, keys, vh, 1, 1, scale, om, f64(dout).middleCols(h * dh, dh));
    MatD dqh = grad.dq;
    for (Index i = 0; i < n; ++i) {  // through the normalization: (I − u·uᵀ)/|q| · dkey
      const double norm = qh.row(i).norm();
      if (norm == 0) continue;
      const Eigen::RowVectorXd u = keys.row(i), dkey = grad.dk.row(i);
      dqh.row(i) += (dkey - u.dot(dkey) * u) / norm;
    }
    want_dq.middleCols(h * dh, dh) = dqh;
    want_dv.middleCols(g * dh, dh) += grad.dv;
  }
  BWT_CHECK_GRAD(out, want_out);
  BWT_CHECK_GRAD(dq, want_dq, 1e-2 * f64(dout).norm());  // the floor: as check_local's
  BWT_CHECK_GRAD(dv, want_dv);
}

}  // namespace

TEST_CASE("LSHAttention backward matches the float64 oracle", "[backward][attention][lsh]") {
  for (const Case& c : cases()) {
    if (c.causal_offset != 0) continue;  // shared query-keys: self-attention only
    for (const int threads : {1, 2}) {
      if (skip(c, threads)) continue;
      check_lsh(pf::LSHOptions{1, 16, 0, 3}, c, threads);
      check_lsh(pf::LSHOptions{3, 8, 0, 4}, c, threads);
      check_lsh(pf::LSHOptions{2, 64, 4, 5}, c, threads);  // one chunk pair covers short sequences
    }
  }
  Case padded = cases()[3];
  padded.causal_offset = 0;
  check_lsh(pf::LSHOptions{2, 8, 0, 6}, padded, 2);
}

namespace {

/// Linformer with projections e, f (proj_heads·kp, n_max) against the float64 oracle; `shared` = key_value_shared.
void check_linformer(Index kp, Index proj_heads, bool shared, const Case& c, int threads, bool freeze_f = false) {
  INFO(c.name << ", threads " << threads << ", k " << kp << ", projection heads " << proj_heads << (shared ? ", E = F" : "")
              << (freeze_f ? ", F frozen" : ""));
  const Index qd = c.heads * c.head_dim, kd = c.kv_heads * c.head_dim, n = c.n, dh = c.head_dim, n_max = n + 5;
  const Matrix q = pft::random_matrix(n, qd, 31), k = pft::random_matrix(n, kd, 32), v = pft::random_matrix(n, kd, 33);
  const Matrix dout = pft::random_matrix(n, qd, 34);
  const Matrix e = pft::random_matrix(proj_heads * kp, n_max, 35, 0.3f), f = pft::random_matrix(proj_heads * kp, n_max, 36, 0.3f);
  const pf::Linformer policy = shared ? pf::Linformer::key_value_shared(kp, e) : pf::Linformer(kp, e, f);
  const Matrix& f_used = shared ? e : f;
  const pf::AttentionShape shape{c.heads, c.kv_heads, dh, 1.0f / std::sqrt(static_cast<float>(dh))};
  Masks m;
  make_masks(c, m);
  pf::Linformer::Saved saved;
  pf::Linformer::Workspace ws;
  pf::Linformer::Gradients g = policy.make_gradients();
  g.e.setConstant(0.5f);  // backward adds into the buffers
  g.f.setConstant(0.5f);
  if (freeze_f) g.f.resize(0, 0);
  const pf::Context ctx{threads};
  Matrix out(n, qd), dq = Matrix::Constant(n, qd, 7.0f), dk = Matrix::Constant(n, kd, 7.0f);
  Matrix dv = Matrix::Constant(n, kd, 7.0f);
  policy.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), m.mask, pf::view(out), saved, ws, ctx);
  Matrix plain(n, qd);
  policy.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), m.mask, pf::view(plain), ctx);
  CHECK((plain - out).norm() <= 1e-5f * out.norm());
  policy.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), m.mask, pf::cview(out), pf::cview(dout), saved,
                  pf::view(dq), pf::view(dk), pf::view(dv), g, ws, ctx);
  // Oracle: padded keys zeroed, K′ = E·K and V′ = F·V per projected head, then softmax attention without a mask.
  MatD kk = f64(k), vv = f64(v);
  for (Index j = 0; j < n; ++j)
    if (j >= c.n_valid_keys || (!m.padding.empty() && m.padding[std::size_t(j)] != 0.0f)) kk.row(j).setZero(), vv.row(j).setZero();
  const Index out_heads = proj_heads == 1 ? c.kv_heads : c.heads, group = c.heads / c.kv_heads;
  const auto src_head = [&](Index oh) { return proj_heads == 1 ? oh : oh / group; };
  const auto rows = [&](const Matrix& p, Index oh) -> MatD { return f64(p).block(proj_heads == 1 ? 0 : oh * kp, 0, kp, n); };
  MatD kp_all(kp, out_heads * dh), vp_all(kp, out_heads * dh);
  for (Index oh = 0; oh < out_heads; ++oh) {
    kp_all.middleCols(oh * dh, dh) = rows(e, oh) * kk.middleCols(src_head(oh) * dh, dh);
    vp_all.middleCols(oh * dh, dh) = rows(f_used, oh) * vv.middleCols(src_head(oh) * dh, dh);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const oracle::AttnMask none;
  BWT_CHECK_GRAD(out, oracle::attention(f64(q), kp_all, vp_all, c.heads, out_heads, scale, none));
  const auto grad = oracle::attention_backward(f64(q), kp_all, vp_all, c.heads, out_heads, scale, none, f64(dout));
  MatD want_dk = MatD::Zero(n, kd), want_dv = MatD::Zero(n, kd);
  MatD want_de = MatD::Constant(e.rows(), n_max, 0.5), want_df = MatD::Constant(e.rows(), n_max, 0.5);
  for (Index oh = 0; oh < out_heads; ++oh) {
    const Index r0 = proj_heads == 1 ? 0 : oh * kp, sh = src_head(oh);
    want_dk.middleCols(sh * dh, dh) += rows(e, oh).transpose() * grad.dk.middleCols(oh * dh, dh);
    want_dv.middleCols(sh * dh, dh) += rows(f_used, oh).transpose() * grad.dv.middleCols(oh * dh, dh);
    want_de.block(r0, 0, kp, n) += grad.dk.middleCols(oh * dh, dh) * kk.middleCols(sh * dh, dh).transpose();
    want_df.block(r0, 0, kp, n) += grad.dv.middleCols(oh * dh, dh) * vv.middleCols(sh * dh, dh).transpose();
  }
  for (Index j = 0; j < n; ++j)
    if (kk.row(j).isZero(0.0) && vv.row(j).isZero(0.0)) want_dk.row(j).setZero(), want_dv.row(j).setZero();
  if (shared) {  // one matrix: each gradient buffer receives the sum
    const MatD total = want_de + want_df - MatD::Constant(e.rows(), n_max, 0.5);
    want_de = want_df = total;
  }
  BWT_CHECK_GRAD(dq, grad.dq);
  BWT_CHECK_GRAD(dk, want_dk);
  BWT_CHECK_GRAD(dv, want_dv);
  BWT_CHECK_GRAD(g.e, want_de);
  if (freeze_f) CHECK(g.f.size() == 0);
  else BWT_CHECK_GRAD(g.f, want_df);
}

}  // namespace

TEST_CASE("Linformer backward matches the float64 oracle, E and F included", "[backward][attention][linformer]") {
  for (const Case& c : cases()) {
    if (c.causal || c.additive) continue;  // Linformer takes neither
    for (const int threads : {1, 2}) {
      if (skip(c, threads)) continue;
      check_linformer(7, 1, false, c, threads);
      check_linformer(5, c.heads, false, c, threads);
      check_linformer(6, 1, true, c, threads);
      check_linformer(6, 1, true, c, threads, true);
    }
  }
  Case lengths = cases()[4];
  lengths.additive = false;
  check_linformer(4, 1, false, lengths, 2);
  Case padded = cases()[3];
  padded.causal = false;
  padded.causal_offset = 0;
  check_linformer(4, 2, false, padded, 1);
}

TEST_CASE("MultiHeadAttention lists and fills a Linformer's E and F gradients", "[backward][attention][linformer]") {
  using MHA = pf::MultiHeadAttention<pf::Linformer, pf::Dense>;
  const Index d = 12, n = 10;
  const auto dense = [](Index out, Index in, unsigned seed) {
    return pf::Dense(pft::random_matrix(out, in, seed, 0.3f), pft::random_matrix(out, 1, seed + 1).col(0));
  };
  const MHA mha(dense(d, d, 1), dense(d, d, 3), dense(d, d, 5), dense(d, d, 7), pf::HeadConfig{3, 3, 4},
                pf::Linformer::random(4, 16));
  MHA::Gradients g = mha.make_gradients();
  pf::GradientList list;
  mha.gradients(list, "attn.", g);
  REQUIRE(list.find("attn.policy.E") != nullptr);
  REQUIRE(list.find("attn.policy.F") != nullptr);
  CHECK(list.find("attn.policy.E")->shape == std::vector<Index>{4, 16});
  const Matrix x = pft::random_matrix(n, d, 9), dy = pft::random_matrix(n, d, 10);
  Matrix y(n, d), dx(n, d);
  MHA::Saved saved;
  const pf::Context ctx{1};
  mha.forward_train(pf::cview(x), 1, {}, pf::view(y), saved, ctx);
  list.freeze("attn.policy.F");
  mha.backward(pf::cview(x), 1, {}, pf::cview(dy), pf::view(dx), g, saved, ctx);
  CHECK(g.attention.e.norm() > 0.0f);
  CHECK(g.attention.e.rightCols(6).isZero(0.0f));  // columns past the sequence's length
  CHECK(g.attention.f.size() == 0);
}

TEST_CASE("Local attention backward: saved-forward errors", "[backward][attention][blockwise]") {
  const pf::Blockwise policy(8);
  const pf::AttentionShape shape{2, 2, 4, 0.5f};
  const Matrix q = pft::random_matrix(20, 8, 1);
  Matrix out(20, 8), dq(20, 8), dk(20, 8), dv(20, 8), bad(19, 8);
  pf::Blockwise::Saved saved;
  pf::Blockwise::Workspace ws;
  const pf::Context ctx{1};
  const auto backward = [&](pf::MatrixView dq_view) {
    policy.backward(shape, pf::cview(q), pf::cview(q), pf::cview(q), {}, pf::cview(out), pf::cview(q), saved, dq_view,
                    pf::view(dk), pf::view(dv), ws, ctx);
  };
  CHECK_THROWS_AS(backward(pf::view(dq)), pf::config_error);
  policy.forward_train(shape, pf::cview(q), pf::cview(q), pf::cview(q), {}, pf::view(out), saved, ws, ctx);
  CHECK_THROWS_AS(backward(pf::view(bad)), pf::shape_error);
  backward(pf::view(dq));
  CHECK_THROWS_AS(backward(pf::view(dq)), pf::config_error);
  saved.keep = true;
  policy.forward_train(shape, pf::cview(q), pf::cview(q), pf::cview(q), {}, pf::view(out), saved, ws, ctx);
  backward(pf::view(dq));
  CHECK_NOTHROW(backward(pf::view(dq)));
}
