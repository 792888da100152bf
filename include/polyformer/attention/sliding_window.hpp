#pragma once
/// \file Sliding-window attention with dilation and global tokens (Longformer; Beltagy et al. 2020, §3.1):
/// query i sees keys j = i + D·t for |t| ≤ w (t ≤ 0 when causal), D the head's dilation; global positions
/// see every key and are seen by every query. Banded: O(n·w·d) time and O(w·d) memory per thread (the
/// backward of a global query's row, which sees every key, takes O(n) per thread).
///
/// How it is computed: the positions ≡ r (mod D) form a plain undilated sequence, and a query of that class
/// sees only keys of the same class, so each head runs every residue class as a strided sub-sequence. A
/// block of consecutive queries of a class shares one contiguous band of keys, gathered (with the global
/// keys appended as extra columns) into a LocalTile; global query rows are then recomputed densely.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
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
#include "polyformer/kernels/transpose.hpp"

namespace polyformer {

/// The shape of a sliding window.
struct SlidingWindowOptions {
  Index window = 128;                  ///< w: keys on each side (causal: keys back), the query's own not counted
  std::vector<Index> dilation{1};      ///< D, one for every head or one per head
  std::vector<Index> global_positions; ///< positions that attend to and are attended by everything
  Index query_block = 32;              ///< queries per tile (a tuning knob, not a semantic one)
};

/// Longformer attention. Without global positions it decodes incrementally over a WindowKVCache that keeps
/// only the last w·max(D) positions. The object holds only its options; the per-call gathers and per-thread
/// tiles live in a Workspace of the caller's.
class SlidingWindow : public PerCallWorkspace<SlidingWindow> {
 private:
  struct Task {
    Index head, residue, m0;
  };

  struct Work {  // one thread's
    detail::LocalTile tile;
    std::vector<Index> extra;    // global keys outside the current band
  };

 public:
  using PerCallWorkspace<SlidingWindow>::forward;
  using PerCallWorkspace<SlidingWindow>::forward_cached;

  /// Scratch of one caller: the current head's prepared keys and values, the global flags of the call, tasks
  /// and per-thread tiles.
  struct Workspace {
    std::vector<Task> tasks;
    std::vector<Work> work;  // one per thread
    FullAttention::Workspace full;  // a global query's row
    Index key_stride = 0;
    Matrix keys_t;  // (d, key_stride): the current head's keys transposed, residue classes one after another
    Matrix values;  // (n_k, d): the current head's values in the same order
    std::vector<char> is_global;  // by key position
    std::vector<Index> globals_in_keys;
    std::vector<Index> head_tasks;                 // backward: where each head's tasks start
    std::vector<detail::KeyGradients> key_grads;   // backward: one per thread
  };

  static constexpr bool supports_causal = true;
  static constexpr bool supports_additive_bias = true;  ///< mask.additive is added to the scores
  static constexpr const char* name = "sliding";

  // The spelling (attention/spelling.hpp): "sliding:W", W the window.
  static constexpr std::string_view spelling_form = "sliding:W";
  static constexpr std::string_view example_spelling = "sliding:128";
  /// Options: "dilation" (an integer, 1 by default: one for every head) and "global_positions" (integers).
  static SlidingWindow from_spelling(const AttentionSpelling& spelling, const AttentionOptions& options) {
    SlidingWindowOptions o;
    o.window = spelling.positive(0);
    o.dilation = {options.integer("dilation", 1)};
    o.global_positions = options.integers("global_positions");
    return SlidingWindow(std::move(o));
  }
  std::string spelling() const { return detail::cat(name, ':', opt_.window); }

