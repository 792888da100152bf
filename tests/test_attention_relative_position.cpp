// T5's relative position attention (attention/relative_position.hpp): the buckets against transformers'
// _relative_position_bucket (its values for relative positions −300..300 under four settings, computed once with
// PyTorch 1.13 from that function and written here as runs), the forward against a float64 oracle written here
// (per-head bias from the table, no scaling, padding and causal masks), decoding position by position against the
// whole sequence, the unbiased form as plain unscaled attention, the heads on a sliding window (against the oracle
// restricted to the window), and bad shapes.

#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "polyformer/attention/blockwise.hpp"
#include "polyformer/attention/kernelized.hpp"
#include "polyformer/attention/linformer.hpp"
#include "polyformer/attention/lsh.hpp"
#include "polyformer/attention/registry.hpp"
#include "polyformer/attention/relative_position.hpp"
#include "polyformer/attention/sliding_window.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

/// softmax over visible keys of q·kᵀ + bias(h, i, j), times v, in double; query i at position i + offset; with a
/// window w ≥ 0 only keys j with |j − (i + offset)| ≤ w are visible.
Matrix oracle(const Matrix& q, const Matrix& k, const Matrix& v, Index heads, Index dh, const Matrix* table,
              const pf::RelativePositionBuckets& buckets, bool causal, Index offset, const std::vector<float>& padding,
              Index window = -1) {
  const Index n_q = q.rows(), n_k = k.rows();
  Matrix out = Matrix::Zero(n_q, heads * dh);
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < n_q; ++i) {
      std::vector<double> scores(static_cast<std::size_t>(n_k), -INFINITY);
      double top = -INFINITY;
      for (Index j = 0; j < n_k; ++j) {
        if ((causal && j > i + offset) || (!padding.empty() && padding[std::size_t(j)] != 0)) continue;
        if (window >= 0 && std::abs(j - (i + offset)) > window) continue;
        double s = 0;
        for (Index c = 0; c < dh; ++c) s += double(q(i, h * dh + c)) * double(k(j, h * dh + c));
        if (table) s += (*table)(buckets.bucket(j - (i + offset)), h);
        scores[std::size_t(j)] = s;
        top = std::max(top, s);
      }
      double sum = 0;
      for (double& s : scores) sum += s = std::isinf(s) ? 0.0 : std::exp(s - top);
      for (Index j = 0; j < n_k; ++j)
        for (Index c = 0; c < dh; ++c) out(i, h * dh + c) += float(scores[std::size_t(j)] / sum * double(v(j, h * dh + c)));
    }
  return out;
}

/// Runs of (first relative position, bucket) → the bucket of every relative position in −300..300.
std::vector<Index> expand(const std::vector<std::pair<Index, Index>>& runs) {
  std::vector<Index> out;
  for (std::size_t r = 0; r < runs.size(); ++r) {
    const Index end = r + 1 < runs.size() ? runs[r + 1].first : 301;
    for (Index x = runs[r].first; x < end; ++x) out.push_back(runs[r].second);
  }
  return out;
}

}  // namespace

