#pragma once
/// \file Exact softmax attention, tiled with an online softmax (Milakov & Gimelshein 2018; Dao et al. 2022,
/// FlashAttention): scores are made one (query block × key block) tile at a time and never stored whole,
/// so memory is O(n·d) per thread however long the sequence.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "polyformer/attention/mask.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/reduce.hpp"

namespace polyformer {

/// softmax(scale·Q·Kᵀ + mask)·V per head, exact, computed in tiles. Owns per-thread tile buffers;
/// one forward at a time per object.
class FullAttention {
 public:
  static constexpr bool supports_causal = true;
  static constexpr const char* name = "full";

  /// Tile sizes: rows of queries and of keys per tile.
  struct Tiles {
    Index query_block = 128;
    Index key_block = 256;
  };

  FullAttention() = default;
  explicit FullAttention(Tiles tiles) : tiles_(tiles) {
    if (tiles.query_block < 1 || tiles.key_block < 1)
      throw config_error(detail::cat("FullAttention: tiles are (", tiles.query_block, ", ", tiles.key_block,
                                     "), expected both >= 1"));
  }

  const Tiles& tiles() const noexcept { return tiles_; }

  /// out (n_q, heads·d) from q (n_q, heads·d), k and v (n_k, kv_heads·d), for one sequence.
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, const Context& ctx) {
    if (q.rows() <= few_queries) {
      forward_few_queries(s, q, k, v, mask, out, ctx);
      return;
    }
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim;
    const Index bq = std::min(tiles_.query_block, std::max<Index>(n_q, 1));
    const Index q_blocks = (n_q + bq - 1) / bq;
    const Index tasks = s.n_heads * q_blocks;
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), std::max<Index>(tasks, 1)));
    if (static_cast<int>(scratch_.size()) < t) scratch_.resize(static_cast<std::size_t>(t));
    // Keys transposed once per call and stored tile by tile, (key_blocks·kv_heads·d, key_block), so every
    // score tile is a plain Q·Kᵀ micro-kernel product over a contiguous panel (rows n_k apart would alias
    // in L1 when n_k is a multiple of 1024).
    const Index bk = tiles_.key_block, k_blocks = (n_k + bk - 1) / bk, kd = k.cols();
    ensure_shape(keys_t_, k_blocks * kd, bk);
    parallel_for(k_blocks, t, [&](Index kb, int) {
      const Index k0 = kb * bk, nk = std::min(bk, n_k - k0);
      block(view(keys_t_), kb * kd, 0, kd, nk) = block(k, k0, 0, nk, kd).transpose();
    });
    // Values head by head, (kv_heads·n_k, d), so a value tile's rows are d floats apart (not heads·d).
    ensure_shape(values_, s.n_kv_heads * n_k, dh);
    parallel_for(s.n_kv_heads, t, [&](Index g, int) {
      block(view(values_), g * n_k, 0, n_k, dh) = block(v, 0, g * dh, n_k, dh);
    });
    parallel_for(tasks, t, [&](Index task, int thread) {
      const Index h = task / q_blocks, q0 = (task % q_blocks) * bq;
      const Index kvh = s.kv_head(h);
      tile_loop(s, block(q, q0, h * dh, std::min(bq, n_q - q0), dh), q0, kvh * dh, block(cview(values_), kvh * n_k, 0, n_k, dh), n_k,
                mask, block(out, q0, h * dh, std::min(bq, n_q - q0), dh),
                scratch_[static_cast<std::size_t>(thread)]);
    });
  }

 private:
  /// Up to this many queries (incremental decoding) skip the tiles: packing every key for a handful of
  /// queries would cost more than the product itself.
  static constexpr Index few_queries = 4;

  /// Each (query, head) on its own: scores against the keys as stored, softmax, weighted sum of values.
  void forward_few_queries(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                           const AttentionMask& mask, MatrixView out, const Context& ctx) {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, tasks = n_q * s.n_heads;
    // A thread pays for itself from about a million multiply-adds (OpenMP wake-up is tens of µs).
    const double work = static_cast<double>(tasks) * static_cast<double>(n_k) * static_cast<double>(dh);
    const int t = work < 1e6 ? 1 : static_cast<int>(std::min<Index>(effective_threads(ctx.threads), tasks));
    if (static_cast<int>(scratch_.size()) < t) scratch_.resize(static_cast<std::size_t>(t));
    for (int i = 0; i < t; ++i) {
      std::vector<float>& sc = scratch_[std::size_t(i)].key_scores;
      if (sc.size() < std::size_t(n_k)) sc.resize(std::max(std::size_t(n_k), 2 * sc.size()));  // amortized growth
    }
    parallel_for(tasks, t, [&](Index task, int thread) {
      const Index i = task / s.n_heads, h = task % s.n_heads, g = s.kv_head(h);
      const float* qi = q.data() + i * q.outerStride() + h * dh;
      float* dst = out.data() + i * out.outerStride() + h * dh;
      float* row = scratch_[std::size_t(thread)].key_scores.data();
      const Index visible = mask.key_end(i, n_k);
      for (Index j = 0; j < visible; ++j)
        row[j] = s.scale * kernels::dot(qi, k.data() + j * k.outerStride() + g * dh, std::size_t(dh));
      if (mask.additive) kernels::add(mask.additive + i * mask.additive_stride, row, std::size_t(visible));
      if (mask.key_padding)
        for (Index j = 0; j < visible; ++j)
          if (mask.key_padding[j] != 0.0f) row[j] = neg_inf;
      std::fill(dst, dst + dh, 0.0f);
      const float m = kernels::reduce_max(row, std::size_t(visible));
      if (visible == 0 || m == neg_inf) return;  // a query that sees no key
      const float sum = kernels::exp_shifted_sum(row, std::size_t(visible), m);
      for (Index j = 0; j < visible; ++j)
        if (row[j] != 0.0f) kernels::axpy(row[j], v.data() + j * v.outerStride() + g * dh, dst, std::size_t(dh));
      kernels::scale(dst, 1.0f / sum, std::size_t(dh));
    });
  }

  struct Scratch {
    Matrix queries;                 // (query_block, head_dim): the block's queries, scaled
    Matrix scores;                  // (query_block, key_block)
    Matrix acc;                     // (query_block, head_dim): unnormalized output
    std::vector<float> row_max;     // running max of each row's scores
    std::vector<float> row_sum;     // running sum of exp(score − row_max)
    std::vector<float> correction;  // exp(old max − new max) of the current tile
    std::vector<float> key_scores;  // (n_k): one query's scores, few-queries path
  };

  /// One head, one block of queries (rows q0.. of the sequence), all n_k keys in tiles; the head's keys
  /// are rows kt_row.. of each packed key tile.
  void tile_loop(const AttentionShape& s, ConstMatrixView qh, Index q0, Index kt_row, ConstMatrixView vh, Index n_k,
                 const AttentionMask& mask, MatrixView outh, Scratch& w) const {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index nq = qh.rows(), dh = s.head_dim, bk = tiles_.key_block;
    const Index kd = keys_t_.rows() / ((n_k + bk - 1) / bk);  // kv_heads·d rows per packed tile
    ensure_shape(w.scores, tiles_.query_block, bk);
    ensure_shape(w.queries, tiles_.query_block, dh);
    MatrixView qs = block(view(w.queries), 0, 0, nq, dh);
    qs = qh * s.scale;  // contiguous rows for the micro-kernel, scale applied once
    ensure_shape(w.acc, tiles_.query_block, dh);
    w.row_max.assign(static_cast<std::size_t>(nq), neg_inf);
    w.row_sum.assign(static_cast<std::size_t>(nq), 0.0f);
    w.correction.resize(static_cast<std::size_t>(nq));
    MatrixView acc = block(view(w.acc), 0, 0, nq, dh);
    acc.setZero();
    // The last query of the block sees the most keys (causal); keys past it are never visited.
    const Index key_limit = nq > 0 ? mask.key_end(q0 + nq - 1, n_k) : 0;
    for (Index k0 = 0; k0 < key_limit; k0 += bk) {
      const Index nk = std::min(bk, key_limit - k0);
      MatrixView sc = block(view(w.scores), 0, 0, nq, nk);
      kernels::gemm(cview(qs), block(cview(keys_t_), (k0 / bk) * kd + kt_row, 0, dh, nk), kernels::Transpose::no,
                    sc, 1.0f, 0.0f, 1);
      bool rescale = false;
      for (Index i = 0; i < nq; ++i) {
        float* row = sc.data() + i * sc.outerStride();
        if (mask.additive) kernels::add(mask.additive + (q0 + i) * mask.additive_stride + k0, row, std::size_t(nk));
        if (mask.key_padding)
          for (Index j = 0; j < nk; ++j)
            if (mask.key_padding[k0 + j] != 0.0f) row[j] = neg_inf;
        const Index visible = std::clamp<Index>(mask.key_end(q0 + i, n_k) - k0, 0, nk);
        std::fill(row + visible, row + nk, neg_inf);
        float& m = w.row_max[std::size_t(i)];
        const float m_new = std::max(m, kernels::reduce_max(row, std::size_t(nk)));
        float corr = 1.0f;
        if (m_new == neg_inf) {
          std::fill(row, row + nk, 0.0f);  // nothing visible yet: contributes nothing
        } else {
          corr = m == neg_inf ? 0.0f : std::exp(m - m_new);
          const float sum = kernels::exp_shifted_sum(row, std::size_t(nk), m_new);
          w.row_sum[std::size_t(i)] = w.row_sum[std::size_t(i)] * corr + sum;
          m = m_new;
        }
        w.correction[std::size_t(i)] = corr;
        rescale |= corr != 1.0f;
      }
      if (rescale)
        for (Index i = 0; i < nq; ++i)
          if (w.correction[std::size_t(i)] != 1.0f)
            kernels::scale(acc.data() + i * acc.outerStride(), w.correction[std::size_t(i)], std::size_t(dh));
      kernels::gemm(cview(sc), block(vh, k0, 0, nk, dh), kernels::Transpose::no, acc, 1.0f, 1.0f, 1);
    }
    for (Index i = 0; i < nq; ++i) {
      const float l = w.row_sum[std::size_t(i)];
      float* dst = outh.data() + i * outh.outerStride();
      if (l > 0.0f) {
        const float* src = acc.data() + i * acc.outerStride();
        const float inv = 1.0f / l;
        for (Index j = 0; j < dh; ++j) dst[j] = src[j] * inv;
      } else {
        std::fill(dst, dst + dh, 0.0f);  // a query that sees no key
      }
    }
  }

  Tiles tiles_{};
  std::vector<Scratch> scratch_;
  Matrix keys_t_;  // (key_blocks·kv_heads·d, key_block): keys transposed, tile by tile
  Matrix values_;  // (kv_heads·n_k, d): values head by head
};

static_assert(AttentionPolicy<FullAttention>);

}  // namespace polyformer
