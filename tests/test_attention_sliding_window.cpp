// SlidingWindow (window, dilation, global tokens) and Blockwise against the float64 oracle given the mask
// each one implies, for n from 1 to 1000; their limits (equal to FullAttention); window-cache decoding.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "attention_oracle.hpp"
#include "polyformer/attention/blockwise.hpp"
#include "polyformer/attention/full.hpp"
#include "polyformer/attention/sliding_window.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

struct Inputs {
  Matrix q, k, v;
};

Inputs make_inputs(Index n_q, Index n_k, Index heads, Index kv_heads, Index dh, unsigned seed) {
  return {pft::random_matrix(n_q, heads * dh, seed), pft::random_matrix(n_k, kv_heads * dh, seed + 1),
          pft::random_matrix(n_k, kv_heads * dh, seed + 2)};
}

template <typename P>
Matrix run(P& policy, const Inputs& in, Index heads, Index kv_heads, Index dh, const pf::AttentionMask& mask,
           int threads) {
  pf::AttentionShape s{heads, kv_heads, dh, 1.0f / std::sqrt(float(dh))};
  Matrix out = Matrix::Constant(in.q.rows(), heads * dh, std::numeric_limits<float>::quiet_NaN());
  policy.forward(s, pf::cview(in.q), pf::cview(in.k), pf::cview(in.v), mask, pf::view(out), pf::Context{threads});
  return out;
}

pft::OracleShape oracle_shape(Index heads, Index kv_heads, Index dh) {
  return {heads, kv_heads, dh, 1.0 / std::sqrt(double(dh))};
}

// Query i sees key j = i + D·t for |t| ≤ w (t ≤ 0 causal); a global position sees and is seen by all.
pft::Visibility window_visibility(Index w, std::vector<Index> dilation, std::vector<Index> globals, bool causal,
                                  const pf::AttentionMask& mask) {
  return [=](Index h, Index i, Index j) {
    if (pft::oracle_padded(mask, j) || (causal && j > i)) return false;
    const auto is_global = [&](Index p) { return std::find(globals.begin(), globals.end(), p) != globals.end(); };
    if (is_global(i) || is_global(j)) return true;
    const Index D = dilation.size() == 1 ? dilation[0] : dilation[std::size_t(h)];
    const Index delta = j - i;
    return delta % D == 0 && std::abs(delta) <= D * w;
  };
}

}  // namespace

TEST_CASE("SlidingWindow equals the masked oracle for n = 1..1000", "[attention][sliding]") {
  const std::vector<Index> lengths = {1, 2, 3, 5, 17, 63, 64, 65, 130, 257, 400, 1000};
  std::mt19937 rng(7);
  unsigned seed = 100;
  for (Index n : lengths) {
    for (int variant = 0; variant < 4; ++variant) {
      const Index heads = 4, kv_heads = variant % 2 ? 2 : 4, dh = variant == 3 ? 12 : 8;
      const Index w = std::vector<Index>{0, 1, 5, 40}[std::size_t(rng() % 4)];
      std::vector<Index> dilation = variant == 2 ? std::vector<Index>{1, 2, 3, 1} : std::vector<Index>{Index(1 + rng() % 3)};
      std::vector<Index> globals;
      if (variant >= 2 && n > 2) globals = {0, n / 2, n - 1};
      const bool causal = variant % 2 == 1;
      const Inputs in = make_inputs(n, n, heads, kv_heads, dh, seed++);
      pf::AttentionMask mask;
      mask.causal = causal;
      std::vector<float> padding(static_cast<std::size_t>(n), 0.0f);
      if (variant == 1) mask.n_valid_keys = std::max<Index>(n - 3, 0);
      if (variant == 3) {
        for (Index j = 0; j < n; j += 5) padding[std::size_t(j)] = 1.0f;
        mask.key_padding = padding.data();
      }
      pf::SlidingWindowOptions o;
      o.window = w;
      o.dilation = dilation;
      o.global_positions = globals;
      o.query_block = variant == 0 ? 16 : 64;
      pf::SlidingWindow policy(o);
      const Matrix expected = pft::masked_softmax_oracle(in.q, in.k, in.v, oracle_shape(heads, kv_heads, dh),
                                                         window_visibility(w, dilation, globals, causal, mask));
      for (int threads : {1, 2}) {
        INFO("n " << n << " variant " << variant << " w " << w << " D " << dilation[0] << " causal " << causal
                  << " threads " << threads);
        CHECK(pft::rel_max_error(run(policy, in, heads, kv_heads, dh, mask, threads), expected) < 1e-5);
      }
    }
  }
}

