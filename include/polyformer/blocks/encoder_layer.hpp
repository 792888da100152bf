#pragma once
/// \file Transformer encoder layer: self-attention and FFN sublayers with residuals, norms placed
/// before (pre-norm) or after (post-norm) each, as torch.nn.TransformerEncoderLayer.

#include <utility>

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/multi_head.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/ffn.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/layers/rotary.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

static_assert(FeedForwardPolicy<FeedForward<Dense, ReLU>> && FeedForwardPolicy<FeedForward<Dense, SwiGLU>>);

/// One encoder layer composed from policies. Inputs are batches laid out as (batch·seq, d_model) rows.
/// post-norm: h = norm1(x + SA(x)); y = norm2(h + FF(h)).  pre-norm: h = x + SA(norm1(x)); y = h + FF(norm2(h)).
/// FF is `FFNType`: the dense FeedForward<Lin, Act> by default, or any FeedForwardPolicy (MixtureOfExperts).
/// The object owns its workspace (every intermediate of the last forward, kept for a backward pass).
template <AttentionPolicy Attn = FullAttention, LinearPolicy Lin = Dense, NormPolicy Norm = LayerNorm,
          ActivationPolicy Act = ReLU, NormPlacement Placement = NormPlacement::post, RotaryPolicy Rot = NoRotary,
          FeedForwardPolicy FFNType = FeedForward<Lin, Act>>
class EncoderLayer {
 public:
  using Attention = MultiHeadAttention<Attn, Lin, Rot>;
  using FFN = FFNType;
  using norm_type = Norm;
  static constexpr NormPlacement placement = Placement;

  EncoderLayer() = default;
  EncoderLayer(Attention self_attn, FFN ffn, Norm norm1, Norm norm2)
      : self_attn_(std::move(self_attn)), ffn_(std::move(ffn)), norm1_(std::move(norm1)), norm2_(std::move(norm2)) {
    const Index d = self_attn_.d_model();
    if (ffn_.dim() != d || norm1_.dim() != d || norm2_.dim() != d)
      throw shape_error(detail::cat("EncoderLayer: d_model of attention ", d, ", FFN ", ffn_.dim(), ", norm1 ",
                                    norm1_.dim(), ", norm2 ", norm2_.dim(), ", expected all equal"));
  }

  Index d_model() const noexcept { return self_attn_.d_model(); }
  Attention& self_attn() noexcept { return self_attn_; }
  FFN& ffn() noexcept { return ffn_; }
  Norm& norm1() noexcept { return norm1_; }
  Norm& norm2() noexcept { return norm2_; }

  /// y (batch·seq, d_model) from x (batch·seq, d_model); y must not alias x.
  void forward(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, const Context& ctx) {
    check_cols(x, d_model(), "EncoderLayer::forward", "x");
    check_shape(y, x.rows(), d_model(), "EncoderLayer::forward", "y");
    run(x, y, ctx, [&](ConstMatrixView in, MatrixView out) { self_attn_.forward(in, batch, mask, out, ctx); });
  }

  /// Incremental causal forward of one sequence, the block of a decoder-only model (GPT, Llama): x (n_new,
  /// d_model) holds the positions after those in `cache`, which gains their keys and values. y must not
  /// alias x.
  template <typename State>
  void forward_cached(ConstMatrixView x, State& cache, MatrixView y, const Context& ctx) {
    static_assert(IncrementalAttention<Attn>, "EncoderLayer::forward_cached: the attention policy cannot decode "
                                              "incrementally (it does not model IncrementalAttention)");
    check_cols(x, d_model(), "EncoderLayer::forward_cached", "x");
    check_shape(y, x.rows(), d_model(), "EncoderLayer::forward_cached", "y");
    run(x, y, ctx, [&](ConstMatrixView in, MatrixView out) { self_attn_.forward_cached(in, cache, out, ctx); });
  }

  /// Convenience: returns y for x (batch·seq, d_model).
  Matrix forward(const Matrix& x, Index batch = 1, const MaskSpec& mask = {}, const Context& ctx = {}) {
    Matrix y(x.rows(), x.cols());
    forward(cview(x), batch, mask, view(y), ctx);
    return y;
  }

 private:
  /// The residual wiring around `attend(in, out)`, the self-attention sublayer.
  template <typename Attend>
  void run(ConstMatrixView x, MatrixView y, const Context& ctx, Attend&& attend) {
    const Index n = x.rows(), d = d_model();
    ensure_shape(attn_out_, n, d);
    ensure_shape(hidden_, n, d);
    ensure_shape(ffn_out_, n, d);
    if constexpr (Placement == NormPlacement::post) {
      attend(x, view(attn_out_));
      hidden_ = x + attn_out_;
      norm1_.forward(cview(hidden_), view(hidden_));
      ffn_.forward(cview(hidden_), view(ffn_out_), ctx);
      y = hidden_ + ffn_out_;
      norm2_.forward(cview(y), y);
    } else {
      ensure_shape(normed1_, n, d);
      ensure_shape(normed2_, n, d);
      norm1_.forward(x, view(normed1_));
      attend(cview(normed1_), view(attn_out_));
      hidden_ = x + attn_out_;
      norm2_.forward(cview(hidden_), view(normed2_));
      ffn_.forward(cview(normed2_), view(ffn_out_), ctx);
      y = hidden_ + ffn_out_;
    }
  }

  Attention self_attn_{};
  FFN ffn_{};
  Norm norm1_{}, norm2_{};
  Matrix attn_out_, hidden_, ffn_out_, normed1_, normed2_;  // (batch·seq, d_model) each
};

}  // namespace polyformer
