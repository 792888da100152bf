#pragma once
/// \file A stack of layers with an optional absolute position policy on its input and an optional final norm:
/// torch.nn.TransformerEncoder over encoder layers, torch.nn.TransformerDecoder over decoder layers (which
/// also attend to a memory, and decode incrementally).

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/attention/mask.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/position.hpp"

namespace polyformer {

/// Layers applied in order; x (batch·seq, d_model) [and memory (batch·mem, d_model)] → y (batch·seq, d_model).
/// Weights only, used through `const`; one Workspace per caller serves every layer in turn.
template <typename Layer, typename Position = NoPosition>
class LayerStack {
  static constexpr bool decoder = requires { typename Layer::CrossAttention; };
  static constexpr const char* kind = decoder ? "Decoder" : "Encoder";

 public:
  using layer_type = Layer;
  using norm_type = typename Layer::norm_type;

  struct Workspace {
    typename Layer::Workspace layer;
    Matrix buffer, input;  // (batch·seq, d_model): the ping-pong partner of y, the input with positions
  };

  /// What a training forward keeps for its backward (one per call in flight). With `checkpoint` set before the
  /// forward, only each layer's input is kept and the backward runs each layer's training forward again just
  /// before its backward (activation checkpointing: memory of one layer's intermediates, one more forward's work).
  struct Saved : SavedForward {
    bool checkpoint = false;  ///< set by the caller: recompute each layer's intermediates during backward
    bool checkpointed = false;  ///< how the held forward ran (set by it; backward follows this, not `checkpoint`)
    std::vector<typename Layer::Saved> layers;  ///< one per layer (one in all when checkpointing)
    std::vector<Matrix> inputs;                 ///< checkpointing: each layer's input (rows, d)
    Matrix input, buffer, last;  ///< the input with positions; a ping-pong partner; the last layer's output
    Matrix grad, grad_buffer;    ///< backward's ping-pong pair (rows, d)
    Matrix memory;               ///< decoder: a copy of the memory
    Index batch = 1;
    MaskCopy self_mask, cross_mask;
  };

  /// Every layer's gradients, the final norm's (empty without one) and the position table's.
  struct Gradients {
    std::vector<typename Layer::Gradients> layers;
    typename norm_type::Gradients norm{};
    typename Position::Gradients position{};
  };

  LayerStack() = default;
  explicit LayerStack(std::vector<Layer> layers, std::optional<norm_type> final_norm = std::nullopt,
                      Position position = Position{})
      : layers_(std::move(layers)), final_norm_(std::move(final_norm)), position_(std::move(position)) {
    if (layers_.empty()) throw config_error(detail::cat(kind, ": no layers, expected at least 1"));
    for (std::size_t i = 1; i < layers_.size(); ++i)
      if (layers_[i].d_model() != layers_[0].d_model())
        throw shape_error(detail::cat(kind, ": layer ", i, " has d_model ", layers_[i].d_model(), ", expected ",
                                      layers_[0].d_model()));
    if (final_norm_ && final_norm_->dim() != d_model())
      throw shape_error(detail::cat(kind, ": final norm has dim ", final_norm_->dim(), ", expected ", d_model()));
  }

  Index d_model() const noexcept { return layers_.front().d_model(); }
  std::vector<Layer>& layers() noexcept { return layers_; }
  const std::vector<Layer>& layers() const noexcept { return layers_; }
  std::optional<norm_type>& final_norm() noexcept { return final_norm_; }
  const std::optional<norm_type>& final_norm() const noexcept { return final_norm_; }
  Position& position() noexcept { return position_; }
  const Position& position() const noexcept { return position_; }

  /// "layers.<i>.*" (each named by `names`), the final norm as "norm.*" and a learned position table as
  /// "position.*", under `prefix`: torch.nn.TransformerEncoder / TransformerDecoder's names.
  void parameters(ParameterList& list, const std::string& prefix, const BlockNames& names = {}) {
    for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i].parameters(list, detail::cat(prefix, "layers.", i, "."), names);
    if (final_norm_) final_norm_->parameters(list, prefix + "norm.");
    if constexpr (HasParameters<Position>) position_.parameters(list, prefix + "position.");
  }

