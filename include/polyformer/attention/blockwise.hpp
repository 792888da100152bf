#pragma once
/// \file Blockwise attention (Qiu et al. 2020, BlockBERT): the sequence is cut into blocks of B positions and a
/// query sees the keys of its own block, and optionally of the previous one. O(n·B·d) time.

#include <algorithm>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/attention/local_tile.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/attention/window_cache.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// Query i (at position i + mask.causal_offset) sees key j when both lie in the same block of `block`
/// positions, or, with `previous_block`, j lies in the block before i's. The object holds only its settings;
/// the tasks and per-thread tiles live in a Workspace of the caller's. Causal decoding keeps the keys of the
/// current (and previous) block only, in a WindowKVCache.
class Blockwise : public PerCallWorkspace<Blockwise> {
 private:
  struct Task {
    Index head, block, i0, i_end;
  };

  /// The mask of a task's rows over keys [j0, j1): causal, key lengths, padding and the additive mask.
  struct RowMask {
    const Task& task;
    Index j0, j1, n_k;
    const AttentionMask& mask;
    void operator()(Index r, float* row) const {
      constexpr float neg_inf = -std::numeric_limits<float>::infinity();
      const Index i = task.i0 + r, end = std::clamp<Index>(mask.key_end(i, n_k) - j0, 0, j1 - j0);
      std::fill(row + end, row + (j1 - j0), neg_inf);
      if (mask.key_padding || mask.additive)
        for (Index c = 0; c < end; ++c) {
          if (mask.key_padding && mask.key_padding[j0 + c] != 0.0f) row[c] = neg_inf;
          else if (mask.additive) row[c] += mask.additive[i * mask.additive_stride + j0 + c];
        }
    }
  };

 public:
  using PerCallWorkspace<Blockwise>::forward;
  using PerCallWorkspace<Blockwise>::forward_cached;

  /// Scratch of one caller: the call's tasks and one tile per thread.
  struct Workspace {
    std::vector<Task> tasks;
    std::vector<detail::LocalTile> tiles;  // one per thread
    std::vector<detail::KeyGradients> key_grads;  // backward: one per thread
  };

  static constexpr bool supports_causal = true;
  static constexpr bool supports_additive_bias = true;  ///< mask.additive is added to the scores
  static constexpr const char* name = "blockwise";

  // The spelling (attention/spelling.hpp): "blockwise:B", B the block length.
  static constexpr std::string_view spelling_form = "blockwise:B";
  static constexpr std::string_view example_spelling = "blockwise:128";
  /// Options: "previous_block" (a flag, false by default).
  static Blockwise from_spelling(const AttentionSpelling& spelling, const AttentionOptions& options) {
    return Blockwise(spelling.positive(0), options.flag("previous_block", false));
  }
  std::string spelling() const { return detail::cat(name, ':', block_); }

  Blockwise() = default;
  explicit Blockwise(Index block, bool previous_block = false) : block_(block), previous_(previous_block) {
    if (block < 1) throw config_error(detail::cat("Blockwise: block is ", block, ", expected >= 1"));
  }

  Index block_size() const noexcept { return block_; }
  bool previous_block() const noexcept { return previous_; }

