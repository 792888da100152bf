// generate --model DIR, Hugging Face directories end to end: stories260K rewritten as a Llama directory with a
// tokenizer.json (tests/hf_stories_directory.py, at configure time) prints byte for byte what llama2.c's run.c
// prints (shared/models/golden); a GPT-2 directory of tests/hf_gpt2_reference.py, given a tokenizer of one byte
// per id, prints the reference's greedy ids, and a T5 directory of tests/hf_t5_reference.py its greedy and beam
// search decoder ids; eos_token_id ends the text; bad directories and options exit 2.

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hf_testing.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/tokenizers/byte_level.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"
#include "support.hpp"

#ifdef POLYFORMER_GENERATE
namespace fs = std::filesystem;

namespace {

const std::string stories_dir = std::string(POLYFORMER_HF_STORIES_DIR) + "/stories260K";
const std::string gpt2_reference_dir = POLYFORMER_HF_GPT2_REFERENCE_DIR;

int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
  return pft::run_program(POLYFORMER_GENERATE, "generate_hf", args, out, err);
}

/// `text` as one shell word.
std::string quoted(const std::string& text) {
  std::string q = "'";
  for (const char c : text) {
    if (c == '\'') q += "'\\''";
    else q += c;
  }
  return q + "'";
}

/// The byte that the test's tokenizers give id `id` (0..106): '!'..'~', then space, then 0x01..0x0c.
char byte_of(int id) { return static_cast<char>(id < 94 ? 0x21 + id : id == 94 ? 0x20 : id - 94); }

/// A byte-level tokenizer.json of `size` ids, one byte each (no merges): 103 for the reference's GPT-2, 107 for its
/// T5.
void write_byte_tokenizer(const std::string& dir, int size = 103) {
  const auto& alphabet = polyformer::tokenizers::ByteAlphabet::instance();
  nlohmann::json vocab = nlohmann::json::object();
  for (int id = 0; id < size; ++id) vocab[alphabet.spelling(static_cast<unsigned char>(byte_of(id)))] = id;
  const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                                     {"use_regex", true}};
  const nlohmann::json j = {{"version", "1.0"}, {"pre_tokenizer", byte_level}, {"decoder", byte_level},
                            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  std::ofstream(dir + "/tokenizer.json") << j.dump();
}

std::vector<int> ints(const std::vector<float>& v) { return std::vector<int>(v.begin(), v.end()); }

std::string text_of(const std::vector<int>& ids) {
  std::string s;
  for (const int id : ids) s += byte_of(id);
  return s;
}

}  // namespace

TEST_CASE("examples/generate: a Hugging Face Llama directory prints run.c's golden text", "[examples][hf][llama][golden]") {
  if (!fs::exists(stories_dir + "/config.json"))
    FAIL("no " << stories_dir << ": tests/hf_stories_directory.py runs at configure time (needs python3-torch)");
  const auto tokenizer = polyformer::tokenizers::Tokenizer::open(stories_dir);
  for (const auto& [file, prompt] : {std::pair<std::string, std::string>{"once_upon_a_time", "Once upon a time"},
                                     {"lily_and_tom", "Lily and Tom went to the park"}, {"empty", ""}}) {
    INFO(file);
    // run.c's 256 positions: the prompt's tokens (with <s>) and 257 − that many new ones (the last one unread).
    const std::size_t n_prompt = tokenizer.encode(prompt).size();
    std::string out, err;
    REQUIRE(run("--model " + stories_dir + " --temperature 0 --threads 2 --max-new-tokens " +
                    std::to_string(257 - n_prompt) + " --prompt " + quoted(prompt),
                &out, &err) == 0);
    CHECK(out == pft::read_text(pft::shared_path("models/golden/" + file + ".txt")));
    CHECK(err.find("tok/s") != std::string::npos);
  }
}

TEST_CASE("examples/generate: a Hugging Face GPT-2 directory prints the reference's greedy ids", "[examples][hf][gpt2]") {
  const std::string name = "lm_head_f32";
  const auto ref = polyformer::io::SafetensorsFile::open(gpt2_reference_dir + "/" + name + ".reference.safetensors");
  const std::vector<int> prompt = ints(ref.tensor("prompt").data), greedy = ints(ref.tensor("greedy").data);
  const std::string dir = pft::copy_case(gpt2_reference_dir + "/" + name, "generate_hf", "gpt2");
  write_byte_tokenizer(dir);
  std::string out, err;
  const std::string args = "--model " + dir + " --temperature 0 --prompt " + quoted(text_of(prompt));
  REQUIRE(run(args + " --max-new-tokens " + std::to_string(greedy.size()), &out, &err) == 0);
  CHECK(out == text_of(prompt) + text_of(greedy) + "\n");

  // eos_token_id: the text ends before the first time the model chooses it.
  const int eos = greedy[greedy.size() / 2];
  const std::size_t stop = std::size_t(std::find(greedy.begin(), greedy.end(), eos) - greedy.begin());
  pft::edit_config(dir, "\"model_type\"", "\"eos_token_id\": " + std::to_string(eos) + ", \"model_type\"");
  REQUIRE(run(args + " --max-new-tokens " + std::to_string(greedy.size()), &out, &err) == 0);
  CHECK(out == text_of(prompt) + text_of(std::vector<int>(greedy.begin(), greedy.begin() + std::ptrdiff_t(stop))) + "\n");
  // --max-new-tokens counts new tokens only; 0 prints the prompt.
  REQUIRE(run(args + " --max-new-tokens 0", &out, &err) == 0);
  CHECK(out == text_of(prompt) + "\n");
}

