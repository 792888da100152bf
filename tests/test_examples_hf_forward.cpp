// The hf_forward program end to end, against the float64 outputs of the Hugging Face reference scripts
// (tests/hf_bert_reference.py, hf_gpt2_reference.py, hf_llama_reference.py, hf_t5_reference.py): inputs written
// here with ids as I64, I32 or F32, outputs read back; right padding of a causal model and of T5's decoder; bad
// input exits with code 2.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hf_testing.hpp"
#include "polyformer/io/safetensors.hpp"
#include "support.hpp"

#ifdef POLYFORMER_HF_FORWARD
namespace {

namespace io = polyformer::io;

int run(const std::string& args, std::string* err = nullptr) {
  return pft::run_program(POLYFORMER_HF_FORWARD, "hf_forward", args, nullptr, err);
}

/// A safetensors file of integer or float tensors, written by hand (io's writer writes F32 only): name → (dtype,
/// shape, values).
struct InputTensor {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<double> values;
};

std::string write_inputs(const std::string& name, const std::vector<std::pair<std::string, InputTensor>>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [key, t] : tensors) {
    const std::size_t begin = data.size();
    for (const double v : t.values) {
      char bytes[8];
      std::size_t size = 4;
      if (t.dtype == "I64") {
        const auto x = static_cast<std::int64_t>(v);
        std::memcpy(bytes, &x, size = 8);
      } else if (t.dtype == "I32") {
        const auto x = static_cast<std::int32_t>(v);
        std::memcpy(bytes, &x, 4);
      } else {
        const auto x = static_cast<float>(v);
        std::memcpy(bytes, &x, 4);
      }
      data.append(bytes, size);
    }
    header[key] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t length = text.size();
  const std::string path = pft::process_temp_path("hf_forward", name + ".safetensors");
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(&length), 8);
  f << text << data;
  return path;
}

InputTensor as(const std::string& dtype, const io::FloatTensor& t) {
  return {dtype, t.shape, std::vector<double>(t.data.begin(), t.data.end())};
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, std::abs(double(got[i]) - double(want[i])));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return diff / scale;
}

}  // namespace

TEST_CASE("examples/hf_forward: BERT's and RoBERTa's outputs equal the reference's", "[examples][hf][bert]") {
  const std::string dir = std::string(POLYFORMER_HF_BERT_REFERENCE_DIR);
  const std::string model = GENERATE(std::string("model_f32"), std::string("roberta_mlm_f32"));
  INFO(model);
  const auto ref = io::SafetensorsFile::open(dir + "/" + model + ".reference.safetensors");
  const std::string inputs = write_inputs("bert", {{"input_ids", as("I64", ref.tensor("ids"))},
                                                   {"attention_mask", as("I32", ref.tensor("attention_mask"))},
                                                   {"token_type_ids", as("F32", ref.tensor("token_type_ids"))}});
  const std::string out = pft::process_temp_path("hf_forward", "bert_out.safetensors");
  std::string err;
  REQUIRE(run("--model " + dir + "/" + model + " --inputs " + inputs + " --out " + out + " --threads 2", &err) == 0);
  const auto got = io::SafetensorsFile::open(out);
  const std::vector<std::string> outputs = model == "model_f32" ? std::vector<std::string>{"last_hidden_state", "pooler_output"}
                                                                : std::vector<std::string>{"last_hidden_state", "logits"};
  CHECK(got.names() == outputs);
  for (const std::string& name : outputs) {
    INFO(name);
    CHECK(got.info(name).shape == ref.info(name).shape);
    CHECK(relative_error(got.tensor(name).data, ref.tensor(name).data) < 1e-4);
  }
}

TEST_CASE("examples/hf_forward: GPT-2's and Llama's logits equal the reference's, with right padding",
          "[examples][hf][gpt2][llama]") {
  for (const auto& [dir, name] : {std::pair<std::string, std::string>{POLYFORMER_HF_GPT2_REFERENCE_DIR, "lm_head_f32"},
                                  {POLYFORMER_HF_LLAMA_REFERENCE_DIR, "untied_bf16_sharded"}}) {
    INFO(name);
    const auto ref = io::SafetensorsFile::open(dir + "/" + name + ".reference.safetensors");
    const io::FloatTensor ids = ref.tensor("ids"), logits = ref.tensor("logits");
    const std::int64_t batch = ids.shape[0], n = ids.shape[1], vocab = logits.shape[2];
    // Row 1 is padded after 20 tokens: its first 20 positions are as without padding (causal), the rest zero.
    InputTensor mask{"I64", ids.shape, std::vector<double>(std::size_t(batch * n), 1.0)};
    for (std::int64_t t = 20; t < n; ++t) mask.values[std::size_t(n + t)] = 0;
    const std::string inputs = write_inputs(name, {{"input_ids", as("I32", ids)}, {"attention_mask", mask}});
    const std::string out = pft::process_temp_path("hf_forward", name + "_out.safetensors");
    std::string err;
    REQUIRE(run("--model " + dir + "/" + name + " --inputs " + inputs + " --out " + out, &err) == 0);
    const auto got = io::SafetensorsFile::open(out);
    const io::FloatTensor got_logits = got.tensor("logits");
    REQUIRE(got_logits.shape == logits.shape);
    CHECK(got.info("last_hidden_state").shape[2] > 0);
    std::vector<float> want = logits.data;
    for (std::int64_t t = 20; t < n; ++t)
      for (std::int64_t v = 0; v < vocab; ++v) want[std::size_t((n + t) * vocab + v)] = 0.0f;
    CHECK(relative_error(got_logits.data, want) < 1e-4);
  }
}

