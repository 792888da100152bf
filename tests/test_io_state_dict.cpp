// The named-parameter tree: every model lists its tensors by its checkpoint family's names; export to
// safetensors and reload gives identical outputs; the generic loader reports every bad name at once.

#include <catch2/catch.hpp>

#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "polyformer/blocks/block_policies.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/layers/moe.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/models/torch_transformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

std::string temp_path(const std::string& name) { return pft::process_temp_path("state_dict", name); }

/// The weight names of a PyTorch reference file (its inputs, intermediates and outputs left out).
std::set<std::string> torch_weight_names(const pf::io::SafetensorsFile& f) {
  std::set<std::string> names;
  for (const auto& n : f.names())
    if (n.rfind("input.", 0) != 0 && n.rfind("output", 0) != 0 && n.rfind("intermediate.", 0) != 0) names.insert(n);
  return names;
}

std::set<std::string> names_of(const pf::ParameterList& list) {
  std::set<std::string> names;
  for (const auto& p : list.items()) names.insert(p.name);
  return names;
}

using TorchModel = pf::torch::Transformer<pf::GELU, pf::NormPlacement::pre>;

struct Sparse : pf::BlockPolicies {
  template <typename Lin, typename Act>
  using ffn = pf::MixtureOfExperts<Lin, Act>;
};

}  // namespace

TEST_CASE("io/state_dict: nn.Transformer lists torch's names, exports and reloads to identical outputs",
          "[io][state_dict][torch]") {
  const auto f = pf::io::SafetensorsFile::open(pft::shared_path("reference/torch/transformer_prenorm_gelu_seed0.safetensors"));
  const Index nhead = std::stol(f.metadata().at("nhead"));
  const Index enc = std::stol(f.metadata().at("num_encoder_layers")), dec = std::stol(f.metadata().at("num_decoder_layers"));
  auto model = pf::torch::load_transformer<TorchModel>(f, enc, dec, {nhead, 1e-5f});
  const pf::ParameterList params = pf::parameters_of(model);
  CHECK(names_of(params) == torch_weight_names(f));
  const std::string path = temp_path("transformer.safetensors");
  pf::save_safetensors(path, params, {{"producer", "test"}});
  const auto exported = pf::io::SafetensorsFile::open(path);
  const auto reloaded = pf::torch::load_transformer<TorchModel>(exported, enc, dec, {nhead, 1e-5f});
  const Matrix src = pft::as_rows(f.tensor("input.src")), tgt = pft::as_rows(f.tensor("input.tgt"));
  const Index batch = static_cast<Index>(f.info("input.src").shape.at(0));
  const Matrix a = model.forward(src, tgt, batch), b = reloaded.forward(src, tgt, batch);
  CHECK((a.array() == b.array()).all());
  // Every exported tensor equals the file's own, bit for bit.
  for (const auto& name : torch_weight_names(f)) {
    INFO(name);
    CHECK(exported.tensor(name).data == f.tensor(name).data);
  }
  std::filesystem::remove(path);
}

TEST_CASE("io/state_dict: encoder and decoder layers round-trip through their torch names", "[io][state_dict][torch]") {
  for (const char* file : {"encoder_layer_postnorm_relu_seed0", "decoder_layer_prenorm_gelu_seed0"}) {
    INFO(file);
    const auto f = pf::io::SafetensorsFile::open(pft::shared_path(std::string("reference/torch/") + file + ".safetensors"));
    const pf::torch::LayerOptions opt{std::stol(f.metadata().at("nhead")), 1e-5f};
    const bool encoder = std::string(file).rfind("encoder", 0) == 0;
    const auto check = [&](auto layer) {
      const pf::ParameterList params = pf::parameters_of(layer);
      CHECK(names_of(params) == torch_weight_names(f));
      const auto tensors = pf::state_dict(params);
      const pf::StateDict dict(tensors.begin(), tensors.end());
      decltype(layer) other = layer;
      const pf::ParameterList others = pf::parameters_of(other);
      for (const auto& p : others.items()) {  // scramble, then reload
        std::vector<float> junk(std::size_t(p.numel()), 0.5f);
        p.write(junk.data());
      }
      const pf::LoadReport report = pf::load_state_dict(pf::parameters_of(other), dict);
      CHECK(report.ok());
      const Matrix x = pft::random_matrix(7, 64, 3), m = pft::random_matrix(5, 64, 4);
      if constexpr (requires { layer.forward(x, 1); }) {
        CHECK((layer.forward(x, 1).array() == other.forward(x, 1).array()).all());
      } else {
        CHECK((layer.forward(x, m, 1).array() == other.forward(x, m, 1).array()).all());
      }
    };
    if (encoder) check(pf::torch::load_encoder_layer<pf::torch::EncoderLayer<pf::ReLU, pf::NormPlacement::post>>(f, "", opt));
    else check(pf::torch::load_decoder_layer<pf::torch::DecoderLayer<pf::GELU, pf::NormPlacement::pre>>(f, "", opt));
  }
}