TEST_CASE("SlidingWindow honours an additive mask and cross lengths", "[attention][sliding]") {
  const Index n_q = 70, n_k = 90, heads = 2, dh = 8;
  const Inputs in = make_inputs(n_q, n_k, heads, heads, dh, 3);
  Matrix additive = pft::random_matrix(n_q, n_k, 4);
  for (Index i = 0; i < n_q; ++i) additive(i, (i * 7) % n_k) = -std::numeric_limits<float>::infinity();
  pf::AttentionMask mask;
  mask.additive = additive.data();
  mask.additive_stride = n_k;
  pf::SlidingWindow policy(6, 2, {3, 80});
  const Matrix expected = pft::masked_softmax_oracle(in.q, in.k, in.v, oracle_shape(heads, heads, dh),
                                                     window_visibility(6, {2}, {3, 80}, false, mask), &additive);
  CHECK(pft::rel_max_error(run(policy, in, heads, heads, dh, mask, 2), expected) < 1e-5);
}

TEST_CASE("SlidingWindow with w >= n and Blockwise with B >= n equal FullAttention", "[attention][sliding][blockwise]") {
  for (Index n : {1, 33, 300}) {
    const Inputs in = make_inputs(n, n, 4, 2, 16, unsigned(n));
    for (bool causal : {false, true}) {
      pf::AttentionMask mask;
      mask.causal = causal;
      pf::FullAttention full;
      const Matrix expected = run(full, in, 4, 2, 16, mask, 1);
      pf::SlidingWindow window(n);
      pf::Blockwise blocks(n);
      INFO("n " << n << " causal " << causal);
      CHECK(pft::rel_max_error(run(window, in, 4, 2, 16, mask, 2), expected) < 1e-5);
      CHECK(pft::rel_max_error(run(blocks, in, 4, 2, 16, mask, 2), expected) < 1e-5);
    }
  }
}

TEST_CASE("Blockwise equals the masked oracle for n = 1..1000", "[attention][blockwise]") {
  unsigned seed = 500;
  for (Index n : {1, 2, 9, 64, 65, 127, 300, 1000}) {
    for (Index B : {1, 7, 64, 200}) {
      for (int variant = 0; variant < 3; ++variant) {
        const bool previous = variant >= 1, causal = variant == 2;
        const Inputs in = make_inputs(n, n, 3, 1, 8, seed++);
        pf::AttentionMask mask;
        mask.causal = causal;
        std::vector<float> padding(static_cast<std::size_t>(n), 0.0f);
        if (variant == 1) {
          for (Index j = 1; j < n; j += 4) padding[std::size_t(j)] = 1.0f;
          mask.key_padding = padding.data();
        }
        pf::Blockwise policy(B, previous);
        const auto visible = [&](Index, Index i, Index j) {
          if (pft::oracle_padded(mask, j) || (causal && j > i)) return false;
          return j / B == i / B || (previous && j / B + 1 == i / B);
        };
        const Matrix expected = pft::masked_softmax_oracle(in.q, in.k, in.v, oracle_shape(3, 1, 8), visible);
        INFO("n " << n << " B " << B << " variant " << variant);
        CHECK(pft::rel_max_error(run(policy, in, 3, 1, 8, mask, 2), expected) < 1e-5);
      }
    }
  }
}

TEST_CASE("SlidingWindow decodes over a window cache exactly as its causal forward", "[attention][sliding][decode]") {
  const Index n = 300, heads = 4, kv_heads = 2, dh = 8;
  const Inputs in = make_inputs(n, n, heads, kv_heads, dh, 11);
  for (Index dilation : {1, 3}) {
    pf::SlidingWindow policy(9, dilation);
    pf::AttentionMask causal;
    causal.causal = true;
    const Matrix expected = run(policy, in, heads, kv_heads, dh, causal, 1);
    pf::AttentionShape s{heads, kv_heads, dh, 1.0f / std::sqrt(float(dh))};
    auto state = policy.make_state(100000, kv_heads, dh);
    CHECK(state.rows() == state.history() + state.chunk());  // independent of the capacity asked for
    CHECK(state.history() == 9 * dilation);
    // Chunks of 1, 7, 64 and more than the state's chunk (split inside).
    for (Index chunk : {1, 7, 64, 150}) {
      state.clear();
      Matrix out(n, heads * dh);
      for (Index p = 0; p < n; p += chunk) {
        const Index m = std::min(chunk, n - p);
        policy.forward_cached(s, pf::block(pf::cview(in.q), p, 0, m, heads * dh), pf::block(pf::cview(in.k), p, 0, m, kv_heads * dh),
                              pf::block(pf::cview(in.v), p, 0, m, kv_heads * dh), state,
                              pf::block(pf::view(out), p, 0, m, heads * dh), pf::Context{2});
      }
      INFO("dilation " << dilation << " chunk " << chunk);
      CHECK(state.size() == n);
      CHECK(pft::rel_max_error(out, expected) < 1e-5);
    }
  }
  pf::SlidingWindow with_globals(4, 1, {0});
  auto state = with_globals.make_state(10, kv_heads, dh);
  pf::AttentionShape s{heads, kv_heads, dh, 0.25f};
  Matrix out(1, heads * dh);
  CHECK_THROWS_WITH(with_globals.forward_cached(s, pf::block(pf::cview(in.q), 0, 0, 1, heads * dh),
                                                pf::block(pf::cview(in.k), 0, 0, 1, kv_heads * dh),
                                                pf::block(pf::cview(in.v), 0, 0, 1, kv_heads * dh), state, pf::view(out),
                                                pf::Context{1}),
                    Catch::Contains("SlidingWindow::forward_cached") && Catch::Contains("global"));
}

