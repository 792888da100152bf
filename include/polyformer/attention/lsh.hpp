#pragma once
/// \file Locality-sensitive-hashing attention (Reformer; Kitaev et al. 2020, §2): queries and keys share one
/// projection, the keys being the unit-length queries. Each of n_hashes rounds hashes every position by a
/// random rotation (bucket = argmax over [xR; −xR], Andoni et al. 2015), sorts positions by (bucket,
/// position), cuts the sorted order into chunks of `chunk`, and lets each chunk attend to itself and the
/// chunk before it. A position never attends to itself unless it has no other key. The rounds' outputs are
/// combined with weights softmax over their log-sum-exps, i.e. as one softmax over the union of the rounds'
/// keys (a key found by several rounds counts once per round). Seeded: the same seed gives the same buckets.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "polyformer/attention/local_tile.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/transpose.hpp"

namespace polyformer {

/// The hashing of LSH attention.
struct LSHOptions {
  Index n_hashes = 4;            ///< rounds of hashing
  Index chunk = 64;              ///< chunk length of the sorted order
  /// 1 (everything in one bucket), an even number, or 0: about 2·⌈n / chunk⌉ per call, hashed as two
  /// factors b·b (b even, b² ≥ that count) once it passes 64, so hashing costs n·d·b rather than n·d·b²
  /// (trax's factorized buckets)
  Index n_buckets = 0;
  std::uint64_t seed = 0x5eed;   ///< the random rotations' seed
};

/// Reformer's LSH attention over shared query-keys: the `k` input is not read (the keys are the normalized
/// queries), so it needs self-attention (n_q = n_k). The object holds only its options; the rotations (drawn
/// for the head count, head size and bucket count of a call) and all scratch live in a Workspace of the caller's.
class LSHAttention : public PerCallWorkspace<LSHAttention> {
 private:
  struct Work {
    detail::LocalTile tile;
    Matrix projection;        // (n, Σ factor / 2)
    Matrix sorted_rows;       // (n, head_dim): a round's keys in sorted order, before the transpose
    std::vector<Index> count; // (n_buckets + 1)
    // backward: this thread's share of the current head's gradients
    detail::KeyGradients grads;  // (head_dim, n) each: of the unit-length keys and of the values, by position
    Matrix query_grads;          // (n, head_dim)
    std::vector<float> row_lse;  // (chunk): the saved log-sum-exps of a chunk's queries
  };

 public:
  using PerCallWorkspace<LSHAttention>::forward;

  /// Scratch of one caller, and what its last forward hashed: n_buckets (= factors.first · factors.second),
  /// and the bucket of every position for head h, round r. With two factors (b1, b2) the bucket is
  /// a1 + b1·a2, a_i the argmax of factor i over [xR_i; −xR_i], R_i the columns [0, b1/2) and
  /// [b1/2, b1/2 + b2/2) of rotation(h, r).
  class Workspace {
   public:
    Index last_n_buckets() const noexcept { return n_buckets_; }
    std::pair<Index, Index> bucket_factors() const noexcept { return {factor1_, factor2_}; }
    std::span<const int> buckets(Index h, Index r) const {
      const std::size_t n = std::size_t(n_);
      return {buckets_.data() + std::size_t(h * n_hashes_ + r) * n, n};
    }
    /// The rotation of head h, round r (head_dim, Σ factor/2) of the last forward.
    const Matrix& rotation(Index h, Index r) const { return rotations_[std::size_t(h * n_hashes_ + r)]; }

   private:
    friend class LSHAttention;
    Index n_ = 0, n_hashes_ = 0, n_buckets_ = 0, factor1_ = 0, factor2_ = 1;
    std::uint64_t rotations_seed_ = 0;  // the seed rotations_ were drawn with
    std::vector<Matrix> rotations_;     // (head_dim, n_buckets / 2) per (head, round)
    std::vector<int> buckets_;          // (heads, n_hashes, n)
    std::vector<Index> order_;          // (n_hashes, n): positions sorted by (bucket, position), current head
    Matrix keys_;                       // (n, head_dim): the current head's unit-length queries
    Matrix sorted_keys_t_;              // (n_hashes·head_dim, n): each round's keys transposed, in sorted order
    Matrix sorted_values_;              // (n_hashes·n, head_dim): each round's values in sorted order
    Matrix round_out_;                  // (n_hashes·n, head_dim): each round's output, by position
    std::vector<float> round_lse_;      // (n_hashes·n)
    std::vector<Work> work_;            // one per thread
  };