TEST_CASE("io/state_dict: a Llama lists llama2.c model.py names and reloads into a zero model", "[io][state_dict][llama]") {
  auto model = pf::load_llama2c(pft::shared_path("models/stories260K.bin"));
  const pf::ParameterList params = pf::parameters_of(model);
  for (const char* name : {"tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.4.attention.wk.weight",
                           "layers.2.feed_forward.w1.weight", "layers.2.feed_forward.w3.weight",
                           "layers.4.feed_forward.w2.weight", "layers.1.attention_norm.weight",
                           "layers.1.ffn_norm.weight", "norm.weight"}) {
    INFO(name);
    CHECK(params.find(name) != nullptr);
  }
  CHECK(params.find("output.weight") == nullptr);  // tied to the embedding
  const auto& c = model.config();
  CHECK(params.numel() == c.vocab_size * c.dim + c.n_layers * (2 * c.dim + 2 * c.dim * c.dim + 2 * c.kv_dim() * c.dim +
                                                                 3 * c.dim * c.hidden_dim) + c.dim);
  const std::string path = temp_path("llama.safetensors");
  pf::save_safetensors(path, params);
  auto reloaded = pf::make_llama(c);
  pf::load_state_dict(pf::parameters_of(reloaded), pf::io::SafetensorsFile::open(path));
  const std::vector<int> tokens{1, 403, 407, 261, 378, 270, 300};
  auto a = model.new_sequence(), b = reloaded.new_sequence();
  a.forward(tokens, pf::Context{1}, true);
  b.forward(tokens, pf::Context{1}, true);
  CHECK((a.logits().array() == b.logits().array()).all());
  std::filesystem::remove(path);
}

