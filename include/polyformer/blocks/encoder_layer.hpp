#pragma once
/// \file Transformer encoder layer: self-attention and FFN sublayers with residuals, norms placed
/// before (pre-norm) or after (post-norm) each, as torch.nn.TransformerEncoderLayer.

#include <string>
#include <utility>

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/multi_head.hpp"
#include "polyformer/blocks/block_names.hpp"
#include "polyformer/blocks/residual.hpp"
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
static_assert(TrainableFeedForward<FeedForward<Dense, GELU>> && TrainableFeedForward<FeedForward<Dense, SwiGLU>>);
static_assert(TrainableNorm<LayerNorm> && TrainableNorm<RMSNorm> && TrainableLinear<Dense>);
static_assert(TrainableAttention<FullAttention>);

/// One encoder layer composed from policies. Inputs are batches laid out as (batch·seq, d_model) rows.
/// post-norm: h = norm1(x + SA(x)); y = norm2(h + FF(h)).  pre-norm: h = x + SA(norm1(x)); y = h + FF(norm2(h)).
/// FF is `FFNType`: the dense FeedForward<Lin, Act> by default, or any FeedForwardPolicy (MixtureOfExperts).
/// The layer holds weights only and is used through `const`; a call's intermediates live in its Workspace.
template <AttentionPolicy Attn = FullAttention, LinearPolicy Lin = Dense, NormPolicy Norm = LayerNorm,
          ActivationPolicy Act = ReLU, NormPlacement Placement = NormPlacement::post, RotaryPolicy Rot = NoRotary,
          FeedForwardPolicy FFNType = FeedForward<Lin, Act>>
class EncoderLayer {
 public:
  using Attention = MultiHeadAttention<Attn, Lin, Rot>;
  using FFN = FFNType;
  using norm_type = Norm;
  static constexpr NormPlacement placement = Placement;

  /// One caller's scratch (reused across calls and across the layers of a stack).
  struct Workspace {
    typename Attention::Workspace attention;
    typename FFN::Workspace ffn;
    Matrix normed, sublayer, hidden;  // (rows, d_model) each
  };

  /// What a training forward keeps for its backward (one per call in flight): each sublayer's input and norm
  /// output, the masks, the sublayers' own, and the backward's scratch.
  struct Saved : SavedForward {
    SavedResidual attention_residual, ffn_residual;
    Matrix hidden;              ///< (rows, d): between the sublayers
    Matrix sublayer, scratch;   ///< (rows, d): a sublayer's output; backward's buffer
    Matrix grad_hidden;         ///< (rows, d): the gradient between the sublayers
    Index batch = 1;
    MaskCopy mask;
    typename Attention::Saved attention;
    typename FFN::Saved ffn;
  };

  /// The gradients of every trainable tensor of the layer.
  struct Gradients {
    typename Attention::Gradients self_attn{};
    typename FFN::Gradients ffn{};
    typename Norm::Gradients norm1{}, norm2{};
  };

  EncoderLayer() = default;
  EncoderLayer(Attention self_attn, FFN ffn, Norm norm1, Norm norm2)
      : self_attn_(std::move(self_attn)), ffn_(std::move(ffn)), norm1_(std::move(norm1)), norm2_(std::move(norm2)) {
    const Index d = self_attn_.d_model();
    if (ffn_.dim() != d || norm1_.dim() != d || norm2_.dim() != d)
      throw shape_error(detail::cat("EncoderLayer: d_model of attention ", d, ", FFN ", ffn_.dim(), ", norm1 ",
                                    norm1_.dim(), ", norm2 ", norm2_.dim(), ", expected all equal"));
  }

  Index d_model() const noexcept { return self_attn_.d_model(); }
  // Mutable access is for setting a model up (adapters, quantization); forward never needs it.
  Attention& self_attn() noexcept { return self_attn_; }
  FFN& ffn() noexcept { return ffn_; }
  Norm& norm1() noexcept { return norm1_; }
  Norm& norm2() noexcept { return norm2_; }
  const Attention& self_attn() const noexcept { return self_attn_; }
  const FFN& ffn() const noexcept { return ffn_; }
  const Norm& norm1() const noexcept { return norm1_; }
  const Norm& norm2() const noexcept { return norm2_; }

  /// Every tensor of the layer, named by `names` (PyTorch's by default) under `prefix`.
  void parameters(ParameterList& list, const std::string& prefix, const BlockNames& names = {}) {
    self_attn_.parameters(list, prefix + names.self_attn, names.attention);
    ffn_.parameters(list, prefix + names.ffn, names.ffn_names);
    norm1_.parameters(list, prefix + names.norm1);
    norm2_.parameters(list, prefix + names.norm2);
  }

