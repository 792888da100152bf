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

#include "support.hpp"

#ifdef POLYFORMER_GENERATE
namespace {

/// A temporary file of this process (ctest runs test cases in parallel processes).
std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("polyformer_test_generate_" + std::to_string(::getpid()) + "_" + name)).string();
}


/// Runs generate with `args`; stdout and stderr go to files; returns the exit code.
int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
  const std::string out_path = temp_path("stdout.txt"), err_path = temp_path("stderr.txt");
  const std::string cmd = std::string(POLYFORMER_GENERATE) + " " + args + " >" + out_path + " 2>" + err_path;
  const int status = std::system(cmd.c_str());
  if (out) *out = pft::read_text(out_path);
  if (err) *err = pft::read_text(err_path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

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
  for (const auto& [file, prompt] : {std::pair<std::string, std::string>{"once_upon_a_time", "Once upon a time"},
                                     {"lily_and_tom", "Lily and Tom went to the park"},
                                     {"empty", ""}}) {
    INFO(file);
    std::string out, err;
    REQUIRE(run("--model " + model + " --tokenizer " + tok + " --temperature 0 --steps 256 --threads 2 --prompt '" +
                    prompt + "'",
                &out, &err) == 0);
    CHECK(out == pft::read_text(pft::shared_path("models/golden/" + file + ".txt")));
    CHECK(err.find("tok/s") != std::string::npos);
  }
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
#endif
