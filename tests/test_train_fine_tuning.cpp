// Choosing what trains (train/fine_tuning.hpp): BitFit on an encoder layer with biases changes its biases and
// nothing else through a real backward and AdamW step; LoRA-only and adapter-only selections by name; a model
// without the chosen kind of tensor is refused with the list untouched.

#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/train/fine_tuning.hpp"
#include "polyformer/train/optimizer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;
using pf::Vector;

namespace {

using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::GELU, pf::NormPlacement::pre>;

Layer random_layer(Index d, Index hidden) {
  unsigned seed = 1;
  const auto dense = [&](Index out, Index in) {
    const Matrix w = pft::random_matrix(out, in, seed++, 0.3f);
    const Vector b = pft::random_matrix(out, 1, seed++, 0.1f).col(0);
    return pf::Dense(w, b);
  };
  return Layer(Layer::Attention(dense(d, d), dense(d, d), dense(d, d), dense(d, d), pf::HeadConfig{4}, pf::FullAttention{}),
               Layer::FFN(dense(hidden, d), dense(d, hidden)), pf::LayerNorm(d), pf::LayerNorm(d));
}

std::vector<std::vector<float>> values(const pf::ParameterList& params) {
  std::vector<std::vector<float>> out;
  for (const pf::Parameter& p : params.items()) {
    out.emplace_back(static_cast<std::size_t>(p.numel()));
    p.read(out.back().data());
  }
  return out;
}

}  // namespace

TEST_CASE("fine-tuning: BitFit trains the biases and leaves every other tensor bit for bit", "[train][fine_tuning]") {
  const Index d = 16, hidden = 24, n = 7;
  Layer layer = random_layer(d, hidden);
  auto g = layer.make_gradients();
  const pf::GradientList grads = pf::gradients_of(layer, g);
  const std::size_t biases = pf::train_only_biases(grads);
  CHECK(biases == 6);  // in_proj_bias (q, k, v fused), out_proj.bias, linear1.bias, linear2.bias and both norms' biases
  for (const pf::Gradient& x : grads.items()) CHECK(x.trainable() == x.name.ends_with("bias"));

  pf::ParameterList params = pf::parameters_of(layer);
  const auto before = values(params);
  const Matrix x = pft::random_matrix(n, d, 3), dy = pft::random_matrix(n, d, 4);
  Matrix y(n, d), dx(n, d);
  typename Layer::Saved saved;
  layer.forward_train(pf::cview(x), 1, {}, pf::view(y), saved, {});
  layer.backward(pf::cview(dy), pf::view(dx), g, saved, {});
  pf::AdamW opt(pf::AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  opt.step(params, grads, 1e-2);
  const auto after = values(params);
  Index changed = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const bool same = std::memcmp(before[i].data(), after[i].data(), before[i].size() * sizeof(float)) == 0;
    INFO(params.items()[i].name);
    if (params.items()[i].name.ends_with("bias")) {
      CHECK_FALSE(same);
      ++changed;
    } else {
      CHECK(same);
    }
  }
  CHECK(changed == static_cast<Index>(biases));
}

TEST_CASE("fine-tuning: LoRA-only and adapter-only by name, a model without them is refused untouched",
          "[train][fine_tuning]") {
  pf::io::LlamaConfig c;
  c.dim = 16, c.hidden_dim = 32, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 2, c.vocab_size = 20, c.seq_len = 8;
  auto model = pf::make_llama<pf::LoRA<pf::Dense>>(c);
  {
    auto g = model.make_gradients();
    const pf::GradientList grads = pf::gradients_of(model, g);
    grads.unfreeze("");
    const Index all = grads.trainable_numel();
    CHECK_THROWS_WITH(pf::train_only_lora(grads), Catch::Contains("add LoRA adapters first"));
    CHECK_THROWS_WITH(pf::train_only_biases(grads), Catch::Contains("BitFit needs a model with biases"));
    CHECK_THROWS_WITH(pf::train_only_adapters(grads), Catch::Contains("none of the model's"));
    CHECK(grads.trainable_numel() == all);  // a refusal changes nothing
  }
  model.layers()[0].self_attn().q_proj().add_adapter("a", 2, 4.0f, 1);
  model.layers()[1].self_attn().v_proj().add_adapter("a", 2, 4.0f, 2);
  auto g = model.make_gradients();
  const pf::GradientList grads = pf::gradients_of(model, g);
  CHECK(pf::train_only_lora(grads) == 4);
  CHECK(grads.trainable_numel() == 2 * (2 * 16 + 16 * 2));
  CHECK(grads.at("layers.0.attention.wq.lora_A.a.weight").trainable());
  CHECK_FALSE(grads.at("layers.0.attention.wq.weight").trainable());
}