TEST_CASE("Blockwise decodes over a window cache exactly as its causal forward", "[attention][blockwise][decode]") {
  const Index n = 300, heads = 4, kv_heads = 2, dh = 8;
  const Inputs in = make_inputs(n, n, heads, kv_heads, dh, 12);
  const pf::AttentionShape s{heads, kv_heads, dh, 1.0f / std::sqrt(float(dh))};
  for (const bool previous : {false, true})
    for (Index B : {1, 5, 16, 70}) {
      pf::Blockwise policy(B, previous);
      pf::AttentionMask causal;
      causal.causal = true;
      const Matrix expected = run(policy, in, heads, kv_heads, dh, causal, 1);
      auto state = policy.make_state(100000, kv_heads, dh);
      CHECK(state.history() == (previous ? 2 : 1) * B - 1);  // independent of the capacity asked for
      // Chunks of 1, 7, 64 and more than the state's chunk (split inside), across block boundaries.
      for (Index chunk : {1, 7, 64, 150}) {
        state.clear();
        Matrix out = Matrix::Constant(n, heads * dh, 7.0f);
        for (Index p = 0; p < n; p += chunk) {
          const Index m = std::min(chunk, n - p);
          policy.forward_cached(s, pf::block(pf::cview(in.q), p, 0, m, heads * dh),
                                pf::block(pf::cview(in.k), p, 0, m, kv_heads * dh),
                                pf::block(pf::cview(in.v), p, 0, m, kv_heads * dh), state,
                                pf::block(pf::view(out), p, 0, m, heads * dh), pf::Context{2});
        }
        INFO("B " << B << " previous " << previous << " chunk " << chunk);
        CHECK(state.size() == n);
        CHECK(pft::rel_max_error(out, expected) < 1e-5);
      }
    }
  // A state made for a smaller block cannot serve this one.
  auto small = pf::Blockwise(4).make_state(10, kv_heads, dh);
  Matrix out(1, heads * dh);
  CHECK_THROWS_WITH(pf::Blockwise(8).forward_cached(s, pf::block(pf::cview(in.q), 0, 0, 1, heads * dh),
                                                    pf::block(pf::cview(in.k), 0, 0, 1, kv_heads * dh),
                                                    pf::block(pf::cview(in.v), 0, 0, 1, kv_heads * dh), small,
                                                    pf::view(out), pf::Context{1}),
                    Catch::Contains("Blockwise::forward_cached") && Catch::Contains("expected 2 of 8 over at least 7"));
}

TEST_CASE("SlidingWindow and Blockwise reject bad options", "[attention][sliding][blockwise]") {
  CHECK_THROWS_WITH(pf::SlidingWindow(-1), Catch::Contains("window is -1"));
  CHECK_THROWS_WITH(pf::SlidingWindow(4, 0), Catch::Contains("dilation 0"));
  CHECK_THROWS_WITH(pf::SlidingWindow(4, 1, {-2}), Catch::Contains("global position -2"));
  CHECK_THROWS_WITH(pf::Blockwise(0), Catch::Contains("block is 0"));
  pf::SlidingWindowOptions o;
  o.dilation = {1, 2, 3};
  pf::SlidingWindow three(o);
  const Inputs in = make_inputs(5, 5, 4, 4, 4, 1);
  CHECK_THROWS_WITH(run(three, in, 4, 4, 4, pf::AttentionMask{}, 1), Catch::Contains("3 dilations for 4 heads"));
}
