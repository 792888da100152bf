// T5 from Hugging Face directories (models/hf_t5.hpp, models/t5.hpp, attention/relative_position.hpp) against the
// float64 forward of tests/hf_t5_reference.py (written from transformers' modeling_t5.py, run at configure time):
// the original T5 (ReLU, tied lm_head scaled by d_model^-½) in F32 over two padded sequences, and v1.1/FLAN-T5's
// gated-gelu with an untied lm_head and heads·d_kv ≠ d_model in BF16. The encoder's output, the teacher-forced
// logits and decoder output, greedy decoding over the decoder's cache (cross-attention keys and values projected
// once) against the reference's full recomputation, and beam search against its transformers-style search; the same
// through other attention (a sliding window wider than the sequences) and linear (LoRA<Dense>) policies.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "hf_testing.hpp"
#include "polyformer/generate/seq2seq_generation.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/attention/sliding_window.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/hf_t5.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

const std::string reference_dir = POLYFORMER_HF_T5_REFERENCE_DIR;

std::vector<int> ints(const std::vector<float>& v, std::size_t from = 0, std::size_t count = std::string::npos) {
  const std::size_t end = count == std::string::npos ? v.size() : from + count;
  return std::vector<int>(v.begin() + std::ptrdiff_t(from), v.begin() + std::ptrdiff_t(end));
}

/// The case `name` through T5<Model's activation, linear and attention policies>, its attention set as `attention`;
/// outputs within `tolerance` (relative), and with `search` greedy and beam tokens equal to the reference's.
template <typename Model>
void check_case(const std::string& name, const typename Model::attention_type& attention = {}, double tolerance = 1e-4,
                bool search = true) {
  INFO(name);
  const auto ref = pf::io::SafetensorsFile::open(reference_dir + "/" + name + ".reference.safetensors");
  const Model model = pf::load_hf_t5<typename Model::activation_type, typename Model::linear_type,
                                     typename Model::attention_type>(reference_dir + "/" + name, attention);
  const pf::io::FloatTensor ids = ref.tensor("input_ids"), mask = ref.tensor("attention_mask"),
                            dec = ref.tensor("decoder_input_ids"), memory = ref.tensor("encoder_last_hidden_state"),
                            logits = ref.tensor("logits"), decoder_hidden = ref.tensor("last_hidden_state");
  const Index batch = ids.shape[0], n = ids.shape[1], m = dec.shape[1], d = memory.shape[2], vocab = logits.shape[2];
  const pf::Context ctx{2};
  std::vector<Matrix> memories;
  for (Index b = 0; b < batch; ++b) {
    INFO("sequence " << b);
    const std::vector<int> tokens = ints(ids.data, std::size_t(b * n), std::size_t(n));
    const std::vector<int> padding = ints(mask.data, std::size_t(b * n), std::size_t(n));
    memories.push_back(model.encode(tokens, padding, ctx));
    const Matrix want_memory = Eigen::Map<const Matrix>(memory.data.data() + b * n * d, n, d);
    CHECK(pft::relative_error(memories.back(), want_memory) < tolerance);
    Matrix hidden;
    const Matrix got =
        model.forward(memories.back(), padding, ints(dec.data, std::size_t(b * m), std::size_t(m)), ctx, &hidden);
    const Matrix want = Eigen::Map<const Matrix>(logits.data.data() + b * m * vocab, m, vocab);
    CHECK(pft::relative_error(got, want) < tolerance);
    const Matrix want_hidden = Eigen::Map<const Matrix>(decoder_hidden.data.data() + b * m * d, m, d);
    CHECK(pft::relative_error(hidden, want_hidden) < tolerance);
  }
  if (!search) return;
  // Greedy from the start token over the cache, for the first sequence.
  const std::vector<int> padding0 = ints(mask.data, 0, std::size_t(n));
  const std::vector<int> want_greedy = ints(ref.tensor("greedy").data);
  auto state = model.start(memories[0], padding0, Index(want_greedy.size()) + 1, ctx);
  std::vector<int> greedy;
  int token = model.config().decoder_start_token_id;
  while (greedy.size() < want_greedy.size()) {
    const auto l = model.decode(state, std::span<const int>(&token, 1), ctx);
    token = int(std::max_element(l.begin(), l.end()) - l.begin());
    greedy.push_back(token);
  }
  CHECK(greedy == want_greedy);
  // Beam search: each beam a decoder state, taken from the beam it continues.
  for (int i = 0; ref.contains("beam_" + std::to_string(i)); ++i) {
    const std::vector<float> s = ref.tensor("beam_" + std::to_string(i) + "_settings").data;
    const pf::BeamSearchOptions o = pft::beam_options(s);
    INFO("beam setting " << i);
    CHECK(pf::beam_search_seq2seq(model, memories[0], padding0, o, ctx).tokens == ints(ref.tensor("beam_" + std::to_string(i)).data));
  }
}

}  // namespace

