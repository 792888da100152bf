// GPT-2 from Hugging Face directories (models/hf_gpt2.hpp, models/gpt2.hpp, models/causal_lm.hpp) against the
// float64 forward of tests/hf_gpt2_reference.py (written from transformers' modeling_gpt2.py, run at configure
// time): GPT2LMHeadModel in F32 with its tied lm_head stored, GPT2Model names in BF16 over two shards with the old
// mask buffers, an untied F16 model with an odd head size. Logits prefilled whole, token by token and in chunks;
// greedy decoding over the KV cache against the reference's full recomputation; beam search (K beams advanced in one
// batched pass over copied states) against the reference's transformers-style search in float64, under four
// settings of beams, length penalty, early stopping and EOS; a batch of sequences in one pass;
// the position table's gradient against finite differences. Then the wrong directories, each refused by name.

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "polyformer/generate/text_generation.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/linear/int8.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/hf_gpt2.hpp"
#include "hf_testing.hpp"

namespace pf = polyformer;
namespace fs = std::filesystem;
using pf::Index;
using pf::Matrix;

namespace {

const std::string reference_dir = POLYFORMER_HF_GPT2_REFERENCE_DIR;

std::string case_dir(const std::string& name) { return reference_dir + "/" + name; }

std::vector<int> ints(const std::vector<float>& v, std::size_t from = 0, std::size_t count = std::string::npos) {
  const std::size_t end = count == std::string::npos ? v.size() : from + count;
  return std::vector<int>(v.begin() + std::ptrdiff_t(from), v.begin() + std::ptrdiff_t(end));
}

/// Every position's logits of `ids`, fed `chunk` tokens at a time.
template <typename Model>
Matrix run_model(const Model& model, const std::vector<int>& ids, Index chunk, int threads) {
  typename Model::Sequence seq(model);
  const Index n = Index(ids.size());
  Matrix out(n, model.config().vocab_size);
  for (Index p = 0; p < n; p += chunk) {
    const Index m = std::min(chunk, n - p);
    seq.forward(std::span<const int>(ids.data() + p, std::size_t(m)), pf::Context{threads}, true);
    out.middleRows(p, m) = seq.logits();
  }
  return out;
}

/// Greedy decoding of `steps` tokens after `prompt` over the KV cache.
template <typename Model>
std::vector<int> greedy(const Model& model, const std::vector<int>& prompt, std::size_t steps) {
  typename Model::Sequence seq(model);
  std::vector<int> out;
  std::span<const float> logits = seq.forward(prompt, pf::Context{1});
  while (out.size() < steps) {
    out.push_back(int(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    logits = seq.forward(std::span<const int>(&out.back(), 1), pf::Context{1});
  }
  return out;
}

void check_case(const std::string& name) {
  INFO(name);
  const auto ref = pf::io::SafetensorsFile::open(reference_dir + "/" + name + ".reference.safetensors");
  const pf::io::FloatTensor ids = ref.tensor("ids"), logits = ref.tensor("logits");
  const Index batch = ids.shape.at(0), n = ids.shape.at(1), vocab = logits.shape.at(2);
  const auto model = pf::load_hf_gpt2(case_dir(name));
  REQUIRE(model.config().vocab_size == vocab);
  for (Index b = 0; b < batch; ++b) {
    const std::vector<int> tokens = ints(ids.data, std::size_t(b * n), std::size_t(n));
    const Matrix want = Eigen::Map<const Matrix>(logits.data.data() + b * n * vocab, n, vocab);
    for (const Index chunk : {n, Index(1), Index(16)}) {
      INFO("sequence " << b << " chunk " << chunk);
      CHECK(pft::relative_error(run_model(model, tokens, chunk, 2), want) < 1e-4);
    }
  }
  const std::vector<int> want_greedy = ints(ref.tensor("greedy").data);
  CHECK(greedy(model, ints(ref.tensor("prompt").data), want_greedy.size()) == want_greedy);
  for (int i = 0; ref.contains("beam_" + std::to_string(i)); ++i) {
    const std::vector<float> s = ref.tensor("beam_" + std::to_string(i) + "_settings").data;
    const pf::BeamSearchOptions o = pft::beam_options(s);
    INFO("beam setting " << i << ": " << o.num_beams << " beams, " << o.max_new_tokens << " new tokens, penalty "
                         << o.length_penalty << ", early stopping " << s.at(3) << ", eos " << o.eos_token_ids[0]);
    const std::vector<int> prompt = ints(ref.tensor("prompt").data);
    CHECK(pf::beam_search_causal(model, prompt, o, pf::Context{2}).tokens == ints(ref.tensor("beam_" + std::to_string(i)).data));
  }
}

std::string copy_case(const std::string& name, const std::string& tag) {
  return pft::copy_case(case_dir(name), "hf_gpt2", tag);
}

}  // namespace

TEST_CASE("load_hf_gpt2 equals transformers' GPT2LMHeadModel forward and greedy decoding", "[models][hf][gpt2]") {
  if (!fs::exists(reference_dir + "/lm_head_f32.reference.safetensors"))
    FAIL("no Hugging Face GPT-2 references in " << reference_dir
                                                << " (tests/hf_gpt2_reference.py runs at configure time with "
                                                   "python3-torch)");
  check_case("lm_head_f32");
  check_case("model_bf16_sharded");
  check_case("untied_f16");
  check_case("long_f32");  // 300 positions: past the attention's tiles
}

TEST_CASE("GPT-2 decodes several sequences in one pass, and over LoRA<Dense> as over Dense", "[models][hf][gpt2]") {
  const auto model = pf::load_hf_gpt2(case_dir("lm_head_f32"));
  using Model = std::remove_cvref_t<decltype(model)>;
  const std::vector<int> a{1, 2, 3, 4, 5, 6, 7}, b{50, 60}, c{9};
  const std::vector<int> next_a{8}, next_b{70, 71, 72}, next_c{10};
  Model::State sa = model.make_state(), sb = model.make_state(), sc = model.make_state();
  Model::Workspace ws;
  Model::State* states[] = {&sa, &sb, &sc};
  const std::span<const int> first[] = {a, b, c}, second[] = {next_a, next_b, next_c};
  model.forward(states, first, ws, pf::Context{2});
  const Matrix batched = model.forward(states, second, ws, pf::Context{2});
  const std::vector<int> whole[] = {{1, 2, 3, 4, 5, 6, 7, 8}, {50, 60, 70, 71, 72}, {9, 10}};
  for (int s = 0; s < 3; ++s) {
    INFO("sequence " << s);
    const Matrix alone = run_model(model, whole[s], 100, 1);
    CHECK(pft::max_abs_diff(batched.row(s), alone.row(alone.rows() - 1)) < 1e-5f * alone.cwiseAbs().maxCoeff());
  }
  const auto lora = pf::load_hf_gpt2<pf::LoRA<pf::Dense>>(case_dir("lm_head_f32"));
  CHECK(run_model(lora, whole[0], 3, 1) == run_model(model, whole[0], 3, 1));
  const auto int8 = pf::load_hf_gpt2<pf::Int8>(case_dir("lm_head_f32"));
  REQUIRE(int8.classifier() != nullptr);  // a tied classifier of its own, quantized
  CHECK(pft::relative_error(run_model(int8, whole[0], 8, 1), run_model(model, whole[0], 8, 1)) < 0.05);
}

TEST_CASE("GPT-2's position table trains: its gradient against finite differences", "[models][hf][gpt2][backward]") {
  auto model = pf::load_hf_gpt2(case_dir("untied_f16"));
  using Model = decltype(model);
  const std::vector<int> tokens{3, 14, 15, 92, 65, 35, 89, 79, 32, 38};  // two sequences of 5
  const Index rows = 10, vocab = model.config().vocab_size;
  const Matrix weights = pft::random_matrix(rows, vocab, 5);  // loss = Σ weights ⊙ logits
  const auto loss = [&](const Model& m) {
    Matrix logits(rows, vocab);
    typename Model::Saved saved;
    m.forward_train(tokens, 2, pf::view(logits), saved, pf::Context{1});
    return double((logits.cast<double>().array() * weights.cast<double>().array()).sum());
  };
  typename Model::Gradients g = model.make_gradients();
  {
    Matrix logits(rows, vocab);
    typename Model::Saved saved;
    model.forward_train(tokens, 2, pf::view(logits), saved, pf::Context{1});
    CHECK(pft::relative_error(logits.topRows(5), run_model(model, {3, 14, 15, 92, 65}, 5, 1)) < 1e-5);
    model.backward(pf::cview(weights), g, saved, pf::Context{1});
  }
  REQUIRE(g.positions.rows() == model.config().seq_len);
  CHECK(g.positions.bottomRows(g.positions.rows() - 5).cwiseAbs().maxCoeff() == 0.0f);  // positions 5.. unused
  pf::ParameterList params = pf::parameters_of(model);
  const pf::Parameter* wpe = params.find("wpe.weight");
  REQUIRE(wpe != nullptr);
  std::vector<float> table(std::size_t(wpe->numel()));
  wpe->read(table.data());
  const Index d = model.config().dim;
  const double scale = g.positions.topRows(5).cwiseAbs().maxCoeff();
  for (const auto& [p, j] : {std::pair<Index, Index>{0, 0}, {1, 7}, {4, 34}, {2, 20}}) {
    INFO("position " << p << " column " << j);
    const float h = 1e-2f, saved = table[std::size_t(p * d + j)];
    table[std::size_t(p * d + j)] = saved + h;
    wpe->write(table.data());
    const double up = loss(model);
    table[std::size_t(p * d + j)] = saved - h;
    wpe->write(table.data());
    const double down = loss(model);
    table[std::size_t(p * d + j)] = saved;
    wpe->write(table.data());
    CHECK(std::abs((up - down) / (2 * h) - g.positions(p, j)) < 2e-2 * scale);
  }
}

TEST_CASE("load_hf_gpt2 refuses a wrong directory, naming the file", "[models][hf][gpt2][errors]") {
  const auto fails = [](const std::string& dir, const std::string& message) {
    INFO(dir);
    CHECK_THROWS_WITH(pf::load_hf_gpt2(dir), Catch::Contains(message));
  };
  const std::pair<std::string, std::string> edits[] = {
      {"\"model_type\": \"gpt2\"", "\"model_type\": \"gpt_neo\""},
      {"\"activation_function\": \"gelu_new\"", "\"activation_function\": \"gelu\""},
      {"\"activation_function\": \"gelu_new\"", "\"activation_function\": \"gelu_new\", \"scale_attn_weights\": false"},
      {"\"activation_function\": \"gelu_new\"",
       "\"activation_function\": \"gelu_new\", \"scale_attn_by_inverse_layer_idx\": true"},
      {"\"n_embd\": 32", "\"n_embd\": 40"},
      {"\"n_head\": 4", "\"n_head\": 5"},
      {"\"n_layer\": 2", "\"n_layer\": 3"},
      {"\"n_layer\": 2", "\"n_layer\": 1"},
      {"\"n_positions\": 80", "\"n_positions\": 64"},
  };
  const std::string messages[] = {
      "model_type is \"gpt_neo\", expected \"gpt2\"",
      "activation_function is \"gelu\", expected \"gelu_new\" or \"gelu_pytorch_tanh\"",
      "scale_attn_weights is false, expected true",
      "scale_attn_by_inverse_layer_idx is true, expected false",
      "'transformer.wte.weight' has shape (103, 32), expected (103, 40) from config.json",
      "dim 32 is not divisible by n_heads 5",
      "has no tensor 'transformer.h.2.ln_1.weight'",
      "holds 'transformer.h.1.",
      "'transformer.wpe.weight' has shape (80, 32), expected (64, 32)",
  };
  for (std::size_t i = 0; i < std::size(edits); ++i) {
    const std::string d = copy_case("lm_head_f32", "edit" + std::to_string(i));
    pft::edit_config(d, edits[i].first, edits[i].second);
    fails(d, messages[i]);
  }
  {  // untied without its lm_head
    const std::string d = copy_case("lm_head_f32", "untied");
    pft::edit_config(d, "\"model_type\": \"gpt2\"", "\"model_type\": \"gpt2\", \"tie_word_embeddings\": false");
    CHECK_NOTHROW(pf::load_hf_gpt2(d));  // the stored lm_head.weight becomes the classifier
    std::vector<std::pair<std::string, pf::io::FloatTensor>> tensors;
    {
      const auto file = pf::io::SafetensorsFile::open(d + "/model.safetensors");
      for (const std::string& n : file.names())
        if (n != "lm_head.weight") tensors.emplace_back(n, file.tensor(n));
    }
    pf::io::write_safetensors(d + "/model.safetensors", tensors);
    fails(d, "has no tensor 'lm_head.weight'");
  }
  const auto model = pf::load_hf_gpt2(case_dir("model_bf16_sharded"), pf::FullAttention{}, 16);
  CHECK(model.config().seq_len == 16);
  CHECK(model.positions().rows() == 16);
  CHECK_THROWS_WITH(pf::load_hf_gpt2(case_dir("model_bf16_sharded"), pf::FullAttention{}, 81),
                    Catch::Contains("max_positions is 81, expected 0 (config.json's) or 1..80"));
  typename std::remove_cvref_t<decltype(model)>::Sequence seq(model);
  seq.forward(std::vector<int>(16, 1), pf::Context{1});
  CHECK_THROWS_WITH(seq.forward(std::vector<int>{1}, pf::Context{1}),
                    Catch::Contains("Gpt2::forward: positions 16..16 pass the model's seq_len 16"));
}
