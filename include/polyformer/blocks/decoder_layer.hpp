#pragma once
/// \file Transformer decoder layer: (causal) self-attention, cross-attention over an encoder's memory,
/// and FFN, with pre- or post-norm residual wiring, as torch.nn.TransformerDecoderLayer.

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

/// The masks of a decoder: its self-attention (causal by default) and its cross-attention over memory.
struct DecoderMasks {
  MaskSpec self = MaskSpec::causal_mask();
  MaskSpec cross{};
};

/// One decoder layer composed from policies; `Attn` serves the self-attention and must support causal
/// masking, `CrossAttn` the attention over memory.
/// post-norm: h = norm1(x + SA(x)); h2 = norm2(h + CA(h, m)); y = norm3(h2 + FF(h2)).
/// pre-norm:  h = x + SA(norm1(x)); h2 = h + CA(norm2(h), m); y = h2 + FF(norm3(h2)).
/// FF is `FFNType`: the dense FeedForward<Lin, Act> by default, or any FeedForwardPolicy (MixtureOfExperts).
template <AttentionPolicy Attn = FullAttention, LinearPolicy Lin = Dense, NormPolicy Norm = LayerNorm,
          ActivationPolicy Act = ReLU, NormPlacement Placement = NormPlacement::post, RotaryPolicy Rot = NoRotary,
          AttentionPolicy CrossAttn = FullAttention, FeedForwardPolicy FFNType = FeedForward<Lin, Act>>
class DecoderLayer {
  static_assert(Attn::supports_causal,
                "DecoderLayer: the self-attention policy does not support causal masking (a decoder needs it)");

 public:
  using SelfAttention = MultiHeadAttention<Attn, Lin, Rot>;
  using CrossAttention = MultiHeadAttention<CrossAttn, Lin, NoRotary>;
  using FFN = FFNType;
  using norm_type = Norm;
  static constexpr NormPlacement placement = Placement;

  DecoderLayer() = default;
  DecoderLayer(SelfAttention self_attn, CrossAttention cross_attn, FFN ffn, Norm norm1, Norm norm2, Norm norm3)
      : self_attn_(std::move(self_attn)), cross_attn_(std::move(cross_attn)), ffn_(std::move(ffn)),
        norm1_(std::move(norm1)), norm2_(std::move(norm2)), norm3_(std::move(norm3)) {
    const Index d = self_attn_.d_model();
    if (cross_attn_.d_model() != d || ffn_.dim() != d || norm1_.dim() != d || norm2_.dim() != d || norm3_.dim() != d)
      throw shape_error(detail::cat("DecoderLayer: d_model of self-attention ", d, ", cross-attention ",
                                    cross_attn_.d_model(), ", FFN ", ffn_.dim(), ", norms ", norm1_.dim(), "/",
                                    norm2_.dim(), "/", norm3_.dim(), ", expected all equal"));
  }

  Index d_model() const noexcept { return self_attn_.d_model(); }
  SelfAttention& self_attn() noexcept { return self_attn_; }
  CrossAttention& cross_attn() noexcept { return cross_attn_; }
  FFN& ffn() noexcept { return ffn_; }
  Norm& norm1() noexcept { return norm1_; }
  Norm& norm2() noexcept { return norm2_; }
  Norm& norm3() noexcept { return norm3_; }

  /// y (batch·seq, d_model) from x (batch·seq, d_model) and memory (batch·mem, d_model); y must not alias x.
  void forward(ConstMatrixView x, ConstMatrixView memory, Index batch, const DecoderMasks& masks, MatrixView y,
               const Context& ctx) {
    check_cols(x, d_model(), "DecoderLayer::forward", "x");
    check_shape(y, x.rows(), d_model(), "DecoderLayer::forward", "y");
    const Index n = x.rows(), d = d_model();
    for (Matrix* m : {&self_out_, &hidden1_, &cross_out_, &hidden2_, &ffn_out_}) ensure_shape(*m, n, d);
    if constexpr (Placement == NormPlacement::post) {
      self_attn_.forward(x, batch, masks.self, view(self_out_), ctx);
      hidden1_ = x + self_out_;
      norm1_.forward(cview(hidden1_), view(hidden1_));
      cross_attn_.forward(cview(hidden1_), batch, memory, masks.cross, view(cross_out_), ctx);
      hidden2_ = hidden1_ + cross_out_;
      norm2_.forward(cview(hidden2_), view(hidden2_));
      ffn_.forward(cview(hidden2_), view(ffn_out_), ctx);
      y = hidden2_ + ffn_out_;
      norm3_.forward(cview(y), y);
    } else {
      for (Matrix* m : {&normed1_, &normed2_, &normed3_}) ensure_shape(*m, n, d);
      norm1_.forward(x, view(normed1_));
      self_attn_.forward(cview(normed1_), batch, masks.self, view(self_out_), ctx);
      hidden1_ = x + self_out_;
      norm2_.forward(cview(hidden1_), view(normed2_));
      cross_attn_.forward(cview(normed2_), batch, memory, masks.cross, view(cross_out_), ctx);
      hidden2_ = hidden1_ + cross_out_;
      norm3_.forward(cview(hidden2_), view(normed3_));
      ffn_.forward(cview(normed3_), view(ffn_out_), ctx);
      y = hidden2_ + ffn_out_;
    }
  }

  /// Convenience: returns y.
  Matrix forward(const Matrix& x, const Matrix& memory, Index batch = 1, const DecoderMasks& masks = {},
                 const Context& ctx = {}) {
    Matrix y(x.rows(), x.cols());
    forward(cview(x), cview(memory), batch, masks, view(y), ctx);
    return y;
  }

 private:
  SelfAttention self_attn_{};
  CrossAttention cross_attn_{};
  FFN ffn_{};
  Norm norm1_{}, norm2_{}, norm3_{};
  Matrix self_out_, hidden1_, cross_out_, hidden2_, ffn_out_, normed1_, normed2_, normed3_;  // (batch·seq, d)
};

}  // namespace polyformer
