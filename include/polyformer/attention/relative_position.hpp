#pragma once
/// \file T5's attention (Raffel et al. 2020, §2.1): softmax(q·kᵀ + b)·v per head, without the 1/√d scaling, where b
/// is a learned scalar per head and relative-position bucket: keys near the query get a bucket each, farther ones
/// share buckets whose width grows logarithmically up to max_distance. Encoders bucket both directions, decoders only
/// the past. Without a table it is T5's cross-attention: unscaled and unbiased. Each head runs an inner attention
/// policy (FullAttention by default; any AdditiveBiasAttention, as SlidingWindow or Blockwise) with its own additive
/// bias; decoding keeps the keys and values in a state of its own.

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// How T5 maps a key's position relative to its query onto a bucket (transformers' _relative_position_bucket).
struct RelativePositionBuckets {
  Index num_buckets = 32;    ///< relative_attention_num_buckets
  Index max_distance = 128;  ///< relative_attention_max_distance
  bool bidirectional = true;  ///< encoder: keys before and after; decoder: keys before only

  /// Throws config_error naming `func` unless the buckets are usable.
  void validate(const char* func) const {
    const Index exact = (bidirectional ? num_buckets / 2 : num_buckets) / 2;
    if (exact < 1 || max_distance <= exact)
      throw config_error(detail::cat(func, ": ", num_buckets, " buckets up to distance ", max_distance,
                                     ", expected at least 2 (4 bidirectional) and a distance past half of them"));
  }

  /// The bucket of a key at `relative` = key position − query position.
  Index bucket(Index relative) const {
    Index buckets = num_buckets, base = 0, n = 0;
    if (bidirectional) {
      buckets /= 2;
      if (relative > 0) base = buckets;
      n = relative < 0 ? -relative : relative;
    } else {
      n = relative < 0 ? -relative : 0;
    }
    const Index exact = buckets / 2;
    if (n < exact) return base + n;
    // In float32 and in transformers' order of operations, so that the edges between buckets fall where its do.
    const float log_ratio = std::log(static_cast<float>(n) / static_cast<float>(exact));
    const auto log_range = static_cast<float>(std::log(static_cast<double>(max_distance) / static_cast<double>(exact)));
    const auto large = exact + static_cast<Index>(log_ratio / log_range * static_cast<float>(buckets - exact));
    return base + std::min(large, buckets - 1);
  }
};

/// Attention with T5's relative position bias and no score scaling (the shape's scale is not used), each head through
/// `Inner`: a policy that adds an additive mask to its scores (the others are refused here, at compile time).
template <AttentionPolicy Inner = FullAttention>
class RelativePositionAttention : public PerCallWorkspace<RelativePositionAttention<Inner>> {
  static_assert(AdditiveBiasAttention<Inner>,
                "RelativePositionAttention: the inner policy does not add an additive bias to its scores "
                "(supports_additive_bias): T5's relative position bias cannot run on it");
  static_assert(Inner::supports_causal, "RelativePositionAttention: the inner policy does not support causal masking");

 public:
  using PerCallWorkspace<RelativePositionAttention>::forward;
  using PerCallWorkspace<RelativePositionAttention>::forward_cached;
  using inner_type = Inner;
  static constexpr bool supports_causal = true;
  static constexpr bool supports_additive_bias = true;

  struct Workspace {
    typename Inner::Workspace inner;
    Matrix bias;                  // (n_q, n_k): one head's bias, plus the caller's additive mask
    std::vector<Index> buckets;   // the bucket of each relative position of the call
  };

  /// A sequence's keys and values (rows: positions; columns: kv_heads·head_dim), for decoding.
  class State {
   public:
    State() = default;
    State(Index capacity, Index kv_dim) : keys_(capacity, kv_dim), values_(capacity, kv_dim) {}
    Index size() const noexcept { return size_; }
    Index capacity() const noexcept { return keys_.rows(); }
    void clear() noexcept { size_ = 0; }

   private:
    friend class RelativePositionAttention;
    Matrix keys_, values_;
    Index size_ = 0;
  };

  /// Unbiased: T5's cross-attention.
  RelativePositionAttention() = default;
  explicit RelativePositionAttention(Inner inner) : inner_(std::move(inner)) {}
  /// Biased by `table` (num_buckets, n_heads), shared with the other layers of a stack (T5 keeps it in the first).
  RelativePositionAttention(std::shared_ptr<const Matrix> table, RelativePositionBuckets buckets, Inner inner = Inner{})
      : table_(std::move(table)), buckets_(buckets), inner_(std::move(inner)) {
    buckets_.validate("RelativePositionAttention");
    if (table_ && table_->rows() != buckets_.num_buckets)
      throw shape_error(detail::cat("RelativePositionAttention: the table has ", table_->rows(), " rows, expected ",
                                    buckets_.num_buckets, " (one per bucket)"));
  }