  Gradients make_gradients() const {
    Gradients g;
    for (const Layer& layer : layers_) g.layers.push_back(layer.make_gradients());
    if (final_norm_) g.norm = final_norm_->make_gradients();
    g.position = position_.make_gradients();
    return g;
  }
  /// The gradients, named as parameters() names the tensors.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g, const BlockNames& names = {}) const {
    for (std::size_t i = 0; i < layers_.size(); ++i)
      layers_[i].gradients(list, detail::cat(prefix, "layers.", i, "."), g.layers[i], names);
    if (final_norm_) final_norm_->gradients(list, prefix + "norm.", g.norm);
    if constexpr (HasParameters<Position>) position_.gradients(list, prefix + "position.", g.position);
  }

  /// Encoder stack for training: forward() keeping in `saved` what backward() needs. y must not alias x.
  void forward_train(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Saved& saved,
                     const Context& ctx) const requires(!decoder) {
    saved.self_mask.assign(mask);
    train(x, batch, y, saved, ctx);
  }
  /// Decoder stack for training: y from x and memory (a copy of which is kept).
  void forward_train(ConstMatrixView x, ConstMatrixView memory, Index batch, const DecoderMasks& masks, MatrixView y,
                     Saved& saved, const Context& ctx) const requires decoder {
    saved.memory = memory;
    saved.self_mask.assign(masks.self);
    saved.cross_mask.assign(masks.cross);
    train(x, batch, y, saved, ctx);
  }

  /// Encoder stack's backward: adds every tensor's gradient into g and writes dx (batch·seq, d_model) from dy.
  /// Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView dy, MatrixView dx, Gradients& g, Saved& saved, const Context& ctx) const
    requires(!decoder) {
    run_backward(dy, dx, dx, g, saved, ctx);
  }
  /// Decoder stack's backward: dx and dmemory (batch·mem, d_model; the sum over every layer's cross-attention; a
  /// view of no columns skips it) from dy.
  void backward(ConstMatrixView dy, MatrixView dx, MatrixView dmemory, Gradients& g, Saved& saved,
                const Context& ctx) const requires decoder {
    if (dmemory.cols() != 0) check_shape(dmemory, saved.memory.rows(), saved.memory.cols(), "Decoder::backward", "dmemory");
    run_backward(dy, dx, dmemory, g, saved, ctx);
  }

  /// Encoder stack: y (batch·seq, d_model) from x; y must not alias x.
  void forward(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Workspace& ws,
               const Context& ctx) const requires(!decoder) {
    run(x, batch, 0, y, ws, [&](const Layer& layer, ConstMatrixView in, MatrixView out) {
      layer.forward(in, batch, mask, out, ws.layer, ctx);
    });
  }

  /// Decoder stack: y from x and memory; y must not alias x.
  void forward(ConstMatrixView x, ConstMatrixView memory, Index batch, const DecoderMasks& masks, MatrixView y,
               Workspace& ws, const Context& ctx) const requires decoder {
    run(x, batch, 0, y, ws, [&](const Layer& layer, ConstMatrixView in, MatrixView out) {
      layer.forward(in, memory, batch, masks, out, ws.layer, ctx);
    });
  }

  /// Convenience: returns y, with a workspace of this call's.
  Matrix forward(const Matrix& x, Index batch = 1, const MaskSpec& mask = {}, const Context& ctx = {}) const
    requires(!decoder) {
    Matrix y(x.rows(), x.cols());
    Workspace ws;
    forward(cview(x), batch, mask, view(y), ws, ctx);
    return y;
  }
  Matrix forward(const Matrix& x, const Matrix& memory, Index batch = 1, const DecoderMasks& masks = {},
                 const Context& ctx = {}) const requires decoder {
    Matrix y(x.rows(), x.cols());
    Workspace ws;
    forward(cview(x), cview(memory), batch, masks, view(y), ws, ctx);
    return y;
  }

  /// A decoder stack's state for one sequence: every layer's (self-attention state, projected memory).
  struct State {
    std::vector<typename Layer::State> layers;
    Index size() const noexcept { return layers.empty() ? 0 : layers.front().size(); }  ///< positions decoded
  };

  /// The decoding state of one sequence over memory (mem, d_model), for `capacity` positions
  /// (DecoderLayer::make_state for each layer).
  State make_state(Index capacity, ConstMatrixView memory, const Context& ctx,
                   std::optional<ConstMatrixRef> memory_key_padding = std::nullopt) const requires decoder {
    State state;
    state.layers.reserve(layers_.size());
    for (const Layer& layer : layers_) state.layers.push_back(layer.make_state(capacity, memory, ctx, memory_key_padding));
    return state;
  }

  /// Decodes x (n_new, d_model), the positions after those in `state`, causally (as forward() with a causal
  /// self-attention mask over all positions would). y must not alias x.
  void forward_cached(ConstMatrixView x, State& state, MatrixView y, Workspace& ws, const Context& ctx) const
    requires decoder {
    if (state.layers.size() != layers_.size())
      throw config_error(detail::cat("Decoder::forward_cached: the state has ", state.layers.size(),
                                     " layers, expected ", layers_.size()));
    std::size_t l = 0;
    run(x, 1, state.size(), y, ws, [&](const Layer& layer, ConstMatrixView in, MatrixView out) {
      layer.forward_cached(in, state.layers[l++], out, ws.layer, ctx);
    });
  }

 private:
  /// One layer's training forward under the stack's saved masks (and memory).
  void layer_train(const Layer& layer, ConstMatrixView in, MatrixView out, typename Layer::Saved& layer_saved,
                   Saved& saved, const Context& ctx) const {
    if constexpr (decoder)
      layer.forward_train(in, cview(saved.memory), saved.batch,
                          DecoderMasks{saved.self_mask.spec(), saved.cross_mask.spec()}, out, layer_saved, ctx);
    else
      layer.forward_train(in, saved.batch, saved.self_mask.spec(), out, layer_saved, ctx);
  }

  /// The training forward: positions, every layer (its input kept when checkpointing), the final norm.
  void train(ConstMatrixView x, Index batch, MatrixView y, Saved& saved, const Context& ctx) const {
    const char* func = decoder ? "Decoder::forward_train" : "Encoder::forward_train";
    check_cols(x, d_model(), func, "x");
    check_shape(y, x.rows(), d_model(), func, "y");
    saved.batch = batch;
    saved.input = x;
    position_.add(view(saved.input), batch, 0);
    const std::size_t n = layers_.size();
    saved.layers.resize(saved.checkpoint ? 1 : n);
    if (saved.checkpoint) saved.inputs.resize(n);
    ensure_shape(saved.buffer, x.rows(), x.cols());
    ensure_shape(saved.last, x.rows(), x.cols());
    // Ping-pong between buffer and last, so that the last layer writes `last` (the final norm's input) or y.
    MatrixView final_out = final_norm_ ? view(saved.last) : y;
    ConstMatrixRef input(saved.input);  // re-seated to each layer's output
    for (std::size_t i = 0; i < n; ++i) {
      const bool to_final = (n - 1 - i) % 2 == 0;
      MatrixView out = to_final ? final_out : view(saved.buffer);
      const ConstMatrixView in = input.view();
      // Checkpointing runs the same training forward the backward will repeat, into the one layer Saved it reuses.
      if (saved.checkpoint) saved.inputs[i] = in;
      layer_train(layers_[i], in, out, saved.layers[saved.checkpoint ? 0 : i], saved, ctx);
      input = ConstMatrixRef(cview(out));
    }
    if (final_norm_) final_norm_->forward(cview(saved.last), y);
    saved.checkpointed = saved.checkpoint;
    saved.record();
  }

  /// The backward: the final norm, then every layer from the last (recomputed first when checkpointing), then the
  /// positions. dmemory gathers every layer's cross-attention gradient (decoder).
  void run_backward(ConstMatrixView dy, MatrixView dx, MatrixView dmemory, Gradients& g, Saved& saved,
                    const Context& ctx) const {
    const char* func = decoder ? "Decoder::backward" : "Encoder::backward";
    saved.require_held(func);
    const Index rows = saved.input.rows(), d = d_model();
    check_shape(dy, rows, d, func, "dy");
    check_shape(dx, rows, d, func, "dx");
    if (g.layers.size() != layers_.size())
      throw shape_error(detail::cat(func, ": gradients for ", g.layers.size(), " layers, expected ", layers_.size()));
    ensure_shape(saved.grad, rows, d);
    ensure_shape(saved.grad_buffer, rows, d);
    ConstMatrixRef grad_out(dy);  // re-seated to each layer's input gradient
    if (final_norm_) {
      final_norm_->backward(cview(saved.last), dy, view(saved.grad), g.norm);
      grad_out = ConstMatrixRef(saved.grad);
    }
    const std::size_t n = layers_.size();
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = n - 1 - k;
      // The first layer writes dx; the others alternate between the two buffers, away from grad_out.
      MatrixView grad_in = i == 0 ? dx : (grad_out.data == saved.grad.data() ? view(saved.grad_buffer) : view(saved.grad));
      typename Layer::Saved& layer_saved = saved.layers[saved.checkpointed ? 0 : i];
      if (saved.checkpointed)  // this layer's intermediates again, its output into the idle buffer
        layer_train(layers_[i], cview(saved.inputs[i]), view(saved.buffer), layer_saved, saved, ctx);
      layer_saved.keep = saved.keep && !saved.checkpointed;
      if constexpr (decoder)
        layers_[i].backward(grad_out.view(), grad_in, dmemory, g.layers[i], layer_saved, ctx, /*accumulate_dmemory=*/k > 0);
      else
        layers_[i].backward(grad_out.view(), grad_in, g.layers[i], layer_saved, ctx);
      grad_out = ConstMatrixRef(cview(grad_in));
    }
    (void)dmemory;
    position_.backward(cview(dx), saved.batch, g.position, 0);
    saved.take(func);  // released once the whole backward has run
  }

  /// Positions (from first_position) on the input, then every layer, ping-ponging between y and one buffer
  /// so that the last layer writes y, then the final norm.
  template <typename Call>
  void run(ConstMatrixView x, Index batch, Index first_position, MatrixView y, Workspace& ws, Call&& call) const {
    const char* func = decoder ? "Decoder::forward" : "Encoder::forward";
    check_cols(x, d_model(), func, "x");
    check_shape(y, x.rows(), d_model(), func, "y");
    if constexpr (Position::enabled) {
      ws.input = x;
      position_.add(view(ws.input), batch, first_position);
    }
    const ConstMatrixView input = Position::enabled ? cview(ws.input) : x;
    ensure_shape(ws.buffer, x.rows(), x.cols());
    const std::size_t n = layers_.size();
    for (std::size_t i = 0; i < n; ++i) {
      const bool to_y = (n - 1 - i) % 2 == 0;
      MatrixView out = to_y ? y : view(ws.buffer);
      call(layers_[i], i == 0 ? input : (to_y ? cview(ws.buffer) : cview(y)), out);
    }
    if (final_norm_) final_norm_->forward(cview(y), y);
  }

  std::vector<Layer> layers_;
  std::optional<norm_type> final_norm_;
  Position position_{};
};

/// torch.nn.TransformerEncoder: a stack of encoder layers.
template <typename Layer, typename Position = NoPosition>
using Encoder = LayerStack<Layer, Position>;
/// torch.nn.TransformerDecoder: a stack of decoder layers.
template <typename Layer, typename Position = NoPosition>
using Decoder = LayerStack<Layer, Position>;

}  // namespace polyformer
