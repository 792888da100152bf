// The splitting pre-tokenizers (tokenizers/pre_tokenizer.hpp: Whitespace, WhitespaceSplit, Punctuation, Digits,
// BertPreTokenizer and Sequences of them) in front of the WordPiece, SentencePiece-style BPE and Unigram fixtures, and
// Split by the regular expressions of GPT-2, cl100k_base (Llama 3) and Qwen2 (tokenizers/split_pattern.hpp) before
// ByteLevel in front of GPT-2's byte-level BPE, and the normalizers NFD, NFKD, NFC, NFKC, Lowercase and StripAccents
// in front of all four models, against the Hugging Face tokenizers library: tests/tokenizers/pretokenizer_fixtures.js
// wrote tests/tokenizers/pretokenizers.json with npm tokenizers 0.23.2's ids of the 41 hand-written edge cases in
// full, and of the 3,000 random strings over every Unicode plane and the 15,221 fortune records as hashes of chunks of
// 100 and 500 texts, for 19 pipelines. Also the splitting itself on texts worked by hand, and what is refused.

#include <catch2/catch.hpp>

#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/tokenizers/tokenizer.hpp"
#include "support.hpp"
#include "tokenizer_testing.hpp"

namespace pt = polyformer::tokenizers;

namespace {

/// GPT-2's byte-level BPE as a tokenizer.json, from the fixture's vocab.json and merges.txt (as
/// pretokenizer_fixtures.js builds it).
nlohmann::json gpt2_tokenizer_json() {
  const std::string dir = POLYFORMER_GPT2_TOKENIZER_DIR;
  nlohmann::json merges = nlohmann::json::array();
  std::istringstream lines(pft::read_text(dir + "/merges.txt"));
  for (std::string line; std::getline(lines, line);)
    if (!line.empty() && !line.starts_with("#version")) merges.push_back(line);
  const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                                     {"use_regex", true}};
  return {{"version", "1.0"},
          {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"normalized", false}, {"special", true}}}},
          {"pre_tokenizer", byte_level},
          {"decoder", byte_level},
          {"model", {{"type", "BPE"}, {"vocab", pft::read_json(dir + "/vocab.json")}, {"merges", merges}}}};
}

/// The fixture's base tokenizer with `pre_tokenizer` put in (and no post-processor: ids of the text alone).
pt::Tokenizer tokenizer_of_case(const nlohmann::json& c) {
  const std::string base = c["base"].get<std::string>();
  nlohmann::json j = base == "bert"    ? pft::bert_tokenizer_json()
                     : base == "gpt2"  ? gpt2_tokenizer_json()
                     : base == "llama" ? pft::read_json(std::string(POLYFORMER_LLAMA_TOKENIZER_DIR) + "/tokenizer.json")
                                       : pft::read_json(std::string(POLYFORMER_T5_TOKENIZER_DIR) + "/tokenizer.json");
  j["pre_tokenizer"] = c["pre_tokenizer"];
  if (c.contains("normalizer")) j["normalizer"] = c["normalizer"];
  j["post_processor"] = nullptr;
  return pt::Tokenizer::from_json(j.dump(), c["name"].get<std::string>());
}

/// The fixture's chunk hashes of `texts`: each chunk of `size` texts, their ids space-separated, a text a line.
std::vector<std::string> chunk_hashes(const pt::Tokenizer& t, const std::vector<std::string>& texts, std::size_t size) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < texts.size(); i += size) {
    std::string chunk;
    for (std::size_t j = i; j < std::min(texts.size(), i + size); ++j) {
      if (j > i) chunk += '\n';
      chunk += pft::joined(t.encode(texts[j], false));
    }
    out.push_back(pft::fnv_hash(chunk));
  }
  return out;
}

std::vector<std::string> split(const pt::SplitStep& step, std::string_view text) {
  std::vector<std::string_view> words{text}, scratch;
  pt::split_words(step, words, scratch, "test");
  return {words.begin(), words.end()};
}

}  // namespace

TEST_CASE("splitting pre-tokenizers cut texts as the tokenizers library does", "[tokenizers][pre_tokenizers]") {
  using K = pt::SplitStep::Kind;
  using W = std::vector<std::string>;
  // As the library's Node bindings print them (preTokenizeString).
  CHECK(split({K::whitespace}, "Hello, world! 123abc") == W{"Hello", ",", "world", "!", "123abc"});
  CHECK(split({K::whitespace}, "a_b-c ½x a\u00a0b") == W{"a_b", "-", "c", "\u00bd", "x", "a", "b"});
  CHECK(split({K::whitespace}, "  \t\n ") == W{});
  CHECK(split({K::whitespace_split}, "Hello, world!\u2028x") == W{"Hello,", "world!", "x"});
  CHECK(split({K::punctuation}, "Hello, world! 123abc") == W{"Hello", ",", " world", "!", " 123abc"});
  CHECK(split({K::punctuation}, "a_b-c") == W{"a", "_", "b", "-", "c"});
  CHECK(split({K::digits, false}, "Hello, world! 123abc") == W{"Hello, world! ", "123", "abc"});
  CHECK(split({K::digits, true}, "x12\u0663y\u00bd") == W{"x", "1", "2", "\u0663", "y", "\u00bd"});
  CHECK(split({K::digits, false}, "x12\u0663y\u00bd") == W{"x", "12\u0663", "y", "\u00bd"});
  CHECK(split({K::bert}, "Hi, you2") == W{"Hi", ",", "you2"});
  CHECK_THROWS_AS(split({K::whitespace}, "caf\xE9"), polyformer::format_error);
  // cl100k_base's pattern (Llama 3's) and Qwen2's, worked by hand from the regular expression.
  CHECK(pt::cl100k_split("Hello world 12345!!\n\n", 3) == std::vector<std::string_view>{"Hello", " world", " ", "123", "45", "!!\n\n"});
  CHECK(pt::cl100k_split("I'M here's  \n\n x", 3) == std::vector<std::string_view>{"I", "'M", " here", "'s", "  \n\n", " x"});
  CHECK(pt::cl100k_split("x 2024", 1) == std::vector<std::string_view>{"x", " ", "2", "0", "2", "4"});
  CHECK(pt::cl100k_split("it'\u017f \t(hi", 3) == std::vector<std::string_view>{"it", "'\u017f", " ", "\t", "(hi"});
  CHECK(pt::cl100k_split("a   \nb", 3) == std::vector<std::string_view>{"a", "   \n", "b"});
  CHECK_THROWS_AS(pt::cl100k_split("caf\xE9", 3), polyformer::format_error);
}

