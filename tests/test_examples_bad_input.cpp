// Every program's bad input, as a table: missing, empty, truncated and wrong-type files, a directory where a file
// belongs, an unreadable file, absurd numbers, unknown flags and missing values. Each row must end the program with
// exit code 2 and exactly one line on stderr — the program's name, then a message naming what was wrong (the row's
// expected text) — with nothing on stdout: never a stack trace, an abort, a second line or exit code 0.

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

namespace fs = std::filesystem;

/// The files the rows name, made once per process: {empty}, {truncated} (stories260K.bin's first 100 bytes),
/// {text} (a line of text), {dir} (an empty directory), {unreadable} (mode 000), {missing} (no such path), and the
/// shared {model} and {tokenizer}, the encoder layer's {weights}, an HF BERT directory with its vocab.txt {bert}.
struct Fixtures {
  std::string root = pft::process_temp_path("bad_input", "files");
  Fixtures() {
    fs::remove_all(root);
    fs::create_directories(root + "/dir");
    std::ofstream(root + "/empty.bin");
    std::ofstream(root + "/text.txt") << "hello, world\n";
    std::ofstream(root + "/unreadable.bin") << "secret";
    fs::permissions(root + "/unreadable.bin", fs::perms::none);
    const std::string model = pft::read_text(pft::shared_path("models/stories260K.bin"));
    std::ofstream(root + "/truncated.bin", std::ios::binary) << model.substr(0, 100);
  }
  ~Fixtures() {
    std::error_code ignored;
    fs::remove_all(root, ignored);
  }
  /// `args` with each {name} replaced by its path.
  std::string expand(std::string args) const {
    const std::vector<std::pair<std::string, std::string>> names{
        {"{empty}", root + "/empty.bin"},
        {"{truncated}", root + "/truncated.bin"},
        {"{text}", root + "/text.txt"},
        {"{dir}", root + "/dir"},
        {"{unreadable}", root + "/unreadable.bin"},
        {"{missing}", root + "/missing.bin"},
        {"{out}", root + "/out.safetensors"},
        {"{model}", pft::shared_path("models/stories260K.bin")},
        {"{tokenizer}", pft::shared_path("models/tok512.bin")},
        {"{weights}", pft::shared_path("reference/torch/encoder_layer_postnorm_relu_seed0.safetensors")},
        {"{bert}", std::string(POLYFORMER_HF_BERT_REFERENCE_DIR) + "/pretraining_f16_gamma"}};
    for (const auto& [name, path] : names)
      for (std::size_t at; (at = args.find(name)) != std::string::npos;) args.replace(at, name.size(), path);
    return args;
  }
};

const Fixtures& fixtures() {
  static const Fixtures f;
  return f;
}

struct Row {
  std::string args;    // with {names} of the fixtures
  std::string expect;  // text the one line must hold
};

/// Runs `program` (its path) on every row; `name` is how it names itself.
void check_rows(const std::string& program, const std::string& name, const std::vector<Row>& rows) {
  // root reads a file of mode 000 anyway: that row cannot fail there, and is left out.
  const bool root = ::geteuid() == 0;
  for (const Row& row : rows) {
    if (root && row.args.find("{unreadable}") != std::string::npos) {
      WARN("skipped as root (who may read a file of mode 000): " << name << " " << row.args);
      continue;
    }
    const std::string args = fixtures().expand(row.args);
    INFO(name << " " << args);
    std::string out, err;
    const std::string stdin_from = args.find('<') == std::string::npos ? " </dev/null" : "";  // unless the row's own
    const int code = pft::run_program(program, "bad_input_" + name, args + stdin_from, &out, &err);
    INFO("stderr: " << err);
    CHECK(code == 2);
    CHECK(out.empty());
    CHECK(std::count(err.begin(), err.end(), '\n') == 1);
    CHECK((!err.empty() && err.back() == '\n'));
    CHECK(err.rfind(name + ": ", 0) == 0);
    CHECK(err.find(row.expect) != std::string::npos);
  }
}

}  // namespace