  /// out (n_q, heads·d) from q (n_q, heads·d), k and v (n_k, kv_heads·d).
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim;
    make_tasks(s, n_q, mask.causal_offset, true, ws);
    const int t = threads_for(s, n_q, n_k, Index(ws.tasks.size()), ctx);
    if (static_cast<int>(ws.tiles.size()) < t) ws.tiles.resize(std::size_t(t));
    for (int i = 0; i < t; ++i)
      ws.tiles[std::size_t(i)].reserve(query_slice, std::min(span(), std::max<Index>(n_k, 1)), dh);
    parallel_for(static_cast<Index>(ws.tasks.size()), t, [&](Index task_index, int thread) {
      const Task& task = ws.tasks[std::size_t(task_index)];
      detail::LocalTile& tile = ws.tiles[std::size_t(thread)];
      const Index nq = task.i_end - task.i0;
      const auto [j0, j1] = gather(s, task, q, k, v, tile);
      tile.attend(nq, j1 - j0, RowMask{task, j0, j1, n_k, mask});
      for (Index r = 0; r < nq; ++r) {
        const float* src = tile.out_row(r);
        std::copy(src, src + dh, out.data() + (task.i0 + r) * out.outerStride() + task.head * s.head_dim);
      }
    });
  }

  /// Decoding keeps the positions a query can still see: its own block's earlier ones, and the previous block.
  using State = WindowKVCache;

  /// The decoding state of one sequence (the capacity is not needed: the state does not grow).
  State make_state(Index /*capacity*/, Index n_kv_heads, Index head_dim) const {
    const Index history = span() - 1;
    return State(history, std::max<Index>(history, 64), n_kv_heads, head_dim);
  }

  /// Incremental causal attention: appends k_new, v_new (n_new, kv_heads·d) as positions state.size().., and
  /// each query of q (n_new, heads·d) attends to the keys of its block (and the previous one) up to itself.
  void forward_cached(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k_new, ConstMatrixView v_new,
                      State& state, MatrixView out, Workspace& ws, const Context& ctx) const {
    const char* func = "Blockwise::forward_cached";
    if (state.n_kv_heads() != s.n_kv_heads || state.head_dim() != s.head_dim || state.history() < span() - 1)
      throw shape_error(detail::cat(func, ": the state holds ", state.n_kv_heads(), " kv heads of ", state.head_dim(),
                                    " over ", state.history(), " past positions, expected ", s.n_kv_heads, " of ",
                                    s.head_dim, " over at least ", span() - 1));
    const Index n = q.rows(), kvd = s.n_kv_heads * s.head_dim;
    for (Index c0 = 0; c0 < n; c0 += state.chunk()) {
      const Index nc = std::min(state.chunk(), n - c0), first = state.size();
      state.append(block(k_new, c0, 0, nc, kvd), block(v_new, c0, 0, nc, kvd));
      // The keys handed on start at a block boundary, so the blocks of the forward are the sequence's blocks.
      const Index key_start = std::max<Index>((first / block_ - (previous_ ? 1 : 0)) * block_, 0);
      const Index rows = state.size() - key_start;  // ≤ held + nc: first − key_start ≤ span() − 1 ≤ history
      AttentionMask mask;
      mask.causal = true;
      mask.causal_offset = first - key_start;
      forward(s, block(q, c0, 0, nc, q.cols()), state.recent_keys(rows), state.recent_values(rows), mask,
              block(out, c0, 0, nc, out.cols()), ws, ctx);
    }
  }

  /// Nothing is kept: backward recomputes each block's softmax from the same q, k, v (a block is a query's whole key
  /// set).
  struct Saved : SavedForward {};

  void forward_train(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, Saved& saved, Workspace& ws, const Context& ctx) const {
    forward(s, q, k, v, mask, out, ws, ctx);
    saved.record();
  }

  /// The backward of forward_train: dq (n_q, heads·d), dk and dv (n_k, kv_heads·d) written from dout (n_q, heads·d),
  /// given the same q, k, v, mask and the output `out`. Uses `saved` once (saved.keep: again).
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Workspace& ws, const Context& ctx) const {
    const char* func = "Blockwise::backward";
    saved.require_held(func);
    detail::check_attention_grads(func, s, q, k, v, out, dout, dq, dk, dv);
    saved.take(func);
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim;
    make_tasks(s, n_q, mask.causal_offset, false, ws);  // head-major: kv head g's tasks are one run
    const Index per_kv_head = Index(ws.tasks.size()) / s.n_kv_heads;
    const int t = threads_for(s, n_q, n_k, Index(ws.tasks.size()), ctx);
    if (static_cast<int>(ws.tiles.size()) < t) ws.tiles.resize(std::size_t(t));
    for (int i = 0; i < t; ++i)
      ws.tiles[std::size_t(i)].reserve_backward(query_slice, std::min(span(), std::max<Index>(n_k, 1)), dh);
    detail::backward_by_kv_head(s, t, ws.key_grads, dk, dv, [&](Index) { return per_kv_head; },
                                [&](Index g, Index task_index, int thread, detail::KeyGradients& acc) {
      const Task& task = ws.tasks[std::size_t(g * per_kv_head + task_index)];
      detail::LocalTile& tile = ws.tiles[std::size_t(thread)];
      const Index h = task.head, nq = task.i_end - task.i0;
      const auto [j0, j1] = gather(s, task, q, k, v, tile);
      for (Index r = 0; r < nq; ++r) {
        const float* o = out.data() + (task.i0 + r) * out.outerStride() + h * dh;
        const float* d_o = dout.data() + (task.i0 + r) * dout.outerStride() + h * dh;
        std::copy(d_o, d_o + dh, tile.dout.data() + r * tile.dout.cols());
        tile.deltas[std::size_t(r)] = kernels::dot(d_o, o, std::size_t(dh));
      }
      tile.backward(nq, cview(tile.key_cols(j1 - j0)), cview(tile.value_rows(j1 - j0)), RowMask{task, j0, j1, n_k, mask},
                    tile.deltas.data());
      for (Index r = 0; r < nq; ++r) {
        const float* g_q = tile.query_grad_row(r);
        float* dst = dq.data() + (task.i0 + r) * dq.outerStride() + h * dh;
        for (Index f = 0; f < dh; ++f) dst[f] = s.scale * g_q[f];
      }
      tile.add_key_grads(j1 - j0, [first = j0](Index c) { return first + c; }, acc.keys_t.data(), acc.values_t.data(), n_k);
    });
  }

 private:
  Index span() const noexcept { return (previous_ ? 2 : 1) * block_; }

  /// Tasks (head, block, first query of a slice of at most query_slice queries of that block): block-major (a
  /// block's rows serve every head while they are in cache) or head-major.
  void make_tasks(const AttentionShape& s, Index n_q, Index off, bool block_major, Workspace& ws) const {
    ws.tasks.clear();
    if (n_q == 0) return;
    const Index first_block = off / block_, last_block = (off + n_q - 1) / block_;
    const auto add = [&](Index h, Index b) {
      const Index i_begin = std::max<Index>(b * block_ - off, 0), i_end = std::min(n_q, (b + 1) * block_ - off);
      for (Index i0 = i_begin; i0 < i_end; i0 += query_slice) ws.tasks.push_back({h, b, i0, std::min(i_end, i0 + query_slice)});
    };
    if (block_major) {
      for (Index b = first_block; b <= last_block; ++b)
        for (Index h = 0; h < s.n_heads; ++h) add(h, b);
    } else {
      for (Index h = 0; h < s.n_heads; ++h)
        for (Index b = first_block; b <= last_block; ++b) add(h, b);
    }
  }

  int threads_for(const AttentionShape& s, Index n_q, Index n_k, Index tasks, const Context& ctx) const {
    const double work = double(n_q) * double(s.n_heads) * double(std::min(span(), n_k)) * double(s.head_dim);
    return work < 2e5 ? 1 : static_cast<int>(std::min<Index>(effective_threads(ctx.threads), std::max<Index>(tasks, 1)));
  }

  /// Gathers the task's scaled queries, its keys (transposed) and values into the tile; returns the key range [j0, j1).
  std::pair<Index, Index> gather(const AttentionShape& s, const Task& task, ConstMatrixView q, ConstMatrixView k,
                                 ConstMatrixView v, detail::LocalTile& tile) const {
    const Index n_k = k.rows(), dh = s.head_dim, h = task.head, g = s.kv_head(h), nq = task.i_end - task.i0;
    const Index j0 = std::clamp<Index>((previous_ ? task.block - 1 : task.block) * block_, 0, n_k);
    const Index j1 = std::clamp<Index>((task.block + 1) * block_, j0, n_k);
    tile.query_rows(nq) = block(q, task.i0, h * dh, nq, dh) * s.scale;
    tile.key_cols(j1 - j0) = block(k, j0, g * dh, j1 - j0, dh).transpose();
    tile.value_rows(j1 - j0) = block(v, j0, g * dh, j1 - j0, dh);
    return {j0, j1};
  }

  static constexpr Index query_slice = 128;  // queries per tile: bounds the score tile for large blocks
  Index block_ = 64;
  bool previous_ = false;
};

static_assert(SpelledAttention<Blockwise> && TrainableAttention<Blockwise> && IncrementalAttention<Blockwise>);

}  // namespace polyformer
