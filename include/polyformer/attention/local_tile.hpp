#pragma once
/// \file One tile of block-sparse softmax attention, shared by the policies whose queries each see a
/// bounded set of keys (sliding window, blockwise, LSH chunks): a block of gathered queries against a
/// block of gathered keys, every row's visibility set by the policy, softmax taken over the whole tile at
/// once (the key set is bounded, so no online rescaling is needed). Each thread owns one LocalTile.
///
/// Its backward recomputes the same tile's softmax (a tile holds each row's whole key set; LSH's rounds pass each
/// row's saved log-sum-exp over all of them); backward_by_kv_head schedules the policies' tiles so that the keys'
/// and values' gradients are summed without races.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "polyformer/attention/mask.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/reduce.hpp"
#include "polyformer/kernels/softmax.hpp"
#include "polyformer/kernels/transpose.hpp"

namespace polyformer::detail {

/// Workspace of one tile: the caller gathers queries (already scaled), keys (transposed) and values into
/// it, then attend() computes the tile's output rows and their log-sum-exp.
struct LocalTile {
  Matrix queries;  // (n_q, head_dim), scaled
  Matrix keys_t;   // (head_dim, n_k)
  Matrix values;   // (n_k, head_dim)
  Matrix scores;   // (n_q, n_k)
  Matrix out;      // (n_q, head_dim)
  std::vector<float> lse;  // (n_q): log Σ exp(score) of each row, −inf for a row that sees nothing

  /// Sizes the buffers for n_q queries and n_k keys of head_dim features (no allocation when they fit).
  void reserve(Index n_q, Index n_k, Index head_dim) {
    const auto grow = [](Matrix& m, Index rows, Index cols) {
      if (m.rows() < rows || m.cols() != cols) m.resize(std::max(rows, m.rows()), cols);
    };
    grow(queries, n_q, head_dim);
    grow(values, n_k, head_dim);
    grow(out, n_q, head_dim);
    if (keys_t.rows() != head_dim || keys_t.cols() < n_k) keys_t.resize(head_dim, std::max(n_k, keys_t.cols()));
    if (scores.rows() < n_q || scores.cols() < n_k)
      scores.resize(std::max(n_q, scores.rows()), std::max(n_k, scores.cols()));
    if (lse.size() < std::size_t(n_q)) lse.resize(std::size_t(n_q));
  }

  MatrixView query_rows(Index n_q) { return MatrixView(queries.data(), n_q, queries.cols(), Eigen::OuterStride<>(queries.cols())); }
  MatrixView key_cols(Index n_k) { return MatrixView(keys_t.data(), keys_t.rows(), n_k, Eigen::OuterStride<>(keys_t.cols())); }
  MatrixView value_rows(Index n_k) { return MatrixView(values.data(), n_k, values.cols(), Eigen::OuterStride<>(values.cols())); }
  /// Row r of the tile's output after attend(): (head_dim).
  const float* out_row(Index r) const { return out.data() + r * out.cols(); }

  /// out = softmax(Q·Kᵀ + mask)·V over the gathered n_q queries and n_k keys. mask_row(r, row) receives the
  /// n_k scores of query r and sets those it must not see to −inf (or adds to them); it may return a
  /// std::pair (first, last): then only columns [first, last) can be visible and the softmax skips the rest.
  /// A row that sees no key gets zeros and lse −inf.
  template <typename MaskRow>
  void attend(Index n_q, Index n_k, MaskRow&& mask_row) {
    attend(n_q, cview(key_cols(n_k)), cview(value_rows(n_k)), std::forward<MaskRow>(mask_row));
  }