  SlidingWindow() = default;
  explicit SlidingWindow(Index window, Index dilation = 1, std::vector<Index> global_positions = {})
      : SlidingWindow(SlidingWindowOptions{window, {dilation}, std::move(global_positions)}) {}
  explicit SlidingWindow(SlidingWindowOptions options) : opt_(std::move(options)) {
    const char* func = "SlidingWindow";
    if (opt_.window < 0) throw config_error(detail::cat(func, ": window is ", opt_.window, ", expected >= 0"));
    if (opt_.dilation.empty()) throw config_error(detail::cat(func, ": no dilation, expected one, or one per head"));
    for (Index d : opt_.dilation)
      if (d < 1) throw config_error(detail::cat(func, ": dilation ", d, ", expected >= 1"));
    if (opt_.query_block < 1)
      throw config_error(detail::cat(func, ": query_block is ", opt_.query_block, ", expected >= 1"));
    for (Index p : opt_.global_positions)
      if (p < 0) throw config_error(detail::cat(func, ": global position ", p, ", expected >= 0"));
    std::sort(opt_.global_positions.begin(), opt_.global_positions.end());
    opt_.global_positions.erase(std::unique(opt_.global_positions.begin(), opt_.global_positions.end()),
                                opt_.global_positions.end());
  }

  const SlidingWindowOptions& options() const noexcept { return opt_; }
  Index window() const noexcept { return opt_.window; }
  /// The dilation of head h.
  Index dilation(Index h) const noexcept {
    return opt_.dilation.size() == 1 ? opt_.dilation.front() : opt_.dilation[std::size_t(h)];
  }
  const std::vector<Index>& global_positions() const noexcept { return opt_.global_positions; }

  /// out (n_q, heads·d) from q (n_q, heads·d), k and v (n_k, kv_heads·d). Query i sits at key position
  /// i + mask.causal_offset (0 outside cached decoding).
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    check_dilations("SlidingWindow::forward", s);
    const Index n_q = q.rows(), n_k = k.rows(), off = mask.causal_offset, dh = s.head_dim;
    mark_globals(n_q, n_k, off, ws);
    const int t = threads_for(ctx, static_cast<double>(n_q) * double(s.n_heads) * double(2 * opt_.window + 1) *
                                       double(dh), n_q / std::max<Index>(opt_.query_block, 1) + 1);
    if (static_cast<int>(ws.work.size()) < t) ws.work.resize(std::size_t(t));
    const Index max_keys = std::min(n_k, opt_.query_block + 2 * opt_.window + 1) + Index(ws.globals_in_keys.size());
    for (int i = 0; i < t; ++i) ws.work[std::size_t(i)].tile.reserve(opt_.query_block, max_keys, dh);
    ws.key_stride = (n_k + 15) / 16 * 16 + 16;  // rows not a multiple of 4 KiB apart (L1 set aliasing)
    // Head by head, so the head's prepared keys and values stay in cache while its blocks read them.
    for (Index h = 0; h < s.n_heads; ++h) {
      const Index D = dilation(h), g = s.kv_head(h);
      if (ws.globals_in_keys.empty()) {
        // The head's keys transposed and its values copied, both in residue-class order, so a block's band is
        // a contiguous run of columns (rows): the tiles read them in place.
        ensure_shape(ws.keys_t, dh, ws.key_stride);
        ensure_shape(ws.values, n_k, dh);
        const Index ks = k.outerStride(), vs = v.outerStride();
        Index col = 0;
        for (Index r = 0; r < D && r < n_k; ++r) {
          const Index count = (n_k - 1 - r) / D + 1;
          parallel_chunks(count, t, [&](Index i0, Index i1, int) {
            kernels::transpose(k.data() + (r + D * i0) * ks + g * dh, D * ks, i1 - i0, dh, ws.keys_t.data() + col + i0,
                               ws.key_stride);
            block(view(ws.values), col + i0, 0, i1 - i0, dh) =
                ConstMatrixView(v.data() + (r + D * i0) * vs + g * dh, i1 - i0, dh, Eigen::OuterStride<>(D * vs));
          });
          col += count;
        }
      }
      ws.tasks.clear();
      add_tasks(h, n_q, off, ws.tasks);
      parallel_for(static_cast<Index>(ws.tasks.size()), t, [&](Index task, int thread) {
        run_block(s, ws.tasks[std::size_t(task)], q, k, v, mask, out, ws, ws.work[std::size_t(thread)]);
      });
    }
    // Global queries see every key: their rows again, densely.
    for (Index p : opt_.global_positions) {  // one query against all keys: FullAttention's few-query path
      const Index i = p - off;
      if (i < 0 || i >= n_q) continue;
      AttentionMask row_mask = mask;
      row_mask.causal_offset = mask.causal_offset + i;
      if (mask.additive) row_mask.additive = mask.additive + i * mask.additive_stride;
      dense_.forward(s, block(q, i, 0, 1, q.cols()), k, v, row_mask, block(out, i, 0, 1, out.cols()), ws.full, ctx);
    }
  }

