#pragma once
/// \file Transformer decoder layer: (causal) self-attention, cross-attention over an encoder's memory,
/// and FFN, with pre- or post-norm residual wiring, as torch.nn.TransformerDecoderLayer.

#include <concepts>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

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

/// The masks of a decoder: its self-attention (causal by default) and its cross-attention over memory.
struct DecoderMasks {
  MaskSpec self = MaskSpec::causal_mask();
  MaskSpec cross{};
};

/// The cross-attention choice of a decoder layer that has none: a decoder-only model's block (GPT, Llama).
struct NoCrossAttention {
  struct MemoryKV {};
  struct Workspace {};
  struct Saved {};
  struct Gradients {};
};

namespace detail {
/// The cross-attention module of a decoder layer: multi-head attention over policy CrossAttn, or none.
template <typename CrossAttn, typename Lin>
struct CrossAttentionModule {
  using type = MultiHeadAttention<CrossAttn, Lin, NoRotary>;
};
template <typename Lin>
struct CrossAttentionModule<NoCrossAttention, Lin> {
  using type = NoCrossAttention;
};
}  // namespace detail

/// One decoder layer composed from policies; `Attn` serves the self-attention and must support causal
/// masking, `CrossAttn` the attention over an encoder's memory, or NoCrossAttention for none.
/// post-norm: h = norm1(x + SA(x)); h2 = norm2(h + CA(h, m)); y = norm3(h2 + FF(h2)).
/// pre-norm:  h = x + SA(norm1(x)); h2 = h + CA(norm2(h), m); y = h2 + FF(norm3(h2)).
/// Without cross-attention: h = x + SA(norm1(x)); y = h + FF(norm2(h)) (pre-norm; post-norm likewise).
/// FF is `FFNType`: the dense FeedForward<Lin, Act> by default, or any FeedForwardPolicy (MixtureOfExperts).
/// The layer holds weights only and is used through `const`; a call's intermediates live in its Workspace,
/// and a decoding sequence's self-attention state and projected memory in its State.
template <AttentionPolicy Attn = FullAttention, LinearPolicy Lin = Dense, NormPolicy Norm = LayerNorm,
          ActivationPolicy Act = ReLU, NormPlacement Placement = NormPlacement::post, RotaryPolicy Rot = NoRotary,
          typename CrossAttn = FullAttention, FeedForwardPolicy FFNType = FeedForward<Lin, Act>>
  requires AttentionPolicy<CrossAttn> || std::same_as<CrossAttn, NoCrossAttention>
class DecoderLayer {
  static_assert(Attn::supports_causal,
                "DecoderLayer: the self-attention policy does not support causal masking (a decoder needs it)");

 public:
  /// Whether the layer attends to an encoder's memory.
  static constexpr bool has_cross_attention = !std::same_as<CrossAttn, NoCrossAttention>;
  using SelfAttention = MultiHeadAttention<Attn, Lin, Rot>;
  using CrossAttention = typename detail::CrossAttentionModule<CrossAttn, Lin>::type;
  using FFN = FFNType;
  using norm_type = Norm;
  static constexpr NormPlacement placement = Placement;

  /// One caller's scratch (reused across calls and across the layers of a stack).
  struct Workspace {
    typename SelfAttention::Workspace self_attention;
    [[no_unique_address]] typename CrossAttention::Workspace cross_attention;
    typename FFN::Workspace ffn;
    Matrix normed, sublayer, hidden1, hidden2;  // (rows, d_model) each
  };

  /// What one sequence carries while it decodes: its self-attention state and, with cross-attention, the keys
  /// and values of its memory projected once (with the memory's key padding, if any).
  struct State {
    typename Attn::State self;
    [[no_unique_address]] typename CrossAttention::MemoryKV memory;
    Matrix memory_padding;  // (1, mem), nonzero = padded; empty when none