  /// The same with keys (head_dim, n_k) and values (n_k, head_dim) that live elsewhere (not gathered).
  template <typename MaskRow>
  void attend(Index n_q, ConstMatrixView keys_t_in, ConstMatrixView values_in, MaskRow&& mask_row) {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index n_k = keys_t_in.cols(), dh = queries.cols();
    MatrixView o(out.data(), n_q, dh, Eigen::OuterStride<>(dh));
    if (n_k == 0) {
      o.setZero();
      std::fill(lse.begin(), lse.begin() + n_q, neg_inf);
      return;
    }
    const MatrixView sc = exp_scores(n_q, keys_t_in, std::forward<MaskRow>(mask_row));
    // Unnormalized weights times the values, then each output row divided by its sum (d values, not n_k).
    kernels::gemm(cview(sc), values_in, kernels::Transpose::no, o, 1.0f, 0.0f, 1);
    for (Index r = 0; r < n_q; ++r) kernels::scale(o.data() + r * dh, inv_sum[std::size_t(r)], std::size_t(dh));
  }

  // ---- Backward (FlashAttention's recomputation, over a tile that holds each row's whole key set) ----

  Matrix dout;           // (n_q, head_dim): the output gradient rows, gathered by the caller
  Matrix score_grads;    // (n_q, n_k)
  Matrix queries_t;      // (head_dim, n_q)
  Matrix dout_t;         // (head_dim, n_q)
  Matrix query_grads;    // (n_q, head_dim): ∂L/∂(scaled queries)
  Matrix key_grads_t;    // (head_dim, n_k)
  Matrix value_grads_t;  // (head_dim, n_k)
  std::vector<float> deltas;  // (n_q): dout·out of each row, filled by the caller

  /// reserve() plus the backward's buffers.
  void reserve_backward(Index n_q, Index n_k, Index head_dim) {
    reserve(n_q, n_k, head_dim);
    const auto grow = [](Matrix& m, Index rows, Index cols) {
      if (m.rows() < rows || m.cols() < cols) m.resize(std::max(rows, m.rows()), std::max(cols, m.cols()));
    };
    grow(dout, n_q, head_dim);
    grow(query_grads, n_q, head_dim);
    grow(score_grads, n_q, n_k);
    grow(queries_t, head_dim, n_q);
    grow(dout_t, head_dim, n_q);
    grow(key_grads_t, head_dim, n_k);
    grow(value_grads_t, head_dim, n_k);
    if (deltas.size() < std::size_t(n_q)) deltas.resize(std::size_t(n_q));
  }

  MatrixView dout_rows(Index n_q) { return MatrixView(dout.data(), n_q, queries.cols(), Eigen::OuterStride<>(dout.cols())); }
  /// After backward(): ∂L/∂(scaled query) of row r (head_dim).
  const float* query_grad_row(Index r) const { return query_grads.data() + r * query_grads.cols(); }
  /// After backward(): adds the key and value gradients of tile column c into column key_of(c) of dk_t and dv_t
  /// (head_dim, ld), for c in [0, n_k).
  template <typename KeyOf>
  void add_key_grads(Index n_k, KeyOf&& key_of, float* dk_t, float* dv_t, Index ld) const {
    const Index dh = queries.cols(), ks = key_grads_t.cols(), vs = value_grads_t.cols();
    for (Index f = 0; f < dh; ++f) {
      const float* gk = key_grads_t.data() + f * ks;
      const float* gv = value_grads_t.data() + f * vs;
      float* ak = dk_t + f * ld;
      float* av = dv_t + f * ld;
      for (Index c = 0; c < n_k; ++c) {
        const Index j = key_of(c);
        ak[j] += gk[c];
        av[j] += gv[c];
      }
    }
  }

