// PEFT LoRA adapters on stories260K: a LoRA<Dense> Llama with an adapter equals a plain Llama whose weights
// are W + s·B·A (formed here in float64), merged or not; adapters switch model-wide; a malformed adapter
// directory is refused by name and leaves the model as it was.

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "peft_testing.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/peft.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/models/llama_lora.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pft::Index;
using pft::LoraModule;
using pft::Matrix;

namespace {

const std::vector<int> tokens{1, 403, 407, 261, 378, 270, 300, 265, 500, 3, 42, 7};

std::string temp_dir(const std::string& name) { return pft::process_temp_path("peft", name); }

/// The weights of `w` at a llama2.c module path.
Matrix& weight_at(pf::io::LlamaWeights& w, const std::string& path) {
  const std::size_t l = std::stoul(path.substr(7));
  const std::string leaf = path.substr(path.rfind('.') + 1);
  if (leaf == "wq") return w.wq[l];
  if (leaf == "wk") return w.wk[l];
  if (leaf == "wv") return w.wv[l];
  if (leaf == "wo") return w.wo[l];
  if (leaf == "w1") return w.w1[l];
  if (leaf == "w2") return w.w2[l];
  return w.w3[l];
}

/// Random factors for each path, shapes from the base weights.
std::vector<LoraModule> random_modules(const pf::io::LlamaWeights& base, const std::vector<std::string>& paths,
                                       Index r, unsigned seed) {
  std::vector<LoraModule> out;
  auto w = base;
  for (const auto& p : paths) {
    const Matrix& m = weight_at(w, p);
    out.push_back({p, pft::random_matrix(r, m.cols(), seed++, 0.3f), pft::random_matrix(m.rows(), r, seed++, 0.3f)});
  }
  return out;
}

/// The base weights with W += s·B·A for every module, the product and sum in float64.
pf::io::LlamaWeights merged_weights(pf::io::LlamaWeights w, const std::vector<LoraModule>& modules, double s) {
  for (const auto& m : modules) {
    Matrix& target = weight_at(w, m.path);
    target = (target.cast<double>() + s * m.b.cast<double>() * m.a.cast<double>()).cast<float>();
  }
  return w;
}

template <typename Model>
Matrix logits(const Model& model) {
  auto sequence = model.new_sequence();
  sequence.forward(tokens, pf::Context{2}, /*all_logits=*/true);
  return sequence.logits();
}

double rel(const Matrix& a, const Matrix& b) {
  return (a - b).cwiseAbs().maxCoeff() / std::max(1e-30f, b.cwiseAbs().maxCoeff());
}

const std::vector<std::string> paths{"layers.0.attention.wq", "layers.0.attention.wv", "layers.1.attention.wk",
                                     "layers.2.attention.wo", "layers.3.feed_forward.w1", "layers.3.feed_forward.w2",
                                     "layers.4.feed_forward.w3"};

}  // namespace

