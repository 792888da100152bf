// Must not compile: a training forward through an attention policy that has no backward. The error names the
// TrainableAttention concept the policy misses.
#include <polyformer/blocks/encoder_layer.hpp>

struct ForwardOnly {
  static constexpr bool supports_causal = true;
  struct Workspace {};
  void forward(const polyformer::AttentionShape&, polyformer::ConstMatrixView, polyformer::ConstMatrixView,
               polyformer::ConstMatrixView, const polyformer::AttentionMask&, polyformer::MatrixView, Workspace&,
               const polyformer::Context&) const {}
};

int main() {
  using Layer = polyformer::EncoderLayer<ForwardOnly>;
  const Layer layer;
  typename Layer::Saved saved;
  polyformer::Matrix x(2, 4), y(2, 4);
  layer.forward_train(polyformer::cview(x), 1, {}, polyformer::view(y), saved, {});
}