TEST_CASE("examples/generate: --beams prints the reference's beam search text", "[examples][hf][gpt2][beams]") {
  const std::string name = "untied_f16";
  const auto ref = polyformer::io::SafetensorsFile::open(gpt2_reference_dir + "/" + name + ".reference.safetensors");
  const std::vector<int> prompt = ints(ref.tensor("prompt").data);
  const std::string dir = pft::copy_case(gpt2_reference_dir + "/" + name, "generate_hf", "beams");
  write_byte_tokenizer(dir);
  for (const int i : {0, 1}) {  // settings 0: 3 beams, 12 tokens, no early stop; 1: 4 beams, penalty 0.6, early stop
    const std::vector<float> s = ref.tensor("beam_" + std::to_string(i) + "_settings").data;
    std::vector<int> want = ints(ref.tensor("beam_" + std::to_string(i)).data);
    const int eos = int(s[4]);
    INFO("setting " << i << ", eos " << eos);
    if (!want.empty() && want.back() == eos) want.pop_back();  // the end token is not printed
    const std::string d = pft::copy_case(dir, "generate_hf", "beams_" + std::to_string(i));
    pft::edit_config(d, "\"model_type\"", "\"eos_token_id\": " + std::to_string(eos) + ", \"model_type\"");
    std::string out, err;
    REQUIRE(run("--model " + d + " --prompt " + quoted(text_of(prompt)) + " --beams " + std::to_string(int(s[0])) +
                    " --max-new-tokens " + std::to_string(int(s[1])) + " --length-penalty " + std::to_string(s[2]) +
                    (s[3] > 0 ? " --early-stopping" : ""),
                &out, &err) == 0);
    CHECK(out == text_of(prompt) + text_of(want) + "\n");
    CHECK(err.find("beam search: ") != std::string::npos);
  }
}

TEST_CASE("examples/generate: a T5 directory prints the reference's greedy and beam search decoder text",
          "[examples][hf][t5]") {
  const std::string reference_dir = POLYFORMER_HF_T5_REFERENCE_DIR;
  for (const std::string name : {"relu_f32", "gated_bf16"}) {
    INFO(name);
    const auto ref = polyformer::io::SafetensorsFile::open(reference_dir + "/" + name + ".reference.safetensors");
    // The first sequence is unpadded (its mask all ones): its ids are the prompt, one byte each.
    const polyformer::io::FloatTensor ids = ref.tensor("input_ids");
    const std::vector<int> prompt(ids.data.begin(), ids.data.begin() + std::ptrdiff_t(ids.shape[1]));
    const std::vector<int> greedy = ints(ref.tensor("greedy").data);
    const std::string dir = pft::copy_case(reference_dir + "/" + name, "generate_hf", "t5_" + name);
    write_byte_tokenizer(dir, 107);
    // config.json's eos_token_id (1) ends the text where the model first chooses it.
    const std::size_t stop = std::size_t(std::find(greedy.begin(), greedy.end(), 1) - greedy.begin());
    std::string out, err;
    const std::string args = "--model " + dir + " --prompt " + quoted(text_of(prompt));
    REQUIRE(run(args + " --temperature 0 --max-new-tokens " + std::to_string(greedy.size()), &out, &err) == 0);
    CHECK(out == text_of(std::vector<int>(greedy.begin(), greedy.begin() + std::ptrdiff_t(stop))) + "\n");
    CHECK(err.find("encoder: " + std::to_string(prompt.size()) + " tokens") != std::string::npos);
    // --attention: a window or a block past every position (the prompt's 30 or 37 and the text's) sees every key,
    // so the text is the reference's; a window of 2 keys changes it (the policy runs, encoder and decoder).
    const std::string full_text = out;
    for (const std::string attention : {"sliding:64", "blockwise:64"}) {
      INFO(attention);
      REQUIRE(run(args + " --temperature 0 --max-new-tokens " + std::to_string(greedy.size()) + " --attention " +
                      attention, &out, &err) == 0);
      CHECK(out == full_text);
    }
    REQUIRE(run(args + " --temperature 0 --max-new-tokens " + std::to_string(greedy.size()) + " --attention sliding:2",
                &out, &err) == 0);
    CHECK(out != full_text);
    for (const int i : {0, 1}) {
      const std::vector<float> s = ref.tensor("beam_" + std::to_string(i) + "_settings").data;
      std::vector<int> want = ints(ref.tensor("beam_" + std::to_string(i)).data);
      const int eos = int(s[4]);
      INFO("beam setting " << i << ", eos " << eos);
      if (!want.empty() && want.back() == eos) want.pop_back();  // the end token is not printed
      const std::string d = pft::copy_case(dir, "generate_hf", "t5_" + name + "_beams_" + std::to_string(i));
      pft::edit_config(d, "\"eos_token_id\": 1", "\"eos_token_id\": " + std::to_string(eos));
      REQUIRE(run("--model " + d + " --prompt " + quoted(text_of(prompt)) + " --beams " + std::to_string(int(s[0])) +
                      " --max-new-tokens " + std::to_string(int(s[1])) + " --length-penalty " + std::to_string(s[2]) +
                      (s[3] > 0 ? " --early-stopping" : ""),
                  &out, &err) == 0);
      CHECK(out == text_of(want) + "\n");
    }
  }
  const std::string dir = pft::copy_case(reference_dir + "/relu_f32", "generate_hf", "t5_bad");
  write_byte_tokenizer(dir, 107);
  std::string out, err;
  CHECK(run("--model " + dir + " --prompt hi --attention linear", &out, &err) == 2);
  CHECK_THAT(err, Catch::Contains("--attention linear: T5 adds its relative position bias to the scores, which full, "
                                  "sliding:W, blockwise:B do"));
  CHECK(run("--model " + dir + " --prompt hi --lora x", &out, &err) == 2);
  CHECK_THAT(err, Catch::Contains("--lora applies to Llama models only"));
  CHECK(run("--model " + dir + " --prompt ''", &out, &err) == 2);
  CHECK_THAT(err, Catch::Contains("the prompt encodes to no token"));
}