    Index size() const noexcept { return self.size(); }  ///< positions decoded so far
  };

  /// What a training forward keeps for its backward (one per call in flight): each sublayer's input and norm
  /// output, a copy of the memory and of the masks, the sublayers' own, and the backward's scratch.
  struct Saved : SavedForward {
    SavedResidual self_residual, cross_residual, ffn_residual;
    Matrix hidden1, hidden2;                  ///< (rows, d): after the first and (with cross-attention) second sublayer
    Matrix sublayer, scratch;                 ///< (rows, d): a sublayer's output; backward's buffer
    Matrix grad_hidden1, grad_hidden2;        ///< (rows, d): the gradients there
    Matrix memory;                            ///< (batch·mem, d): with cross-attention
    Index batch = 1;
    MaskCopy self_mask, cross_mask;
    typename SelfAttention::Saved self_attention;
    std::conditional_t<has_cross_attention, typename CrossAttention::Saved, std::monostate> cross_attention{};
    typename FFN::Saved ffn;
  };

  /// The gradients of every trainable tensor of the layer.
  struct Gradients {
    typename SelfAttention::Gradients self_attn{};
    std::conditional_t<has_cross_attention, typename CrossAttention::Gradients, std::monostate> cross_attn{};
    typename FFN::Gradients ffn{};
    typename Norm::Gradients norm1{}, norm2{};
    std::conditional_t<has_cross_attention, typename Norm::Gradients, std::monostate> norm3{};
  };

  DecoderLayer() = default;
  /// With cross-attention: the norms before/after the self-attention, the cross-attention and the FFN.
  DecoderLayer(SelfAttention self_attn, CrossAttention cross_attn, FFN ffn, Norm norm1, Norm norm2, Norm norm3)
    requires has_cross_attention
      : self_attn_(std::move(self_attn)), cross_attn_(std::move(cross_attn)), ffn_(std::move(ffn)),
        norm1_(std::move(norm1)), norm2_(std::move(norm2)), norm3_(std::move(norm3)) {
    const Index d = self_attn_.d_model();
    if (cross_attn_.d_model() != d || ffn_.dim() != d || norm1_.dim() != d || norm2_.dim() != d || norm3_.dim() != d)
      throw shape_error(detail::cat("DecoderLayer: d_model of self-attention ", d, ", cross-attention ",
                                    cross_attn_.d_model(), ", FFN ", ffn_.dim(), ", norms ", norm1_.dim(), "/",
                                    norm2_.dim(), "/", norm3_.dim(), ", expected all equal"));
  }
  /// Without cross-attention: the norms of the self-attention and of the FFN.
  DecoderLayer(SelfAttention self_attn, FFN ffn, Norm norm1, Norm norm2) requires(!has_cross_attention)
      : self_attn_(std::move(self_attn)), ffn_(std::move(ffn)), norm1_(std::move(norm1)), norm2_(std::move(norm2)) {
    const Index d = self_attn_.d_model();
    if (ffn_.dim() != d || norm1_.dim() != d || norm2_.dim() != d)
      throw shape_error(detail::cat("DecoderLayer: d_model of self-attention ", d, ", FFN ", ffn_.dim(), ", norms ",
                                    norm1_.dim(), "/", norm2_.dim(), ", expected all equal"));
  }

  Index d_model() const noexcept { return self_attn_.d_model(); }
  // Mutable access is for setting a model up (adapters, quantization); forward never needs it.
  SelfAttention& self_attn() noexcept { return self_attn_; }
  CrossAttention& cross_attn() noexcept requires has_cross_attention { return cross_attn_; }
  FFN& ffn() noexcept { return ffn_; }
  Norm& norm1() noexcept { return norm1_; }
  Norm& norm2() noexcept { return norm2_; }
  Norm& norm3() noexcept requires has_cross_attention { return norm3_; }
  const SelfAttention& self_attn() const noexcept { return self_attn_; }
  const CrossAttention& cross_attn() const noexcept requires has_cross_attention { return cross_attn_; }
  const FFN& ffn() const noexcept { return ffn_; }
  const Norm& norm1() const noexcept { return norm1_; }
  const Norm& norm2() const noexcept { return norm2_; }
  const Norm& norm3() const noexcept requires has_cross_attention { return norm3_; }