  /// The backward of attend(n_q, keys_t_in, values_in, mask_row) with the same gathered queries, keys, values and
  /// mask: from the output gradient rows in dout_rows(n_q) and each row's delta = dout·out (n_q; deltas), writes the
  /// gradients of the scaled queries (query_grad_row) and of the keys and values (add_key_grads). Row r's
  /// weights are e^(score − row_lse[r]) with row_lse given (one softmax spread over several tiles, as LSH's rounds),
  /// else the tile's own softmax.
  template <typename MaskRow>
  void backward(Index n_q, ConstMatrixView keys_t_in, ConstMatrixView values_in, MaskRow&& mask_row, const float* delta,
                const float* row_lse = nullptr) {
    const Index n_k = keys_t_in.cols(), dh = queries.cols();
    MatrixView dq(query_grads.data(), n_q, dh, Eigen::OuterStride<>(query_grads.cols()));
    MatrixView dkt(key_grads_t.data(), dh, n_k, Eigen::OuterStride<>(key_grads_t.cols()));
    MatrixView dvt(value_grads_t.data(), dh, n_k, Eigen::OuterStride<>(value_grads_t.cols()));
    if (n_k == 0 || n_q == 0) {
      dq.setZero();
      dkt.setZero();
      dvt.setZero();
      return;
    }
    MatrixView p = exp_scores(n_q, keys_t_in, std::forward<MaskRow>(mask_row));
    for (Index r = 0; r < n_q; ++r) {  // P: the weights normalized
      const float m = row_max[std::size_t(r)];
      const float f = m == -std::numeric_limits<float>::infinity() ? 0.0f
                      : row_lse != nullptr                           ? std::exp(m - row_lse[r])
                                                                     : inv_sum[std::size_t(r)];
      kernels::scale(p.data() + r * p.outerStride(), f, std::size_t(n_k));
    }
    const MatrixView qs = query_rows(n_q), d_o = dout_rows(n_q);
    MatrixView qt(queries_t.data(), dh, n_q, Eigen::OuterStride<>(queries_t.cols()));
    MatrixView dot_(dout_t.data(), dh, n_q, Eigen::OuterStride<>(dout_t.cols()));
    kernels::transpose(qs.data(), qs.outerStride(), n_q, dh, qt.data(), qt.outerStride());
    kernels::transpose(d_o.data(), d_o.outerStride(), n_q, dh, dot_.data(), dot_.outerStride());
    MatrixView ds(score_grads.data(), n_q, n_k, Eigen::OuterStride<>(score_grads.cols()));
    kernels::gemm(cview(dot_), cview(p), kernels::Transpose::no, dvt, 1.0f, 0.0f, 1);          // dVᵀ = dOᵀ·P
    kernels::gemm(cview(d_o), values_in, kernels::Transpose::yes, ds, 1.0f, 0.0f, 1);          // dP = dO·Vᵀ
    for (Index r = 0; r < n_q; ++r)  // dS = P ⊙ (dP − delta)
      kernels::softmax_backward(p.data() + r * p.outerStride(), ds.data() + r * ds.outerStride(), delta[r], std::size_t(n_k));
    kernels::gemm(cview(qt), cview(ds), kernels::Transpose::no, dkt, 1.0f, 0.0f, 1);           // dKᵀ = Qsᵀ·dS
    kernels::gemm(cview(ds), keys_t_in, kernels::Transpose::yes, dq, 1.0f, 0.0f, 1);           // dQs = dS·K
  }

  std::vector<float> inv_sum;  // (n_q): 1 / Σ exp of each row, 0 for a row that sees nothing
  std::vector<float> row_max;  // (n_q): each row's largest visible score, −inf for a row that sees nothing

