// Llama from Hugging Face directories (models/hf_llama.hpp, io/hf_directory.hpp) against the float64 forward of
// tests/hf_llama_reference.py (written from transformers' modeling_llama.py, run at configure time): tied F32 with
// grouped-query attention and rope_theta 500000, untied BF16 over two shards and an index, F16 with an old
// checkpoint's inv_freq buffers; prefilled whole and token by token, at lengths crossing the attention tiles.
// Then the directories made wrong one way at a time, each refused naming the file and what it expected.

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "polyformer/io/hf_directory.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/models/hf_llama.hpp"
#include "hf_testing.hpp"

namespace pf = polyformer;
namespace fs = std::filesystem;
using pf::Index;
using pf::Matrix;

namespace {

const std::string reference_dir = POLYFORMER_HF_LLAMA_REFERENCE_DIR;

std::string case_dir(const std::string& name) { return reference_dir + "/" + name; }

/// The case's logits, every position, one sequence after another, for tokens fed `chunk` at a time.
Matrix run_model(const pf::Llama<>& model, const std::vector<int>& ids, Index chunk, int threads) {
  pf::Llama<>::Sequence seq(model);
  const Index n = Index(ids.size()), vocab = model.config().vocab_size;
  Matrix out(n, vocab);
  for (Index p = 0; p < n; p += chunk) {
    const Index m = std::min(chunk, n - p);
    seq.forward(std::span<const int>(ids.data() + p, std::size_t(m)), pf::Context{threads}, true);
    out.middleRows(p, m) = seq.logits();
  }
  return out;
}

void check_case(const std::string& name, double bound) {
  INFO(name);
  const auto ref = pf::io::SafetensorsFile::open(reference_dir + "/" + name + ".reference.safetensors");
  const pf::io::FloatTensor ids = ref.tensor("ids"), logits = ref.tensor("logits");
  const Index batch = ids.shape.at(0), n = ids.shape.at(1), vocab = logits.shape.at(2);
  const auto model = pf::load_hf_llama(case_dir(name));
  REQUIRE(model.config().vocab_size == vocab);
  for (Index b = 0; b < batch; ++b) {
    std::vector<int> tokens(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) tokens[std::size_t(i)] = int(ids.data[std::size_t(b * n + i)]);
    const Matrix want = Eigen::Map<const Matrix>(logits.data.data() + b * n * vocab, n, vocab);
    for (const Index chunk : {n, Index(1), Index(16)}) {
      INFO("sequence " << b << " chunk " << chunk);
      const Matrix got = run_model(model, tokens, chunk, 2);
      CHECK(pft::relative_error(got, want) < bound);
    }
  }
}

std::string copy_case(const std::string& name, const std::string& tag) {
  return pft::copy_case(case_dir(name), "hf_llama", tag);
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

TEST_CASE("load_hf_llama equals transformers' LlamaForCausalLM forward", "[models][hf][llama]") {
  if (!fs::exists(reference_dir + "/tied_f32.reference.safetensors"))
    FAIL("no Hugging Face Llama references in " << reference_dir
                                                << " (tests/hf_llama_reference.py runs at configure time with "
                                                   "python3-torch)");
  check_case("tied_f32", 1e-4);
  check_case("untied_bf16_sharded", 1e-4);
  check_case("f16_inv_freq", 1e-4);
  check_case("long_f32", 1e-4);  // 300 positions: past the attention's tiles
}

TEST_CASE("load_hf_llama caps the positions a sequence may reach", "[models][hf][llama]") {
  const auto model = pf::load_hf_llama(case_dir("tied_f32"), pf::FullAttention{}, 16);
  CHECK(model.config().seq_len == 16);
  pf::Llama<>::Sequence seq(model);
  const std::vector<int> tokens(16, 3);
  seq.forward(tokens, pf::Context{1});
  CHECK_THROWS_WITH(seq.forward(std::vector<int>{3}, pf::Context{1}), Catch::Contains("seq_len"));
  CHECK(pf::load_hf_llama(case_dir("tied_f32"), pf::FullAttention{}, 128).config().seq_len == 128);
  CHECK_THROWS_WITH(pf::load_hf_llama(case_dir("tied_f32"), pf::FullAttention{}, 129),
                    Catch::Contains("max_positions is 129, expected 0 (config.json's) or 1..128"));
  CHECK_THROWS_WITH(pf::load_hf_llama(case_dir("tied_f32"), pf::FullAttention{}, -1),
                    Catch::Contains("max_positions is -1"));
}

TEST_CASE("HfDirectory reads config.json and a sharded index", "[models][hf][io]") {
  const auto dir = pf::io::HfDirectory::open(case_dir("untied_bf16_sharded"));
  CHECK(dir.config_int("hidden_size") == 36);
  CHECK(dir.config_number("rms_norm_eps") == Approx(1e-5));
  CHECK_FALSE(dir.config_bool("tie_word_embeddings"));
  CHECK(dir.config_string("model_type") == "llama");
  CHECK(dir.config_int("absent_key", 7) == 7);
  CHECK(dir.size() == 3 * 9 + 3);
  CHECK(dir.info("model.norm.weight").dtype == pf::io::DType::BF16);
  CHECK(dir.f32_in_place("model.norm.weight") == nullptr);  // BF16: converted, never read in place
  const auto f32 = pf::io::HfDirectory::open(case_dir("tied_f32"));
  const float* in_place = f32.f32_in_place("model.norm.weight");
  REQUIRE(in_place != nullptr);  // the reference script's files keep every tensor float-aligned
  CHECK(std::vector<float>(in_place, in_place + 32) == f32.tensor("model.norm.weight").data);
  CHECK(dir.contains("lm_head.weight"));
  CHECK_FALSE(dir.contains("model.layers.3.mlp.up_proj.weight"));
  CHECK_THROWS_WITH(dir.config_int("absent_key"), Catch::Contains("config.json: absent_key is missing"));
  CHECK_THROWS_WITH(dir.config_int("model_type"), Catch::Contains("model_type is \"llama\", expected an integer"));
  CHECK_THROWS_WITH(dir.tensor("nope"), Catch::Contains("has no tensor 'nope'"));
  const auto llama = pf::hf_llama_config(dir);
  CHECK(llama.dim == 36);
  CHECK(llama.n_layers == 3);
  CHECK(llama.seq_len == 128);
  CHECK_FALSE(llama.shared_classifier);
}

TEST_CASE("load_hf_llama refuses a wrong directory, naming the file", "[models][hf][llama][errors]") {
  const auto fails = [](const std::string& dir, const std::string& message) {
    INFO(dir);
    CHECK_THROWS_WITH(pf::load_hf_llama(dir), Catch::Contains(message));
  };
  fails(pft::process_temp_path("hf_llama", "absent"), "is not a directory");
  {
    const std::string d = copy_case("tied_f32", "no_weights");
    fs::rename(d + "/model.safetensors", d + "/pytorch_model.bin");
    fails(d, "pytorch_model.bin (a Python pickle");
    fs::remove(d + "/pytorch_model.bin");
    fails(d, "has neither model.safetensors nor model.safetensors.index.json");
  }
  {
    const std::string d = copy_case("tied_f32", "no_config");
    fs::remove(d + "/config.json");
    fails(d, "config.json");
    write_text(d + "/config.json", "{\"model_type\": \"llama\",");
    fails(d, "not valid JSON");
  }
  {
    const std::string d = copy_case("untied_bf16_sharded", "missing_shard");
    fs::remove(d + "/model-00002-of-00002.safetensors");
    fails(d, "names shard 'model-00002-of-00002.safetensors', which is not in");
  }
  {
    const std::string d = copy_case("untied_bf16_sharded", "wrong_shard");
    std::string index = pft::read_text(d + "/model.safetensors.index.json");
    const std::string entry = "\"lm_head.weight\": \"model-00002-of-00002.safetensors\"";
    REQUIRE(index.find(entry) != std::string::npos);
    index.replace(index.find(entry), entry.size(), "\"lm_head.weight\": \"model-00001-of-00002.safetensors\"");
    write_text(d + "/model.safetensors.index.json", index);
    fails(d, "puts 'lm_head.weight' in model-00001-of-00002.safetensors, which does not hold it");
  }
  const std::pair<std::string, std::string> edits[] = {
      {"\"model_type\": \"llama\"", "\"model_type\": \"gpt2\""},
      {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""},
      {"\"rope_theta\": 500000.0", "\"rope_theta\": 500000.0, \"rope_scaling\": {\"type\": \"linear\"}"},
      {"\"rope_theta\": 500000.0", "\"rope_theta\": 500000.0, \"attention_bias\": true"},
      {"\"hidden_size\": 32", "\"hidden_size\": 48"},
      {"\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"},
      {"\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false"},
      {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"},
      {"\"vocab_size\": 97", "\"vocab_size\": \"97\""},
  };
  const std::string messages[] = {
      "model_type is \"gpt2\", expected \"llama\"",
      "hidden_act is \"gelu\", expected \"silu\"",
      "rope_scaling is {\"type\":\"linear\"}, expected null",
      "attention_bias is true, expected false",
      "'model.embed_tokens.weight' has shape (97, 32), expected (97, 48) from config.json",
      "n_heads",
      "has no tensor 'lm_head.weight'",
      "holds 'model.layers.1.",
      "vocab_size is \"97\", expected an integer",
  };
  for (std::size_t i = 0; i < std::size(edits); ++i) {
    const std::string d = copy_case("tied_f32", "edit" + std::to_string(i));
    pft::edit_config(d, edits[i].first, edits[i].second);
    fails(d, messages[i]);
  }
}