TEST_CASE("models/llama_lora: a PEFT adapter equals the model with W + s·B·A, merged or not", "[models][lora]") {
  const auto base = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto modules = random_modules(base, paths, 4, 100);
  const std::string dir = temp_dir("adapter_a");
  pft::write_peft_adapter(dir, 4, 8.0, modules);
  const auto adapter = pf::io::read_peft_lora(dir);
  REQUIRE(adapter.rank == 4);
  CHECK(adapter.scaling() == 2.0f);
  REQUIRE(adapter.modules.size() == paths.size());
  CHECK(adapter.modules[3].path == "layers.2.attention.wo");
  CHECK(adapter.modules[3].a == modules[3].a);
  CHECK(adapter.modules[3].b == modules[3].b);

  auto plain = pf::make_llama(base);
  auto reference = pf::make_llama(merged_weights(base, modules, 2.0));
  auto model = pf::make_llama<pf::LoRA<pf::Dense>>(base);
  const Matrix base_logits = logits(plain), want = logits(reference);
  REQUIRE(rel(want, base_logits) > 1e-2);  // the adapter changes the model
  CHECK(logits(model) == base_logits);     // no adapter yet: the base model exactly

  pf::add_lora_adapter(model, adapter, "a");
  CHECK(rel(logits(model), want) < 1e-4);
  pf::merge_lora_adapters(model);
  CHECK(model.layers()[3].ffn().down().merged());
  CHECK(rel(logits(model), want) < 1e-4);
  pf::merge_lora_adapters(model, /*merge=*/false);
  CHECK(pft::max_abs_diff(model.layers()[3].ffn().down().inner().weight(), base.w2[3]) < 1e-6);
  CHECK(pft::max_abs_diff(model.layers()[0].self_attn().q_proj().inner().weight(), base.wq[0]) < 1e-6);
  CHECK(rel(logits(model), want) < 1e-4);

  // rsLoRA scaling α/√r, and a strength on top.
  const std::string rs = temp_dir("adapter_rs");
  pft::write_peft_adapter(rs, 4, 8.0, modules, {{"use_rslora", true}});
  auto model_rs = pf::make_llama<pf::LoRA<pf::Dense>>(base);
  pf::add_lora_adapter(model_rs, pf::io::read_peft_lora(rs), "rs", /*strength=*/0.5f);
  auto reference_rs = pf::make_llama(merged_weights(base, modules, 0.5 * 8.0 / 2.0));
  CHECK(rel(logits(model_rs), logits(reference_rs)) < 1e-4);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(rs);
}

TEST_CASE("models/llama_lora: named adapters switch model-wide without reloading", "[models][lora]") {
  const auto base = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto m1 = random_modules(base, {"layers.0.attention.wq", "layers.2.feed_forward.w2"}, 2, 200);
  const auto m2 = random_modules(base, {"layers.1.attention.wv", "layers.2.feed_forward.w2"}, 8, 300);
  const std::string d1 = temp_dir("switch1"), d2 = temp_dir("switch2");
  pft::write_peft_adapter(d1, 2, 4.0, m1);
  pft::write_peft_adapter(d2, 8, 4.0, m2);
  auto model = pf::make_llama<pf::LoRA<pf::Dense>>(base);
  pf::add_lora_adapter(model, pf::io::read_peft_lora(d1), "one");
  pf::add_lora_adapter(model, pf::io::read_peft_lora(d2), "two");
  auto plain = pf::make_llama(base);
  auto ref1 = pf::make_llama(merged_weights(base, m1, 2.0));
  auto ref2 = pf::make_llama(merged_weights(base, m2, 0.5));
  auto ref12 = pf::make_llama(merged_weights(merged_weights(base, m1, 2.0), m2, 0.5));
  const Matrix want0 = logits(plain), want1 = logits(ref1), want2 = logits(ref2), want12 = logits(ref12);
  CHECK(rel(logits(model), want12) < 1e-4);  // both active once added
  for (const bool merged : {false, true}) {
    INFO("merged " << merged);
    if (merged) pf::merge_lora_adapters(model);
    pf::activate_lora_adapters(model, {"one"});
    CHECK(rel(logits(model), want1) < 1e-4);
    pf::activate_lora_adapters(model, {"two"});
    CHECK(rel(logits(model), want2) < 1e-4);
    pf::activate_lora_adapters(model, {});
    CHECK(rel(logits(model), want0) < 1e-5);
    pf::activate_lora_adapters(model, {"one", "two"});
    CHECK(rel(logits(model), want12) < 1e-4);
  }
  std::filesystem::remove_all(d1);
  std::filesystem::remove_all(d2);
}

