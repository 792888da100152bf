// GPT-2's byte-level BPE tokenizer (tokenizers/tokenizer.hpp) over GPT-2's real vocabulary, against the Hugging Face
// tokenizers library: tests/tokenizers/gpt2_fixtures.js wrote the oracle's ids (in full for the hand-written edge
// cases, as a count and a hash for the rest) for 41 edge cases, 3,000 seeded random strings over every Unicode
// plane, and the 15,221 records of Debian's fortunes; the archive is unpacked at configure time. Every text must
// also decode back to itself. Then the files and calls it refuses.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/tokenizers/tokenizer.hpp"
#include "tokenizer_testing.hpp"

namespace pt = polyformer::tokenizers;
namespace fs = std::filesystem;

namespace {

const std::string fixture_dir = POLYFORMER_GPT2_TOKENIZER_DIR;

/// Each text's ids against the oracle's count and hash, and its decoding against the text.
void check_texts(const pt::Tokenizer& t, const std::vector<std::string>& texts, const std::vector<std::string>& want) {
  REQUIRE(texts.size() == want.size());
  std::size_t wrong = 0, not_round_trip = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int> ids = t.encode(texts[i]);
    if (pft::count_and_hash(ids) != want[i] && ++wrong <= 5)
      UNSCOPED_INFO("text " << i << " " << nlohmann::json(texts[i]).dump() << ": ids " << pft::joined(ids));
    if (t.decode(ids) != texts[i] && ++not_round_trip <= 5)
      UNSCOPED_INFO("text " << i << " decodes as " << nlohmann::json(t.decode(ids)).dump());
  }
  CHECK(wrong == 0);
  CHECK(not_round_trip == 0);
}

/// GPT-2's tokenizer.json, written as the fixture script wrote the one the oracle read.
std::string write_tokenizer_json() {
  const std::string dir = pft::process_temp_path("gpt2_tokenizer", "json");
  fs::create_directories(dir);
  nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                               {"use_regex", true}};
  nlohmann::json post = byte_level;
  post["trim_offsets"] = false;
  std::vector<std::string> merges = pft::lines_of(fixture_dir + "/merges.txt");
  merges.erase(merges.begin());  // "#version: 0.2"
  merges.erase(std::remove(merges.begin(), merges.end(), std::string()), merges.end());
  const nlohmann::json j = {
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
      {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"single_word", false}, {"lstrip", false},
                         {"rstrip", false}, {"normalized", true}, {"special", true}}}},
      {"normalizer", nullptr}, {"pre_tokenizer", byte_level}, {"post_processor", post}, {"decoder", byte_level},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                 {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", nlohmann::json::parse(pft::read_text(fixture_dir + "/vocab.json"))}, {"merges", merges}}}};
  std::ofstream(dir + "/tokenizer.json") << j.dump();
  return dir;
}

}  // namespace

TEST_CASE("GPT-2's tokenizer equals Hugging Face tokenizers on edge cases and random text", "[tokenizers][gpt2]") {
  if (!fs::exists(fixture_dir + "/vocab.json"))
    FAIL("no GPT-2 tokenizer fixtures in " << fixture_dir << " (tests/tokenizers/gpt2*.tar.xz unpack at configure time)");
  const auto legacy = pt::Tokenizer::from_vocab_merges(fixture_dir + "/vocab.json", fixture_dir + "/merges.txt");
  CHECK(legacy.vocab_size() == 50257);
  REQUIRE(legacy.bpe() != nullptr);
  CHECK(legacy.bpe()->merge_count() == 50000);
  const std::vector<std::string> texts = pft::fixture_texts(fixture_dir);
  pft::check_edge_cases(legacy, texts, fixture_dir);
  check_texts(legacy, texts, pft::lines_of(fixture_dir + "/extra.hashes"));

  const std::string dir = write_tokenizer_json();
  const auto json = pt::Tokenizer::open(dir);  // tokenizer.json first
  check_texts(json, texts, pft::lines_of(fixture_dir + "/extra.hashes"));
  CHECK(json.token_to_id("<|endoftext|>") == 50256);
  CHECK(json.token_to_id("Ġthe") == 262);
  const std::vector<int> with_eot = json.encode("Hi<|endoftext|>there");
  CHECK(with_eot == std::vector<int>{17250, 50256, 8117});
  CHECK(json.decode(with_eot) == "Hi<|endoftext|>there");
  CHECK(json.decode(with_eot, /*skip_special_tokens=*/true) == "Hithere");
  CHECK(json.decode(std::vector<int>{129}) == "\xEF\xBF\xBD");  // byte 0xC5 alone, a sequence cut short: U+FFFD
}

TEST_CASE("GPT-2's tokenizer equals Hugging Face tokenizers on every fortune", "[tokenizers][gpt2]") {
  if (!fs::is_directory(pft::fortunes_dir))
    FAIL(pft::fortunes_dir << " is missing: install Debian's fortunes package (the README's apt-get line does)");
  const auto t = pt::Tokenizer::open(fixture_dir);  // vocab.json and merges.txt
  const std::vector<std::string> records = pft::fortunes();
  CHECK(records.size() == 15221);
  check_texts(t, records, pft::lines_of(fixture_dir + "/fortunes.hashes"));
}