  Gradients make_gradients() const requires TrainableNorm<Norm> && TrainableFeedForward<FFN> {
    return {self_attn_.make_gradients(), ffn_.make_gradients(), norm1_.make_gradients(), norm2_.make_gradients()};
  }
  /// The gradients, named as parameters() names the tensors.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g, const BlockNames& names = {}) const
    requires TrainableNorm<Norm> && TrainableFeedForward<FFN>
  {
    self_attn_.gradients(list, prefix + names.self_attn, g.self_attn, names.attention);
    ffn_.gradients(list, prefix + names.ffn, g.ffn, names.ffn_names);
    norm1_.gradients(list, prefix + names.norm1, g.norm1);
    norm2_.gradients(list, prefix + names.norm2, g.norm2);
  }

  /// forward() for training: y (batch·seq, d_model) from x, keeping in `saved` (with copies of x and the masks)
  /// what backward() needs. y must not alias x.
  void forward_train(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Saved& saved,
                     const Context& ctx) const requires TrainableNorm<Norm> && TrainableFeedForward<FFN> {
    const char* func = "EncoderLayer::forward_train";
    check_cols(x, d_model(), func, "x");
    check_shape(y, x.rows(), d_model(), func, "y");
    saved.batch = batch;
    saved.mask.assign(mask);
    const MaskSpec masks = saved.mask.spec();
    ensure_shape(saved.hidden, x.rows(), x.cols());
    residual_sublayer_train<Placement>(x, norm1_, view(saved.hidden), saved.attention_residual, saved.sublayer,
                                       [&](ConstMatrixView in, MatrixView out) {
                                         self_attn_.forward_train(in, batch, masks, out, saved.attention, ctx);
                                       });
    residual_sublayer_train<Placement>(cview(saved.hidden), norm2_, y, saved.ffn_residual, saved.sublayer,
                                       [&](ConstMatrixView in, MatrixView out) {
                                         ffn_.forward_train(in, out, saved.ffn, ctx);
                                       });
    saved.record();
  }

  /// The backward of forward_train: adds every tensor's gradient into g (frozen ones skipped) and writes
  /// dx (batch·seq, d_model) from dy; dx must not alias dy. Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView dy, MatrixView dx, Gradients& g, Saved& saved, const Context& ctx) const
    requires TrainableNorm<Norm> && TrainableFeedForward<FFN>
  {
    const char* func = "EncoderLayer::backward";
    saved.require_held(func);
    const Index n = saved.hidden.rows(), d = d_model();
    check_shape(dy, n, d, func, "dy");
    check_shape(dx, n, d, func, "dx");
    saved.attention.keep = saved.ffn.keep = saved.keep;
    ensure_shape(saved.grad_hidden, n, d);
    const MaskSpec masks = saved.mask.spec();
    residual_backward<Placement>(dy, view(saved.grad_hidden), norm2_, g.norm2, saved.ffn_residual, saved.scratch,
                                 [&](ConstMatrixView in, ConstMatrixView d_out, MatrixView d_in, bool accumulate) {
                                   ffn_.backward(in, d_out, d_in, g.ffn, saved.ffn, ctx, accumulate);
                                 });
    residual_backward<Placement>(cview(saved.grad_hidden), dx, norm1_, g.norm1, saved.attention_residual, saved.scratch,
                                 [&](ConstMatrixView in, ConstMatrixView d_out, MatrixView d_in, bool accumulate) {
                                   self_attn_.backward(in, saved.batch, masks, d_out, d_in, g.self_attn,
                                                       saved.attention, ctx, accumulate);
                                 });
    saved.take(func);  // released once the whole backward has run
  }

  /// y (batch·seq, d_model) from x (batch·seq, d_model); y must not alias x.
  void forward(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Workspace& ws,
               const Context& ctx) const {
    check_cols(x, d_model(), "EncoderLayer::forward", "x");
    check_shape(y, x.rows(), d_model(), "EncoderLayer::forward", "y");
    run(x, y, ws, ctx, [&](ConstMatrixView in, MatrixView out) { self_attn_.forward(in, batch, mask, out, ws.attention, ctx); });
  }

  /// Convenience: returns y for x (batch·seq, d_model), with a workspace of this call's.
  Matrix forward(const Matrix& x, Index batch = 1, const MaskSpec& mask = {}, const Context& ctx = {}) const {
    Matrix y(x.rows(), x.cols());
    Workspace ws;
    forward(cview(x), batch, mask, view(y), ws, ctx);
    return y;
  }

 private:
  /// The two sublayers around `attend(in, out)`, the self-attention.
  template <typename Attend>
  void run(ConstMatrixView x, MatrixView y, Workspace& ws, const Context& ctx, Attend&& attend) const {
    ensure_shape(ws.hidden, x.rows(), x.cols());
    residual_sublayer<Placement>(x, norm1_, view(ws.hidden), ws.normed, ws.sublayer, attend);
    residual_sublayer<Placement>(cview(ws.hidden), norm2_, y, ws.normed, ws.sublayer,
                                 [&](ConstMatrixView in, MatrixView out) { ffn_.forward(in, out, ws.ffn, ctx); });
  }

  Attention self_attn_{};
  FFN ffn_{};
  Norm norm1_{}, norm2_{};
};

}  // namespace polyformer
