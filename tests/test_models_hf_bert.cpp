// BERT from Hugging Face directories (models/hf_bert.hpp, models/bert.hpp) against the float64 forward of
// tests/hf_bert_reference.py (written from transformers' modeling_bert.py, run at configure time): BertModel in F32
// with a padded batch and mixed token types, BertForMaskedLM in BF16 over two shards, BertForPreTraining in F16 with
// gamma/beta names; last hidden state (padded positions included), pooler output and MLM logits. Then the wrong
// directories and inputs, each refused by name.

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "polyformer/io/safetensors.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/hf_bert.hpp"
#include "hf_testing.hpp"

namespace pf = polyformer;
namespace fs = std::filesystem;
using pf::Index;
using pf::Matrix;

namespace {

const std::string reference_dir = POLYFORMER_HF_BERT_REFERENCE_DIR;

std::string case_dir(const std::string& name) { return reference_dir + "/" + name; }

std::vector<int> ints(const pf::io::FloatTensor& t) { return std::vector<int>(t.data.begin(), t.data.end()); }

struct Case {
  pf::io::SafetensorsFile ref;
  std::vector<int> ids, mask, types;
  Index batch;
  pf::BertInputs inputs() const { return {ids, batch, mask, types}; }
};

Case open_case(const std::string& name) {
  auto ref = pf::io::SafetensorsFile::open(reference_dir + "/" + name + ".reference.safetensors");
  const auto ids = ref.tensor("ids");
  Case c{std::move(ref), ints(ids), {}, {}, ids.shape.at(0)};
  c.mask = ints(c.ref.tensor("attention_mask"));
  c.types = ints(c.ref.tensor("token_type_ids"));
  return c;
}

template <typename Model>
void check_outputs(const Model& model, const Case& c, int threads) {
  INFO("threads " << threads);
  const auto out = model.forward(c.inputs(), pf::Context{threads});
  CHECK(pft::relative_error(out.last_hidden_state, pft::as_rows(c.ref.tensor("last_hidden_state"))) < 1e-4);
  CHECK(model.has_pooler() == c.ref.contains("pooler_output"));
  if (model.has_pooler()) CHECK(pft::relative_error(out.pooler_output, pft::as_rows(c.ref.tensor("pooler_output"))) < 1e-4);
  CHECK(model.has_mlm_head() == c.ref.contains("logits"));
  if (model.has_mlm_head()) CHECK(pft::relative_error(out.logits, pft::as_rows(c.ref.tensor("logits"))) < 1e-4);
}

void check_case(const std::string& name) {
  INFO(name);
  const Case c = open_case(name);
  const auto model = pf::load_hf_bert(case_dir(name));
  for (const int threads : {1, 2}) check_outputs(model, c, threads);
}

std::string copy_case(const std::string& name, const std::string& tag) {
  return pft::copy_case(case_dir(name), "hf_bert", tag);
}

}  // namespace

TEST_CASE("load_hf_bert equals transformers' BertModel, BertForMaskedLM, BertForPreTraining, RobertaModel and "
          "RobertaForMaskedLM", "[models][hf][bert]") {
  if (!fs::exists(reference_dir + "/model_f32.reference.safetensors"))
    FAIL("no Hugging Face BERT references in " << reference_dir
                                               << " (tests/hf_bert_reference.py runs at configure time with "
                                                  "python3-torch)");
  check_case("model_f32");
  check_case("masked_lm_bf16_sharded");
  check_case("pretraining_f16_gamma");
  check_case("roberta_mlm_f32");
  check_case("roberta_model_bf16");
  check_case("long_f32");  // 300 positions: past the attention's tiles
}