#ifdef POLYFORMER_GENERATE
TEST_CASE("bad input: generate", "[examples][errors]") {
  check_rows(POLYFORMER_GENERATE, "generate",
             {{"", "--model is required"},
              {"--model", "--model needs a value"},
              {"--model {missing} --tokenizer {tokenizer}", "missing.bin: cannot open"},
              {"--model {empty} --tokenizer {tokenizer}", "empty.bin: file has 0 bytes"},
              {"--model {truncated} --tokenizer {tokenizer}", "truncated.bin: file has 100 bytes, expected 1056540"},
              {"--model {unreadable} --tokenizer {tokenizer}", "unreadable.bin: cannot open"},
              {"--model {tokenizer} --tokenizer {tokenizer}", "tok512.bin: header:"},
              {"--model {text} --tokenizer {tokenizer}", "text.txt: file has 13 bytes"},
              {"--model {dir}", "config.json: cannot open"},
              {"--model {model} --tokenizer {missing}", "missing.bin: cannot open"},
              {"--model {model} --tokenizer {empty}", "empty.bin: max_token_length needs 4 bytes"},
              {"--model {model} --tokenizer {model}", "stories260K.bin: text of token 2 needs"},
              {"--model {model} --tokenizer {dir}", "dir"},
              {"--model {model} --tokenizer {tokenizer} --steps -5", "--steps is -5"},
              {"--model {model} --tokenizer {tokenizer} --steps 99999999999999999999", "--steps expects an integer"},
              {"--model {model} --tokenizer {tokenizer} --steps abc", "--steps expects an integer, got 'abc'"},
              {"--model {model} --tokenizer {tokenizer} --temperature nan", "temperature is nan"},
              {"--model {model} --tokenizer {tokenizer} --topp 7", "top_p is 7"},
              {"--model {model} --tokenizer {tokenizer} --seed 0", "seed is 0"},
              {"--model {model} --tokenizer {tokenizer} --threads 100000", "--threads is 100000"},
              {"--model {model} --tokenizer {tokenizer} --attention sliding:-3", "'sliding:-3'"},
              {"--model {model} --tokenizer {tokenizer} --linear fp64", "fp64"},
              {"--model {model} --tokenizer {tokenizer} --prompts {missing}", "missing.bin"},
              {"--model {model} --tokenizer {tokenizer} --prompts {empty}", "no lines"},
              {"--model {model} --tokenizer {tokenizer} --lora {dir}", "adapter_config.json"},
              {"--model {model} --tokenizer {tokenizer} --bogus", "unknown option '--bogus'"}});
}
#endif

#ifdef POLYFORMER_TORCH_FORWARD
TEST_CASE("bad input: torch_forward", "[examples][errors]") {
  check_rows(POLYFORMER_TORCH_FORWARD, "torch_forward",
             {{"", "--weights, --inputs and --out are required"},
              {"--weights {missing} --inputs {weights} --out {out}", "missing.bin: cannot open"},
              {"--weights {empty} --inputs {weights} --out {out}", "empty.bin: file is 0 bytes"},
              {"--weights {truncated} --inputs {weights} --out {out}", "truncated.bin: header length"},
              {"--weights {dir} --inputs {weights} --out {out}", "dir: cannot read"},
              {"--weights {unreadable} --inputs {weights} --out {out}", "unreadable.bin: cannot open"},
              {"--weights {text} --inputs {weights} --out {out}", "text.txt: header length"},
              {"--weights {weights} --inputs {empty} --out {out}", "empty.bin: file is 0 bytes"},
              {"--weights {weights} --inputs {weights} --out {dir}", "dir"},
              {"--weights {weights} --inputs {weights} --out {out} --nhead 0", "--nhead"},
              {"--weights {weights} --inputs {weights} --out {out} --nhead 99999999999999", "n_heads 99999999999999"},
              {"--weights {weights} --inputs {weights} --out {out} --module bogus", "--module is 'bogus'"},
              {"--weights {weights} --inputs {weights} --out {out} --layer-norm-eps -1", "eps is -1"},
              {"--weights {weights} --inputs {weights} --out {out} --threads x", "--threads expects an integer"},
              {"--weights {weights} --inputs {weights} --out", "--out needs a value"},
              {"--weights {weights} --inputs {weights} --out {out} --what", "unknown option '--what'"}});
}
#endif

#ifdef POLYFORMER_ATTENTION_ZOO
TEST_CASE("bad input: attention_zoo", "[examples][errors]") {
  check_rows(POLYFORMER_ATTENTION_ZOO, "attention_zoo",
             {{"--policy bogus", "bogus"},
              {"--policy sliding:0", "sliding:0"},
              {"--n 0", "--n is 0"},
              {"--n 99999999999 --d 64 --heads 12", "--n"},
              {"--heads abc", "--heads expects an integer, got 'abc'"},
              {"--threads 0", "--threads is 0"},
              {"--policy full --inputs {missing} --out {out}", "missing.bin: cannot open"},
              {"--policy full --inputs {empty} --out {out}", "empty.bin: file is 0 bytes"},
              {"--policy full --inputs {dir} --out {out}", "dir: cannot read"},
              {"--policy full --inputs {unreadable} --out {out}", "unreadable.bin: cannot open"},
              {"--policy full --inputs {weights} --out {out}", "no tensor 'q'"},
              {"--policy full --inputs {weights}", "--out"},
              {"--policy", "--policy needs a value"},
              {"--frobnicate", "unknown option '--frobnicate'"}});
}
#endif