TEST_CASE("T5's relative position buckets equal transformers'", "[attention][t5]") {
  struct Case {
    pf::RelativePositionBuckets buckets;
    std::vector<std::pair<Index, Index>> runs;
  };
  const Case cases[] = {
      {{32, 128, true}, {{-300, 15}, {-90, 14}, {-63, 13}, {-45, 12}, {-31, 11}, {-22, 10}, {-15, 9}, {-11, 8},
                         {-7, 7}, {-6, 6}, {-5, 5}, {-4, 4}, {-3, 3}, {-2, 2}, {-1, 1}, {0, 0}, {1, 17}, {2, 18},
                         {3, 19}, {4, 20}, {5, 21}, {6, 22}, {7, 23}, {8, 24}, {12, 25}, {16, 26}, {23, 27}, {32, 28},
                         {46, 29}, {64, 30}, {91, 31}}},
      {{32, 128, false}, {{-300, 31}, {-112, 30}, {-98, 29}, {-86, 28}, {-76, 27}, {-66, 26}, {-58, 25}, {-51, 24},
                          {-45, 23}, {-39, 22}, {-34, 21}, {-30, 20}, {-26, 19}, {-23, 18}, {-20, 17}, {-18, 16},
                          {-15, 15}, {-14, 14}, {-13, 13}, {-12, 12}, {-11, 11}, {-10, 10}, {-9, 9}, {-8, 8}, {-7, 7},
                          {-6, 6}, {-5, 5}, {-4, 4}, {-3, 3}, {-2, 2}, {-1, 1}, {0, 0}}},
      {{32, 20, true}, {{-300, 15}, {-17, 14}, {-15, 13}, {-14, 12}, {-12, 11}, {-11, 10}, {-10, 9}, {-8, 8}, {-7, 7},
                        {-6, 6}, {-5, 5}, {-4, 4}, {-3, 3}, {-2, 2}, {-1, 1}, {0, 0}, {1, 17}, {2, 18}, {3, 19}, {4, 20},
                        {5, 21}, {6, 22}, {7, 23}, {8, 24}, {9, 25}, {11, 26}, {12, 27}, {13, 28}, {15, 29}, {16, 30},
                        {18, 31}}},
      {{8, 16, false}, {{-300, 7}, {-11, 6}, {-7, 5}, {-5, 4}, {-3, 3}, {-2, 2}, {-1, 1}, {0, 0}}},
  };
  for (const Case& c : cases) {
    INFO(c.buckets.num_buckets << " buckets, distance " << c.buckets.max_distance << ", bidirectional "
                               << c.buckets.bidirectional);
    const std::vector<Index> want = expand(c.runs);
    std::vector<Index> got;
    for (Index r = -300; r <= 300; ++r) got.push_back(c.buckets.bucket(r));
    CHECK(got == want);
  }
}

TEST_CASE("Relative position attention equals a float64 oracle, and decodes as it runs whole", "[attention][t5]") {
  const Index heads = 3, dh = 8, n = 29;
  const auto table = std::make_shared<const Matrix>(pft::random_matrix(32, heads, 5, 2.0f));
  const Matrix q = pft::random_matrix(n, heads * dh, 1), k = pft::random_matrix(n, heads * dh, 2),
               v = pft::random_matrix(n, heads * dh, 3);
  const pf::AttentionShape shape{heads, heads, dh, 0.125f};  // the scale is not T5's and must not be used
  for (const bool decoder : {false, true}) {
    INFO((decoder ? "decoder (causal)" : "encoder (both directions)"));
    const pf::RelativePositionBuckets buckets{32, 20, !decoder};
    const pf::RelativePositionAttention attention(table, buckets);
    std::vector<float> padding;
    pf::AttentionMask mask;
    mask.causal = decoder;
    if (!decoder) {  // the last 4 keys padded
      padding.assign(std::size_t(n), 0.0f);
      for (Index j = n - 4; j < n; ++j) padding[std::size_t(j)] = 1.0f;
      mask.key_padding = padding.data();
    }
    Matrix out(n, heads * dh);
    attention.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), pf::Context{2});
    const Matrix want = oracle(q, k, v, heads, dh, table.get(), buckets, decoder, 0, padding);
    CHECK(pft::max_abs_diff(out, want) < 1e-5f * want.cwiseAbs().maxCoeff());
    if (!decoder) continue;
    // Decoding: a prompt of 5 positions, then one at a time, equals the whole sequence.
    auto state = attention.make_state(n, heads, dh);
    Matrix step(n, heads * dh);
    for (Index p = 0; p < n;) {
      const Index m = p == 0 ? 5 : 1;
      Matrix rows(m, heads * dh);
      attention.forward_cached(shape, pf::block(pf::cview(q), p, 0, m, heads * dh), pf::block(pf::cview(k), p, 0, m, heads * dh),
                               pf::block(pf::cview(v), p, 0, m, heads * dh), state, pf::view(rows), pf::Context{1});
      step.middleRows(p, m) = rows;
      p += m;
    }
    CHECK(state.size() == n);
    CHECK(pft::max_abs_diff(step, out) < 1e-5f * out.cwiseAbs().maxCoeff());
  }
  // Without a table: T5's cross-attention, unscaled and unbiased.
  const pf::RelativePositionAttention plain;
  Matrix out(n, heads * dh);
  plain.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), pf::AttentionMask{}, pf::view(out), pf::Context{1});
  const Matrix want = oracle(q, k, v, heads, dh, nullptr, {}, false, 0, {});
  CHECK(pft::max_abs_diff(out, want) < 1e-5f * want.cwiseAbs().maxCoeff());
}

