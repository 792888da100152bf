// The generate CLI end to end: stdout is byte for byte what llama2.c's run.c prints (shared/models/golden);
// bad paths, corrupt files and bad options exit with code 2 and a message.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include "peft_testing.hpp"
#include "polyformer/io/llama2c.hpp"
#include "support.hpp"

#ifdef POLYFORMER_GENERATE
namespace {

std::string temp_path(const std::string& name) { return pft::process_temp_path("generate", name); }

/// Runs generate with `args`; returns the exit code.
int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
  return pft::run_program(POLYFORMER_GENERATE, "generate", args, out, err);
}

/// The prompts of shared/models/golden: (file name, prompt).
const std::pair<std::string, std::string> golden_prompts[] = {
    {"once_upon_a_time", "Once upon a time"}, {"lily_and_tom", "Lily and Tom went to the park"}, {"empty", ""}};

/// A copy of `src` cut to `bytes` bytes.
std::string truncated_copy(const std::string& src, std::size_t bytes, const std::string& name) {
  std::string data = pft::read_text(src);
  data.resize(bytes);
  const std::string path = temp_path(name);
  std::ofstream(path, std::ios::binary) << data;
  return path;
}

}  // namespace

TEST_CASE("examples/generate: greedy output equals run.c's golden text", "[examples][llama][golden]") {
  const std::string model = pft::shared_path("models/stories260K.bin");
  const std::string tok = pft::shared_path("models/tok512.bin");
  for (const auto& [file, prompt] : golden_prompts) {
    INFO(file);
    std::string out, err;
    REQUIRE(run("--model " + model + " --tokenizer " + tok + " --temperature 0 --steps 256 --threads 2 --prompt '" +
                    prompt + "'",
                &out, &err) == 0);
    CHECK(out == pft::read_text(pft::shared_path("models/golden/" + file + ".txt")));
    CHECK(err.find("tok/s") != std::string::npos);
  }
}

TEST_CASE("examples/generate: --linear bf16 gives run.c's greedy text for the first 50 tokens at least",
          "[examples][llama][golden][bf16]") {
  const std::string model = pft::shared_path("models/stories260K.bin");
  const std::string tok = pft::shared_path("models/tok512.bin");
  for (const auto& [file, prompt] : golden_prompts) {
    INFO(file);
    // 60 positions: at most 9 of them prompt tokens, so at least 50 are generated.
    std::string out;
    REQUIRE(run("--model " + model + " --tokenizer " + tok + " --temperature 0 --steps 60 --linear bf16 --prompt '" +
                    prompt + "'",
                &out) == 0);
    REQUIRE(out.size() > 100);
    // The golden text has 256 positions; the bf16 run's text, its final newline aside, must begin it.
    const std::string golden = pft::read_text(pft::shared_path("models/golden/" + file + ".txt"));
    CHECK(golden.compare(0, out.size() - 1, out, 0, out.size() - 1) == 0);
  }
}

TEST_CASE("examples/generate: --prompts decodes a batch that prints what one run per line prints",
          "[examples][llama][batch]") {
  const std::string base = "--model " + pft::shared_path("models/stories260K.bin") + " --tokenizer " +
                           pft::shared_path("models/tok512.bin") + " --steps 120";
  const std::vector<std::string> prompts{"Once upon a time", "Lily and Tom went to the park", "",
                                         "The cat sat on the mat and looked at the bird", "One day"};
  const std::string file = temp_path("prompts.txt");
  {
    std::ofstream f(file, std::ios::binary);
    for (const auto& p : prompts) f << p << "\n";
  }
  for (const std::string sampling : {" --temperature 0", " --temperature 0.9 --topp 0.8 --seed 11"}) {
    std::string want;
    for (const auto& p : prompts) {
      std::string out;
      REQUIRE(run(base + sampling + " --prompt '" + p + "'", &out) == 0);
      want += out;
    }
    for (const std::string batch : {"1", "2", "8"}) {
      INFO("sampling" << sampling << ", batch " << batch);
      std::string out, err;
      REQUIRE(run(base + sampling + " --threads 2 --prompts " + file + " --batch " + batch, &out, &err) == 0);
      CHECK(out == want);
      CHECK(err.find("tok/s") != std::string::npos);
    }
  }
  std::string err;
  CHECK(run(base + " --prompts " + temp_path("missing.txt"), nullptr, &err) == 2);
  CHECK(err.find("cannot open") != std::string::npos);
  CHECK(run(base + " --prompts " + file + " --batch 0", nullptr, &err) == 2);
  CHECK(err.find("--batch is 0") != std::string::npos);
}

