// The tokenize CLI end to end over GPT-2's vocabulary: the hand-written edge cases of tests/tokenizers/gpt2*.tar.xz
// (those without a line break) encoded line by line equal the Hugging Face tokenizers library's ids, and decode back
// to their text; a BERT vocabulary's ids and type ids of single texts and pairs equal the library's (pairs.json); bad
// options, files and input exit with code 2 and one line.

#include <catch2/catch.hpp>

#include <fstream>
#include <utility>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support.hpp"

#ifdef POLYFORMER_TOKENIZE
namespace {

const std::string fixture_dir = POLYFORMER_GPT2_TOKENIZER_DIR;

int run(const std::string& args, std::string* out = nullptr, std::string* err = nullptr) {
  return pft::run_program(POLYFORMER_TOKENIZE, "tokenize", args, out, err);
}

std::string write_input(const std::string& name, const std::string& text) {
  const std::string path = pft::process_temp_path("tokenize", name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("examples/tokenize: GPT-2 ids equal the tokenizers library's, and decode back", "[examples][tokenizers]") {
  const std::vector<std::string> jsonl = lines_of(pft::read_text(fixture_dir + "/extra.jsonl"));
  const std::vector<std::string> want = lines_of(pft::read_text(fixture_dir + "/edge.ids"));
  std::string input, expected, texts;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const std::string text = nlohmann::json::parse(jsonl[i]).get<std::string>();
    if (text.find_first_of("\n\r") != std::string::npos) continue;  // a line of input cannot hold a line break
    input += text + "\n";
    std::string ids = "[" + want[i] + "]";
    for (char& c : ids) c = c == ' ' ? ',' : c;
    expected += ids + "\n";
    texts += text + "\n";
  }
  std::string out, err;
  REQUIRE(run("--tokenizer " + fixture_dir + " < " + write_input("edge.txt", input), &out, &err) == 0);
  CHECK(err.empty());
  CHECK(out == expected);
  REQUIRE(run("--tokenizer " + fixture_dir + "/vocab.json --decode < " + write_input("ids.txt", expected), &out, &err) == 0);
  CHECK(out == texts);
  REQUIRE(run("--tokenizer " + fixture_dir + " --decode --skip-special < " +
                  write_input("special.txt", "[17250,50256,8117]\n[]\n"),
              &out) == 0);
  CHECK(out == "Hithere\n\n");
}

TEST_CASE("examples/tokenize: --pairs and --type-ids print the tokenizers library's ids and type ids",
          "[examples][tokenizers]") {
  // tests/tokenizers/pairs.json: the library's BERT template, which vocab.txt read as BertTokenizer follows.
  std::ifstream in(POLYFORMER_TOKENIZER_PAIRS);
  const nlohmann::json f = nlohmann::json::parse(in);
  const nlohmann::json& c = f["cases"][0];
  REQUIRE(c["name"] == "bert_template");
  const std::string bert = POLYFORMER_BERT_TOKENIZER_DIR;
  for (const bool pairs : {true, false}) {
    std::string input, with, without;
    for (std::size_t i = 0; i < f["inputs"].size(); ++i) {
      const nlohmann::json& row = f["inputs"][i];
      if (row[1].is_null() == pairs) continue;
      const std::string a = f["texts"][row[0].get<std::size_t>()].get<std::string>();
      const std::string b = pairs ? f["texts"][row[1].get<std::size_t>()].get<std::string>() : std::string();
      if (!pairs && a.find_first_of("\n\r") != std::string::npos) continue;  // a line of input cannot hold a line break
      input += (pairs ? nlohmann::json::array({a, b}).dump() : a) + "\n";
      for (const auto& [key, out] : {std::pair{"with", &with}, std::pair{"without", &without}})
        *out += nlohmann::json{{"ids", c["rows"][i][key]["ids"]}, {"type_ids", c["rows"][i][key]["type_ids"]}}.dump() + "\n";
    }
    const std::string mode = pairs ? " --pairs" : " --type-ids";
    const std::string file = write_input(pairs ? "pairs.txt" : "singles.txt", input);
    std::string out, err;
    INFO(mode);
    REQUIRE(run("--tokenizer " + bert + mode + " < " + file, &out, &err) == 0);
    CHECK(err.empty());
    CHECK(out == with);
    REQUIRE(run("--tokenizer " + bert + mode + " --no-special < " + file, &out, &err) == 0);
    CHECK(out == without);
  }
}

TEST_CASE("examples/tokenize: bad input exits with code 2 and one line", "[examples][tokenizers][errors]") {
  const std::string dir = " --tokenizer " + fixture_dir;
  const std::string good = write_input("good.txt", "hello\n");
  const std::pair<std::string, std::string> cases[] = {
      {"< " + good, "--tokenizer is required"},
      {dir + " --frobnicate < " + good, "unknown option '--frobnicate'"},
      {dir + " --skip-special < " + good, "--skip-special needs --decode"},
      {" --tokenizer /nonexistent/dir < " + good, "/nonexistent/dir is not a tokenizer.json, a vocab.txt, a vocab.json, a SentencePiece .model or a directory"},
      {" --tokenizer " + write_input("broken.json", "{\"model\": ") + " < " + good, "not valid JSON"},
      {dir + " < " + write_input("latin1.txt", "ok\ncaf\xE9\n"), "line 2: Tokenizer::encode: the text is not valid UTF-8 at byte 3"},
      {dir + " --decode < " + write_input("notjson.txt", "[1,2]\n[3,\n"), "line 2: not valid JSON"},
      {dir + " --decode < " + write_input("object.txt", "{\"a\": 1}\n"), "line 1: expected an array of ids, found object"},
      {dir + " --decode < " + write_input("float.txt", "[1.5]\n"), "line 1: the id 1.5 is not an integer"},
      {dir + " --decode < " + write_input("range.txt", "[1]\n[99999]\n"), "line 2: Tokenizer::decode: id 0 is 99999"},
      {dir + " --pairs < " + write_input("pair1.txt", "[\"a\", \"b\"]\n[\"a\"]\n"), "line 2: expected an array of two texts, found [\"a\"]"},
      {dir + " --pairs < " + good, "line 1: not valid JSON, expected an array of two texts"},
      {dir + " --pairs --type-ids < " + good, "give one of --type-ids and --pairs"},
      {dir + " --type-ids --decode < " + good, "--type-ids and --pairs are for encoding, not --decode"},
  };
  for (const auto& [args, message] : cases) {
    INFO(args);
    std::string err;
    CHECK(run(args, nullptr, &err) == 2);
    CHECK(err.find(message) != std::string::npos);
    CHECK(err.find("terminate") == std::string::npos);
  }
}
#endif