TEST_CASE("WordPiece, BPE and Unigram after splitting pre-tokenizers and normalizers equal the tokenizers library's ids",
          "[tokenizers][pre_tokenizers]") {
  const nlohmann::json f = pft::read_json(POLYFORMER_TOKENIZER_PRE_TOKENIZERS);
  const std::vector<std::string> texts = pft::fixture_texts(POLYFORMER_BERT_TOKENIZER_DIR);  // edge cases, then random
  const std::vector<std::string> records = pft::fortunes();
  REQUIRE(f["cases"].size() == 19);
  const std::size_t edge = f["cases"][0]["edge"].size();
  REQUIRE(texts.size() == edge + 3000);
  const std::vector<std::string> random(texts.begin() + std::ptrdiff_t(edge), texts.end());
  for (const auto& c : f["cases"]) {
    const std::string name = c["name"].get<std::string>();
    INFO(name);
    const pt::Tokenizer t = tokenizer_of_case(c);
    for (std::size_t i = 0; i < edge; ++i) {
      INFO("edge case " << i << " " << nlohmann::json(texts[i]).dump());
      CHECK(pft::joined(t.encode(texts[i], false)) == c["edge"][i].get<std::string>());
    }
    CHECK(chunk_hashes(t, random, 100) == c["random"].get<std::vector<std::string>>());
    CHECK(chunk_hashes(t, records, 500) == c["fortunes"].get<std::vector<std::string>>());
  }
}

TEST_CASE("splitting pre-tokenizers that cannot be run are refused by name", "[tokenizers][pre_tokenizers]") {
  nlohmann::json j = pft::bert_tokenizer_json();
  const auto refused = [&](const nlohmann::json& pre, const std::string& message) {
    j["pre_tokenizer"] = pre;
    INFO(pre.dump());
    CHECK_THROWS_AS(pt::Tokenizer::from_json(j.dump(), "t.json"), polyformer::format_error);
    CHECK_THROWS_WITH(pt::Tokenizer::from_json(j.dump(), "t.json"), Catch::Contains(message));
  };
  refused({{"type", "Punctuation"}, {"behavior", "Removed"}}, "pre_tokenizer.behavior is \"Removed\", expected \"Isolated\"");
  refused({{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}, {{"type", "Digits"}, {"individual_digits", "yes"}}}}},
          "pre_tokenizer.pretokenizers[1].individual_digits is not true or false");
  refused({{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}, {{"type", "Split"}}}}},
          "pre_tokenizer is {\"pretokenizers\":");
  refused({{"type", "CharDelimiterSplit"}, {"delimiter", "x"}}, "BertPreTokenizer, Whitespace, WhitespaceSplit, Punctuation");
  refused(nullptr, "(the WordPiece model's)");
  // Split before ByteLevel: a regular expression split_pattern.hpp does not match, another behaviour, inverted.
  j = gpt2_tokenizer_json();
  const auto split = [](const nlohmann::json& regex, const std::string& behavior, bool invert) {
    return nlohmann::json{{"type", "Sequence"},
                          {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", behavior},
                                              {"invert", invert}},
                                             {{"type", "ByteLevel"}, {"use_regex", false}}}}};
  };
  const std::string cl100k = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|)"
                             R"(\s*[\r\n]+|\s+(?!\S)|\s+)";
  j["pre_tokenizer"] = split(cl100k, "Isolated", false);  // the control case: read
  CHECK_NOTHROW(pt::Tokenizer::from_json(j.dump(), "t.json"));
  refused(split(cl100k + "x", "Isolated", false), "pre_tokenizer.pretokenizers[0].pattern is {\"Regex\":");
  refused(split(cl100k + "x", "Isolated", false), "expected the regular expression of GPT-2, of cl100k_base (Llama 3) or of Qwen2");
  refused(split(cl100k, "Removed", false), "pre_tokenizer.pretokenizers[0].behavior is \"Removed\", expected \"Isolated\"");
  refused(split(cl100k, "Isolated", true), "pre_tokenizer.pretokenizers[0].invert is true, expected false");
  refused(nlohmann::json{{"type", "Split"}, {"pattern", {{"Regex", cl100k}}}, {"behavior", "Isolated"}},
          "expected null, a ByteLevel, a Sequence [Split, ByteLevel], a Metaspace");
  j["pre_tokenizer"] = {{"type", "Punctuation"}};  // the behaviour defaults to Isolated
  CHECK(pt::Tokenizer::from_json(j.dump(), "t.json").encode("a,b", false).size() == 3);
}