 private:
  /// scores (n_q, n_k) = e^(Q·Kᵀ + mask − row max), 0 where hidden, and inv_sum, row_max, lse of every row.
  template <typename MaskRow>
  MatrixView exp_scores(Index n_q, ConstMatrixView keys_t_in, MaskRow&& mask_row) {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index n_k = keys_t_in.cols(), ss = scores.cols();
    MatrixView sc(scores.data(), n_q, n_k, Eigen::OuterStride<>(ss));
    kernels::gemm(cview(query_rows(n_q)), keys_t_in, kernels::Transpose::no, sc, 1.0f, 0.0f, 1);
    if (inv_sum.size() < std::size_t(n_q)) inv_sum.resize(std::size_t(n_q));
    if (row_max.size() < std::size_t(n_q)) row_max.resize(std::size_t(n_q));
    for (Index r = 0; r < n_q; ++r) {
      float* row = sc.data() + r * ss;
      // The columns that may be visible: all, or the span the mask returns (the rest are then treated as −inf).
      Index first = 0, last = n_k;
      if constexpr (std::is_void_v<decltype(mask_row(r, row))>) {
        mask_row(r, row);
      } else {
        const auto span = mask_row(r, row);
        first = span.first;
        last = span.second;
        std::fill(row, row + first, 0.0f);
        std::fill(row + last, row + n_k, 0.0f);
      }
      const float m = last > first ? kernels::reduce_max(row + first, std::size_t(last - first)) : neg_inf;
      row_max[std::size_t(r)] = m;
      if (m == neg_inf) {
        std::fill(row + first, row + last, 0.0f);
        lse[std::size_t(r)] = neg_inf;
        inv_sum[std::size_t(r)] = 0.0f;
        continue;
      }
      const float sum = kernels::exp_shifted_sum(row + first, std::size_t(last - first), m);
      inv_sum[std::size_t(r)] = 1.0f / sum;
      lse[std::size_t(r)] = m + std::log(sum);
    }
    return sc;
  }
};

/// One thread's share of one kv head's key and value gradients, transposed: (head_dim, n_k) each.
struct KeyGradients {
  Matrix keys_t, values_t;
};

/// The local policies' backward schedule: for every kv head g, run(g, task, thread, KeyGradients&) for each task in
/// [0, tasks_of(g)) adds its keys' and values' gradients into the thread's accumulators; dk and dv (n_k, kv_heads·d)
/// are then written with each kv head's sums. With at least as many kv heads as threads, the heads run in parallel
/// (a thread's accumulators serve one head at a time); otherwise one head's tasks run in parallel and the threads'
/// accumulators are summed. run must not throw.
template <typename TasksOf, typename Run>
void backward_by_kv_head(const AttentionShape& s, int t, std::vector<KeyGradients>& acc, MatrixView dk, MatrixView dv,
                         TasksOf&& tasks_of, Run&& run) {
  const Index n_k = dk.rows(), dh = s.head_dim;
  if (static_cast<int>(acc.size()) < t) acc.resize(std::size_t(t));
  for (int i = 0; i < t; ++i) {
    ensure_shape(acc[std::size_t(i)].keys_t, dh, n_k);
    ensure_shape(acc[std::size_t(i)].values_t, dh, n_k);
  }
  const auto write = [&](Index g, const KeyGradients& a) {
    kernels::transpose(a.keys_t.data(), n_k, dh, n_k, dk.data() + g * dh, dk.outerStride());
    kernels::transpose(a.values_t.data(), n_k, dh, n_k, dv.data() + g * dh, dv.outerStride());
  };
  if (s.n_kv_heads >= t) {
    parallel_for(s.n_kv_heads, t, [&](Index g, int thread) {
      KeyGradients& a = acc[std::size_t(thread)];
      a.keys_t.setZero();
      a.values_t.setZero();
      const Index tasks = tasks_of(g);
      for (Index task = 0; task < tasks; ++task) run(g, task, thread, a);
      write(g, a);
    });
    return;
  }
  for (Index g = 0; g < s.n_kv_heads; ++g) {
    for (int i = 0; i < t; ++i) {
      acc[std::size_t(i)].keys_t.setZero();
      acc[std::size_t(i)].values_t.setZero();
    }
    parallel_for(tasks_of(g), t, [&](Index task, int thread) { run(g, task, thread, acc[std::size_t(thread)]); });
    for (int i = 1; i < t; ++i) {
      acc[0].keys_t += acc[std::size_t(i)].keys_t;
      acc[0].values_t += acc[std::size_t(i)].values_t;
    }
    write(g, acc[0]);
  }
}

}  // namespace polyformer::detail