TEST_CASE("examples/generate: sampling with a seed is reproducible", "[examples][llama]") {
  const std::string args = "--model " + pft::shared_path("models/stories260K.bin") + " --tokenizer " +
                           pft::shared_path("models/tok512.bin") + " --steps 60 --temperature 0.9 --topp 0.8 --topk 40";
  std::string a, b, c;
  REQUIRE(run(args + " --seed 7", &a) == 0);
  REQUIRE(run(args + " --seed 7", &b) == 0);
  REQUIRE(run(args + " --seed 8", &c) == 0);
  CHECK(a == b);
  CHECK(a != c);
  CHECK(a.back() == '\n');
}

TEST_CASE("examples/generate: --attention swaps the policy (a window as long as the model is full attention)",
          "[examples][llama][attention]") {
  const std::string model = pft::shared_path("models/stories260K.bin");
  const std::string tok = pft::shared_path("models/tok512.bin");
  const std::string golden = pft::read_text(pft::shared_path("models/golden/once_upon_a_time.txt"));
  const std::string base = "--model " + model + " --tokenizer " + tok + " --temperature 0 --steps 256 --prompt 'Once upon a time'";
  std::string out, err;
  // stories260K's seq_len is 512: a window of 512 keys back is every key.
  REQUIRE(run(base + " --attention sliding:512", &out, &err) == 0);
  CHECK(out == golden);
  // A short window, linear and Performer decode too (other text: the model was trained with full attention).
  for (const char* policy : {"sliding:8", "linear", "performer:64"}) {
    INFO(policy);
    REQUIRE(run(base + " --attention " + policy, &out, &err) == 0);
    CHECK(out.rfind("Once upon a time", 0) == 0);
    CHECK(out != golden);
  }
  CHECK(run(base + " --attention lsh:4:64", nullptr, &err) == 2);
  CHECK(err.find("cannot decode incrementally") != std::string::npos);
  CHECK(run(base + " --attention dense", nullptr, &err) == 2);
  CHECK(err.find("unknown policy 'dense'") != std::string::npos);
}

TEST_CASE("examples/generate: bad input exits with code 2 and says why", "[examples][llama][errors]") {
  const std::string model = pft::shared_path("models/stories260K.bin");
  const std::string tok = pft::shared_path("models/tok512.bin");
  std::string err;
  CHECK(run("--model /nonexistent.bin --tokenizer " + tok, nullptr, &err) == 2);
  CHECK(err.find("cannot open") != std::string::npos);
  CHECK(run("--model " + truncated_copy(model, 1000000, "model.bin") + " --tokenizer " + tok, nullptr, &err) == 2);
  CHECK(err.find("expected 1056540") != std::string::npos);
  CHECK(run("--model " + model + " --tokenizer " + truncated_copy(tok, 3000, "tok.bin"), nullptr, &err) == 2);
  CHECK(err.find("tokenizer") != std::string::npos);
  CHECK(run("--model " + model, nullptr, &err) == 2);
  CHECK(err.find("--tokenizer is required") != std::string::npos);
  CHECK(run("--model " + model + " --tokenizer " + tok + " --steps -3", nullptr, &err) == 2);
  CHECK(run("--model " + model + " --tokenizer " + tok + " --temperature abc", nullptr, &err) == 2);
  CHECK(err.find("--temperature expects a number") != std::string::npos);
  CHECK(run("--model " + model + " --tokenizer " + tok + " --topp 2", nullptr, &err) == 2);
  CHECK(err.find("top_p is 2") != std::string::npos);
  CHECK(run("--model " + model + " --tokenizer " + tok + " --frobnicate", nullptr, &err) == 2);
}

namespace {

/// A PEFT adapter for stories260K in a fresh directory: rank 4 on some attention and FFN projections, B zero
/// (a fresh adapter) or random.
std::string stories_adapter(const std::string& name, bool zero_b, unsigned seed) {
  const auto w = polyformer::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  std::vector<pft::LoraModule> modules;
  const auto add = [&](const std::string& path, const pft::Matrix& weight) {
    pft::Matrix b = zero_b ? pft::Matrix::Zero(weight.rows(), 4) : pft::random_matrix(weight.rows(), 4, seed++, 0.5f);
    modules.push_back({path, pft::random_matrix(4, weight.cols(), seed++, 0.5f), std::move(b)});
  };
  for (std::size_t l = 0; l < w.wq.size(); ++l) {
    add("layers." + std::to_string(l) + ".attention.wq", w.wq[l]);
    add("layers." + std::to_string(l) + ".feed_forward.w2", w.w2[l]);
  }
  const std::string dir = temp_path(name);
  pft::write_peft_adapter(dir, 4, 8.0, modules);
  return dir;
}

}  // namespace