TEST_CASE("models/llama_lora: malformed adapters are refused by name and change nothing", "[models][lora][errors]") {
  const auto base = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  const auto good = random_modules(base, {"layers.0.attention.wq", "layers.1.feed_forward.w1"}, 4, 400);
  const std::string dir = temp_dir("bad");
  const auto expect_read_error = [&](const std::string& what) {
    INFO(what);
    CHECK_THROWS_WITH(pf::io::read_peft_lora(dir), Catch::Contains(what));
  };
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  expect_read_error("adapter_config.json");  // no files at all
  pft::write_peft_adapter(dir, 4, 8.0, good);
  std::ofstream(dir + "/adapter_config.json") << "{\"r\": 4, ";
  expect_read_error("not valid JSON");
  pft::write_peft_adapter(dir, 4, 8.0, good, {{"r", 0}});
  expect_read_error("r is 0, expected a positive integer");
  pft::write_peft_adapter(dir, 4, 8.0, good, {{"lora_alpha", "eight"}});
  expect_read_error("lora_alpha is \"eight\", expected a number");
  pft::write_peft_adapter(dir, 4, 8.0, good, {{"bias", "all"}});
  expect_read_error("bias is \"all\", only \"none\" is supported");
  pft::write_peft_adapter(dir, 4, 8.0, good, {{"peft_type", "IA3"}});
  expect_read_error("peft_type is \"IA3\", expected \"LORA\"");
  pft::write_peft_adapter(dir, 4, 8.0, good, {{"rank_pattern", {{"wq", 8}}}});
  expect_read_error("per-module ranks and alphas are not supported");
  pft::write_peft_adapter(dir, 2, 8.0, good);  // config says r = 2, tensors have 4
  expect_read_error("has shape (4, 64), expected (r = 2, in)");
  pft::write_peft_adapter(dir, 4, 8.0, good, nlohmann::json::object(), {"wk"});
  expect_read_error("module 'layers.0.attention.wq' is not among adapter_config.json's target_modules");
  {
    std::vector<std::pair<std::string, pf::io::FloatTensor>> t{
        {"base_model.model.layers.0.attention.wq.lora_A.weight", pft::to_tensor(good[0].a)}};
    pf::io::write_safetensors(dir + "/adapter_model.safetensors", t);
    expect_read_error("module 'layers.0.attention.wq' has lora_A but no lora_B");
    t.emplace_back("base_model.model.layers.0.attention.wq.lora_B.weight", pft::to_tensor(good[0].b));
    t.emplace_back("base_model.model.tok_embeddings.weight", pft::to_tensor(good[0].b));
    pf::io::write_safetensors(dir + "/adapter_model.safetensors", t);
    expect_read_error("tensor 'base_model.model.tok_embeddings.weight' is not a LoRA factor");
  }
  std::ofstream(dir + "/adapter_model.safetensors") << "garbage";
  expect_read_error("adapter_model.safetensors");

  // Readable files that do not fit the model: nothing changes.
  auto model = pf::make_llama<pf::LoRA<pf::Dense>>(base);
  const Matrix before = logits(model);
  // The good modules plus one at `path` (with the factors of layer 0's wq) must be refused with `what`.
  const auto apply_error = [&](const std::string& path, const std::string& what) {
    INFO(what);
    auto modules = good;
    modules.push_back({path, good[0].a, good[0].b});
    pft::write_peft_adapter(dir, modules.front().a.rows(), 8.0, modules);
    CHECK_THROWS_WITH(pf::add_lora_adapter(model, pf::io::read_peft_lora(dir), "x"), Catch::Contains(what));
    CHECK(logits(model) == before);
    for (auto& layer : model.layers()) CHECK(layer.self_attn().q_proj().adapters().empty());
  };
  apply_error("layers.5.attention.wq", "'layers.5.attention.wq' names a layer the model does not have");
  apply_error("layers.0.attention.wz", "'layers.0.attention.wz' is not a linear module of the model");
  apply_error("layers.3", "'layers.3' has no layer number and module");
  apply_error("layers.x.attention.wq", "'layers.x.attention.wq' has no layer number");
  // w2 is (64, 172): A must be (r, 172).
  apply_error("layers.2.feed_forward.w2",
              "module 'layers.2.feed_forward.w2' has A (4, 64) and B (64, 4), expected A (r, 172) and B (64, r)");
  pft::write_peft_adapter(dir, 4, 8.0, good);
  pf::add_lora_adapter(model, pf::io::read_peft_lora(dir), "x");
  CHECK_THROWS_WITH(pf::add_lora_adapter(model, pf::io::read_peft_lora(dir), "x"), Catch::Contains("has an adapter named 'x' already"));
  std::filesystem::remove_all(dir);
}