TEST_CASE("RoBERTa's positions count from pad_token_id over the non-pad ids, to max_position_embeddings",
          "[models][hf][bert]") {
  const auto model = pf::load_hf_bert(case_dir("roberta_mlm_f32"));
  CHECK(model.config().padding_idx == 1);
  CHECK(model.config().max_sequence() == 30);  // 32 positions: 0 unused, 1 the pad's, 2..31 the tokens'
  CHECK_THROWS_WITH(model.forward({std::vector<int>(31, 5), 1, {}, {}}),
                    Catch::Contains("sequences of 31 tokens, expected at most 30 (max_position_embeddings 32 less "
                                    "padding_idx + 1)"));
  // A pad id takes the pad's position and does not count, so moving it among attended ids changes no other
  // token's position, and (attention being blind to order) no other token's output. Counted as BERT counts, the ids
  // after it would move one position.
  const std::vector<int> ids{0, 7, 1, 9, 2}, moved{0, 7, 9, 2, 1};
  const auto a = model.forward({ids, 1, {}, {}}), b = model.forward({moved, 1, {}, {}});
  CHECK(pft::max_abs_diff(a.last_hidden_state.row(3), b.last_hidden_state.row(2)) < 1e-5);  // id 9
  CHECK(pft::max_abs_diff(a.last_hidden_state.row(4), b.last_hidden_state.row(3)) < 1e-5);  // id 2
  CHECK(pft::max_abs_diff(a.last_hidden_state.row(2), b.last_hidden_state.row(4)) < 1e-5);  // the pad id
  // A pad_token_id whose position the table lacks is refused by name.
  const std::string d = copy_case("roberta_mlm_f32", "pad31");
  pft::edit_config(d, "\"pad_token_id\": 1", "\"pad_token_id\": 31");
  CHECK_THROWS_WITH(pf::load_hf_bert(d), Catch::Contains("config.json") &&
                                             Catch::Contains("pad_token_id (RoBERTa's padding_idx) is 31"));
}

TEST_CASE("BERT over LoRA<Dense> without adapters equals Dense", "[models][hf][bert]") {
  const Case c = open_case("masked_lm_bf16_sharded");
  const auto dense = pf::load_hf_bert(case_dir("masked_lm_bf16_sharded"));
  const auto lora = pf::load_hf_bert<pf::LoRA<pf::Dense>>(case_dir("masked_lm_bf16_sharded"));
  const auto a = dense.forward(c.inputs(), pf::Context{1});
  const auto b = lora.forward(c.inputs(), pf::Context{1});
  CHECK(a.last_hidden_state == b.last_hidden_state);
  CHECK(a.logits == b.logits);
  check_outputs(lora, c, 1);
}

TEST_CASE("Bert::forward refuses inputs that do not fit, naming the argument", "[models][hf][bert][errors]") {
  const auto model = pf::load_hf_bert(case_dir("model_f32"));
  const std::vector<int> ids{1, 2, 3, 4}, ones{1, 1, 1, 1};
  const auto fails = [&](pf::BertInputs in, const std::string& message) {
    INFO(message);
    CHECK_THROWS_WITH(model.forward(in), Catch::Contains(message));
  };
  fails({ids, 3, {}, {}}, "4 input ids for batch 3, expected a positive multiple");
  fails({std::vector<int>{1, 101}, 1, {}, {}}, "input_ids[1] is 101, expected 0..100");
  fails({ids, 1, std::vector<int>{1, 1, 1}, {}}, "attention_mask has 3 entries, expected 4");
  fails({ids, 1, std::vector<int>{1, 2, 1, 1}, {}}, "attention_mask[1] is 2, expected 0 or 1");
  fails({ids, 2, std::vector<int>{1, 1, 0, 0}, {}}, "attention_mask of sequence 1 is all 0");
  fails({ids, 1, ones, std::vector<int>{0, 1, 2, 0}}, "token_type_ids[2] is 2, expected 0..1");
  fails({std::vector<int>(97, 1), 1, {}, {}}, "sequences of 97 tokens, expected at most 96 (max_position_embeddings 96)");
  const auto mlm = pf::load_hf_bert(case_dir("masked_lm_bf16_sharded"));
  std::remove_cvref_t<decltype(mlm)>::Workspace ws;
  Matrix hidden(2, 36), pooled(1, 36);
  CHECK_THROWS_WITH(mlm.pool(pf::cview(hidden), 1, pf::view(pooled), ws, {}), Catch::Contains("has no pooler"));
}