TEST_CASE("Relative position attention runs its heads on another policy: a sliding window with T5's bias",
          "[attention][t5]") {
  const Index heads = 2, dh = 8, n = 41, window = 5;
  const auto table = std::make_shared<const Matrix>(pft::random_matrix(32, heads, 7, 2.0f));
  const Matrix q = pft::random_matrix(n, heads * dh, 11), k = pft::random_matrix(n, heads * dh, 12),
               v = pft::random_matrix(n, heads * dh, 13);
  const pf::AttentionShape shape{heads, heads, dh, 0.125f};
  for (const bool decoder : {false, true}) {
    INFO((decoder ? "decoder (causal)" : "encoder (both directions)"));
    const pf::RelativePositionBuckets buckets{32, 20, !decoder};
    const pf::RelativePositionAttention<pf::SlidingWindow> attention(table, buckets, pf::SlidingWindow(window));
    std::vector<float> padding;
    pf::AttentionMask mask;
    mask.causal = decoder;
    if (!decoder) {  // keys 30..33 padded, inside other queries' windows
      padding.assign(std::size_t(n), 0.0f);
      for (Index j = 30; j < 34; ++j) padding[std::size_t(j)] = 1.0f;
      mask.key_padding = padding.data();
    }
    Matrix out(n, heads * dh);
    attention.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), pf::Context{2});
    const Matrix want = oracle(q, k, v, heads, dh, table.get(), buckets, decoder, 0, padding, window);
    CHECK(pft::max_abs_diff(out, want) < 1e-5f * want.cwiseAbs().maxCoeff());
    // Not what full attention with the bias gives: the window is honoured.
    const Matrix everything = oracle(q, k, v, heads, dh, table.get(), buckets, decoder, 0, padding);
    CHECK(pft::max_abs_diff(out, everything) > 1e-2f * everything.cwiseAbs().maxCoeff());
    if (!decoder) continue;
    auto state = attention.make_state(n, heads, dh);
    Matrix step(n, heads * dh);
    for (Index p = 0; p < n; ++p) {
      Matrix row(1, heads * dh);
      attention.forward_cached(shape, pf::block(pf::cview(q), p, 0, 1, heads * dh), pf::block(pf::cview(k), p, 0, 1, heads * dh),
                               pf::block(pf::cview(v), p, 0, 1, heads * dh), state, pf::view(row), pf::Context{1});
      step.row(p) = row.row(0);
    }
    CHECK(pft::max_abs_diff(step, want) < 1e-5f * want.cwiseAbs().maxCoeff());
  }
  static_assert(pf::AdditiveBiasAttention<pf::SlidingWindow> && pf::AdditiveBiasAttention<pf::Blockwise> &&
                !pf::AdditiveBiasAttention<pf::LSHAttention> && !pf::AdditiveBiasAttention<pf::Linformer> &&
                !pf::AdditiveBiasAttention<pf::LinearAttention> && !pf::AdditiveBiasAttention<pf::Performer>);
  // The registry's list of them (generate --attention for T5).
  static_assert(std::is_same_v<pf::AdditiveBiasPolicies<>, pf::PolicyList<pf::FullAttention, pf::SlidingWindow, pf::Blockwise>>);
}

TEST_CASE("Relative position attention refuses shapes that do not fit", "[attention][t5][errors]") {
  const auto table = std::make_shared<const Matrix>(Matrix::Zero(32, 2));
  CHECK_THROWS_WITH(pf::RelativePositionAttention(table, {16, 128, true}),
                    Catch::Contains("the table has 32 rows, expected 16 (one per bucket)"));
  CHECK_THROWS_WITH(pf::RelativePositionAttention(table, {32, 8, true}), Catch::Contains("32 buckets up to distance 8"));
  const pf::RelativePositionAttention attention(table, {32, 128, false});
  const Matrix x = Matrix::Zero(3, 12);
  Matrix out(3, 12);
  CHECK_THROWS_WITH(attention.forward(pf::AttentionShape{3, 3, 4, 1.0f}, pf::cview(x), pf::cview(x), pf::cview(x),
                                      pf::AttentionMask{}, pf::view(out), pf::Context{1}),
                    Catch::Contains("the table has 2 heads, the call 3"));
  auto state = attention.make_state(2, 2, 6);
  CHECK_THROWS_WITH(attention.forward_cached(pf::AttentionShape{2, 2, 6, 1.0f}, pf::cview(x), pf::cview(x), pf::cview(x),
                                             state, pf::view(out), pf::Context{1}),
                    Catch::Contains("3 new positions after 0 pass the state's capacity 2"));
}