TEST_CASE("examples/hf_forward: T5's encoder output, decoder output and logits equal the reference's",
          "[examples][hf][t5]") {
  for (const std::string name : {"relu_f32", "gated_bf16"}) {
    INFO(name);
    const std::string dir = POLYFORMER_HF_T5_REFERENCE_DIR;
    const auto ref = io::SafetensorsFile::open(dir + "/" + name + ".reference.safetensors");
    const io::FloatTensor dec = ref.tensor("decoder_input_ids");
    const std::int64_t batch = dec.shape[0], m = dec.shape[1];
    // The last row's decoder is padded after 9 tokens: those are as without padding (causal), the rest zero.
    InputTensor decoder_mask{"I32", dec.shape, std::vector<double>(std::size_t(batch * m), 1.0)};
    for (std::int64_t t = 9; t < m; ++t) decoder_mask.values[std::size_t((batch - 1) * m + t)] = 0;
    const std::string inputs =
        write_inputs(name, {{"input_ids", as("I64", ref.tensor("input_ids"))},
                            {"attention_mask", as("F32", ref.tensor("attention_mask"))},
                            {"decoder_input_ids", as("I32", dec)}, {"decoder_attention_mask", decoder_mask}});
    const std::string out = pft::process_temp_path("hf_forward", name + "_out.safetensors");
    std::string err;
    REQUIRE(run("--model " + dir + "/" + name + " --inputs " + inputs + " --out " + out + " --threads 2", &err) == 0);
    const auto got = io::SafetensorsFile::open(out);
    CHECK(got.names() == std::vector<std::string>{"encoder_last_hidden_state", "last_hidden_state", "logits"});
    for (const char* output : {"encoder_last_hidden_state", "last_hidden_state", "logits"}) {
      INFO(output);
      const io::FloatTensor want = ref.tensor(output), have = got.tensor(output);
      REQUIRE(have.shape == want.shape);
      std::vector<float> expected = want.data;
      if (std::string(output) != "encoder_last_hidden_state") {
        const std::int64_t width = want.shape[2];
        for (std::int64_t t = 9; t < m; ++t)
          std::fill_n(expected.begin() + std::ptrdiff_t(((batch - 1) * m + t) * width), width, 0.0f);
      }
      CHECK(relative_error(have.data, expected) < 1e-4);
    }
  }
}