TEST_CASE("load_hf_t5 equals transformers' T5ForConditionalGeneration: encoder, logits, greedy and beams",
          "[models][hf][t5]") {
  if (!std::filesystem::exists(reference_dir + "/relu_f32.reference.safetensors"))
    FAIL("no Hugging Face T5 references in " << reference_dir << " (tests/hf_t5_reference.py runs at configure time)");
  check_case<pf::T5<pf::ReLU>>("relu_f32");
  check_case<pf::T5<pf::GeGLUTanh>>("gated_bf16");
  check_case<pf::T5<pf::GeGLUTanh>>("long_f16_sharded");  // 300 and 260 positions: past the attention's tiles
}

TEST_CASE("load_hf_t5 runs on other attention and linear policies", "[models][hf][t5]") {
  // A window past the longest sequence (37) and a block as long: each sees every key, so T5's outputs stay the
  // reference's; greedy and beams too.
  check_case<pf::T5<pf::ReLU, pf::Dense, pf::SlidingWindow>>("relu_f32", pf::SlidingWindow(40));
  check_case<pf::T5<pf::GeGLUTanh, pf::Dense, pf::SlidingWindow>>("gated_bf16", pf::SlidingWindow(40));
  // Another linear policy: LoRA<Dense> without an adapter is the Dense product.
  check_case<pf::T5<pf::ReLU, pf::LoRA<pf::Dense>>>("relu_f32");
  // A window shorter than the sequence changes the encoder's output (the policy is the one running).
  const auto ref = pf::io::SafetensorsFile::open(reference_dir + "/relu_f32.reference.safetensors");
  const pf::io::FloatTensor ids = ref.tensor("input_ids"), memory = ref.tensor("encoder_last_hidden_state");
  const Index n = ids.shape[1], d = memory.shape[2];
  const auto narrow = pf::load_hf_t5<pf::ReLU, pf::Dense, pf::SlidingWindow>(reference_dir + "/relu_f32", pf::SlidingWindow(4));
  const Matrix got = narrow.encode(ints(ids.data, 0, std::size_t(n)), {}, pf::Context{1});
  const Matrix full = pf::load_hf_t5(reference_dir + "/relu_f32").encode(ints(ids.data, 0, std::size_t(n)), {}, pf::Context{1});
  CHECK(got.rows() == n);
  CHECK(got.cols() == d);
  CHECK(pft::relative_error(got, full) > 1e-2);
  // Its decoder, position by position over the cache, equals its teacher-forced forward: the self-attention's window
  // follows the position, the cross-attention reads the whole encoder output at every step.
  const pf::io::FloatTensor dec = ref.tensor("decoder_input_ids");
  const std::vector<int> targets = ints(dec.data, 0, std::size_t(dec.shape[1]));
  const Matrix forced = narrow.forward(got, {}, targets, pf::Context{1});
  auto state = narrow.start(got, {}, Index(targets.size()), pf::Context{1});
  Matrix stepped(forced.rows(), forced.cols());
  for (std::size_t t = 0; t < targets.size(); ++t) {
    const auto l = narrow.decode(state, std::span<const int>(&targets[t], 1), pf::Context{1});
    stepped.row(Index(t)) = Eigen::Map<const Eigen::RowVectorXf>(l.data(), Index(l.size()));
  }
  CHECK(targets.size() > 4);
  CHECK(pft::relative_error(stepped, forced) < 1e-5);
}

