// Must not compile: a decoder over an attention policy that cannot mask causally (as Linformer will be).
// The error says so.
#include <polyformer/blocks/decoder_layer.hpp>

struct BidirectionalOnly {
  static constexpr bool supports_causal = false;
  struct Workspace {};
  void forward(const polyformer::AttentionShape&, polyformer::ConstMatrixView, polyformer::ConstMatrixView,
               polyformer::ConstMatrixView, const polyformer::AttentionMask&, polyformer::MatrixView, Workspace&,
               const polyformer::Context&) const {}
};

int main() {
  polyformer::DecoderLayer<BidirectionalOnly> layer;
  (void)layer;
}
