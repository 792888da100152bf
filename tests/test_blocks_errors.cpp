// Bad caller input at block boundaries: shape_error / config_error naming function, argument, expected
// and found values.

#include <catch2/catch.hpp>

#include "polyformer/polyformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using Catch::Matchers::Contains;
using pf::Index;
using pf::Matrix;

namespace {

pf::Dense dense(Index in, Index out, unsigned seed) { return pf::Dense(pft::random_matrix(out, in, seed, 0.2f)); }

using Layer = pf::EncoderLayer<>;

Layer small_layer(Index d = 8, Index heads = 2) {
  return Layer(Layer::Attention(dense(d, d, 1), dense(d, d, 2), dense(d, d, 3), dense(d, d, 4), pf::HeadConfig{heads}),
               Layer::FFN(dense(d, 16, 5), dense(16, d, 6)), pf::LayerNorm(d), pf::LayerNorm(d));
}

}  // namespace

TEST_CASE("blocks/errors: Dense rejects wrong input and bias shapes", "[errors]") {
  const pf::Dense lin = dense(3, 5, 1);
  Matrix x(2, 4), y(2, 5);
  CHECK_THROWS_AS(lin.forward(pf::cview(x), pf::view(y), {}), pf::shape_error);
  CHECK_THROWS_WITH(lin.forward(pf::cview(x), pf::view(y), {}), "Dense::forward: x has shape (2, 4), expected (n, 3)");
  Matrix x2(2, 3), y2(3, 5);
  CHECK_THROWS_WITH(lin.forward(pf::cview(x2), pf::view(y2), {}), "Dense::forward: y has shape (3, 5), expected (2, 5)");
  CHECK_THROWS_WITH(pf::Dense(Matrix(5, 3), pf::Vector(4)), "Dense: bias has shape (4), expected (5)");
  CHECK_THROWS_AS(pf::Dense(0, 3), pf::config_error);
}

TEST_CASE("blocks/errors: multi-head attention checks head counts and projection shapes", "[errors]") {
  using MHA = Layer::Attention;
  CHECK_THROWS_WITH(MHA(dense(8, 8, 1), dense(8, 8, 2), dense(8, 8, 3), dense(8, 8, 4), pf::HeadConfig{3}),
                    "MultiHeadAttention: d_model 8 is not divisible by n_heads 3");
  CHECK_THROWS_WITH(MHA(dense(8, 8, 1), dense(8, 8, 2), dense(8, 8, 3), dense(8, 8, 4), pf::HeadConfig{4, 3}),
                    "MultiHeadAttention: n_heads 4 is not a multiple of n_kv_heads 3");
  CHECK_THROWS_WITH(MHA(dense(8, 8, 1), dense(8, 6, 2), dense(8, 8, 3), dense(8, 8, 4), pf::HeadConfig{2}),
                    "MultiHeadAttention: k projection maps 8 -> 6, expected 8 -> 8");
  // Grouped-query: 4 query heads over 2 key/value heads of size 2.
  CHECK_NOTHROW(MHA(dense(8, 8, 1), dense(8, 4, 2), dense(8, 4, 3), dense(8, 8, 4), pf::HeadConfig{4, 2}));
}

TEST_CASE("blocks/errors: layers check inputs, batch and masks", "[errors]") {
  Layer layer = small_layer();
  CHECK_THROWS_WITH(layer.forward(Matrix(5, 7), 1), "EncoderLayer::forward: x has shape (5, 7), expected (n, 8)");
  CHECK_THROWS_WITH(layer.forward(Matrix::Zero(5, 8), 2),
                    Contains("batch is 2 but x has 5 rows") && Contains("expected multiples of batch"));
  Matrix bad_mask = Matrix::Zero(4, 5);
  pf::MaskSpec m;
  m.additive = bad_mask;
  CHECK_THROWS_WITH(layer.forward(Matrix::Zero(5, 8), 1, m), Contains("attention mask has shape (4, 5), expected (5, 5)"));
  Matrix pad = Matrix::Zero(1, 4);
  pf::MaskSpec p;
  p.key_padding = pad;
  CHECK_THROWS_WITH(layer.forward(Matrix::Zero(5, 8), 1, p), Contains("key padding mask has shape (1, 4), expected (1, 5)"));
  const std::vector<Index> lengths{6};
  pf::MaskSpec l;
  l.key_lengths = lengths;
  CHECK_THROWS_WITH(layer.forward(Matrix::Zero(5, 8), 1, l), Contains("key length of sequence 0 is 6, expected 0..5"));
  CHECK_THROWS_AS(layer.forward(Matrix::Zero(5, 8), 1, {}, pf::Context{0}), pf::config_error);
}

