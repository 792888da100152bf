#pragma once
/// \file Encoder-decoder model (Vaswani et al. 2017), as torch.nn.Transformer: memory = Encoder(src),
/// y = Decoder(tgt, memory).

#include <utility>

#include "polyformer/blocks/decoder.hpp"
#include "polyformer/blocks/encoder.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// The masks of an encoder-decoder forward.
struct EncoderDecoderMasks {
  MaskSpec src{};                             ///< encoder self-attention
  MaskSpec tgt = MaskSpec::causal_mask();     ///< decoder self-attention
  MaskSpec memory{};                          ///< decoder cross-attention over memory
};

/// An encoder stack and a decoder stack.
template <typename EncoderStack, typename DecoderStack>
class EncoderDecoder {
 public:
  EncoderDecoder() = default;
  EncoderDecoder(EncoderStack encoder, DecoderStack decoder) : encoder_(std::move(encoder)), decoder_(std::move(decoder)) {
    if (encoder_.d_model() != decoder_.d_model())
      throw shape_error(detail::cat("EncoderDecoder: encoder d_model ", encoder_.d_model(), ", decoder d_model ",
                                    decoder_.d_model(), ", expected equal"));
  }

  EncoderStack& encoder() noexcept { return encoder_; }
  DecoderStack& decoder() noexcept { return decoder_; }

  /// y (batch·tgt_len, d) and memory (batch·src_len, d) from src (batch·src_len, d) and tgt (batch·tgt_len, d).
  void forward(ConstMatrixView src, ConstMatrixView tgt, Index batch, const EncoderDecoderMasks& masks, MatrixView y,
               MatrixView memory, const Context& ctx) {
    encoder_.forward(src, batch, masks.src, memory, ctx);
    decoder_.forward(tgt, cview(memory), batch, DecoderMasks{masks.tgt, masks.memory}, y, ctx);
  }

  /// Convenience: returns y; the memory stays available through memory().
  Matrix forward(const Matrix& src, const Matrix& tgt, Index batch = 1, const EncoderDecoderMasks& masks = {},
                 const Context& ctx = {}) {
    Matrix y(tgt.rows(), tgt.cols());
    ensure_shape(memory_, src.rows(), src.cols());
    forward(cview(src), cview(tgt), batch, masks, view(y), view(memory_), ctx);
    return y;
  }

  /// The encoder output of the last convenience forward (batch·src_len, d).
  const Matrix& memory() const noexcept { return memory_; }

 private:
  EncoderStack encoder_{};
  DecoderStack decoder_{};
  Matrix memory_;
};

}  // namespace polyformer
