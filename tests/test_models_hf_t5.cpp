// T5 from Hugging Face directories (models/hf_t5.hpp, models/t5.hpp, attention/relative_position.hpp) against the
// float64 forward of tests/hf_t5_reference.py (written from transformers' modeling_t5.py, run at configure time):
// the original T5 (ReLU, tied lm_head scaled by d_model^-½) in F32 over two padded sequences, and v1.1/FLAN-T5's
// gated-gelu with an untied lm_head and heads·d_kv ≠ d_model in BF16. The encoder's output, the teacher-forced
// logits and decoder output, greedy decoding over the decoder's cache (cross-attention keys and values projected
// once) against the reference's full recomputation, and beam search against its transformers-style search.

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "hf_testing.hpp"
#include "polyformer/generate/seq2seq_generation.hpp"
#include "polyformer/io/safetensors.hpp"
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

template <typename Model>
void check_case(const std::string& name) {
  INFO(name);
  const auto ref = pf::io::SafetensorsFile::open(reference_dir + "/" + name + ".reference.safetensors");
  const auto model = pf::load_hf_t5<typename Model::activation_type>(reference_dir + "/" + name);
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
    CHECK(pft::relative_error(memories.back(), want_memory) < 1e-4);
    Matrix hidden;
    const Matrix got =
        model.forward(memories.back(), padding, ints(dec.data, std::size_t(b * m), std::size_t(m)), ctx, &hidden);
    const Matrix want = Eigen::Map<const Matrix>(logits.data.data() + b * m * vocab, m, vocab);
    CHECK(pft::relative_error(got, want) < 1e-4);
    const Matrix want_hidden = Eigen::Map<const Matrix>(decoder_hidden.data.data() + b * m * d, m, d);
    CHECK(pft::relative_error(hidden, want_hidden) < 1e-4);
  }
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
}

TEST_CASE("load_hf_t5 refuses a directory of the other FFN, naming config.json", "[models][hf][t5][errors]") {
  CHECK_THROWS_WITH(pf::load_hf_t5<pf::GeGLUTanh>(reference_dir + "/relu_f32"),
                    Catch::Contains("config.json") && Catch::Contains("feed_forward_proj"));
}