TEST_CASE("load_hf_bert refuses a wrong directory, naming the file", "[models][hf][bert][errors]") {
  const auto fails = [](const std::string& dir, const std::string& message) {
    INFO(dir);
    CHECK_THROWS_WITH(pf::load_hf_bert(dir), Catch::Contains(message));
  };
  const std::pair<std::string, std::string> edits[] = {
      {"\"model_type\": \"bert\"", "\"model_type\": \"distilbert\""},
      {"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\""},
      {"\"position_embedding_type\": \"absolute\"", "\"position_embedding_type\": \"relative_key\""},
      {"\"hidden_size\": 32", "\"hidden_size\": 48"},
      {"\"num_attention_heads\": 4", "\"num_attention_heads\": 5"},
      {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"},
      {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"},
      {"\"type_vocab_size\": 2", "\"type_vocab_size\": 3"},
      {"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"gelu\", \"is_decoder\": true"},
  };
  const std::string messages[] = {
      "model_type is \"distilbert\", expected \"bert\" or \"roberta\"",
      "hidden_act is \"relu\", expected \"gelu\"",
      "position_embedding_type is \"relative_key\", expected \"absolute\"",
      "'embeddings.word_embeddings.weight' has shape (101, 32), expected (101, 48) from config.json",
      "hidden_size 32 is not a multiple of num_attention_heads 5",
      "has no tensor 'encoder.layer.2.attention.self.query.weight'",
      "holds 'encoder.layer.1.",
      "'embeddings.token_type_embeddings.weight' has shape (2, 32), expected (3, 32)",
      "is_decoder is true, expected false",
  };
  for (std::size_t i = 0; i < std::size(edits); ++i) {
    const std::string d = copy_case("model_f32", "edit" + std::to_string(i));
    pft::edit_config(d, edits[i].first, edits[i].second);
    fails(d, messages[i]);
  }
  // Tensors rewritten: one dropped, or one of another model added (refused, not silently dropped).
  const auto rewrite = [](const std::string& name, const std::string& tag, const std::string& drop,
                          const std::string& add) {
    const std::string d = copy_case(name, tag);
    std::vector<std::pair<std::string, pf::io::FloatTensor>> tensors;
    {
      const auto file = pf::io::SafetensorsFile::open(d + "/model.safetensors");
      for (const std::string& n : file.names())
        if (n != drop) tensors.emplace_back(n, file.tensor(n));
    }
    if (!add.empty()) tensors.emplace_back(add, pf::io::FloatTensor{{4, 32}, std::vector<float>(128, 0.5f)});
    pf::io::write_safetensors(d + "/model.safetensors", tensors);
    return d;
  };
  fails(rewrite("model_f32", "foreign", "", "encoder.layer.0.attention.self.distance_embedding.weight"),
        "holds 'encoder.layer.0.attention.self.distance_embedding.weight', which BERT with this config.json does not have");
  fails(rewrite("pretraining_f16_gamma", "no_gamma", "bert.encoder.layer.1.output.LayerNorm.gamma", ""),
        "has no tensor 'bert.encoder.layer.1.output.LayerNorm.weight'");
  fails(rewrite("pretraining_f16_gamma", "no_bias", "cls.predictions.decoder.bias", ""),
        "has no tensor 'cls.predictions.bias'");
  // The pre-training case does hold the old names and the heads the loader skips.
  const auto dir = pf::io::HfDirectory::open(case_dir("pretraining_f16_gamma"));
  CHECK(dir.contains("bert.embeddings.LayerNorm.gamma"));
  CHECK(dir.contains("cls.seq_relationship.weight"));
}
