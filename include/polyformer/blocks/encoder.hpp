#pragma once
/// \file A stack of encoder layers with an optional absolute position policy on its input and an optional
/// final norm, as torch.nn.TransformerEncoder.

#include <optional>
#include <utility>
#include <vector>

#include "polyformer/attention/mask.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/position.hpp"

namespace polyformer {

/// Layers applied in order; x (batch·seq, d_model) → y (batch·seq, d_model).
template <typename Layer, typename Position = NoPosition>
class Encoder {
 public:
  using layer_type = Layer;
  using norm_type = typename Layer::norm_type;

  Encoder() = default;
  explicit Encoder(std::vector<Layer> layers, std::optional<norm_type> final_norm = std::nullopt,
                   Position position = Position{})
      : layers_(std::move(layers)), final_norm_(std::move(final_norm)), position_(std::move(position)) {
    if (layers_.empty()) throw config_error("Encoder: no layers, expected at least 1");
    for (std::size_t i = 1; i < layers_.size(); ++i)
      if (layers_[i].d_model() != layers_[0].d_model())
        throw shape_error(detail::cat("Encoder: layer ", i, " has d_model ", layers_[i].d_model(), ", expected ",
                                      layers_[0].d_model()));
    if (final_norm_ && final_norm_->dim() != d_model())
      throw shape_error(detail::cat("Encoder: final norm has dim ", final_norm_->dim(), ", expected ", d_model()));
  }

  Index d_model() const noexcept { return layers_.front().d_model(); }
  std::vector<Layer>& layers() noexcept { return layers_; }
  std::optional<norm_type>& final_norm() noexcept { return final_norm_; }
  Position& position() noexcept { return position_; }

  /// y (batch·seq, d_model) from x; y must not alias x.
  void forward(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, const Context& ctx) {
    check_cols(x, d_model(), "Encoder::forward", "x");
    check_shape(y, x.rows(), d_model(), "Encoder::forward", "y");
    if constexpr (Position::enabled) {
      input_ = x;
      position_.add(view(input_), batch);
    }
    const ConstMatrixView input = Position::enabled ? cview(input_) : x;
    // Ping-pong between y and one buffer so the last layer writes y.
    ensure_shape(buffer_, x.rows(), x.cols());
    const std::size_t n = layers_.size();
    for (std::size_t i = 0; i < n; ++i) {
      const bool to_y = (n - 1 - i) % 2 == 0;
      MatrixView out = to_y ? y : view(buffer_);
      layers_[i].forward(i == 0 ? input : (to_y ? cview(buffer_) : cview(y)), batch, mask, out, ctx);
    }
    if (final_norm_) final_norm_->forward(cview(y), y);
  }

  /// Convenience: returns y.
  Matrix forward(const Matrix& x, Index batch = 1, const MaskSpec& mask = {}, const Context& ctx = {}) {
    Matrix y(x.rows(), x.cols());
    forward(cview(x), batch, mask, view(y), ctx);
    return y;
  }

 private:
  std::vector<Layer> layers_;
  std::optional<norm_type> final_norm_;
  Position position_{};
  Matrix buffer_, input_;
};

}  // namespace polyformer
