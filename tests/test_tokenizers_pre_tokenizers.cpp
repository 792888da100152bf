// The splitting pre-tokenizers (tokenizers/pre_tokenizer.hpp: Whitespace, WhitespaceSplit, Punctuation, Digits,
// BertPreTokenizer and Sequences of them) in front of the WordPiece, SentencePiece-style BPE and Unigram fixtures,
// against the Hugging Face tokenizers library: tests/tokenizers/pretokenizer_fixtures.js wrote
// tests/tokenizers/pretokenizers.json with npm tokenizers 0.23.2's ids of the 41 hand-written edge cases in full, and
// of the 3,000 random strings over every Unicode plane and the 15,221 fortune records as hashes of chunks of 100 and
// 500 texts, for 8 pre-tokenizers. Also the splitting itself on texts worked by hand, and what is refused.

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/tokenizers/tokenizer.hpp"
#include "support.hpp"
#include "tokenizer_testing.hpp"

namespace pt = polyformer::tokenizers;

namespace {

/// The fixture's base tokenizer with `pre_tokenizer` put in (and no post-processor: ids of the text alone).
pt::Tokenizer tokenizer_of_case(const nlohmann::json& c) {
  const std::string base = c["base"].get<std::string>();
  nlohmann::json j = base == "bert"    ? pft::bert_tokenizer_json()
                     : base == "llama" ? pft::read_json(std::string(POLYFORMER_LLAMA_TOKENIZER_DIR) + "/tokenizer.json")
                                       : pft::read_json(std::string(POLYFORMER_T5_TOKENIZER_DIR) + "/tokenizer.json");
  j["pre_tokenizer"] = c["pre_tokenizer"];
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
}

TEST_CASE("WordPiece, BPE and Unigram after splitting pre-tokenizers equal the tokenizers library's ids",
          "[tokenizers][pre_tokenizers]") {
  const nlohmann::json f = pft::read_json(POLYFORMER_TOKENIZER_PRE_TOKENIZERS);
  const std::vector<std::string> texts = pft::fixture_texts(POLYFORMER_BERT_TOKENIZER_DIR);  // edge cases, then random
  const std::vector<std::string> records = pft::fortunes();
  REQUIRE(f["cases"].size() == 8);
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
  j["pre_tokenizer"] = {{"type", "Punctuation"}};  // the behaviour defaults to Isolated
  CHECK(pt::Tokenizer::from_json(j.dump(), "t.json").encode("a,b", false).size() == 3);
}
