#pragma once
/// \file Multi-head (and grouped-query) attention over any attention policy (Vaswani et al. 2017, §3.2.2):
/// Q/K/V projections (linear policies), optional rotary positions, the policy's score/softmax/value
/// part per sequence, and the output projection.

#include <cmath>
#include <utility>

#include "polyformer/attention/mask.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/rotary.hpp"

namespace polyformer {

/// Head counts of a multi-head attention module.
struct HeadConfig {
  Index n_heads = 1;
  Index n_kv_heads = 0;  ///< 0 means n_heads (no grouping)
  Index head_dim = 0;    ///< 0 means d_model / n_heads
};

/// Projections around an attention policy. Inputs are batches laid out as (batch·seq, d_model) rows.
/// The object owns its projected Q/K/V and context buffers (kept for a backward pass).
template <AttentionPolicy Attn, LinearPolicy Lin, RotaryPolicy Rot = NoRotary>
class MultiHeadAttention {
 public:
  using attention_type = Attn;
  using linear_type = Lin;

  MultiHeadAttention() = default;

  /// q: d_model → heads·d, k and v: d_model → kv_heads·d, o: heads·d → d_model.
  MultiHeadAttention(Lin q, Lin k, Lin v, Lin o, HeadConfig heads, Attn attention = Attn{}, Rot rotary = Rot{})
      : q_proj_(std::move(q)), k_proj_(std::move(k)), v_proj_(std::move(v)), o_proj_(std::move(o)),
        attention_(std::move(attention)), rotary_(std::move(rotary)) {
    const Index d_model = q_proj_.in_features();
    shape_.n_heads = heads.n_heads;
    shape_.n_kv_heads = heads.n_kv_heads ? heads.n_kv_heads : heads.n_heads;
    if (heads.n_heads < 1) throw config_error(detail::cat("MultiHeadAttention: n_heads is ", heads.n_heads, ", expected >= 1"));
    if (!heads.head_dim && d_model % heads.n_heads != 0)
      throw config_error(detail::cat("MultiHeadAttention: d_model ", d_model, " is not divisible by n_heads ",
                                     heads.n_heads));
    shape_.head_dim = heads.head_dim ? heads.head_dim : d_model / heads.n_heads;
    shape_.scale = 1.0f / std::sqrt(static_cast<float>(shape_.head_dim));
    shape_.validate("MultiHeadAttention");
    const Index qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    const auto expect = [](const Lin& l, const char* name, Index in, Index out) {
      if (l.in_features() != in || l.out_features() != out)
        throw shape_error(detail::cat("MultiHeadAttention: ", name, " maps ", l.in_features(), " -> ",
                                      l.out_features(), ", expected ", in, " -> ", out));
    };
    expect(q_proj_, "q projection", d_model, qd);
    expect(k_proj_, "k projection", k_proj_.in_features(), kvd);
    expect(v_proj_, "v projection", k_proj_.in_features(), kvd);
    expect(o_proj_, "output projection", qd, d_model);
  }

  Index d_model() const noexcept { return q_proj_.in_features(); }
  const AttentionShape& shape() const noexcept { return shape_; }
  Lin& q_proj() noexcept { return q_proj_; }
  Lin& k_proj() noexcept { return k_proj_; }
  Lin& v_proj() noexcept { return v_proj_; }
  Lin& o_proj() noexcept { return o_proj_; }
  Attn& attention() noexcept { return attention_; }

  /// Self-attention: y (batch·seq, d_model) from x (batch·seq, d_model).
  void forward(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, const Context& ctx) {
    run("MultiHeadAttention::forward", x, batch, x, mask, y, ctx, true);
  }

  /// Cross-attention: queries from x (batch·seq, d_model), keys and values from memory (batch·mem, d_kv).
  void forward(ConstMatrixView x, Index batch, ConstMatrixView memory, const MaskSpec& mask, MatrixView y,
               const Context& ctx) {
    run("MultiHeadAttention::forward (cross)", x, batch, memory, mask, y, ctx, false);
  }

  /// The per-sequence decoding state of this module (a KV cache for FullAttention), for `capacity` positions.
  auto make_state(Index capacity) requires IncrementalAttention<Attn> {
    return attention_.make_state(capacity, shape_.n_kv_heads, shape_.head_dim);
  }