  const std::shared_ptr<const Matrix>& table() const noexcept { return table_; }
  const RelativePositionBuckets& buckets() const noexcept { return buckets_; }
  const Inner& inner() const noexcept { return inner_; }

  /// out (n_q, heads·d) from q (n_q, heads·d), k and v (n_k, kv_heads·d). Query i sits at position
  /// i + mask.causal_offset, key j at j.
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    const char* func = "RelativePositionAttention::forward";
    s.validate(func);
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim;
    if (table_ && table_->cols() != s.n_heads)
      throw shape_error(detail::cat(func, ": the table has ", table_->cols(), " heads, the call ", s.n_heads));
    const AttentionShape one{1, 1, dh, 1.0f};
    AttentionMask head_mask = mask;
    if (table_) {
      // relative position j − (i + offset) runs from −(n_q − 1 + offset) to n_k − 1 − offset
      const Index lowest = -(n_q - 1 + mask.causal_offset);
      ws.buckets.resize(static_cast<std::size_t>(n_k + n_q - 1));
      for (std::size_t r = 0; r < ws.buckets.size(); ++r) ws.buckets[r] = buckets_.bucket(lowest + Index(r));
      ensure_shape(ws.bias, n_q, n_k);
      head_mask.additive = ws.bias.data();
      head_mask.additive_stride = n_k;
    }
    for (Index h = 0; h < s.n_heads; ++h) {
      if (table_) {
        for (Index i = 0; i < n_q; ++i) {
          float* row = ws.bias.data() + i * n_k;
          const Index* bucket_of = ws.buckets.data() + (n_q - 1 - i);  // j − (i + offset) − lowest = j + n_q − 1 − i
          for (Index j = 0; j < n_k; ++j) row[j] = (*table_)(bucket_of[j], h);
          if (mask.additive != nullptr)
            for (Index j = 0; j < n_k; ++j) row[j] += mask.additive[i * mask.additive_stride + j];
        }
      }
      const Index g = s.kv_head(h);
      inner_.forward(one, block(q, 0, h * dh, n_q, dh), block(k, 0, g * dh, n_k, dh), block(v, 0, g * dh, n_k, dh),
                     head_mask, block(out, 0, h * dh, n_q, dh), ws.inner, ctx);
    }
  }

  /// A state for `capacity` positions.
  State make_state(Index capacity, Index n_kv_heads, Index head_dim) const {
    if (capacity < 1 || n_kv_heads < 1 || head_dim < 1)
      throw config_error(detail::cat("RelativePositionAttention::make_state: capacity ", capacity, ", kv heads ",
                                     n_kv_heads, ", head_dim ", head_dim, ", expected all >= 1"));
    return State(capacity, n_kv_heads * head_dim);
  }

  /// Appends k_new and v_new (n_new, kv_heads·d) at positions state.size()..; query row i attends causally from
  /// position state.size() + i. out (n_new, heads·d).
  void forward_cached(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k_new, ConstMatrixView v_new,
                      State& state, MatrixView out, Workspace& ws, const Context& ctx) const {
    const char* func = "RelativePositionAttention::forward_cached";
    const Index n = k_new.rows(), kv_dim = s.n_kv_heads * s.head_dim;
    check_shape(k_new, n, kv_dim, func, "k_new");
    check_shape(v_new, n, kv_dim, func, "v_new");
    if (state.keys_.cols() != kv_dim)
      throw shape_error(detail::cat(func, ": the state holds rows of ", state.keys_.cols(), ", expected ", kv_dim));
    if (state.size_ + n > state.capacity())
      throw config_error(detail::cat(func, ": ", n, " new positions after ", state.size_, " pass the state's capacity ",
                                     state.capacity()));
    state.keys_.middleRows(state.size_, n) = k_new;
    state.values_.middleRows(state.size_, n) = v_new;
    AttentionMask mask;
    mask.causal = true;
    mask.causal_offset = state.size_;
    state.size_ += n;
    forward(s, q, block(cview(state.keys_), 0, 0, state.size_, kv_dim), block(cview(state.values_), 0, 0, state.size_, kv_dim),
            mask, out, ws, ctx);
  }

 private:
  std::shared_ptr<const Matrix> table_;  // (num_buckets, n_heads), or none
  RelativePositionBuckets buckets_{};
  Inner inner_{};
};

static_assert(IncrementalAttention<RelativePositionAttention<>>);

}  // namespace polyformer
