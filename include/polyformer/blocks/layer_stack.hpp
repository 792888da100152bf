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