#ifdef POLYFORMER_ENCODER_DEMO
TEST_CASE("bad input: encoder_demo", "[examples][errors]") {
  check_rows(POLYFORMER_ENCODER_DEMO, "encoder_demo",
             {{"--n 0", "--n is 0"},
              {"--n abc", "--n expects an integer, got 'abc'"},
              {"--n 99999999999", "--n is 99999999999"},
              {"--layers -2", "--layers is -2"},
              {"--threads 5000", "--threads is 5000"},
              {"--layers", "--layers needs a value"},
              {"--bogus", "unknown option '--bogus'"}});
}
#endif

#ifdef POLYFORMER_TOKENIZE
TEST_CASE("bad input: tokenize", "[examples][errors]") {
  check_rows(POLYFORMER_TOKENIZE, "tokenize",
             {{"", "--tokenizer"},
              {"--tokenizer {missing}", "missing.bin"},
              {"--tokenizer {empty}", "empty.bin"},
              {"--tokenizer {dir}", "dir"},
              {"--tokenizer {unreadable}", "unreadable.bin"},
              {"--tokenizer {text}", "text.txt"},
              {"--tokenizer {tokenizer}", "tok512.bin"},
              {"--tokenizer {bert} --decode <{text}", "line 1"},
              {"--tokenizer {bert} --bogus", "unknown option '--bogus'"}});
}
#endif

#ifdef POLYFORMER_ENCODE
TEST_CASE("bad input: encode", "[examples][errors]") {
  check_rows(POLYFORMER_ENCODE, "encode",
             {{"", "--model is required"},
              {"--model {missing} --text a", "missing.bin"},
              {"--model {dir} --text a", "config.json"},
              {"--model {text} --text a", "text.txt"},
              {"--model {bert} --text a --pool max", "--pool is 'max'"},
              {"--model {bert} --text a --top-k 0", "--top-k is 0"},
              {"--model {bert} --text a --batch 99999", "--batch is 99999"},
              {"--model {bert} --text a --threads -1", "--threads is -1"},
              {"--model {bert} --tokenizer {empty} --text a", "empty.bin"},
              {"--model {bert} --text", "--text needs a value"},
              {"--model {bert} --bogus", "unknown option '--bogus'"}});
}
#endif

#ifdef POLYFORMER_HF_FORWARD
TEST_CASE("bad input: hf_forward", "[examples][errors]") {
  check_rows(POLYFORMER_HF_FORWARD, "hf_forward",
             {{"", "--model"},
              {"--model {missing} --inputs {weights} --out {out}", "missing.bin"},
              {"--model {dir} --inputs {weights} --out {out}", "config.json"},
              {"--model {bert} --inputs {missing} --out {out}", "missing.bin: cannot open"},
              {"--model {bert} --inputs {empty} --out {out}", "empty.bin: file is 0 bytes"},
              {"--model {bert} --inputs {text} --out {out}", "text.txt"},
              {"--model {bert} --inputs {weights} --out {out}", "input_ids"},
              {"--model {bert} --inputs {weights} --out {out} --threads 0", "--threads is 0"},
              {"--model {bert} --inputs {weights} --out {out} --bogus", "unknown option '--bogus'"}});
}
#endif

#ifdef POLYFORMER_TRAIN
TEST_CASE("bad input: train", "[examples][errors]") {
  check_rows(POLYFORMER_TRAIN, "train",
             {{"--model {missing} --tokenizer {tokenizer} --data {text}", "missing.bin: cannot open"},
              {"--model {truncated} --tokenizer {tokenizer} --data {text}", "truncated.bin: file has 100 bytes"},
              {"--model {model} --tokenizer {tokenizer} --data {missing}", "missing.bin"},
              {"--model {model} --tokenizer {tokenizer} --data {empty}", "empty.bin"},
              {"--model {model} --tokenizer {tokenizer} --data {dir}", "dir"},
              {"--model {model} --tokenizer {tokenizer} --data {text} --steps -1", "--steps"},
              {"--model {model} --tokenizer {tokenizer} --data {text} --seq-len 4 --lr nan", "lr nan"},
              {"--model {model} --tokenizer {tokenizer} --data {text} --batch 0", "--batch"},
              {"--model {model} --tokenizer {tokenizer} --data {text} --schedule wobbly", "wobbly"},
              {"--config dim=abc", "dim"},
              {"--model {model} --bogus", "unknown option '--bogus'"}});
}
#endif