TEST_CASE("blocks/errors: composition checks d_model across parts", "[errors]") {
  CHECK_THROWS_WITH(Layer(small_layer().self_attn(), Layer::FFN(dense(8, 16, 5), dense(16, 8, 6)), pf::LayerNorm(8),
                          pf::LayerNorm(6)),
                    Contains("EncoderLayer: d_model of attention 8") && Contains("norm2 6"));
  CHECK_THROWS_WITH(Layer::FFN(dense(8, 16, 5), dense(12, 8, 6)),
                    "FeedForward: up maps 8 -> 16 but down maps 12 -> 8, expected down to map 16 -> 8");
  CHECK_THROWS_AS(pf::Encoder<Layer>(std::vector<Layer>{}), pf::config_error);
  CHECK_THROWS_AS(pf::LayerNorm(8, -1.0f), pf::config_error);
}

TEST_CASE("blocks/errors: torch loader names the missing tensor and the file", "[errors][torch]") {
  const auto full = pf::io::SafetensorsFile::open(pft::shared_path("reference/torch/encoder_layer_postnorm_relu_seed0.safetensors"));
  using TorchLayer = pf::torch::EncoderLayer<pf::ReLU, pf::NormPlacement::post>;
  // A missing weight fails with the file and tensor names (a missing bias is a bias-free nn.Linear).
  std::vector<std::pair<std::string, pf::io::FloatTensor>> no_weight;
  for (const auto& name : full.names())
    if (name != "self_attn.in_proj_weight") no_weight.emplace_back(name, full.tensor(name));
  const auto cut2 = pf::io::SafetensorsFile::from_bytes(pf::io::serialize_safetensors(no_weight), "cut2.safetensors");
  CHECK_THROWS_AS(pf::torch::load_encoder_layer<TorchLayer>(cut2, "", {4, 1e-5f}), pf::missing_error);
  CHECK_THROWS_WITH(pf::torch::load_encoder_layer<TorchLayer>(cut2, "", {4, 1e-5f}),
                    Contains("cut2.safetensors") && Contains("self_attn.in_proj_weight"));
  // Wrong head count for d_model 64.
  CHECK_THROWS_WITH(pf::torch::load_encoder_layer<TorchLayer>(full, "", {5, 1e-5f}),
                    Contains("d_model 64 is not divisible by n_heads 5"));
  // A wrongly shaped norm is a shape_error naming the tensor.
  std::vector<std::pair<std::string, pf::io::FloatTensor>> bad_norm;
  for (const auto& name : full.names()) {
    auto t = full.tensor(name);
    if (name == "norm1.weight") t = pf::io::FloatTensor{{63}, std::vector<float>(63, 1.0f)};
    bad_norm.emplace_back(name, t);
  }
  const auto cut3 = pf::io::SafetensorsFile::from_bytes(pf::io::serialize_safetensors(bad_norm), "cut3.safetensors");
  CHECK_THROWS_AS(pf::torch::load_encoder_layer<TorchLayer>(cut3, "", {4, 1e-5f}), pf::shape_error);
  CHECK_THROWS_WITH(pf::torch::load_encoder_layer<TorchLayer>(cut3, "", {4, 1e-5f}), Contains("norm1.weight"));
}