TEST_CASE("examples/generate: --lora applies PEFT adapters, --merge-lora folds them in", "[examples][llama][lora]") {
  const std::string golden = pft::read_text(pft::shared_path("models/golden/once_upon_a_time.txt"));
  const std::string base = "--model " + pft::shared_path("models/stories260K.bin") + " --tokenizer " +
                           pft::shared_path("models/tok512.bin") +
                           " --temperature 0 --steps 256 --threads 2 --prompt 'Once upon a time'";
  const std::string fresh = stories_adapter("fresh", /*zero_b=*/true, 1);
  const std::string one = stories_adapter("one", false, 100), two = stories_adapter("two", false, 200);
  std::string out, merged, err;
  REQUIRE(run(base + " --lora " + fresh, &out, &err) == 0);
  CHECK(out == golden);  // B = 0 changes nothing
  REQUIRE(run(base + " --lora " + one + ":0", &out) == 0);
  CHECK(out == golden);  // strength 0 neither
  REQUIRE(run(base + " --lora " + one, &out, &err) == 0);
  CHECK(out.rfind("Once upon a time", 0) == 0);
  CHECK(out != golden);
  REQUIRE(run(base + " --lora " + one + " --merge-lora", &merged) == 0);
  CHECK(merged == out);
  std::string both, both_merged, half;
  REQUIRE(run(base + " --lora " + one + " --lora " + two + ":0.5", &both) == 0);
  REQUIRE(run(base + " --lora " + one + " --lora " + two + ":0.5 --merge-lora", &both_merged) == 0);
  CHECK(both == both_merged);
  CHECK(both != out);
  REQUIRE(run(base + " --lora " + two + ":0.5", &half) == 0);
  CHECK(half != both);

  CHECK(run(base + " --lora /nonexistent-adapter", nullptr, &err) == 2);
  CHECK(err.find("/nonexistent-adapter/adapter_config.json") != std::string::npos);
  CHECK(run(base + " --merge-lora", nullptr, &err) == 2);
  CHECK(err.find("--merge-lora needs at least one --lora") != std::string::npos);
  CHECK(run(base + " --int8 --lora " + one + " --merge-lora", nullptr, &err) == 2);
  CHECK(err.find("cannot merge into --int8") != std::string::npos);
  for (const auto& d : {fresh, one, two}) std::filesystem::remove_all(d);
}
TEST_CASE("examples/generate: --linear picks the linear policy by its registry name", "[examples][llama][int8]") {
  const std::string base = "--model " + pft::shared_path("models/stories260K.bin") + " --tokenizer " +
                           pft::shared_path("models/tok512.bin") + " --steps 80 --temperature 0";
  std::string int8, linear_int8, fp32, linear_fp32, err;
  REQUIRE(run(base + " --int8", &int8) == 0);
  REQUIRE(run(base + " --linear int8", &linear_int8) == 0);
  REQUIRE(run(base, &fp32) == 0);
  REQUIRE(run(base + " --linear fp32", &linear_fp32) == 0);
  CHECK(int8 == linear_int8);
  CHECK(fp32 == linear_fp32);
  CHECK(run(base + " --linear int4", nullptr, &err) == 2);
  CHECK(err.find("--linear is 'int4', expected fp32, bf16, int8") != std::string::npos);
  CHECK(run("--help", &err) == 0);
  CHECK(err.find("[--linear fp32|bf16|int8]") != std::string::npos);
}

TEST_CASE("examples/generate: --int8 decodes the same greedy text as fp32 for the first 60 positions",
          "[examples][llama][int8]") {
  // Measured: int8 and fp32 greedy texts first differ at position 61 ("Once upon a time", and no prompt) and 144
  // ("Lily and Tom…"), i.e. after 56, 60 and 132 identical generated tokens; the rest stays fluent text.
  const std::string base = "--model " + pft::shared_path("models/stories260K.bin") + " --tokenizer " +
                           pft::shared_path("models/tok512.bin") + " --temperature 0 --threads 2";
  for (const char* prompt : {"Once upon a time", "Lily and Tom went to the park", ""}) {
    INFO(prompt);
    std::string fp32, int8, err;
    REQUIRE(run(base + " --steps 60 --prompt '" + prompt + "'", &fp32) == 0);
    REQUIRE(run(base + " --steps 60 --int8 --prompt '" + prompt + "'", &int8, &err) == 0);
    CHECK(int8 == fp32);
    CHECK(err.find("tok/s") != std::string::npos);
    REQUIRE(run(base + " --steps 256 --int8 --prompt '" + prompt + "'", &int8) == 0);
    CHECK(int8.size() > 400);
    CHECK(int8.back() == '\n');
  }
  std::string lora_int8;  // LoRA<Int8>: a fresh adapter changes nothing there either
  const std::string fresh = stories_adapter("fresh_int8", /*zero_b=*/true, 5);
  std::string int8;
  REQUIRE(run(base + " --steps 100 --int8 --prompt 'Once upon a time'", &int8) == 0);
  REQUIRE(run(base + " --steps 100 --int8 --lora " + fresh + " --prompt 'Once upon a time'", &lora_int8) == 0);
  CHECK(lora_int8 == int8);
  std::filesystem::remove_all(fresh);
}
#endif
