#pragma once
/// \file One tile of block-sparse softmax attention, shared by the policies whose queries each see a
/// bounded set of keys (sliding window, blockwise, LSH chunks): a block of gathered queries against a
/// block of gathered keys, every row's visibility set by the policy, softmax taken over the whole tile at
/// once (the key set is bounded, so no online rescaling is needed). Each thread owns one LocalTile.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/reduce.hpp"

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
    const Index n_k = keys_t_in.cols(), dh = queries.cols(), ss = scores.cols();
    MatrixView sc(scores.data(), n_q, n_k, Eigen::OuterStride<>(ss));
    MatrixView o(out.data(), n_q, dh, Eigen::OuterStride<>(dh));
    if (n_k == 0) {
      o.setZero();
      std::fill(lse.begin(), lse.begin() + n_q, neg_inf);
      return;
    }
    kernels::gemm(cview(query_rows(n_q)), keys_t_in, kernels::Transpose::no, sc, 1.0f, 0.0f, 1);
    if (inv_sum.size() < std::size_t(n_q)) inv_sum.resize(std::size_t(n_q));
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
    // Unnormalized weights times the values, then each output row divided by its sum (d values, not n_k).
    kernels::gemm(cview(sc), values_in, kernels::Transpose::no, o, 1.0f, 0.0f, 1);
    for (Index r = 0; r < n_q; ++r) kernels::scale(o.data() + r * dh, inv_sum[std::size_t(r)], std::size_t(dh));
  }

  std::vector<float> inv_sum;  // (n_q): 1 / Σ exp of each row, 0 for a row that sees nothing
};

}  // namespace polyformer::detail