TEST_CASE("examples/generate: bad Hugging Face directories and options exit with code 2", "[examples][hf][errors]") {
  const std::string dir = pft::copy_case(gpt2_reference_dir + "/lm_head_f32", "generate_hf", "bad");
  const auto fails = [](const std::string& args, const std::string& message) {
    INFO(args);
    std::string out, err;
    CHECK(run(args, &out, &err) == 2);
    CHECK_THAT(err, Catch::Contains(message));
  };
  fails("--model " + dir + " --prompt hi", "has neither tokenizer.json");
  write_byte_tokenizer(dir);
  fails("--model " + dir + " --steps 10", "--steps counts a llama2.c model's positions");
  fails("--model " + dir + " --prompts x.txt", "--prompts runs llama2.c models only");
  fails("--model " + dir + " --lora x", "--lora applies to Llama models only");
  fails("--model " + dir + " --max-new-tokens -1", "--max-new-tokens is -1, expected >= 0");
  fails("--model " + dir + " --beams 0", "--beams is 0, expected 1..256");
  fails("--model " + dir + " --early-stopping", "--length-penalty and --early-stopping need --beams K > 1");
  fails("--model " + pft::shared_path("models/stories260K.bin") + " --tokenizer " +
            pft::shared_path("models/tok512.bin") + " --beams 2",
        "--beams is for a Hugging Face directory");
  fails("--model " + dir + " --prompt ''", "the prompt encodes to no token");
  fails("--model " + pft::shared_path("models/stories260K.bin") + " --tokenizer " +
            pft::shared_path("models/tok512.bin") + " --max-new-tokens 5",
        "--max-new-tokens is for a Hugging Face directory");
  pft::edit_config(dir, "\"model_type\": \"gpt2\"", "\"model_type\": \"bert\"");
  fails("--model " + dir + " --prompt hi", "model_type is \"bert\", expected \"gpt2\", \"llama\" or \"t5\"");
  pft::edit_config(dir, "\"model_type\": \"bert\"", "\"model_type\": \"gpt2\"");
  fs::copy_file(stories_dir + "/tokenizer.json", dir + "/tokenizer.json", fs::copy_options::overwrite_existing);
  fails("--model " + dir + " --prompt hi", "the tokenizer has 512 tokens, the model's logits 103");
  fails("--model " + dir + " --prompt hi --beams 2", "beam_search: the tokenizer has 512 tokens, the model's logits 103");
  // The other way round loads (a model's vocabulary may be padded), and a token beyond the tokenizer is an error.
  const std::string llama = pft::copy_case(stories_dir, "generate_hf", "llama_small_tokenizer");
  write_byte_tokenizer(llama);
  fails("--model " + llama + " --temperature 0 --max-new-tokens 3 --prompt hi",
        "the model chose token 419, which the tokenizer (103 tokens) does not have");
}
#endif