  /// Every tensor of the layer, named by `names` (PyTorch's by default) under `prefix`.
  void parameters(ParameterList& list, const std::string& prefix, const BlockNames& names = {}) {
    self_attn_.parameters(list, prefix + names.self_attn, names.attention);
    if constexpr (has_cross_attention) cross_attn_.parameters(list, prefix + names.cross_attn, names.attention);
    ffn_.parameters(list, prefix + names.ffn, names.ffn_names);
    norm1_.parameters(list, prefix + names.norm1);
    norm2_.parameters(list, prefix + names.norm2);
    if constexpr (has_cross_attention) norm3_.parameters(list, prefix + names.norm3);
  }

  Gradients make_gradients() const requires TrainableNorm<Norm> && TrainableFeedForward<FFN> {
    Gradients g;
    g.self_attn = self_attn_.make_gradients();
    g.ffn = ffn_.make_gradients();
    g.norm1 = norm1_.make_gradients();
    g.norm2 = norm2_.make_gradients();
    if constexpr (has_cross_attention) {
      g.cross_attn = cross_attn_.make_gradients();
      g.norm3 = norm3_.make_gradients();
    }
    return g;
  }
  /// The gradients, named as parameters() names the tensors.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g, const BlockNames& names = {}) const
    requires TrainableNorm<Norm> && TrainableFeedForward<FFN>
  {
    self_attn_.gradients(list, prefix + names.self_attn, g.self_attn, names.attention);
    if constexpr (has_cross_attention) cross_attn_.gradients(list, prefix + names.cross_attn, g.cross_attn, names.attention);
    ffn_.gradients(list, prefix + names.ffn, g.ffn, names.ffn_names);
    norm1_.gradients(list, prefix + names.norm1, g.norm1);
    norm2_.gradients(list, prefix + names.norm2, g.norm2);
    if constexpr (has_cross_attention) norm3_.gradients(list, prefix + names.norm3, g.norm3);
  }

  /// forward() for training: y from x and memory, keeping in `saved` (with copies of the memory and the masks)
  /// what backward() needs. y must not alias x.
  void forward_train(ConstMatrixView x, ConstMatrixView memory, Index batch, const DecoderMasks& masks, MatrixView y,
                     Saved& saved, const Context& ctx) const
    requires has_cross_attention && TrainableNorm<Norm> && TrainableFeedForward<FFN>
  {
    saved.memory = memory;
    saved.cross_mask.assign(masks.cross);
    train(x, batch, masks.self, y, saved, ctx);
  }
  /// Without cross-attention: forward() for training under `mask` (causal by default).
  void forward_train(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Saved& saved,
                     const Context& ctx) const
    requires(!has_cross_attention) && TrainableNorm<Norm> && TrainableFeedForward<FFN>
  {
    train(x, batch, mask, y, saved, ctx);
  }

