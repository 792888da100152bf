#pragma once
/// \file Encoder-decoder model (Vaswani et al. 2017), as torch.nn.Transformer: memory = Encoder(src),
/// y = Decoder(tgt, memory).

#include <string>
#include <utility>

#include "polyformer/blocks/layer_stack.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// The masks of an encoder-decoder forward.
struct EncoderDecoderMasks {
  MaskSpec src{};                             ///< encoder self-attention
  MaskSpec tgt = MaskSpec::causal_mask();     ///< decoder self-attention
  MaskSpec memory{};                          ///< decoder cross-attention over memory
};

/// An encoder stack and a decoder stack. Weights only, used through `const`. To decode token by token:
/// memory = encode(src); state = decoder().make_state(capacity, memory, ctx); then decoder().forward_cached
/// over the new target rows.
template <typename EncoderStack, typename DecoderStack>
class EncoderDecoder {
 public:
  struct Workspace {
    typename EncoderStack::Workspace encoder;
    typename DecoderStack::Workspace decoder;
  };

  /// What a training forward keeps for its backward: the stacks' own, and the memory's gradient.
  struct Saved : SavedForward {
    typename EncoderStack::Saved encoder;
    typename DecoderStack::Saved decoder;
    Matrix grad_memory;  ///< (batch·src_len, d): backward's
  };
  /// Both stacks' gradients.
  struct Gradients {
    typename EncoderStack::Gradients encoder;
    typename DecoderStack::Gradients decoder;
  };

  EncoderDecoder() = default;
  EncoderDecoder(EncoderStack encoder, DecoderStack decoder) : encoder_(std::move(encoder)), decoder_(std::move(decoder)) {
    if (encoder_.d_model() != decoder_.d_model())
      throw shape_error(detail::cat("EncoderDecoder: encoder d_model ", encoder_.d_model(), ", decoder d_model ",
                                    decoder_.d_model(), ", expected equal"));
  }

  EncoderStack& encoder() noexcept { return encoder_; }
  DecoderStack& decoder() noexcept { return decoder_; }
  const EncoderStack& encoder() const noexcept { return encoder_; }
  const DecoderStack& decoder() const noexcept { return decoder_; }

  /// "encoder.*" and "decoder.*" (each named by `names`, PyTorch's by default): nn.Transformer's names.
  void parameters(ParameterList& list, const std::string& prefix, const BlockNames& names = {}) {
    encoder_.parameters(list, prefix + "encoder.", names);
    decoder_.parameters(list, prefix + "decoder.", names);
  }

  Gradients make_gradients() const { return {encoder_.make_gradients(), decoder_.make_gradients()}; }
  /// "encoder.*" and "decoder.*", as parameters() names the tensors.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g, const BlockNames& names = {}) const {
    encoder_.gradients(list, prefix + "encoder.", g.encoder, names);
    decoder_.gradients(list, prefix + "decoder.", g.decoder, names);
  }

  /// forward() for training, keeping in `saved` what backward() needs (set saved.encoder.checkpoint and
  /// saved.decoder.checkpoint first to recompute each layer during backward instead).
  void forward_train(ConstMatrixView src, ConstMatrixView tgt, Index batch, const EncoderDecoderMasks& masks,
                     MatrixView y, MatrixView memory, Saved& saved, const Context& ctx) const {
    encoder_.forward_train(src, batch, masks.src, memory, saved.encoder, ctx);
    decoder_.forward_train(tgt, cview(memory), batch, DecoderMasks{masks.tgt, masks.memory}, y, saved.decoder, ctx);
    saved.record();
  }

  /// The backward of forward_train: adds every tensor's gradient into g and writes dsrc and dtgt from dy (the
  /// gradient of y). Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView dy, MatrixView dsrc, MatrixView dtgt, Gradients& g, Saved& saved,
                const Context& ctx) const {
    const char* func = "EncoderDecoder::backward";
    saved.require_held(func);
    saved.encoder.keep = saved.decoder.keep = saved.keep;
    ensure_shape(saved.grad_memory, saved.encoder.input.rows(), encoder_.d_model());
    decoder_.backward(dy, dtgt, view(saved.grad_memory), g.decoder, saved.decoder, ctx);
    encoder_.backward(cview(saved.grad_memory), dsrc, g.encoder, saved.encoder, ctx);
    saved.take(func);  // released once the whole backward has run
  }

  /// y (batch·tgt_len, d) and memory (batch·src_len, d) from src (batch·src_len, d) and tgt (batch·tgt_len, d).
  void forward(ConstMatrixView src, ConstMatrixView tgt, Index batch, const EncoderDecoderMasks& masks, MatrixView y,
               MatrixView memory, Workspace& ws, const Context& ctx) const {
    encoder_.forward(src, batch, masks.src, memory, ws.encoder, ctx);
    decoder_.forward(tgt, cview(memory), batch, DecoderMasks{masks.tgt, masks.memory}, y, ws.decoder, ctx);
  }

  /// Convenience: returns y, with a workspace of this call's; the encoder's output goes to *memory if given.
  Matrix forward(const Matrix& src, const Matrix& tgt, Index batch = 1, const EncoderDecoderMasks& masks = {},
                 const Context& ctx = {}, Matrix* memory = nullptr) const {
    Matrix y(tgt.rows(), tgt.cols()), own_memory;
    Matrix& mem = memory ? *memory : own_memory;
    ensure_shape(mem, src.rows(), src.cols());
    Workspace ws;
    forward(cview(src), cview(tgt), batch, masks, view(y), view(mem), ws, ctx);
    return y;
  }

  /// The encoder's output, memory (batch·src_len, d), for src (batch·src_len, d).
  Matrix encode(const Matrix& src, Index batch = 1, const MaskSpec& mask = {}, const Context& ctx = {}) const {
    return encoder_.forward(src, batch, mask, ctx);
  }

 private:
  EncoderStack encoder_{};
  DecoderStack decoder_{};
};

}  // namespace polyformer