TEST_CASE("io/state_dict: LoRA adapters and mixture-of-experts blocks are in the tree", "[io][state_dict]") {
  // LoRA: the base weight and each adapter's factors by PEFT's in-model names.
  pf::LoRA<pf::Dense> lora(pft::random_matrix(12, 8, 1), pf::Vector::Ones(12));
  lora.add_adapter("tales", pft::random_matrix(2, 8, 2), pft::random_matrix(12, 2, 3), 0.5f);
  lora.set_active("tales");
  pf::ParameterList lp;
  lora.parameters(lp, "wq.");
  CHECK(names_of(lp) == std::set<std::string>{"wq.weight", "wq.bias", "wq.lora_A.tales.weight", "wq.lora_B.tales.weight"});
  pf::LoRA<pf::Dense> copy = lora;
  const Matrix b2 = pft::random_matrix(12, 2, 9);
  copy.parameters(lp = {}, "wq.");
  lp.find("wq.lora_B.tales.weight")->write(b2.data());  // a new B takes effect in forward (repacked)
  const Matrix x = pft::random_matrix(5, 8, 4);
  Matrix y(5, 12), want(5, 12);
  copy.forward(pf::cview(x), pf::view(y), pf::Context{1});
  const Matrix base = pft::random_matrix(12, 8, 1);
  want = x * base.transpose() + 0.5f * (x * pft::random_matrix(2, 8, 2).transpose()) * b2.transpose();
  want.rowwise() += pf::Vector::Ones(12).transpose();
  CHECK(pft::max_abs_diff(y, want) < 1e-5);
  copy.merge();
  CHECK_THROWS_WITH(lp.find("wq.weight")->write(base.data()), Catch::Contains("merged"));
  std::vector<float> out(12 * 8);  // merged, the weight holds the adapter too: a checkpoint would apply it twice
  CHECK_THROWS_WITH(lp.find("wq.weight")->read(out.data()), Catch::Contains("cannot be read while the adapters are merged"));

  // A sparse block: router and experts by name; export → reload → identical outputs.
  using Layer = pf::EncoderLayerOf<Sparse>;
  const Index d = 16, h = 24;
  const auto dense = [](Index in, Index out, unsigned seed) { return pf::Dense(pft::random_matrix(out, in, seed, 0.3f), pf::Vector::Ones(out)); };
  std::vector<pf::FeedForward<pf::Dense, pf::ReLU>> experts;
  for (unsigned e = 0; e < 3; ++e) experts.emplace_back(dense(d, h, 10 + e), dense(h, d, 20 + e));
  Layer layer(Layer::Attention(dense(d, d, 1), dense(d, d, 2), dense(d, d, 3), dense(d, d, 4), pf::HeadConfig{4}),
              Layer::FFN(dense(d, 3, 5), std::move(experts), 2), pf::LayerNorm(d), pf::LayerNorm(d));
  const pf::ParameterList params = pf::parameters_of(layer);
  for (const char* name : {"self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                           "router.weight", "experts.2.linear1.weight", "experts.0.linear2.bias", "norm2.bias"}) {
    INFO(name);
    CHECK(params.find(name) != nullptr);
  }
  const pf::StateDict dict = [&] {
    pf::StateDict m;
    for (auto& [name, t] : pf::state_dict(params)) m.emplace(name, std::move(t));
    return m;
  }();
  Layer other = layer;
  const pf::ParameterList others = pf::parameters_of(other);
  for (const auto& p : others.items()) {
    std::vector<float> zeros(std::size_t(p.numel()), 0.0f);
    p.write(zeros.data());
  }
  pf::load_state_dict(pf::parameters_of(other), dict);
  const Matrix xs = pft::random_matrix(9, d, 6);
  CHECK((layer.forward(xs).array() == other.forward(xs).array()).all());
}

TEST_CASE("io/state_dict: the loader reports every missing, unexpected and misshaped name at once, writes nothing",
          "[io][state_dict][errors]") {
  pf::Dense a(pft::random_matrix(4, 3, 1), pf::Vector::Ones(4));
  pf::LayerNorm norm(4);
  pf::ParameterList params;
  a.parameters(params, "a.");
  norm.parameters(params, "norm.");
  pf::StateDict dict;
  dict["a.weight"] = pf::io::FloatTensor{{3, 4}, std::vector<float>(12, 1.0f)};  // transposed
  dict["norm.weight"] = pf::io::FloatTensor{{4}, std::vector<float>(4, 2.0f)};
  dict["extra.weight"] = pf::io::FloatTensor{{1}, {0.0f}};
  // "a.bias" and "norm.bias" are missing.
  const Matrix before = a.weight();
  REQUIRE_THROWS_AS(pf::load_state_dict(params, dict), pf::shape_error);
  REQUIRE_THROWS_WITH(pf::load_state_dict(params, dict),
                      Catch::Contains("2 missing (a.bias, norm.bias)") && Catch::Contains("1 unexpected (extra.weight)") &&
                          Catch::Contains("1 misshaped (a.weight: expected (4, 3), found (3, 4))"));
  CHECK((a.weight().array() == before.array()).all());
  CHECK((norm.gamma().array() == 1.0f).all());
  dict["a.weight"] = pf::io::FloatTensor{{4, 3}, std::vector<float>(12, 1.0f)};
  dict["a.bias"] = pf::io::FloatTensor{{4}, std::vector<float>(4, 0.0f)};
  dict["norm.bias"] = pf::io::FloatTensor{{4}, std::vector<float>(4, 0.0f)};
  REQUIRE_THROWS_AS(pf::load_state_dict(params, dict), pf::config_error);  // strict: the unexpected name
  const pf::LoadReport report = pf::load_state_dict(params, dict, /*strict=*/false);
  CHECK(report.unexpected == std::vector<std::string>{"extra.weight"});
  CHECK((a.weight().array() == 1.0f).all());
  CHECK((norm.gamma().array() == 2.0f).all());
  dict.erase("a.bias");
  REQUIRE_THROWS_AS(pf::load_state_dict(params, dict, false), pf::missing_error);
}