  static constexpr bool supports_causal = true;
  static constexpr const char* name = "lsh";

  // The spelling (attention/spelling.hpp): "lsh:HASHES:CHUNK", the rounds of hashing and the chunk length.
  static constexpr std::string_view spelling_form = "lsh:HASHES:CHUNK";
  static constexpr std::string_view example_spelling = "lsh:4:64";
  /// Options: "seed" (an integer, 1 by default) of the random rotations; the buckets are automatic.
  static LSHAttention from_spelling(const AttentionSpelling& spelling, const AttentionOptions& options) {
    return LSHAttention(LSHOptions{spelling.positive(0), spelling.positive(1), 0,
                                   static_cast<std::uint64_t>(options.integer("seed", 1))});
  }
  std::string spelling() const { return detail::cat(name, ':', opt_.n_hashes, ':', opt_.chunk); }

  LSHAttention() = default;
  explicit LSHAttention(LSHOptions options) : opt_(options) {
    const char* func = "LSHAttention";
    if (opt_.n_hashes < 1) throw config_error(detail::cat(func, ": n_hashes is ", opt_.n_hashes, ", expected >= 1"));
    if (opt_.chunk < 1) throw config_error(detail::cat(func, ": chunk is ", opt_.chunk, ", expected >= 1"));
    if (opt_.n_buckets < 0 || (opt_.n_buckets > 1 && opt_.n_buckets % 2 != 0))
      throw config_error(detail::cat(func, ": n_buckets is ", opt_.n_buckets, ", expected 0 (automatic), 1 or even"));
  }

  const LSHOptions& options() const noexcept { return opt_; }

  /// out (n, heads·d) from q (n, heads·d) and v (n, kv_heads·d); k (n, kv_heads·d) is only checked for its
  /// length. ws afterwards tells the buckets this call used.
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    run(s, q, k, v, mask, out, ws, ctx, nullptr);
  }

  /// What backward needs of the forward: every round's sorted order and each query's log-sum-exp over all rounds
  /// (the buckets are not differentiated, as in Reformer: backward attends within the same chunks).
  struct Saved : SavedForward {
    std::vector<Index> order;  ///< (heads, n_hashes, n): positions sorted by (bucket, position)
    Matrix lse;                ///< (heads, n): log Σ over the rounds' visible keys of e^score, −inf for none
  };

  void forward_train(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, Saved& saved, Workspace& ws, const Context& ctx) const {
    run(s, q, k, v, mask, out, ws, ctx, &saved);
    saved.record();
  }