  /// The backward of forward_train: adds every tensor's gradient into g and writes dx (batch·seq, d_model) and
  /// dmemory (batch·mem, d_model; added to with accumulate_dmemory; a view of no columns skips it) from dy; neither
  /// may alias dy. Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView dy, MatrixView dx, MatrixView dmemory, Gradients& g, Saved& saved, const Context& ctx,
                bool accumulate_dmemory = false) const
    requires has_cross_attention && TrainableNorm<Norm> && TrainableFeedForward<FFN>
  {
    if (dmemory.cols() != 0)
      check_shape(dmemory, saved.memory.rows(), saved.memory.cols(), "DecoderLayer::backward", "dmemory");
    run_backward(dy, dx, dmemory, g, saved, ctx, accumulate_dmemory);
  }
  /// Without cross-attention: the backward of forward_train, dx from dy.
  void backward(ConstMatrixView dy, MatrixView dx, Gradients& g, Saved& saved, const Context& ctx) const
    requires(!has_cross_attention) && TrainableNorm<Norm> && TrainableFeedForward<FFN>
  {
    run_backward(dy, dx, dx, g, saved, ctx, false);
  }

  /// y (batch·seq, d_model) from x (batch·seq, d_model) and memory (batch·mem, d_model); y must not alias x.
  void forward(ConstMatrixView x, ConstMatrixView memory, Index batch, const DecoderMasks& masks, MatrixView y,
               Workspace& ws, const Context& ctx) const requires has_cross_attention {
    check_cols(x, d_model(), "DecoderLayer::forward", "x");
    check_shape(y, x.rows(), d_model(), "DecoderLayer::forward", "y");
    run(x, y, ws, ctx,
        [&](ConstMatrixView in, MatrixView out) { self_attn_.forward(in, batch, masks.self, out, ws.self_attention, ctx); },
        [&](ConstMatrixView in, MatrixView out) {
          cross_attn_.forward(in, batch, memory, masks.cross, out, ws.cross_attention, ctx);
        });
  }

  /// Without cross-attention: y (batch·seq, d_model) from x under `mask` (causal by default).
  void forward(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Workspace& ws,
               const Context& ctx) const requires(!has_cross_attention) {
    check_cols(x, d_model(), "DecoderLayer::forward", "x");
    check_shape(y, x.rows(), d_model(), "DecoderLayer::forward", "y");
    run(x, y, ws, ctx,
        [&](ConstMatrixView in, MatrixView out) { self_attn_.forward(in, batch, mask, out, ws.self_attention, ctx); },
        nullptr);
  }

  /// Convenience: returns y, with a workspace of this call's.
  Matrix forward(const Matrix& x, const Matrix& memory, Index batch = 1, const DecoderMasks& masks = {},
                 const Context& ctx = {}) const requires has_cross_attention {
    Matrix y(x.rows(), x.cols());
    Workspace ws;
    forward(cview(x), cview(memory), batch, masks, view(y), ws, ctx);
    return y;
  }

  /// The decoding state of one sequence over memory (mem, d_model), for `capacity` positions: the memory's
  /// keys and values are projected here, once. memory_key_padding (1, mem), nonzero = padded, is optional.
  State make_state(Index capacity, ConstMatrixView memory, const Context& ctx,
                   std::optional<ConstMatrixRef> memory_key_padding = std::nullopt) const
    requires IncrementalAttention<Attn> && has_cross_attention
  {
    State state{self_attn_.make_state(capacity), {}, {}};
    cross_attn_.project_memory(memory, state.memory, ctx);
    if (memory_key_padding) {
      check_shape(memory_key_padding->view(), 1, memory.rows(), "DecoderLayer::make_state", "memory key padding");
      state.memory_padding = memory_key_padding->view();
    }
    return state;
  }
  /// Without cross-attention: the self-attention state of one sequence, for `capacity` positions.
  State make_state(Index capacity) const requires IncrementalAttention<Attn> && (!has_cross_attention) {
    return State{self_attn_.make_state(capacity), {}, {}};
  }

  /// Incremental causal forward of one sequence: x (n_new, d_model) holds the positions after those in
  /// state (their keys and values join it); each attends causally to itself and to the whole memory.
  /// Equal to forward() over all positions with a causal self-attention mask. y must not alias x.
  void forward_cached(ConstMatrixView x, State& state, MatrixView y, Workspace& ws, const Context& ctx) const
    requires IncrementalAttention<Attn>
  {
    check_cols(x, d_model(), "DecoderLayer::forward_cached", "x");
    check_shape(y, x.rows(), d_model(), "DecoderLayer::forward_cached", "y");
    const auto self = [&](ConstMatrixView in, MatrixView out) {
      self_attn_.forward_cached(in, state.self, out, ws.self_attention, ctx);
    };
    if constexpr (has_cross_attention) {
      MaskSpec cross;
      if (state.memory_padding.size() != 0) cross.key_padding = ConstMatrixRef(state.memory_padding);
      run(x, y, ws, ctx, self, [&](ConstMatrixView in, MatrixView out) {
        cross_attn_.forward(in, state.memory, cross, out, ws.cross_attention, ctx);
      });
    } else {
      run(x, y, ws, ctx, self, nullptr);
    }
  }

  /// Without cross-attention, several sequences in one pass: x (Σ rows[i], d_model) holds rows[i] new positions
  /// of sequence i, continuing its self-attention state states[i] (MultiHeadAttention::forward_cached). Every
  /// weight is read once for the whole batch.
  template <typename SelfState>
    requires IncrementalAttention<Attn> && (!has_cross_attention) && std::same_as<SelfState, typename Attn::State>
  void forward_cached(ConstMatrixView x, std::span<SelfState* const> states, std::span<const Index> rows,
                      MatrixView y, Workspace& ws, const Context& ctx) const {
    check_cols(x, d_model(), "DecoderLayer::forward_cached", "x");
    check_shape(y, x.rows(), d_model(), "DecoderLayer::forward_cached", "y");
    run(x, y, ws, ctx, [&](ConstMatrixView in, MatrixView out) {
      self_attn_.forward_cached(in, states, rows, out, ws.self_attention, ctx);
    }, nullptr);
  }

 private:
  /// The training forward: the sublayers' training forwards, each residual kept.
  void train(ConstMatrixView x, Index batch, const MaskSpec& self_mask, MatrixView y, Saved& saved,
             const Context& ctx) const {
    const char* func = "DecoderLayer::forward_train";
    check_cols(x, d_model(), func, "x");
    check_shape(y, x.rows(), d_model(), func, "y");
    saved.batch = batch;
    saved.self_mask.assign(self_mask);
    const MaskSpec self_masks = saved.self_mask.spec();
    ensure_shape(saved.hidden1, x.rows(), x.cols());
    residual_sublayer_train<Placement>(x, norm1_, view(saved.hidden1), saved.self_residual, saved.sublayer,
                                       [&](ConstMatrixView in, MatrixView out) {
                                         self_attn_.forward_train(in, batch, self_masks, out, saved.self_attention, ctx);
                                       });
    const auto ffn = [&](ConstMatrixView in, MatrixView out) { ffn_.forward_train(in, out, saved.ffn, ctx); };
    if constexpr (has_cross_attention) {
      const MaskSpec cross_masks = saved.cross_mask.spec();
      ensure_shape(saved.hidden2, x.rows(), x.cols());
      residual_sublayer_train<Placement>(cview(saved.hidden1), norm2_, view(saved.hidden2), saved.cross_residual,
                                         saved.sublayer, [&](ConstMatrixView in, MatrixView out) {
                                           cross_attn_.forward_train(in, batch, cview(saved.memory), cross_masks, out,
                                                                     saved.cross_attention, ctx);
                                         });
      residual_sublayer_train<Placement>(cview(saved.hidden2), norm3_, y, saved.ffn_residual, saved.sublayer, ffn);
    } else {
      residual_sublayer_train<Placement>(cview(saved.hidden1), norm2_, y, saved.ffn_residual, saved.sublayer, ffn);
    }
    saved.record();
  }

  /// The backward: the sublayers in reverse, dmemory from the cross-attention (with cross-attention).
  void run_backward(ConstMatrixView dy, MatrixView dx, MatrixView dmemory, Gradients& g, Saved& saved,
                    const Context& ctx, bool accumulate_dmemory) const {
    const char* func = "DecoderLayer::backward";
    saved.require_held(func);
    const Index n = saved.hidden1.rows(), d = d_model();
    check_shape(dy, n, d, func, "dy");
    check_shape(dx, n, d, func, "dx");
    saved.self_attention.keep = saved.ffn.keep = saved.keep;
    ensure_shape(saved.grad_hidden1, n, d);
    const auto ffn = [&](ConstMatrixView in, ConstMatrixView d_out, MatrixView d_in, bool accumulate) {
      ffn_.backward(in, d_out, d_in, g.ffn, saved.ffn, ctx, accumulate);
    };
    if constexpr (has_cross_attention) {
      saved.cross_attention.keep = saved.keep;
      ensure_shape(saved.grad_hidden2, n, d);
      residual_backward<Placement>(dy, view(saved.grad_hidden2), norm3_, g.norm3, saved.ffn_residual, saved.scratch, ffn);
      const MaskSpec cross_masks = saved.cross_mask.spec();
      residual_backward<Placement>(cview(saved.grad_hidden2), view(saved.grad_hidden1), norm2_, g.norm2,
                                   saved.cross_residual, saved.scratch,
                                   [&](ConstMatrixView in, ConstMatrixView d_out, MatrixView d_in, bool accumulate) {
                                     cross_attn_.backward(in, saved.batch, cview(saved.memory), cross_masks, d_out, d_in,
                                                          dmemory, g.cross_attn, saved.cross_attention, ctx, accumulate,
                                                          accumulate_dmemory);
                                   });
    } else {
      (void)dmemory, (void)accumulate_dmemory;
      residual_backward<Placement>(dy, view(saved.grad_hidden1), norm2_, g.norm2, saved.ffn_residual, saved.scratch, ffn);
    }
    const MaskSpec self_masks = saved.self_mask.spec();
    residual_backward<Placement>(cview(saved.grad_hidden1), dx, norm1_, g.norm1, saved.self_residual, saved.scratch,
                                 [&](ConstMatrixView in, ConstMatrixView d_out, MatrixView d_in, bool accumulate) {
                                   self_attn_.backward(in, saved.batch, self_masks, d_out, d_in, g.self_attn,
                                                       saved.self_attention, ctx, accumulate);
                                 });
    saved.take(func);  // released once the whole backward has run
  }

  /// The sublayers around `self_attend` and (with cross-attention) `cross_attend`, then the FFN.
  template <typename SelfAttend, typename CrossAttend>
  void run(ConstMatrixView x, MatrixView y, Workspace& ws, const Context& ctx, SelfAttend&& self_attend,
           CrossAttend&& cross_attend) const {
    const auto ffn = [&](ConstMatrixView in, MatrixView out) { ffn_.forward(in, out, ws.ffn, ctx); };
    ensure_shape(ws.hidden1, x.rows(), x.cols());
    residual_sublayer<Placement>(x, norm1_, view(ws.hidden1), ws.normed, ws.sublayer, self_attend);
    if constexpr (has_cross_attention) {
      ensure_shape(ws.hidden2, x.rows(), x.cols());
      residual_sublayer<Placement>(cview(ws.hidden1), norm2_, view(ws.hidden2), ws.normed, ws.sublayer, cross_attend);
      residual_sublayer<Placement>(cview(ws.hidden2), norm3_, y, ws.normed, ws.sublayer, ffn);
    } else {
      (void)cross_attend;
      residual_sublayer<Placement>(cview(ws.hidden1), norm2_, y, ws.normed, ws.sublayer, ffn);
    }
  }

  SelfAttention self_attn_{};
  [[no_unique_address]] CrossAttention cross_attn_{};
  FFN ffn_{};
  Norm norm1_{}, norm2_{};
  [[no_unique_address]] std::conditional_t<has_cross_attention, Norm, NoCrossAttention> norm3_{};
};

}  // namespace polyformer
