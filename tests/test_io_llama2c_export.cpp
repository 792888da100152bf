// Exports (io/llama2c_export.hpp, models/llama_export.hpp, io/peft.hpp's writer): stories260K written as a legacy
// llama2.c checkpoint reads back bit for bit; a LoRA model's export computes what the adapted model computes; a
// PEFT adapter written out reads back and adapts a fresh model the same way.

#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/llama2c_export.hpp"
#include "polyformer/io/peft.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/models/llama_export.hpp"
#include "polyformer/models/llama_lora.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

bool same_bits(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}
bool same_bits(const pf::Vector& a, const pf::Vector& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}

/// Every position's logits of `tokens` (one sequence).
template <typename Model>
Matrix logits_of(const Model& model, const std::vector<int>& tokens) {
  auto state = model.make_state();
  typename Model::Workspace ws;
  model.forward(state, tokens, ws, pf::Context{1}, /*all_logits=*/true);
  return ws.logits;
}

}  // namespace

TEST_CASE("llama2c export: stories260K written as a legacy checkpoint reads back bit for bit", "[io][llama2c][export]") {
  const std::string src = pft::shared_path("models/stories260K.bin");
  const pf::io::LlamaWeights original = pf::io::read_llama2c(src);
  auto model = pf::load_llama2c(src);
  const pf::io::LlamaWeights w = pf::llama2c_weights_of(model);
  const std::string path = pft::process_temp_path("llama2c_export", "stories.bin");
  pf::io::write_llama2c(path, w);
  const pf::io::LlamaWeights back = pf::io::read_llama2c(path);
  CHECK(back.version == 0);
  CHECK(back.config.dim == original.config.dim);
  CHECK(back.config.n_kv_heads == original.config.n_kv_heads);
  CHECK(back.config.seq_len == original.config.seq_len);
  CHECK(back.config.shared_classifier == original.config.shared_classifier);
  CHECK(same_bits(back.token_embedding, original.token_embedding));
  CHECK(same_bits(back.final_norm, original.final_norm));
  for (std::size_t l = 0; l < original.wq.size(); ++l) {
    INFO("layer " << l);
    for (auto part : {&pf::io::LlamaWeights::wq, &pf::io::LlamaWeights::wk, &pf::io::LlamaWeights::wv,
                      &pf::io::LlamaWeights::wo, &pf::io::LlamaWeights::w1, &pf::io::LlamaWeights::w2,
                      &pf::io::LlamaWeights::w3})
      CHECK(same_bits((back.*part)[l], (original.*part)[l]));
    CHECK(same_bits(back.attn_norm[l], original.attn_norm[l]));
    CHECK(same_bits(back.ffn_norm[l], original.ffn_norm[l]));
  }
  // The legacy layout's size: header, every tensor, two RoPE tables of seq_len × head_size/2.
  const auto& c = original.config;
  const Index floats = c.vocab_size * c.dim + c.n_layers * (2 * c.dim + 2 * c.dim * c.dim + 2 * c.dim * c.kv_dim() +
                                                            3 * c.dim * c.hidden_dim) +
                       c.dim + c.seq_len * c.head_dim();
  CHECK(std::filesystem::file_size(path) == static_cast<std::uintmax_t>(28 + 4 * floats));

  pf::io::LlamaWeights bad = w;
  bad.wq.pop_back();
  CHECK_THROWS_WITH(pf::io::serialize_llama2c(bad), Catch::Contains("layers of matrices, expected"));
  bad = w;
  bad.w2[0].resize(3, 3);
  CHECK_THROWS_WITH(pf::io::serialize_llama2c(bad), Catch::Contains("w2 has shape (3, 3), expected"));
  std::filesystem::remove(path);
}

TEST_CASE("llama2c export: a LoRA model exports the adapted weights (untied classifier)", "[io][llama2c][export][lora]") {
  pf::io::LlamaConfig c;
  c.dim = 32, c.hidden_dim = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 50, c.seq_len = 24;
  c.shared_classifier = false;
  auto model = pf::make_llama<pf::LoRA<pf::Dense>>(c);
  unsigned seed = pft::randomize_parameters(model, 1, 0.3f);
  pf::add_lora_training(model, "default", 4, 8.0f, {"wq", "wv", "w2"}, 5);
  {  // B is zero after add_lora_training: give it values so the adapters change the output
    pf::ParameterList params = pf::parameters_of(model);
    for (const pf::Parameter& p : params.items())
      if (p.name.find("lora_B") != std::string::npos) {
        const Matrix m = pft::random_matrix(p.shape[0], p.shape[1], seed++, 0.3f);
        p.write(m.data());
      }
  }
  const std::vector<int> tokens = {1, 7, 3, 44, 12, 9, 30, 2, 17};
  const Matrix adapted = logits_of(model, tokens);

  const std::string path = pft::process_temp_path("llama2c_export", "lora.bin");
  pf::save_llama2c(path, model);
  auto exported = pf::load_llama2c(path);
  const Matrix got = logits_of(exported, tokens);
  CHECK(pft::max_abs_diff(got, adapted) < 1e-4);
  pf::activate_lora_adapters(model, {});
  CHECK(pft::max_abs_diff(logits_of(model, tokens), adapted) > 1e-2);  // the adapters mattered
  pf::activate_lora_adapters(model, {"default"});

  // The adapter alone as a PEFT directory: reads back exactly and adapts a fresh copy of the base the same way.
  const pf::io::PeftLoraAdapter adapter = pf::peft_adapter_of(model, "default");
  CHECK(adapter.rank == 4);
  CHECK(adapter.alpha == 8.0f);
  CHECK(adapter.modules.size() == 6);
  CHECK(adapter.target_modules == std::vector<std::string>{"wq", "wv", "w2"});
  const std::string dir = pft::process_temp_path("llama2c_export", "peft");
  std::filesystem::remove_all(dir);
  pf::io::write_peft_lora(dir, adapter);
  const pf::io::PeftLoraAdapter back = pf::io::read_peft_lora(dir);
  CHECK(back.rank == 4);
  CHECK(back.alpha == 8.0f);
  REQUIRE(back.modules.size() == adapter.modules.size());
  for (std::size_t i = 0; i < back.modules.size(); ++i) {
    CHECK(back.modules[i].path == adapter.modules[i].path);
    CHECK(same_bits(back.modules[i].a, adapter.modules[i].a));
    CHECK(same_bits(back.modules[i].b, adapter.modules[i].b));
  }
  pf::activate_lora_adapters(model, {});
  pf::add_lora_adapter(model, back, "loaded");
  CHECK(pft::max_abs_diff(logits_of(model, tokens), adapted) < 1e-5);

  CHECK_THROWS_WITH(pf::peft_adapter_of(model, "none"), Catch::Contains("no module has an adapter named 'none'"));
  CHECK_THROWS_WITH(pf::add_lora_training(model, "x", 2, 4.0f, {"wz"}), Catch::Contains("unknown LoRA target 'wz'"));
  std::filesystem::remove_all(dir);
  std::filesystem::remove(path);
}
