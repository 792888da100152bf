// A downstream program: composes a small pre-norm encoder from policies and runs it.
#include <polyformer/polyformer.hpp>

#include <cstdio>

int main() {
  namespace pf = polyformer;
  using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::GELU, pf::NormPlacement::pre>;
  const pf::Index d = 16, hidden = 32, n = 7;
  auto linear = [](pf::Index in, pf::Index out) { return pf::Dense(pf::Matrix::Random(out, in) * 0.3f); };
  Layer layer(Layer::Attention(linear(d, d), linear(d, d), linear(d, d), linear(d, d), pf::HeadConfig{4}),
              Layer::FFN(linear(d, hidden), linear(hidden, d)), pf::LayerNorm(d), pf::LayerNorm(d));
  const pf::Matrix y = layer.forward(pf::Matrix::Random(n, d), 1, pf::MaskSpec::causal_mask(), pf::Context{2});
  std::printf("polyformer consumer: y is %ldx%ld, finite %d, gemm backend %s\n", static_cast<long>(y.rows()),
              static_cast<long>(y.cols()), static_cast<int>(y.allFinite()), pf::kernels::gemm_backend());
  return y.allFinite() ? 0 : 1;
}