  /// The backward of forward_train: dq (n, heads·d) and dv (n, kv_heads·d) written from dout (n, heads·d), given the
  /// same q, k, v, mask and the output `out`; dk is zero (the keys are the normalized queries, so their gradient
  /// reaches dq through the normalization; a zero query, whose key is kept at zero, passes none). Each round's
  /// chunks recompute their scores and take their weights from the saved log-sum-exp over all rounds. Uses `saved`
  /// once (saved.keep: again).
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Workspace& ws, const Context& ctx) const {
    const char* func = "LSHAttention::backward";
    saved.require_held(func);
    detail::check_attention_grads(func, s, q, k, v, out, dout, dq, dk, dv);
    const Index n = q.rows(), dh = s.head_dim, H = opt_.n_hashes, C = opt_.chunk;
    if (n != k.rows())
      throw shape_error(detail::cat(func, ": ", n, " queries and ", k.rows(),
                                    " keys, expected equal (shared query-key attention is self-attention)"));
    if (static_cast<Index>(saved.order.size()) != s.n_heads * H * n || saved.lse.rows() != s.n_heads ||
        saved.lse.cols() != n)
      throw shape_error(detail::cat(func, ": the saved forward ran ", saved.lse.cols(), " positions of ", saved.lse.rows(),
                                    " heads, expected ", n, " of ", s.n_heads));
    saved.take(func);
    ws.n_ = n;  // the workspace may be fresh, or have served another call since the forward
    ws.n_hashes_ = H;
    dk.setZero();
    dv.setZero();
    if (n == 0) return;
    ensure_shape(ws.keys_, n, dh);
    ensure_shape(ws.sorted_keys_t_, H * dh, n);
    ensure_shape(ws.sorted_values_, H * n, dh);
    ws.order_.resize(std::size_t(H * n));
    const Index chunks = (n + C - 1) / C;
    const int t = effective_threads(ctx.threads);
    if (static_cast<int>(ws.work_.size()) < t) ws.work_.resize(std::size_t(t));
    for (auto& w : ws.work_) {
      w.tile.reserve_backward(C, 2 * C, dh);
      ensure_shape(w.grads.keys_t, dh, n);
      ensure_shape(w.grads.values_t, dh, n);
      ensure_shape(w.query_grads, n, dh);
      w.row_lse.resize(std::size_t(C));
    }
    for (Index h = 0; h < s.n_heads; ++h) {
      const Index g = s.kv_head(h);
      normalize_queries(q, h, dh, ws);
      std::copy_n(saved.order.data() + h * H * n, H * n, ws.order_.data());
      parallel_for(H, std::min<int>(t, static_cast<int>(H)), [&](Index r, int thread) {
        sort_round(s, g, r, v, ws, ws.work_[std::size_t(thread)]);
      });
      for (int i = 0; i < t; ++i) {
        Work& w = ws.work_[std::size_t(i)];
        w.grads.keys_t.setZero();
        w.grads.values_t.setZero();
        w.query_grads.setZero();
      }
      parallel_for(H * chunks, t, [&](Index task, int thread) {
        backward_chunk(s, h, task / chunks, task % chunks, q, mask, out, dout, saved.lse.data() + h * n, ws,
                       ws.work_[std::size_t(thread)]);
      });
      // Sum the threads' shares; the keys' gradient reaches the queries through the normalization:
      // d(x/|x|) = (I − u·uᵀ)/|x| · dkey with u = x/|x|.
      Work& w0 = ws.work_[0];
      for (int i = 1; i < t; ++i) {
        const Work& w = ws.work_[std::size_t(i)];
        w0.grads.keys_t += w.grads.keys_t;
        w0.grads.values_t += w.grads.values_t;
        w0.query_grads += w.query_grads;
      }
      for (Index i = 0; i < n; ++i) {
        const auto qi = block(q, i, h * dh, 1, dh);
        auto dst = block(dq, i, h * dh, 1, dh);
        dst = block(cview(w0.query_grads), i, 0, 1, dh);
        const float norm = qi.norm();
        if (norm == 0.0f) continue;
        const float* u = ws.keys_.data() + i * dh;
        const float* dkey = w0.grads.keys_t.data() + i;  // column i, n apart
        float along = 0.0f;
        for (Index f = 0; f < dh; ++f) along += u[f] * dkey[f * n];
        for (Index f = 0; f < dh; ++f) dst(0, f) += (dkey[f * n] - along * u[f]) / norm;
      }
      block(dv, 0, g * dh, n, dh) += w0.grads.values_t.transpose();
    }
  }

 private:
  /// forward(), keeping each head's orders and log-sum-exps in `saved` when given.
  void run(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v, const AttentionMask& mask,
           MatrixView out, Workspace& ws, const Context& ctx, Saved* saved) const {
    const char* func = "LSHAttention::forward";
    if (q.rows() != k.rows())
      throw shape_error(detail::cat(func, ": ", q.rows(), " queries and ", k.rows(),
                                    " keys, expected equal (shared query-key attention is self-attention)"));
    const Index n = q.rows(), dh = s.head_dim, H = opt_.n_hashes, C = opt_.chunk;
    ws.n_ = n;
    ws.n_hashes_ = H;
    ws.factor1_ = opt_.n_buckets ? opt_.n_buckets : std::max<Index>(2, 2 * ((n + C - 1) / C));
    ws.factor2_ = 1;
    if (!opt_.n_buckets && ws.factor1_ > max_single_factor) {
      const Index b = 2 * static_cast<Index>(std::ceil(std::sqrt(static_cast<double>(ws.factor1_)) / 2.0));
      ws.factor1_ = ws.factor2_ = b;
    }
    ws.n_buckets_ = ws.factor1_ * ws.factor2_;
    prepare_rotations(s.n_heads, dh, ws);
    ws.buckets_.resize(std::size_t(s.n_heads * H * n));
    ws.order_.resize(std::size_t(H * n));
    if (saved != nullptr && n == 0) {
      saved->order.clear();
      ensure_shape(saved->lse, s.n_heads, 0);
    }
    if (n == 0) return;
    ensure_shape(ws.keys_, n, dh);
    ensure_shape(ws.sorted_keys_t_, H * dh, n);
    ensure_shape(ws.sorted_values_, H * n, dh);
    ensure_shape(ws.round_out_, H * n, dh);
    ws.round_lse_.resize(std::size_t(H * n));
    if (saved != nullptr) {
      saved->order.resize(std::size_t(s.n_heads * H * n));
      ensure_shape(saved->lse, s.n_heads, n);
    }
    const Index chunks = (n + C - 1) / C;
    const int t = effective_threads(ctx.threads);
    if (static_cast<int>(ws.work_.size()) < t) ws.work_.resize(std::size_t(t));
    for (auto& w : ws.work_) w.tile.reserve(C, 2 * C, dh);
    for (Index h = 0; h < s.n_heads; ++h) {
      const Index g = s.kv_head(h);
      normalize_queries(q, h, dh, ws);
      parallel_for(H, std::min<int>(t, static_cast<int>(H)), [&](Index r, int thread) {
        hash_round(h, r, ws, ws.work_[std::size_t(thread)]);
        sort_round(s, g, r, v, ws, ws.work_[std::size_t(thread)]);
      });
      parallel_for(H * chunks, t, [&](Index task, int thread) {
        attend_chunk(s, h, task / chunks, task % chunks, q, mask, ws, ws.work_[std::size_t(thread)]);
      });
      // Combine the rounds: weights softmax over each round's log-sum-exp.
      parallel_chunks(n, t, [&](Index i0, Index i1, int) {
        constexpr float neg_inf = -std::numeric_limits<float>::infinity();
        for (Index i = i0; i < i1; ++i) {
          float m = neg_inf;
          for (Index r = 0; r < H; ++r) m = std::max(m, ws.round_lse_[std::size_t(r * n + i)]);
          auto dst = block(out, i, h * dh, 1, dh);
          dst.setZero();
          if (saved != nullptr) saved->lse(h, i) = neg_inf;
          if (m == neg_inf) continue;
          float total = 0.0f;
          for (Index r = 0; r < H; ++r) {
            const float w = std::exp(ws.round_lse_[std::size_t(r * n + i)] - m);
            total += w;
            if (w != 0.0f) dst += w * block(cview(ws.round_out_), r * n + i, 0, 1, dh);
          }
          dst /= total;
          if (saved != nullptr) saved->lse(h, i) = m + std::log(total);
        }
      });
      if (saved != nullptr) std::copy_n(ws.order_.data(), H * n, saved->order.data() + h * H * n);
    }
  }

  /// ws.keys_ (n, d): head h's queries scaled to unit length (a zero query stays zero).
  static void normalize_queries(ConstMatrixView q, Index h, Index dh, Workspace& ws) {
    for (Index i = 0; i < q.rows(); ++i) {
      const auto qi = block(q, i, h * dh, 1, dh);
      const float norm = qi.norm();
      block(view(ws.keys_), i, 0, 1, dh) = norm > 0.0f ? (qi / norm).eval() : qi.eval();
    }
  }

  /// Draws the rotations into ws when the seed, head count, head size or bucket count changed (seeded per head
  /// and round). They depend on nothing else, so a workspace's draw serves every object with the same seed.
  void prepare_rotations(Index n_heads, Index dh, Workspace& ws) const {
    const Index half = ws.factor1_ / 2 + ws.factor2_ / 2, wanted = n_heads * opt_.n_hashes;
    if (ws.rotations_seed_ == opt_.seed && static_cast<Index>(ws.rotations_.size()) == wanted &&
        !ws.rotations_.empty() && ws.rotations_[0].rows() == dh && ws.rotations_[0].cols() == half)
      return;
    ws.rotations_seed_ = opt_.seed;
    ws.rotations_.assign(std::size_t(wanted), Matrix());
    for (Index i = 0; i < wanted; ++i) {
      std::mt19937_64 rng(opt_.seed * 0x9E3779B97F4A7C15ull + std::uint64_t(i));
      std::normal_distribution<float> normal(0.0f, 1.0f);
      Matrix& rot = ws.rotations_[std::size_t(i)];
      rot.resize(dh, half);
      for (Index e = 0; e < rot.size(); ++e) rot.data()[e] = normal(rng);
    }
  }

  /// Buckets of every position for head h, round r, and the positions sorted by (bucket, position).
  void hash_round(Index h, Index r, Workspace& ws, Work& w) const {
    const Index n = ws.n_, half1 = ws.factor1_ / 2, half2 = ws.factor2_ / 2, half = half1 + half2;
    int* bucket = ws.buckets_.data() + std::size_t(h * opt_.n_hashes + r) * std::size_t(n);
    if (ws.n_buckets_ == 1) {
      std::fill(bucket, bucket + n, 0);
    } else {
      ensure_shape(w.projection, n, half);
      kernels::gemm(cview(ws.keys_), cview(ws.rotations_[std::size_t(h * opt_.n_hashes + r)]), kernels::Transpose::no,
                    view(w.projection), 1.0f, 0.0f, 1);
      for (Index i = 0; i < n; ++i) {
        const float* p = w.projection.data() + i * half;
        bucket[i] = argmax_signed(p, half1) + (half2 ? int(ws.factor1_) * argmax_signed(p + half1, half2) : 0);
      }
    }
    // Stable counting sort by bucket.
    w.count.assign(std::size_t(ws.n_buckets_ + 1), 0);
    for (Index i = 0; i < n; ++i) ++w.count[std::size_t(bucket[i] + 1)];
    for (Index b = 0; b < ws.n_buckets_; ++b) w.count[std::size_t(b + 1)] += w.count[std::size_t(b)];
    Index* order = ws.order_.data() + r * n;
    for (Index i = 0; i < n; ++i) order[w.count[std::size_t(bucket[i])]++] = i;
  }

  /// Round r's keys (transposed) and values in sorted order, so every chunk reads its keys in place.
  static void sort_round(const AttentionShape& s, Index g, Index r, ConstMatrixView v, Workspace& ws, Work& w) {
    const Index n = ws.n_, dh = s.head_dim;
    const Index* order = ws.order_.data() + r * n;
    ensure_shape(w.sorted_rows, n, dh);
    for (Index a = 0; a < n; ++a) {
      const float* key = ws.keys_.data() + order[a] * dh;
      std::copy(key, key + dh, w.sorted_rows.data() + a * dh);
      const float* value = v.data() + order[a] * v.outerStride() + g * dh;
      std::copy(value, value + dh, ws.sorted_values_.data() + (r * n + a) * dh);
    }
    kernels::transpose(w.sorted_rows.data(), dh, n, dh, ws.sorted_keys_t_.data() + r * dh * n, n);
  }

  /// argmax over [p; −p] for p (half): the index in [0, 2·half).
  static int argmax_signed(const float* p, Index half) noexcept {
    int best = 0;
    float best_value = p[0];
    for (Index b = 1; b < half; ++b)
      if (p[b] > best_value) best_value = p[b], best = int(b);
    for (Index b = 0; b < half; ++b)
      if (-p[b] > best_value) best_value = -p[b], best = int(half + b);
    return best;
  }

  /// Where chunk c of round r lies in the sorted order: queries q0.. (nq), keys k0.. (nk: chunks c−1 and c).
  struct Chunk {
    Index q0, nq, k0, nk;
  };
  Chunk chunk_of(Index c, Index n) const noexcept {
    const Index C = opt_.chunk, q0 = c * C, nq = std::min(C, n - q0), k0 = std::max<Index>(q0 - C, 0);
    return {q0, nq, k0, q0 + nq - k0};
  }

  /// The mask of a chunk's rows: the call's masks, and no attending to itself unless nothing else is visible.
  struct ChunkMask {
    const Index* order;
    Chunk ch;
    Index n;
    const AttentionMask& mask;

    void operator()(Index a, float* row) const {
      constexpr float neg_inf = -std::numeric_limits<float>::infinity();
      if (!mask.causal && !mask.key_padding && !mask.additive && mask.n_valid_keys >= n) {
        if (ch.nk > 1) row[ch.q0 + a - ch.k0] = neg_inf;  // every key of the two chunks but itself
        return;
      }
      const Index i = order[ch.q0 + a], end = mask.key_end(i, n);
      Index self = -1;
      bool other = false;
      for (Index b = 0; b < ch.nk; ++b) {
        const Index j = order[ch.k0 + b];
        if (j >= end || (mask.key_padding && mask.key_padding[j] != 0.0f)) {
          row[b] = neg_inf;
          continue;
        }
        if (mask.additive) row[b] += mask.additive[i * mask.additive_stride + j];
        if (j == i) self = b;
        else other |= row[b] != neg_inf;
      }
      if (self >= 0 && other) row[self] = neg_inf;  // itself only when nothing else is visible
    }
  };

  /// Gathers chunk ch's scaled queries of head h into the tile; returns its keys (d, nk) and values (nk, d) in the
  /// round's sorted arrays.
  std::pair<ConstMatrixView, ConstMatrixView> gather_chunk(const AttentionShape& s, Index h, Index r, const Chunk& ch,
                                                           ConstMatrixView q, const Workspace& ws, detail::LocalTile& tile) const {
    const Index n = ws.n_, dh = s.head_dim;
    const Index* order = ws.order_.data() + r * n;
    MatrixView qs = tile.query_rows(ch.nq);
    for (Index a = 0; a < ch.nq; ++a) block(qs, a, 0, 1, dh) = block(q, order[ch.q0 + a], h * dh, 1, dh) * s.scale;
    return {ConstMatrixView(ws.sorted_keys_t_.data() + r * dh * n + ch.k0, dh, ch.nk, Eigen::OuterStride<>(n)),
            block(cview(ws.sorted_values_), r * n + ch.k0, 0, ch.nk, dh)};
  }

  /// Chunk c of round r: its queries against the keys of chunks c−1 and c.
  void attend_chunk(const AttentionShape& s, Index h, Index r, Index c, ConstMatrixView q, const AttentionMask& mask,
                    Workspace& ws, Work& w) const {
    const Index n = ws.n_, dh = s.head_dim;
    const Index* order = ws.order_.data() + r * n;
    const Chunk ch = chunk_of(c, n);
    detail::LocalTile& tile = w.tile;
    const auto [keys_t, values] = gather_chunk(s, h, r, ch, q, ws, tile);
    tile.attend(ch.nq, keys_t, values, ChunkMask{order, ch, n, mask});
    for (Index a = 0; a < ch.nq; ++a) {
      const Index i = order[ch.q0 + a];
      std::copy(tile.out_row(a), tile.out_row(a) + dh, ws.round_out_.data() + (r * n + i) * dh);
      ws.round_lse_[std::size_t(r * n + i)] = tile.lse[std::size_t(a)];
    }
  }

  /// The backward of chunk c of round r of head h: its queries' gradients into the thread's query_grads, its keys'
  /// (the unit-length queries') and values' into the thread's grads, by position. lse (n): head h's saved.
  void backward_chunk(const AttentionShape& s, Index h, Index r, Index c, ConstMatrixView q, const AttentionMask& mask,
                      ConstMatrixView out, ConstMatrixView dout, const float* lse, const Workspace& ws, Work& w) const {
    const Index n = ws.n_, dh = s.head_dim;
    const Index* order = ws.order_.data() + r * n;
    const Chunk ch = chunk_of(c, n);
    detail::LocalTile& tile = w.tile;
    const auto [keys_t, values] = gather_chunk(s, h, r, ch, q, ws, tile);
    MatrixView d_o = tile.dout_rows(ch.nq);
    for (Index a = 0; a < ch.nq; ++a) {
      const Index i = order[ch.q0 + a];
      block(d_o, a, 0, 1, dh) = block(dout, i, h * dh, 1, dh);
      tile.deltas[std::size_t(a)] = kernels::dot(dout.data() + i * dout.outerStride() + h * dh,
                                                 out.data() + i * out.outerStride() + h * dh, std::size_t(dh));
      w.row_lse[std::size_t(a)] = lse[i];
    }
    tile.backward(ch.nq, keys_t, values, ChunkMask{order, ch, n, mask}, tile.deltas.data(), w.row_lse.data());
    for (Index a = 0; a < ch.nq; ++a) {
      const float* g_q = tile.query_grad_row(a);
      float* dst = w.query_grads.data() + order[ch.q0 + a] * dh;
      for (Index f = 0; f < dh; ++f) dst[f] += s.scale * g_q[f];
    }
    tile.add_key_grads(ch.nk, [&](Index b) { return order[ch.k0 + b]; }, w.grads.keys_t.data(), w.grads.values_t.data(), n);
  }

  static constexpr Index max_single_factor = 64;
  LSHOptions opt_{};
};

static_assert(SpelledAttention<LSHAttention> && TrainableAttention<LSHAttention>);

}  // namespace polyformer