TEST_CASE("load_hf_t5 refuses a directory of the other FFN, naming config.json", "[models][hf][t5][errors]") {
  CHECK_THROWS_WITH(pf::load_hf_t5<pf::GeGLUTanh>(reference_dir + "/relu_f32"),
                    Catch::Contains("config.json") && Catch::Contains("feed_forward_proj"));
}

TEST_CASE("load_hf_t5 refuses a config.json whose sizes imply more weights than the files hold, before allocating",
          "[models][hf][t5][errors]") {
  // Each edit claims terabytes of weights; allocated first, they would throw std::bad_alloc (or be killed).
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"\"d_ff\": 48", "\"d_ff\": 48000000000"},
           {"\"num_layers\": 2", "\"num_layers\": 2000000000000"},
           {"\"relative_attention_num_buckets\": 32,\n  \"relative_attention_max_distance\": 20",
            "\"relative_attention_num_buckets\": 320000000000,\n  \"relative_attention_max_distance\": 640000000000"},
           {"\"vocab_size\": 107", "\"vocab_size\": 107000000000"}}) {
    INFO(to);
    const std::string dir = pft::copy_case(reference_dir + "/relu_f32", "hf_t5", "bomb");
    pft::edit_config(dir, from, to);
    CHECK_THROWS_AS(pf::load_hf_t5<pf::ReLU>(dir), pf::format_error);
    CHECK_THROWS_WITH(pf::load_hf_t5<pf::ReLU>(dir),
                      Catch::Contains("load_hf_t5") && Catch::Contains("config.json implies") &&
                          Catch::Contains("parameter values, the safetensors files hold"));
    std::filesystem::remove_all(dir);
  }
  // The count it compares is the model's own: every parameter's values, counted from the loaded models.
  for (const bool gated : {false, true}) {
    INFO("gated " << gated);
    const auto count = [](auto& model) {
      double n = 0;
      const pf::ParameterList params = pf::parameters_of(model);
      for (const pf::Parameter& p : params.items()) {
        double values = 1;
        for (const auto s : p.shape) values *= double(s);
        n += values;
      }
      return n;
    };
    if (gated) {
      auto model = pf::load_hf_t5<pf::GeGLUTanh>(reference_dir + "/gated_bf16");
      CHECK(model.config().parameter_count(true) == count(model));
    } else {
      auto model = pf::load_hf_t5<pf::ReLU>(reference_dir + "/relu_f32");
      CHECK(model.config().parameter_count(false) == count(model));
    }
  }
}

TEST_CASE("load_hf_t5 refuses a BF16 weight holding NaN by name, and reads it when asked to",
          "[models][hf][t5][errors]") {
  const std::string dir = pft::copy_case(reference_dir + "/gated_bf16", "hf_t5", "nan");
  const std::string file = dir + "/model.safetensors";
  {  // element 5 of decoder.final_layer_norm.weight becomes a quiet NaN (bf16 0x7FC0)
    const auto st = pf::io::SafetensorsFile::open(file);
    const pf::io::TensorInfo& t = st.info("decoder.final_layer_norm.weight");
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    std::uint64_t header = 0;
    f.read(reinterpret_cast<char*>(&header), 8);
    f.seekp(std::streamoff(8 + header + t.begin + 2 * 5));
    const char nan[2] = {'\xC0', '\x7F'};
    f.write(nan, 2);
  }
  CHECK_THROWS_AS(pf::load_hf_t5<pf::GeGLUTanh>(dir), pf::format_error);
  CHECK_THROWS_WITH(pf::load_hf_t5<pf::GeGLUTanh>(dir),
                    Catch::Contains("model.safetensors: tensor 'decoder.final_layer_norm.weight' (BF16) holds NaN at "
                                    "element 5"));
  const auto model = pf::load_hf_t5<pf::GeGLUTanh>(dir, {}, pf::io::NonFinite::accept);
  CHECK(model.config().d_model == 30);
  std::filesystem::remove_all(dir);
}