TEST_CASE("The tokenizer refuses what it cannot run, naming the file and the field", "[tokenizers][gpt2][errors]") {
  const auto t = pt::Tokenizer::open(fixture_dir + "/vocab.json");
  CHECK_THROWS_WITH(t.encode("ok \xC3("), Catch::Contains("Tokenizer::encode: the text is not valid UTF-8 at byte 3 (0xC3)"));
  CHECK_THROWS_WITH(t.encode("\xED\xA0\x80"), Catch::Contains("not valid UTF-8 at byte 0 (0xED)"));  // a surrogate
  CHECK_THROWS_WITH(t.decode(std::vector<int>{50257}), Catch::Contains("id 0 is 50257, which is no token"));
  CHECK_THROWS_WITH(t.decode(std::vector<int>{1, -1}), Catch::Contains("id 1 is -1"));

  const std::string dir = pft::process_temp_path("gpt2_tokenizer", "bad");
  fs::create_directories(dir);
  const auto fails = [&](const std::string& json, const std::string& message) {
    INFO(json);
    std::ofstream(dir + "/tokenizer.json") << json;
    CHECK_THROWS_WITH(pt::Tokenizer::open(dir + "/tokenizer.json"), Catch::Contains(message));
  };
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  const std::string byte_level = R"("pre_tokenizer": {"type": "ByteLevel"})";
  std::ofstream(dir + "/tokenizer.json") << "{" + byte_level + ", " + model + "}";  // the control case: fine
  CHECK(pt::Tokenizer::open(dir + "/tokenizer.json").encode("ab ab") == std::vector<int>{2, 2});
  fails("{" + byte_level + R"(, "normalizer": {"type": "Nmt"}, )" + model + "}",
        R"(normalizer is {"type":"Nmt"}, expected null, a BertNormalizer, Prepend, Replace, Strip, Precompiled, NFD, NFKD, NFC, NFKC, Lowercase, StripAccents or a Sequence of them (polyformer does not run it))");
  fails(R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x"}}, )" + model + "}",
        "pre_tokenizer is {\"pattern\":{\"Regex\":\"x\"},\"type\":\"Split\"}, expected null, a ByteLevel, a Sequence [Split, ByteLevel], a Metaspace, or");
  // A field of another JSON type than it takes (found by fuzz_tokenizer_json: the model's type as a list).
  fails(R"({"model": {"type": ["H e"]}})", "tokenizer.json: a field holds the wrong kind of JSON value");
  fails("{" + byte_level + R"(, "added_tokens": [{"id": 5, "content": "x", "special": "yes"}], )" + model + "}",
        "a field holds the wrong kind of JSON value");
  fails("{" + byte_level + R"(, "decoder": {"type": "CTC"}, )" + model + "}", "decoder is {\"type\":\"CTC\"}");
  fails("{" + byte_level + R"(, "model": {"type": "WordLevel", "vocab": {}}})", "model.type is \"WordLevel\"");
  fails("{" + byte_level + R"(, "model": {"type": "WordPiece", "vocab": {"a": 0}}})",
        "the unknown token '[UNK]' is not in the vocabulary");
  fails(R"({"pre_tokenizer": {"type": "UnicodeScripts"}, )" + model + "}",
        "Digits, BertPreTokenizer or a Sequence of them (the BPE model's)");
  fails("{" + byte_level + R"(, "model": {"vocab": {"a": 0}, "merges": ["a b"]}})",
        "merge 0 ('a' 'b') names 'b', which is not in the vocabulary");
  fails("{" + byte_level + R"(, "model": {"vocab": {"a": 0, "b": 0}, "merges": []}})", "id 0 is given to both");
  // Ids that would size the table past what the file holds (found by fuzz_tokenizer_json: a 64 GB allocation).
  fails("{" + byte_level + R"(, "model": {"vocab": {"a": 0, "b": 2222222222222223}, "merges": []}})",
        "the id of 'b' is 2222222222222223, expected 0..2147483647");
  fails("{" + byte_level + R"(, "model": {"vocab": {"a": 0, "b": 2000000000}, "merges": []}})",
        "token 'b' has id 2000000000, expected below 1028 (2 tokens: twice as many, plus 1024)");
  std::ofstream(dir + "/tokenizer.json") << "{" + byte_level + R"(, "model": {"vocab": {"a": 0, "b": 1027}, "merges": []}})";
  CHECK(pt::Tokenizer::open(dir + "/tokenizer.json").encode("b") == std::vector<int>{1027});  // gaps are fine
  fails("{" + byte_level + R"(, "model": {"vocab": {"a": 0}, "merges": ["a"]}})",
        "model.merges[0] is 'a', expected two tokens and one space");
  fails("{" + byte_level + R"(, "model": {"vocab": {"a": 0}, "merges": [], "byte_fallback": 1}})",
        "model.byte_fallback is 1, expected true or false");
  fails("{" + byte_level + R"(, "added_tokens": [{"id": 3, "content": "<x>", "lstrip": true}], )" + model + "}",
        "added_tokens[0].lstrip is true, expected false");
  fails("{" + byte_level + R"(, "truncation": {"max_length": 8}, )" + model + "}", "truncation is");
  fails("{" + byte_level + ", ", "not valid JSON");
  fails("{" + byte_level + "}", "model is missing");
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir + "/absent.json"), Catch::Contains("cannot open"));
  CHECK_THROWS_WITH(pt::Tokenizer::open(fixture_dir + "/merges.txt"), Catch::Contains("is GPT-2's merges: give its vocab.json"));
  fs::remove(dir + "/tokenizer.json");
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir), Catch::Contains("has neither tokenizer.json, vocab.txt, vocab.json with merges.txt, spiece.model nor tokenizer.model"));
  std::ofstream(dir + "/vocab.json") << R"({"a": 0, "b": 1, "ab": 2})";
  std::ofstream(dir + "/merges.txt") << "#version: 0.2\na b\na  b\n";
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir), Catch::Contains("merges.txt: line 3 is 'a  b', expected two tokens"));
}
