#pragma once
/// \file Exact softmax attention, tiled with an online softmax (Milakov & Gimelshein 2018; Dao et al. 2022,
/// FlashAttention): scores are made one (query block × key block) tile at a time and never stored whole,
/// so memory is O(n·d) per thread however long the sequence. The score and value products are fp32, or on request
/// bf16 operands with fp32 sums (kernels/bf16_gemm.hpp), the softmax fp32 either way.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/attention/kv_cache.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/bf16_gemm.hpp"
#include "polyformer/kernels/cached_attention.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/reduce.hpp"
#include "polyformer/kernels/softmax.hpp"
#include "polyformer/kernels/transpose.hpp"

namespace polyformer {

/// softmax(scale·Q·Kᵀ + mask)·V per head, exact, computed in tiles. The object holds only its tile sizes and the
/// arithmetic of its products;
/// the per-thread tile buffers live in a Workspace of the caller's.
class FullAttention : public PerCallWorkspace<FullAttention> {
 private:
  struct Scratch {
    Matrix queries;                 // (query_block, head_dim): the block's queries, scaled
    Matrix scores;                  // (query_block, key_block)
    Matrix acc;                     // (query_block, head_dim): unnormalized output
    std::vector<float> row_max;     // running max of each row's scores
    std::vector<float> row_sum;     // running sum of exp(score − row_max)
    std::vector<float> correction;  // exp(old max − new max) of the current tile
    std::vector<float> key_scores;  // (n_k): one query's scores, few-queries path
    std::vector<std::uint32_t> query_pairs, weight_pairs;  // bf16 products: the scaled queries, a tile's weights
    // backward: a key tile's keys, values and their gradients transposed (d, key_block), a query block's scaled
    // queries and output gradients transposed (d, query_block), the tile's score gradients (query_block, key_block)
    Matrix keys_t, values_t, key_grad, value_grad, queries_t, out_grad_t, score_grads;
  };

 public:
  using PerCallWorkspace<FullAttention>::forward;
  using PerCallWorkspace<FullAttention>::forward_cached;

  /// Scratch of one caller: per-thread tiles, and the keys and values rearranged for the tiles.
  struct Workspace {
    std::vector<Scratch> scratch;  // one per thread
    Matrix keys_t;  // (key_blocks·kv_heads·d, key_block): keys transposed, tile by tile
    Matrix values;  // (kv_heads·n_k, d): values head by head
    // bf16 products: per (kv head, key tile), the keys as B = Kᵀ (d, tile) and the values as B = V (tile, d)
    std::vector<kernels::Bf16Matrix> key_tiles, value_tiles;
    // backward: rowsum(dout ⊙ out) (heads, n_q), and each thread's share of dq (n_q, heads·d)
    Matrix delta;
    std::vector<Matrix> query_grads;
  };

  static constexpr bool supports_causal = true;
  static constexpr bool supports_additive_bias = true;  ///< mask.additive is added to the scores
  static constexpr const char* name = "full";

  /// Tile sizes: rows of queries and of keys per tile.
  struct Tiles {
    Index query_block = 128;
    Index key_block = 256;
  };

  /// The arithmetic of forward()'s score (Q·Kᵀ) and value (P·V) products: fp32, or bf16 — queries (scaled), keys,
  /// values and softmax weights rounded to bf16, products summed in fp32 (vdpbf16ps on AVX512-BF16) — with the
  /// softmax in fp32 either way. Up to four queries (forward's few-queries path) and decoding over a cache
  /// (forward_cached) stay fp32.
  enum class Products { fp32, bf16 };

  // The spelling (attention/spelling.hpp): "full", no arguments; the tiles keep their defaults.
  static constexpr std::string_view spelling_form = "full";
  static constexpr std::string_view example_spelling = "full";
  /// Reads the flag "bf16_products" (Products::bf16 when set).
  static FullAttention from_spelling(const AttentionSpelling&, const AttentionOptions& options) {
    return FullAttention(Tiles{}, options.flag("bf16_products", false) ? Products::bf16 : Products::fp32);
  }
  std::string spelling() const { return name; }

  FullAttention() = default;
  explicit FullAttention(Tiles tiles, Products products = Products::fp32) : tiles_(tiles), products_(products) {
    if (tiles.query_block < 1 || tiles.key_block < 1)
      throw config_error(detail::cat("FullAttention: tiles are (", tiles.query_block, ", ", tiles.key_block,
                                     "), expected both >= 1"));
  }