TEST_CASE("load_hf_t5 refuses a wrong directory, naming the file", "[models][hf][t5][errors]") {
  const auto fails = [](const std::string& dir, const std::string& message) {
    INFO(dir);
    CHECK_THROWS_AS(pf::load_hf_t5<pf::ReLU>(dir), pf::format_error);
    CHECK_THROWS_WITH(pf::load_hf_t5<pf::ReLU>(dir), Catch::Contains(message));
  };
  const std::pair<std::string, std::string> edits[] = {
      {"\"model_type\": \"t5\"", "\"model_type\": \"mt5\""},
      {"\"feed_forward_proj\": \"relu\"", "\"feed_forward_proj\": \"gated-silu\""},
      {"\"d_model\": 32", "\"d_model\": 24"},
      {"\"d_kv\": 8", "\"d_kv\": 4"},
      {"\"num_layers\": 2", "\"num_layers\": 1"},
      {"\"num_decoder_layers\": 2", "\"num_decoder_layers\": 1"},
      {"\"relative_attention_num_buckets\": 32", "\"relative_attention_num_buckets\": 16"},
      {"\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false"},
  };
  const std::string messages[] = {
      "config.json: model_type is \"mt5\", expected \"t5\"",
      "config.json: feed_forward_proj is \"gated-silu\", expected \"relu\" or \"gated-gelu\"",
      "'shared.weight' has shape (107, 32), expected (107, 24) from config.json",
      "'encoder.block.0.layer.0.SelfAttention.q.weight' has shape (32, 32), expected (16, 32) from config.json",
      "holds 'encoder.block.1.",
      "holds 'decoder.block.1.",
      "'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight' has shape (32, 4), expected (16, 4)",
      "has no tensor 'lm_head.weight'",
  };
  for (std::size_t i = 0; i < std::size(edits); ++i) {
    const std::string d = pft::copy_case(reference_dir + "/relu_f32", "hf_t5", "edit" + std::to_string(i));
    pft::edit_config(d, edits[i].first, edits[i].second);
    fails(d, messages[i]);
    std::filesystem::remove_all(d);
  }
  {  // a tensor stored with another shape than config.json's, and one missing from the file
    const std::string d = pft::copy_case(reference_dir + "/relu_f32", "hf_t5", "tensors");
    const auto rewrite = [&](const std::string& changed, bool drop) {
      std::vector<std::pair<std::string, pf::io::FloatTensor>> tensors;
      {
        const auto file = pf::io::SafetensorsFile::open(d + "/model.safetensors");
        for (const std::string& n : file.names()) {
          pf::io::FloatTensor t = file.tensor(n);
          if (n == changed) {
            if (drop) continue;
            t.shape = {t.shape[1], t.shape[0]};  // the transpose's shape: an (in, out) layout
          }
          tensors.emplace_back(n, std::move(t));
        }
      }
      pf::io::write_safetensors(d + "/model.safetensors", tensors);
    };
    rewrite("decoder.block.1.layer.2.DenseReluDense.wi.weight", false);
    fails(d, "'decoder.block.1.layer.2.DenseReluDense.wi.weight' has shape (32, 48), expected (48, 32)");
    rewrite("decoder.block.1.layer.2.DenseReluDense.wi.weight", true);
    fails(d, "has no tensor 'decoder.block.1.layer.2.DenseReluDense.wi.weight'");
    std::filesystem::remove_all(d);
  }
}