TEST_CASE("examples/hf_forward: bad input exits with code 2 and says why", "[examples][hf][errors]") {
  const std::string bert = std::string(POLYFORMER_HF_BERT_REFERENCE_DIR) + "/model_f32";
  const std::string gpt2 = std::string(POLYFORMER_HF_GPT2_REFERENCE_DIR) + "/lm_head_f32";
  const std::string out = pft::process_temp_path("hf_forward", "bad_out.safetensors");
  const auto fails = [&](const std::string& model, const std::string& inputs, const std::string& message) {
    INFO(message);
    std::string err;
    CHECK(run("--model " + model + " --inputs " + inputs + " --out " + out, &err) == 2);
    CHECK_THAT(err, Catch::Contains(message));
  };
  const InputTensor ids{"I64", {1, 4}, {5, 6, 7, 8}};
  fails(gpt2, write_inputs("left", {{"input_ids", ids}, {"attention_mask", {"I64", {1, 4}, {0, 1, 1, 1}}}}),
        "attention_mask row 0 has a token after padding: a causal model takes right padding only");
  fails(bert, write_inputs("decoder", {{"input_ids", ids}, {"decoder_input_ids", ids}}),
        "decoder_input_ids given to a bert model (only T5 has a decoder)");
  fails(bert, write_inputs("unknown", {{"input_ids", ids}, {"labels", ids}}), "labels is not an input hf_forward reads");
  const std::string t5 = std::string(POLYFORMER_HF_T5_REFERENCE_DIR) + "/relu_f32";
  fails(t5, write_inputs("t5_encoder_only", {{"input_ids", ids}}), "no decoder_input_ids (T5 needs the decoder's ids");
  fails(t5, write_inputs("t5_batch", {{"input_ids", ids}, {"decoder_input_ids", {"I64", {2, 1}, {0, 0}}}}),
        "decoder_input_ids has shape (2, 1), expected (1, n)");
  fails(t5, write_inputs("t5_left", {{"input_ids", ids}, {"decoder_input_ids", ids},
                                     {"decoder_attention_mask", {"I64", {1, 4}, {0, 1, 1, 1}}}}),
        "decoder_attention_mask row 0 has a token after padding");
  fails(bert, write_inputs("shape", {{"input_ids", ids}, {"attention_mask", {"I64", {4}, {1, 1, 1, 1}}}}),
        "attention_mask has shape (4), expected (1, 4) (as input_ids)");
  fails(bert, write_inputs("fraction", {{"input_ids", {"F32", {1, 2}, {5, 6.5}}}}),
        "tensor 'input_ids' element 1 is 6.5, expected a whole number");
  fails(bert, write_inputs("range", {{"input_ids", {"I64", {1, 2}, {5, 1000}}}}), "input_ids[1] is 1000, expected 0..100");
  fails(bert, write_inputs("none", {{"attention_mask", ids}}), "no input_ids");
  const std::string other = pft::process_temp_path("hf_forward", "mt5");
  std::filesystem::create_directories(other);
  std::ofstream(other + "/config.json") << R"({"model_type": "mt5"})";
  std::filesystem::copy_file(write_inputs("empty", {}), other + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  fails(other, write_inputs("mt5", {{"input_ids", ids}}),
        "model_type is \"mt5\", expected \"bert\", \"roberta\", \"gpt2\", \"llama\" or \"t5\"");
  std::string err;
  CHECK(run("--model " + bert, &err) == 2);
  CHECK_THAT(err, Catch::Contains("--model, --inputs and --out are required"));
}

TEST_CASE("examples/hf_forward: a directory it cannot read exits with code 2 and names the file",
          "[examples][hf][errors]") {
  namespace fs = std::filesystem;
  const std::string bert_dir = POLYFORMER_HF_BERT_REFERENCE_DIR, t5_dir = POLYFORMER_HF_T5_REFERENCE_DIR;
  const std::string out = pft::process_temp_path("hf_forward", "dir_out.safetensors");
  const InputTensor ids{"I64", {1, 4}, {5, 6, 7, 8}};
  const std::string encoder_inputs = write_inputs("dir_encoder", {{"input_ids", ids}});
  const std::string t5_inputs = write_inputs("dir_t5", {{"input_ids", ids}, {"decoder_input_ids", ids}});
  const auto fails = [&](const std::string& model, const std::string& inputs, const std::string& message) {
    INFO(message);
    std::string err;
    CHECK(run("--model " + model + " --inputs " + inputs + " --out " + out, &err) == 2);
    CHECK_THAT(err, Catch::Contains(message));
    CHECK(std::count(err.begin(), err.end(), '\n') == 1);  // one line
  };
  // A pickled checkpoint: refused with the way to convert it.
  const std::string pickle = pft::copy_case(bert_dir + "/model_f32", "hf_forward", "pickle");
  fs::rename(pickle + "/model.safetensors", pickle + "/pytorch_model.bin");
  fails(pickle, encoder_inputs, "holds pytorch_model.bin (a Python pickle, which polyformer does not read), expected "
                                "model.safetensors: convert it");
  // An index naming a shard that is not there, for BERT and for T5.
  const std::string bert_shard = pft::copy_case(bert_dir + "/masked_lm_bf16_sharded", "hf_forward", "bert_shard");
  fs::remove(bert_shard + "/model-00002-of-00002.safetensors");
  fails(bert_shard, encoder_inputs, "names shard 'model-00002-of-00002.safetensors', which is not in " + bert_shard);
  const std::string t5_shard = pft::copy_case(t5_dir + "/long_f16_sharded", "hf_forward", "t5_shard");
  fs::remove(t5_shard + "/model-00001-of-00002.safetensors");
  fails(t5_shard, t5_inputs, "names shard 'model-00001-of-00002.safetensors', which is not in " + t5_shard);
  // Shapes that do not fit config.json.
  const std::string shapes = pft::copy_case(bert_dir + "/model_f32", "hf_forward", "shapes");
  pft::edit_config(shapes, "\"intermediate_size\": 72", "\"intermediate_size\": 64");
  fails(shapes, encoder_inputs,
        "model.safetensors: 'encoder.layer.0.intermediate.dense.weight' has shape (72, 32), expected (64, 32) from "
        "config.json");
  const std::string t5_shapes = pft::copy_case(t5_dir + "/relu_f32", "hf_forward", "t5_shapes");
  pft::edit_config(t5_shapes, "\"d_ff\": 48", "\"d_ff\": 40");
  fails(t5_shapes, t5_inputs,
        "model.safetensors: 'encoder.block.0.layer.1.DenseReluDense.wi.weight' has shape (48, 32), expected (40, 32) "
        "from config.json");
  for (const std::string& d : {pickle, bert_shard, t5_shard, shapes, t5_shapes}) fs::remove_all(d);
}
#endif