  /// Nothing is kept: backward recomputes each block's softmax from the same q, k, v (a block holds its queries'
  /// whole key sets) and each global query's row.
  struct Saved : SavedForward {};

  void forward_train(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, Saved& saved, Workspace& ws, const Context& ctx) const {
    forward(s, q, k, v, mask, out, ws, ctx);
    saved.record();
  }

  /// The backward of forward_train: dq (n_q, heads·d), dk and dv (n_k, kv_heads·d) written from dout (n_q, heads·d),
  /// given the same q, k, v, mask and the output `out`. A kv head's tasks (its query heads' blocks, then their global
  /// query rows) add into per-thread key and value gradients. Uses `saved` once (saved.keep: again).
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Workspace& ws, const Context& ctx) const {
    const char* func = "SlidingWindow::backward";
    saved.require_held(func);
    detail::check_attention_grads(func, s, q, k, v, out, dout, dq, dk, dv);
    check_dilations(func, s);
    saved.take(func);
    const Index n_q = q.rows(), n_k = k.rows(), off = mask.causal_offset, dh = s.head_dim;
    mark_globals(n_q, n_k, off, ws);
    // Head by head, so kv head g's tasks are one run: the blocks, then one task per global query (residue −1).
    ws.tasks.clear();
    ws.head_tasks.assign(std::size_t(s.n_heads + 1), 0);
    bool global_rows = false;
    for (Index h = 0; h < s.n_heads; ++h) {
      ws.head_tasks[std::size_t(h)] = Index(ws.tasks.size());
      add_tasks(h, n_q, off, ws.tasks);
      for (Index p : opt_.global_positions)
        if (p - off >= 0 && p - off < n_q) ws.tasks.push_back({h, -1, p - off}), global_rows = true;
    }
    ws.head_tasks[std::size_t(s.n_heads)] = Index(ws.tasks.size());
    const int t = threads_for(ctx, static_cast<double>(n_q) * double(s.n_heads) * double(2 * opt_.window + 1) * double(dh),
                              Index(ws.tasks.size()));
    if (static_cast<int>(ws.work.size()) < t) ws.work.resize(std::size_t(t));
    const Index max_keys = std::min(n_k, opt_.query_block + 2 * opt_.window + 1) + Index(ws.globals_in_keys.size());
    for (int i = 0; i < t; ++i) {
      ws.work[std::size_t(i)].tile.reserve_backward(opt_.query_block, max_keys, dh);
      if (global_rows) ws.work[std::size_t(i)].tile.reserve_backward(1, n_k, dh);
    }
    const Index group = s.n_heads / s.n_kv_heads;
    const auto first_task = [&](Index g) { return ws.head_tasks[std::size_t(g * group)]; };
    detail::backward_by_kv_head(
        s, t, ws.key_grads, dk, dv, [&](Index g) { return first_task(g + 1) - first_task(g); },
        [&](Index g, Index task_index, int thread, detail::KeyGradients& acc) {
          const Task& task = ws.tasks[std::size_t(first_task(g) + task_index)];
          Work& work = ws.work[std::size_t(thread)];
          if (task.residue < 0) backward_global_row(s, task.head, task.m0, q, k, v, mask, out, dout, dq, acc, work.tile);
          else backward_block(s, task, q, k, v, mask, out, dout, dq, acc, ws, work);
        });
  }

  /// Decoding keeps the last w·max(D) positions only.
  using State = WindowKVCache;

  /// The decoding state for one sequence (capacity is not needed: the state does not grow).
  State make_state(Index /*capacity*/, Index n_kv_heads, Index head_dim) const {
    const Index max_d = *std::max_element(opt_.dilation.begin(), opt_.dilation.end());
    const Index history = opt_.window * max_d;
    return State(history, std::max<Index>(history, 64), n_kv_heads, head_dim);
  }

  /// Incremental causal attention: appends k_new, v_new (n_new, kv_heads·d) as positions state.size()..,
  /// each query of q (n_new, heads·d) attends to its causal window. Global positions are not supported here
  /// (a global query would need every earlier key, which the state does not keep).
  void forward_cached(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k_new, ConstMatrixView v_new,
                      State& state, MatrixView out, Workspace& ws, const Context& ctx) const {
    const char* func = "SlidingWindow::forward_cached";
    if (!opt_.global_positions.empty())
      throw config_error(detail::cat(func, ": ", opt_.global_positions.size(),
                                     " global positions, expected none (a window cache keeps no global keys)"));
    if (state.n_kv_heads() != s.n_kv_heads || state.head_dim() != s.head_dim)
      throw shape_error(detail::cat(func, ": the state holds ", state.n_kv_heads(), " kv heads of ", state.head_dim(),
                                    ", expected ", s.n_kv_heads, " of ", s.head_dim));
    const Index n = q.rows(), kvd = s.n_kv_heads * s.head_dim;
    for (Index c0 = 0; c0 < n; c0 += state.chunk()) {
      const Index nc = std::min(state.chunk(), n - c0), held = state.held();
      state.append(block(k_new, c0, 0, nc, kvd), block(v_new, c0, 0, nc, kvd));
      AttentionMask mask;
      mask.causal = true;
      mask.causal_offset = held;
      forward(s, block(q, c0, 0, nc, q.cols()), state.recent_keys(held + nc), state.recent_values(held + nc), mask,
              block(out, c0, 0, nc, out.cols()), ws, ctx);
    }
  }

 private:
  static int threads_for(const Context& ctx, double work, Index tasks) {
    if (work < 2e5 || tasks < 2) return 1;
    return static_cast<int>(std::min<Index>(effective_threads(ctx.threads), tasks));
  }

  void check_dilations(const char* func, const AttentionShape& s) const {
    if (opt_.dilation.size() != 1 && static_cast<Index>(opt_.dilation.size()) != s.n_heads)
      throw config_error(detail::cat(func, ": ", opt_.dilation.size(), " dilations for ", s.n_heads,
                                     " heads, expected 1 or one per head"));
  }

  /// The global flags by key position, and the global positions that are keys of this call.
  void mark_globals(Index n_q, Index n_k, Index off, Workspace& ws) const {
    ws.is_global.assign(std::size_t(std::max(n_k, n_q + off)), 0);
    ws.globals_in_keys.clear();
    for (Index p : opt_.global_positions) {
      if (p < static_cast<Index>(ws.is_global.size())) ws.is_global[std::size_t(p)] = 1;
      if (p < n_k) ws.globals_in_keys.push_back(p);
    }
  }

  /// Head h's tasks: (head, residue class, first query of the block within the class).
  void add_tasks(Index h, Index n_q, Index off, std::vector<Task>& tasks) const {
    const Index D = dilation(h);
    for (Index r = 0; r < D; ++r) {
      const Index first = ((r - off) % D + D) % D;  // first query whose position is ≡ r
      const Index count = first < n_q ? (n_q - 1 - first) / D + 1 : 0;
      for (Index m0 = 0; m0 < count; m0 += opt_.query_block) tasks.push_back({h, r, m0});
    }
  }

  /// The backward of one block: its rows' query gradients into dq (a global query's row is left to its own task,
  /// which the forward recomputed densely), its keys' and values' into acc.
  void backward_block(const AttentionShape& s, const Task& task, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                      const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, MatrixView dq,
                      detail::KeyGradients& acc, const Workspace& ws, Work& work) const {
    const Index dh = s.head_dim, n_k = k.rows(), off = mask.causal_offset;
    const Block b = locate(s, task, q.rows(), n_k, mask, ws, work.extra);
    detail::LocalTile& tile = work.tile;
    const Index qs = q.outerStride();
    tile.query_rows(b.nb) = ConstMatrixView(q.data() + b.i0 * qs + b.h * dh, b.nb, dh, Eigen::OuterStride<>(b.D * qs)) * s.scale;
    gather_keys(b, dh, k, v, work.extra, tile);
    MatrixView d_o = tile.dout_rows(b.nb);
    for (Index t = 0; t < b.nb; ++t) {
      const Index i = b.i0 + b.D * t;
      if (ws.is_global[std::size_t(i + off)]) {  // its output came from its dense row
        block(d_o, t, 0, 1, dh).setZero();
        tile.deltas[std::size_t(t)] = 0.0f;
        continue;
      }
      block(d_o, t, 0, 1, dh) = block(dout, i, b.h * dh, 1, dh);
      tile.deltas[std::size_t(t)] = kernels::dot(dout.data() + i * dout.outerStride() + b.h * dh,
                                                 out.data() + i * out.outerStride() + b.h * dh, std::size_t(dh));
    }
    const BandMask band_mask{b, mask, ws.is_global, work.extra, opt_.window, n_k, !ws.globals_in_keys.empty()};
    tile.backward(b.nb, cview(tile.key_cols(b.n_cols)), cview(tile.value_rows(b.n_cols)), band_mask, tile.deltas.data());
    for (Index t = 0; t < b.nb; ++t) {
      const Index i = b.i0 + b.D * t;
      if (ws.is_global[std::size_t(i + off)]) continue;
      const float* g_q = tile.query_grad_row(t);
      float* dst = dq.data() + i * dq.outerStride() + b.h * dh;
      for (Index f = 0; f < dh; ++f) dst[f] = s.scale * g_q[f];
    }
    tile.add_key_grads(b.n_cols, [&](Index c) { return band_mask.key_of(c); }, acc.keys_t.data(), acc.values_t.data(), n_k);
  }

  /// The backward of global query i of head h, which sees every key its masks allow.
  static void backward_global_row(const AttentionShape& s, Index h, Index i, ConstMatrixView q, ConstMatrixView k,
                                  ConstMatrixView v, const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout,
                                  MatrixView dq, detail::KeyGradients& acc, detail::LocalTile& tile) {
    const Index dh = s.head_dim, n_k = k.rows(), g = s.kv_head(h);
    tile.query_rows(1) = block(q, i, h * dh, 1, dh) * s.scale;
    tile.key_cols(n_k) = block(k, 0, g * dh, n_k, dh).transpose();
    tile.value_rows(n_k) = block(v, 0, g * dh, n_k, dh);
    block(tile.dout_rows(1), 0, 0, 1, dh) = block(dout, i, h * dh, 1, dh);
    tile.deltas[0] = kernels::dot(dout.data() + i * dout.outerStride() + h * dh, out.data() + i * out.outerStride() + h * dh,
                                  std::size_t(dh));
    tile.backward(1, cview(tile.key_cols(n_k)), cview(tile.value_rows(n_k)), [&](Index, float* row) {
      constexpr float neg_inf = -std::numeric_limits<float>::infinity();
      const Index end = mask.key_end(i, n_k);
      std::fill(row + end, row + n_k, neg_inf);
      for (Index j = 0; j < end; ++j) {
        if (mask.key_padding && mask.key_padding[j] != 0.0f) row[j] = neg_inf;
        else if (mask.additive) row[j] += mask.additive[i * mask.additive_stride + j];
      }
    }, tile.deltas.data());
    const float* g_q = tile.query_grad_row(0);
    float* dst = dq.data() + i * dq.outerStride() + h * dh;
    for (Index f = 0; f < dh; ++f) dst[f] = s.scale * g_q[f];
    tile.add_key_grads(n_k, [](Index c) { return c; }, acc.keys_t.data(), acc.values_t.data(), n_k);
  }

  /// Where one task's block lies: queries i0 + D·t (t < nb) of residue class r, whose key-class indices start at
  /// mq0; the band of keys j0 + D·c (c < band), class indices lo..; then the global keys outside the band (the
  /// thread's `extra`), tile columns band..n_cols.
  struct Block {
    Index h, g, D, r, i0, nb, mq0, lo, band, j0, n_cols;
  };

  Block locate(const AttentionShape& s, const Task& task, Index n_q, Index n_k, const AttentionMask& mask,
               const Workspace& ws, std::vector<Index>& extra) const {
    const Index off = mask.causal_offset, h = task.head, r = task.residue, D = dilation(h), w = opt_.window;
    const Index first = ((r - off) % D + D) % D;                  // query index of class member 0
    const Index count = (n_q - 1 - first) / D + 1;
    const Index nb = std::min(opt_.query_block, count - task.m0);
    const Index a = (first + off - r) / D;                        // key-class index of query member 0
    const Index keys_in_class = r < n_k ? (n_k - 1 - r) / D + 1 : 0;
    const Index mq0 = task.m0 + a;                                // key-class index of the block's first query
    const Index lo = std::clamp<Index>(mq0 - w, 0, keys_in_class);
    const Index hi = std::clamp<Index>(mask.causal ? mq0 + nb : mq0 + nb + w, lo, keys_in_class);
    extra.clear();
    for (Index j : ws.globals_in_keys)
      if (j % D != r || (j - r) / D < lo || (j - r) / D >= hi) extra.push_back(j);
    return {h, s.kv_head(h), D, r, first + D * task.m0, nb, mq0, lo, hi - lo, r + D * lo,
            hi - lo + static_cast<Index>(extra.size())};
  }

  /// Gathers a block's keys (transposed) and values, band then extra columns, into the tile.
  static void gather_keys(const Block& b, Index dh, ConstMatrixView k, ConstMatrixView v, const std::vector<Index>& extra,
                          detail::LocalTile& tile) {
    MatrixView kt = tile.key_cols(b.n_cols), vr = tile.value_rows(b.n_cols);
    const Index ks = k.outerStride(), vs = v.outerStride();
    block(kt, 0, 0, dh, b.band) =
        ConstMatrixView(k.data() + b.j0 * ks + b.g * dh, b.band, dh, Eigen::OuterStride<>(b.D * ks)).transpose();
    block(vr, 0, 0, b.band, dh) = ConstMatrixView(v.data() + b.j0 * vs + b.g * dh, b.band, dh, Eigen::OuterStride<>(b.D * vs));
    for (std::size_t e = 0; e < extra.size(); ++e) {
      const Index j = extra[e], c = b.band + Index(e);
      for (Index f = 0; f < dh; ++f) kt(f, c) = k(j, b.g * dh + f);
      block(vr, c, 0, 1, dh) = block(v, j, b.g * dh, 1, dh);
    }
  }

  /// The mask of a block's rows: the window, then (with global keys, padding or an additive mask) every column.
  struct BandMask {
    const Block& b;
    const AttentionMask& mask;
    const std::vector<char>& is_global;
    const std::vector<Index>& extra;
    Index w, n_k;
    bool any_global;

    std::pair<Index, Index> operator()(Index row_index, float* row) const {
      constexpr float neg_inf = -std::numeric_limits<float>::infinity();
      const Index i = b.i0 + b.D * row_index, mq = b.mq0 + row_index;
      const Index key_end = mask.key_end(i, n_k);  // causal and n_valid_keys
      // Band columns: the window is columns [c_lo, c_hi); columns from c_end on are past key_end.
      const Index c_end = key_end > b.j0 ? std::min(b.band, (key_end - b.j0 + b.D - 1) / b.D) : 0;
      const Index c_lo = std::clamp<Index>(mq - w - b.lo, 0, c_end), c_hi = std::clamp<Index>(mq + w - b.lo + 1, c_lo, c_end);
      if (!any_global && !mask.key_padding && !mask.additive)
        return {c_lo, c_hi};  // the window alone: the softmax runs over it only
      if (!any_global) {
        std::fill(row, row + c_lo, neg_inf);
        std::fill(row + c_hi, row + b.band, neg_inf);
      } else {  // a global key is visible outside the window too
        for (Index c = 0; c < b.band; ++c)
          if ((c < c_lo || c >= c_hi) && (c >= c_end || !is_global[std::size_t(b.j0 + b.D * c)])) row[c] = neg_inf;
      }
      for (Index c = b.band; c < b.n_cols; ++c)
        if (extra[std::size_t(c - b.band)] >= key_end) row[c] = neg_inf;
      if (mask.key_padding || mask.additive)
        for (Index c = 0; c < b.n_cols; ++c) {
          if (row[c] == neg_inf) continue;
          const Index j = key_of(c);
          if (mask.key_padding && mask.key_padding[j] != 0.0f) row[c] = neg_inf;
          else if (mask.additive) row[c] += mask.additive[i * mask.additive_stride + j];
        }
      return {0, b.n_cols};
    }
    Index key_of(Index c) const { return c < b.band ? b.j0 + b.D * c : extra[std::size_t(c - b.band)]; }
  };

  /// One block of queries of one residue class of one head; `ws` is read only (its prepared keys and values,
  /// global flags), `work` is the thread's own.
  void run_block(const AttentionShape& s, const Task& task, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                 const AttentionMask& mask, MatrixView out, const Workspace& ws, Work& work) const {
    const Index dh = s.head_dim;
    const Block b = locate(s, task, q.rows(), k.rows(), mask, ws, work.extra);
    detail::LocalTile& tile = work.tile;
    const Index qs = q.outerStride();
    tile.query_rows(b.nb) = ConstMatrixView(q.data() + b.i0 * qs + b.h * dh, b.nb, dh, Eigen::OuterStride<>(b.D * qs)) * s.scale;
    const bool gathered = !ws.globals_in_keys.empty();
    if (gathered) gather_keys(b, dh, k, v, work.extra, tile);
    // Otherwise the prepared class-ordered copies: class r starts after the smaller classes.
    const Index n_k = k.rows();
    Index start = 0;
    for (Index r2 = 0; r2 < b.r; ++r2) start += r2 < n_k ? (n_k - 1 - r2) / b.D + 1 : 0;
    const ConstMatrixView keys_in = gathered ? cview(tile.key_cols(b.n_cols))
                                             : ConstMatrixView(ws.keys_t.data() + start + b.lo, dh, b.band,
                                                               Eigen::OuterStride<>(ws.key_stride));
    const ConstMatrixView values_in =
        gathered ? cview(tile.value_rows(b.n_cols)) : block(cview(ws.values), start + b.lo, 0, b.band, dh);
    tile.attend(b.nb, keys_in, values_in, BandMask{b, mask, ws.is_global, work.extra, opt_.window, n_k, gathered});
    for (Index t = 0; t < b.nb; ++t) {
      const float* src = tile.out_row(t);
      std::copy(src, src + dh, out.data() + (b.i0 + b.D * t) * out.outerStride() + b.h * dh);
    }
  }


  SlidingWindowOptions opt_{};
  FullAttention dense_;  // a global query's row
};

static_assert(SpelledAttention<SlidingWindow> && IncrementalAttention<SlidingWindow> && TrainableAttention<SlidingWindow>);

}  // namespace polyformer