  /// Incremental causal self-attention of one sequence: x (n_new, d_model) holds positions state.size()
  /// onwards; their keys (after rotary) and values join `state`, and each new position attends to every
  /// held position up to its own. y (n_new, d_model). Prefill is one call with the whole prompt, decoding
  /// one call per token.
  template <typename State>
    requires IncrementalAttention<Attn> && std::same_as<State, typename Attn::State>
  void forward_cached(ConstMatrixView x, State& state, MatrixView y, const Context& ctx) {
    const char* func = "MultiHeadAttention::forward_cached";
    ctx.validate(func);
    check_cols(x, d_model(), func, "x");
    check_shape(y, x.rows(), d_model(), func, "y");
    const Index n = x.rows(), qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    const Index first_position = state.size();
    for (Matrix* m : {&q_, &ctx_}) ensure_shape(*m, n, qd);
    for (Matrix* m : {&k_, &v_}) ensure_shape(*m, n, kvd);
    q_proj_.forward(x, view(q_), ctx);
    k_proj_.forward(x, view(k_), ctx);
    v_proj_.forward(x, view(v_), ctx);
    if constexpr (Rot::enabled) {
      rotary_.apply(q_.data(), n, qd, shape_.n_heads, shape_.head_dim, first_position);
      rotary_.apply(k_.data(), n, kvd, shape_.n_kv_heads, shape_.head_dim, first_position);
    }
    attention_.forward_cached(shape_, cview(q_), cview(k_), cview(v_), state, view(ctx_), ctx);
    o_proj_.forward(cview(ctx_), y, ctx);
  }

  /// Precomputes what rotary positions need for positions [0, max_positions) (a no-op without rotary).
  void reserve_positions(Index max_positions) {
    if constexpr (Rot::enabled) rotary_.reserve(max_positions, shape_.head_dim);
  }

  const Matrix& queries() const noexcept { return q_; }   ///< (batch·seq, heads·d) after rotary
  const Matrix& keys() const noexcept { return k_; }      ///< (batch·n_k, kv_heads·d) after rotary
  const Matrix& values() const noexcept { return v_; }    ///< (batch·n_k, kv_heads·d)
  const Matrix& context() const noexcept { return ctx_; } ///< (batch·seq, heads·d) before the output projection

 private:
  void run(const char* func, ConstMatrixView x, Index batch, ConstMatrixView kv_in, const MaskSpec& mask,
           MatrixView y, const Context& ctx, bool self) {
    ctx.validate(func);
    check_cols(x, d_model(), func, "x");
    check_cols(kv_in, k_proj_.in_features(), func, self ? "x" : "memory");
    if (batch < 1 || x.rows() % batch != 0 || kv_in.rows() % batch != 0)
      throw shape_error(detail::cat(func, ": batch is ", batch, " but x has ", x.rows(), " rows and keys ",
                                    kv_in.rows(), ", expected multiples of batch"));
    check_shape(y, x.rows(), d_model(), func, "y");
    const Index n_q = x.rows() / batch, n_k = kv_in.rows() / batch;
    mask.validate(func, batch, n_q, n_k);
    const Index qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    ensure_shape(q_, x.rows(), qd);
    ensure_shape(k_, kv_in.rows(), kvd);
    ensure_shape(v_, kv_in.rows(), kvd);
    ensure_shape(ctx_, x.rows(), qd);
    q_proj_.forward(x, view(q_), ctx);
    k_proj_.forward(kv_in, view(k_), ctx);
    v_proj_.forward(kv_in, view(v_), ctx);
    if constexpr (Rot::enabled) {
      if (self)
        for (Index b = 0; b < batch; ++b) {
          rotary_.apply(q_.data() + b * n_q * qd, n_q, qd, shape_.n_heads, shape_.head_dim, 0);
          rotary_.apply(k_.data() + b * n_k * kvd, n_k, kvd, shape_.n_kv_heads, shape_.head_dim, 0);
        }
    }
    for (Index b = 0; b < batch; ++b)
      attention_.forward(shape_, block(cview(q_), b * n_q, 0, n_q, qd), block(cview(k_), b * n_k, 0, n_k, kvd),
                         block(cview(v_), b * n_k, 0, n_k, kvd), mask.for_sequence(b),
                         block(view(ctx_), b * n_q, 0, n_q, qd), ctx);
    o_proj_.forward(cview(ctx_), y, ctx);
  }

  Lin q_proj_{}, k_proj_{}, v_proj_{}, o_proj_{};
  Attn attention_{};
  Rot rotary_{};
  AttentionShape shape_{};
  Matrix q_, k_, v_, ctx_;
};

}  // namespace polyformer