  const Tiles& tiles() const noexcept { return tiles_; }
  Products products() const noexcept { return products_; }

  /// out (n_q, heads·d) from q (n_q, heads·d), k and v (n_k, kv_heads·d), for one sequence.
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    if (q.rows() <= few_queries) {
      forward_few_queries(s, q, k, v, mask, out, ws, ctx);
      return;
    }
    const Index n_q = q.rows();
    const Index bq = std::min(tiles_.query_block, std::max<Index>(n_q, 1));
    const Index q_blocks = (n_q + bq - 1) / bq;
    const Index tasks = s.n_heads * q_blocks;
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), std::max<Index>(tasks, 1)));
    if (products_ == Products::bf16) {
      forward_bf16(s, q, k, v, mask, out, t, ws);
      return;
    }
    forward_tiles(s, q, k, v, mask, out, t, ws, nullptr);
  }

  /// What forward_train keeps for backward: the log-sum-exp of each query row's scaled, masked scores, from which
  /// backward recomputes the softmax weights tile by tile (FlashAttention's backward), O(n) per head.
  struct Saved : SavedForward {
    Matrix lse;  ///< (heads, n_q); −inf for a query that sees no key
  };

  /// forward() in fp32 whatever products() says, keeping in `saved` what backward() needs.
  void forward_train(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, Saved& saved, Workspace& ws, const Context& ctx) const {
    const Index n_q = q.rows();
    const Index bq = std::min(tiles_.query_block, std::max<Index>(n_q, 1)), tasks = s.n_heads * ((n_q + bq - 1) / bq);
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), std::max<Index>(tasks, 1)));
    ensure_shape(saved.lse, s.n_heads, n_q);
    forward_tiles(s, q, k, v, mask, out, t, ws, saved.lse.data());
    saved.record();
  }

  /// The backward of forward_train: dq (n_q, heads·d), dk and dv (n_k, kv_heads·d) written from dout (n_q, heads·d),
  /// given the same q, k, v, mask and the output `out`. Each (kv head, key tile) task recomputes its score tiles
  /// from the saved log-sum-exp, sums its keys' and values' gradients itself, and adds the queries' into a buffer
  /// of its thread's (summed at the end), so nothing (n_q, n_k) is ever stored. Uses `saved` once (saved.keep:
  /// again).
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Workspace& ws, const Context& ctx) const {
    const char* func = "FullAttention::backward";
    saved.require_held(func);
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, qd = s.n_heads * dh;
    detail::check_attention_grads(func, s, q, k, v, out, dout, dq, dk, dv);
    check_shape(saved.lse, s.n_heads, n_q, func, "the saved log-sum-exp");
    saved.take(func);
    const Index bq = tiles_.query_block, bk = tiles_.key_block, k_blocks = (n_k + bk - 1) / bk;
    const Index tasks = s.n_kv_heads * k_blocks;
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), std::max<Index>(tasks, 1)));
    if (static_cast<int>(ws.scratch.size()) < t) ws.scratch.resize(static_cast<std::size_t>(t));
    // delta (heads, n_q) = rowsum(dout ⊙ out) per head: softmax's backward subtracts it from dP.
    ensure_shape(ws.delta, s.n_heads, n_q);
    for (Index i = 0; i < n_q; ++i)
      for (Index h = 0; h < s.n_heads; ++h)
        ws.delta(h, i) = kernels::dot(dout.data() + i * dout.outerStride() + h * dh,
                                      out.data() + i * out.outerStride() + h * dh, static_cast<std::size_t>(dh));
    ws.query_grads.resize(static_cast<std::size_t>(t));
    for (int i = 0; i < t; ++i) ws.query_grads[std::size_t(i)].setZero(n_q, qd);
    const Index group = s.n_heads / s.n_kv_heads;
    parallel_for(tasks, t, [&](Index task, int thread) {
      const Index g = task / k_blocks, k0 = (task % k_blocks) * bk, nk = std::min(bk, n_k - k0);
      Scratch& w = ws.scratch[std::size_t(thread)];
      for (Matrix* m : {&w.keys_t, &w.values_t, &w.key_grad, &w.value_grad}) ensure_shape(*m, dh, bk);
      for (Matrix* m : {&w.queries_t, &w.out_grad_t}) ensure_shape(*m, dh, bq);
      ensure_shape(w.queries, bq, dh);
      ensure_shape(w.scores, bq, bk);
      ensure_shape(w.score_grads, bq, bk);
      const ConstMatrixView kb = block(k, k0, g * dh, nk, dh);
      MatrixView kt = block(view(w.keys_t), 0, 0, dh, nk), vt = block(view(w.values_t), 0, 0, dh, nk);
      kernels::transpose(kb.data(), kb.outerStride(), nk, dh, kt.data(), kt.outerStride());
      kernels::transpose(v.data() + k0 * v.outerStride() + g * dh, v.outerStride(), nk, dh, vt.data(), vt.outerStride());
      // The tile's key and value gradients, transposed (d, nk): every product below then has an untransposed B.
      MatrixView dkt = block(view(w.key_grad), 0, 0, dh, nk), dvt = block(view(w.value_grad), 0, 0, dh, nk);
      dkt.setZero();
      dvt.setZero();
      MatrixView dq_thread = view(ws.query_grads[std::size_t(thread)]);
      // The first query that may see key k0 (causal): queries before it see none of this tile.
      const Index first_query = mask.causal ? std::clamp<Index>(k0 - mask.causal_offset, 0, n_q) : 0;
      for (Index h = g * group; h < (g + 1) * group; ++h)
        for (Index q0 = first_query / bq * bq; q0 < n_q; q0 += bq) {
          const Index rows = std::min(bq, n_q - q0);
          MatrixView qs = block(view(w.queries), 0, 0, rows, dh);
          qs = block(q, q0, h * dh, rows, dh) * s.scale;
          const ConstMatrixView dob = block(dout, q0, h * dh, rows, dh);
          MatrixView qs_t = block(view(w.queries_t), 0, 0, dh, rows), do_t = block(view(w.out_grad_t), 0, 0, dh, rows);
          kernels::transpose(qs.data(), qs.outerStride(), rows, dh, qs_t.data(), qs_t.outerStride());
          kernels::transpose(dob.data(), dob.outerStride(), rows, dh, do_t.data(), do_t.outerStride());
          MatrixView p = block(view(w.scores), 0, 0, rows, nk);
          kernels::gemm(cview(qs), cview(kt), kernels::Transpose::no, p, 1.0f, 0.0f, 1);  // S = (scale·Q)·Kᵀ
          softmax_weights(mask, q0, k0, n_k, saved.lse.data() + h * n_q + q0, p);      // P
          kernels::gemm(cview(do_t), cview(p), kernels::Transpose::no, dvt, 1.0f, 1.0f, 1);  // dVᵀ += dOᵀ·P
          MatrixView ds = block(view(w.score_grads), 0, 0, rows, nk);
          kernels::gemm(dob, cview(vt), kernels::Transpose::no, ds, 1.0f, 0.0f, 1);  // dP = dO·Vᵀ
          for (Index i = 0; i < rows; ++i)  // dS = P ⊙ (dP − delta)
            kernels::softmax_backward(p.data() + i * p.outerStride(), ds.data() + i * ds.outerStride(), ws.delta(h, q0 + i),
                                      std::size_t(nk));
          kernels::gemm(cview(qs_t), cview(ds), kernels::Transpose::no, dkt, 1.0f, 1.0f, 1);  // dKᵀ += (scale·Q)ᵀ·dS
          kernels::gemm(cview(ds), kb, kernels::Transpose::no, block(dq_thread, q0, h * dh, rows, dh), s.scale, 1.0f,
                        1);  // dQ += scale·dS·K
        }
      kernels::transpose(dkt.data(), dkt.outerStride(), dh, nk, dk.data() + k0 * dk.outerStride() + g * dh, dk.outerStride());
      kernels::transpose(dvt.data(), dvt.outerStride(), dh, nk, dv.data() + k0 * dv.outerStride() + g * dh, dv.outerStride());
    });
    dq = ws.query_grads[0];
    for (int i = 1; i < t; ++i) dq += ws.query_grads[std::size_t(i)];
  }

 private:
  /// The fp32 tiled forward over t threads; with lse non-null, also each query row's log-sum-exp, (heads, n_q).
  void forward_tiles(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, int t, Workspace& ws, float* lse) const {
    const Index n_k = k.rows(), dh = s.head_dim;
    // Keys transposed once per call and stored tile by tile, (key_blocks·kv_heads·d, key_block), so every
    // score tile is a plain Q·Kᵀ micro-kernel product over a contiguous panel (rows n_k apart would alias
    // in L1 when n_k is a multiple of 1024).
    const Index bk = tiles_.key_block, k_blocks = (n_k + bk - 1) / bk, kd = k.cols();
    ensure_shape(ws.keys_t, k_blocks * kd, bk);
    parallel_for(k_blocks, t, [&](Index kb, int) {
      const Index k0 = kb * bk, nk = std::min(bk, n_k - k0);
      block(view(ws.keys_t), kb * kd, 0, kd, nk) = block(k, k0, 0, nk, kd).transpose();
    });
    // Values head by head, (kv_heads·n_k, d), so a value tile's rows are d floats apart (not heads·d).
    ensure_shape(ws.values, s.n_kv_heads * n_k, dh);
    parallel_for(s.n_kv_heads, t, [&](Index g, int) {
      block(view(ws.values), g * n_k, 0, n_k, dh) = block(v, 0, g * dh, n_k, dh);
    });
    run_tiles(s, q, n_k, mask, out, t, ws, [&](Index g) {
      return HeadKeys{KeyTiles{ws.keys_t.data() + g * dh * bk, bk, kd * bk}, block(cview(ws.values), g * n_k, 0, n_k, dh)};
    }, lse);
  }

  /// Turns p (rows, nk), the scaled scores of queries q0.. against keys k0.., into the softmax weights
  /// e^(score + mask − lse) of the forward, 0 where masked or where the query sees no key (lse −inf).
  static void softmax_weights(const AttentionMask& mask, Index q0, Index k0, Index n_k, const float* lse, MatrixView p) {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index nk = p.cols();
    for (Index i = 0; i < p.rows(); ++i) {
      float* row = p.data() + i * p.outerStride();
      const Index visible = std::clamp<Index>(mask.key_end(q0 + i, n_k) - k0, 0, nk);
      if (lse[i] == neg_inf || visible == 0) {
        std::fill(row, row + nk, 0.0f);
        continue;
      }
      if (mask.additive) kernels::add(mask.additive + (q0 + i) * mask.additive_stride + k0, row, std::size_t(visible));
      if (mask.key_padding)
        for (Index j = 0; j < visible; ++j)
          if (mask.key_padding[k0 + j] != 0.0f) row[j] = neg_inf;
      kernels::exp_shifted_sum(row, std::size_t(visible), lse[i]);  // e^(s − lse) in place (the sum is unused)
      std::fill(row + visible, row + nk, 0.0f);
    }
  }

 public:
  /// The cache's state type: decoding with FullAttention keeps every key and value.
  using State = KVCache;
  /// A cache for `capacity` positions.
  State make_state(Index capacity, Index n_kv_heads, Index head_dim) const {
    return State(capacity, n_kv_heads, head_dim);
  }

  /// Incremental attention of one sequence: appends k_new and v_new (n_new, kv_heads·d; keys already
  /// rotated) to `cache` as positions cache.size().., then each query row i of q (n_new, heads·d) attends
  /// causally to the cached positions up to its own. out (n_new, heads·d).
  void forward_cached(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k_new, ConstMatrixView v_new,
                      KVCache& cache, MatrixView out, Workspace& ws, const Context& ctx) const {
    if (cache.n_kv_heads() != s.n_kv_heads || cache.head_dim() != s.head_dim)
      throw shape_error(detail::cat("FullAttention::forward_cached: the cache holds ", cache.n_kv_heads(),
                                    " kv heads of ", cache.head_dim(), ", expected ", s.n_kv_heads, " of ", s.head_dim));
    AttentionMask mask;
    mask.causal = true;
    mask.causal_offset = cache.size();
    cache.append(k_new, v_new);
    const Index n_q = q.rows(), n_k = cache.size();
    if (n_q <= few_queries) {
      decode(s, q, cache, mask, out, ws, ctx);
      return;
    }
    const Index bq = std::min(tiles_.query_block, n_q), tasks = s.n_heads * ((n_q + bq - 1) / bq);
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), tasks));
    const Index bk = tiles_.key_block;
    run_tiles(s, q, n_k, mask, out, t, ws, [&](Index g) {
      const ConstMatrixView kt = cache.keys_t(g);
      return HeadKeys{KeyTiles{kt.data(), kt.outerStride(), bk}, cache.values(g)};
    });
  }

 private:
  /// Where one head's transposed key tiles are: the tile of keys k0..k0+bk (k0 a multiple of bk) is the
  /// (head_dim, ≤ bk) block at base + (k0 / bk)·block_jump, rows row_stride floats apart.
  struct KeyTiles {
    const float* base;
    Index row_stride;
    Index block_jump;
  };
  struct HeadKeys {
    KeyTiles keys;
    ConstMatrixView values;  // (n_k, head_dim)
  };

  /// Every (head, query block) task of n_q queries over `t` threads: block(h, q0, rows, scratch).
  template <typename Block>
  void for_each_block(const AttentionShape& s, Index n_q, int t, Workspace& ws, Block&& block_task) const {
    const Index bq = std::min(tiles_.query_block, std::max<Index>(n_q, 1));
    const Index q_blocks = (n_q + bq - 1) / bq;
    if (static_cast<int>(ws.scratch.size()) < t) ws.scratch.resize(static_cast<std::size_t>(t));
    parallel_for(s.n_heads * q_blocks, t, [&](Index task, int thread) {
      const Index h = task / q_blocks, q0 = (task % q_blocks) * bq;
      block_task(h, q0, std::min(bq, n_q - q0), ws.scratch[static_cast<std::size_t>(thread)]);
    });
  }

  /// The fp32 tiles of every (head, query block) task; keys_of(g) gives kv head g's keys and values.
  template <typename KeysOf>
  void run_tiles(const AttentionShape& s, ConstMatrixView q, Index n_k, const AttentionMask& mask, MatrixView out,
                 int t, Workspace& ws, KeysOf&& keys_of, float* lse = nullptr) const {
    const Index dh = s.head_dim, bk = tiles_.key_block;
    for_each_block(s, q.rows(), t, ws, [&](Index h, Index q0, Index rows, Scratch& w) {
      const HeadKeys hk = keys_of(s.kv_head(h));
      ensure_shape(w.queries, tiles_.query_block, dh);
      MatrixView qs = block(view(w.queries), 0, 0, rows, dh);
      qs = block(q, q0, h * dh, rows, dh) * s.scale;  // contiguous rows for the micro-kernel, scale applied once
      const auto score_tile = [&](Index k0, Index nk, MatrixView sc) {
        const ConstMatrixView key_tile(hk.keys.base + (k0 / bk) * hk.keys.block_jump, dh, nk,
                                       Eigen::OuterStride<>(hk.keys.row_stride));
        kernels::gemm(cview(qs), key_tile, kernels::Transpose::no, sc, 1.0f, 0.0f, 1);
      };
      const auto add_values = [&](Index k0, Index nk, ConstMatrixView p, MatrixView acc) {
        kernels::gemm(p, block(hk.values, k0, 0, nk, dh), kernels::Transpose::no, acc, 1.0f, 1.0f, 1);
      };
      tile_loop(s, rows, q0, n_k, mask, block(out, q0, h * dh, rows, dh), w, score_tile, add_values,
                lse != nullptr ? lse + h * q.rows() + q0 : nullptr);
    });
  }

  /// forward() with bf16 products: each (kv head, key tile)'s keys and values packed once in bf16, each block's
  /// scaled queries rounded once, each tile's softmax weights rounded before the value product.
  void forward_bf16(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                    const AttentionMask& mask, MatrixView out, int t, Workspace& ws) const {
    const Index n_k = k.rows(), dh = s.head_dim, bk = tiles_.key_block, k_blocks = (n_k + bk - 1) / bk;
    const auto u = [](Index x) { return static_cast<std::size_t>(x); };
    ws.key_tiles.resize(u(s.n_kv_heads * k_blocks));
    ws.value_tiles.resize(u(s.n_kv_heads * k_blocks));
    parallel_for(s.n_kv_heads * k_blocks, t, [&](Index i, int) {
      const Index g = i / k_blocks, k0 = (i % k_blocks) * bk, nk = std::min(bk, n_k - k0);
      ws.key_tiles[u(i)].repack_transposed(k.data() + k0 * k.outerStride() + g * dh, u(nk), u(dh), u(k.outerStride()));
      ws.value_tiles[u(i)].repack(v.data() + k0 * v.outerStride() + g * dh, u(nk), u(dh), u(v.outerStride()));
    });
    const kernels::Bf16Path path = kernels::bf16_path();
    const Index d_pairs = (dh + 1) / 2, tile_pairs = (bk + 1) / 2;
    for_each_block(s, q.rows(), t, ws, [&](Index h, Index q0, Index rows, Scratch& w) {
      const Index g = s.kv_head(h);
      ensure_shape(w.queries, tiles_.query_block, dh);
      w.query_pairs.resize(u(tiles_.query_block * d_pairs));
      w.weight_pairs.resize(u(tiles_.query_block * tile_pairs));
      for (Index i = 0; i < rows; ++i) {
        float* qs = w.queries.data() + i * dh;
        const float* qi = q.data() + (q0 + i) * q.outerStride() + h * dh;
        for (Index d = 0; d < dh; ++d) qs[d] = qi[d] * s.scale;
        kernels::bf16_pairs(qs, u(dh), w.query_pairs.data() + i * d_pairs, path);
      }
      // The scores of a whole packed tile are written (sc's rows hold key_block floats); those past nk go unread.
      const auto score_tile = [&](Index k0, Index, MatrixView sc) {
        kernels::bf16_gemm_pairs(u(rows), w.query_pairs.data(), u(d_pairs), ws.key_tiles[u(g * k_blocks + k0 / bk)],
                                 false, sc.data(), u(sc.outerStride()), path);
      };
      const auto add_values = [&](Index k0, Index nk, ConstMatrixView p, MatrixView acc) {
        // A causal tile may stop short of the packed one: its weights end in zero pairs.
        const kernels::Bf16Matrix& values = ws.value_tiles[u(g * k_blocks + k0 / bk)];
        const Index full_pairs = static_cast<Index>(values.pairs()), nk_pairs = (nk + 1) / 2;
        for (Index i = 0; i < rows; ++i) {
          std::uint32_t* row = w.weight_pairs.data() + i * full_pairs;
          kernels::bf16_pairs(p.data() + i * p.outerStride(), u(nk), row, path);
          std::fill(row + nk_pairs, row + full_pairs, 0u);
        }
        kernels::bf16_gemm_pairs(u(rows), w.weight_pairs.data(), u(full_pairs), values, true, acc.data(),
                                 u(acc.outerStride()), path);
      };
      tile_loop(s, rows, q0, n_k, mask, block(out, q0, h * dh, rows, dh), w, score_tile, add_values);
    });
  }

  /// Few queries against the cache, one task per (query, kv head): the heads that share the kv head attend
  /// together over its transposed keys and values (kernels/cached_attention.hpp), each key and value vector read
  /// once for all of them.
  void decode(const AttentionShape& s, ConstMatrixView q, const KVCache& cache, const AttentionMask& mask,
              MatrixView out, Workspace& ws, const Context& ctx) const {
    const Index n_q = q.rows(), n_k = cache.size(), dh = s.head_dim, group = s.n_heads / s.n_kv_heads;
    const Index tasks = n_q * s.n_kv_heads;
    const double work = static_cast<double>(n_q * s.n_heads) * static_cast<double>(n_k) * static_cast<double>(dh);
    const int t = work < 1e6 ? 1 : static_cast<int>(std::min<Index>(effective_threads(ctx.threads), tasks));
    reserve_key_scores(ws, t, group * n_k);
    parallel_for(tasks, t, [&](Index task, int thread) {
      const Index i = task / s.n_kv_heads, g = task % s.n_kv_heads;
      const Index visible = mask.key_end(i, n_k);
      float* dst = out.data() + i * out.outerStride() + g * group * dh;  // the group's heads are adjacent
      if (visible == 0) {
        std::fill(dst, dst + group * dh, 0.0f);  // a query that sees no key
        return;
      }
      const ConstMatrixView kt = cache.keys_t(g), vt = cache.values_t(g);
      const auto u = [](Index v) { return static_cast<std::size_t>(v); };
      kernels::attend_transposed(u(group), u(dh), u(visible), s.scale, q.data() + i * q.outerStride() + g * group * dh,
                                 u(dh), kt.data(), vt.data(), u(kt.outerStride()),
                                 ws.scratch[std::size_t(thread)].key_scores.data(), u(n_k), dst, u(dh));
    });
  }

  /// In place e^(x − max) over row[0, n); returns their sum (0 when nothing is visible).
  static float softmax_numerators(float* row, Index n) noexcept {
    const float m = kernels::reduce_max(row, std::size_t(n));
    if (n == 0 || m == -std::numeric_limits<float>::infinity()) return 0.0f;
    return kernels::exp_shifted_sum(row, std::size_t(n), m);
  }

  /// Per-thread score rows of at least n_k floats for `t` threads (amortized growth, no per-token allocation).
  static void reserve_key_scores(Workspace& ws, int t, Index n_k) {
    if (static_cast<int>(ws.scratch.size()) < t) ws.scratch.resize(static_cast<std::size_t>(t));
    for (int i = 0; i < t; ++i) {
      std::vector<float>& sc = ws.scratch[std::size_t(i)].key_scores;
      if (sc.size() < std::size_t(n_k)) sc.resize(std::max(std::size_t(n_k), 2 * sc.size()));
    }
  }

  /// Up to this many queries (incremental decoding) skip the tiles: packing every key for a handful of
  /// queries would cost more than the product itself.
  static constexpr Index few_queries = 4;

  /// Each (query, head) on its own: scores against the keys as stored, softmax, weighted sum of values.
  void forward_few_queries(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                           const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, tasks = n_q * s.n_heads;
    // A thread pays for itself from about a million multiply-adds (OpenMP wake-up is tens of µs).
    const double work = static_cast<double>(tasks) * static_cast<double>(n_k) * static_cast<double>(dh);
    const int t = work < 1e6 ? 1 : static_cast<int>(std::min<Index>(effective_threads(ctx.threads), tasks));
    reserve_key_scores(ws, t, n_k);
    parallel_for(tasks, t, [&](Index task, int thread) {
      const Index i = task / s.n_heads, h = task % s.n_heads, g = s.kv_head(h);
      const float* qi = q.data() + i * q.outerStride() + h * dh;
      float* dst = out.data() + i * out.outerStride() + h * dh;
      float* row = ws.scratch[std::size_t(thread)].key_scores.data();
      const Index visible = mask.key_end(i, n_k);
      for (Index j = 0; j < visible; ++j)
        row[j] = s.scale * kernels::dot(qi, k.data() + j * k.outerStride() + g * dh, std::size_t(dh));
      if (mask.additive) kernels::add(mask.additive + i * mask.additive_stride, row, std::size_t(visible));
      if (mask.key_padding)
        for (Index j = 0; j < visible; ++j)
          if (mask.key_padding[j] != 0.0f) row[j] = neg_inf;
      std::fill(dst, dst + dh, 0.0f);
      const float sum = softmax_numerators(row, visible);
      if (sum == 0.0f) return;  // a query that sees no key
      for (Index j = 0; j < visible; ++j)
        if (row[j] != 0.0f) kernels::axpy(row[j], v.data() + j * v.outerStride() + g * dh, dst, std::size_t(dh));
      kernels::scale(dst, 1.0f / sum, std::size_t(dh));
    });
  }

  /// One head, one block of nq queries (rows q0.. of the sequence), over all n_k keys in tiles of key_block:
  /// score_tile(k0, nk, sc) writes the scaled scores (nq, nk) of keys k0.. into sc; add_values(k0, nk, p, acc) adds
  /// p (nq, nk) · V[k0, k0 + nk) into acc (nq, head_dim). The online softmax and the masks are here.
  /// With lse non-null, lse[i] receives query i's log-sum-exp of its scores (−inf when it sees no key).
  template <typename ScoreTile, typename AddValues>
  void tile_loop(const AttentionShape& s, Index nq, Index q0, Index n_k, const AttentionMask& mask, MatrixView outh,
                 Scratch& w, ScoreTile&& score_tile, AddValues&& add_values, float* lse = nullptr) const {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index dh = s.head_dim, bk = tiles_.key_block;
    ensure_shape(w.scores, tiles_.query_block, bk);
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
      score_tile(k0, nk, sc);
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
      add_values(k0, nk, cview(sc), acc);
    }
    if (lse != nullptr)
      for (Index i = 0; i < nq; ++i) {
        const float l = w.row_sum[std::size_t(i)];
        lse[i] = l > 0.0f ? w.row_max[std::size_t(i)] + std::log(l) : neg_inf;
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
  Products products_ = Products::fp32;
};

static_assert(SpelledAttention<FullAttention> && IncrementalAttention<FullAttention>);

}  // namespace polyformer
