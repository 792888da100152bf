// Type ids and pairs of texts (tokenizers/post_processor.hpp) against the Hugging Face tokenizers library:
// tests/tokenizers/pair_fixtures.js wrote tests/tokenizers/pairs.json with npm tokenizers 0.23.2's ids and type ids
// of 46 texts (the hand-written edge cases, random strings, fortunes) alone and paired, with and without special
// tokens, for the BERT, GPT-2, Llama and T5 fixtures under every post-processor polyformer reads: TemplateProcessing
// (BERT's, Llama's, T5's, one with B before A, type ids past 1 and a special token of two ids), BertProcessing,
// RobertaProcessing, ByteLevel, none, and a Sequence of ByteLevel and a template. The older files (vocab.txt, .model)
// get transformers' slow tokenizers' pairs (the .model files only where the SentencePiece library is).

#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/tokenizers/tokenizer.hpp"
#include "support.hpp"
#include "tokenizer_testing.hpp"

namespace pt = polyformer::tokenizers;

namespace {

nlohmann::json special_token(int id, const std::string& content) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
          {"normalized", false}, {"special", true}};
}

/// The base tokenizer.json of each fixture, built as pair_fixtures.js builds it.
nlohmann::json base_json(const std::string& name) {
  if (name == "bert") {
    nlohmann::json j = pft::bert_tokenizer_json();
    j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
    return j;
  }
  if (name == "gpt2") {
    const std::string dir = POLYFORMER_GPT2_TOKENIZER_DIR;
    const nlohmann::json vocab = pft::read_json(dir + "/vocab.json");
    nlohmann::json merges = nlohmann::json::array();
    const std::vector<std::string> lines = pft::lines_of(dir + "/merges.txt");
    for (std::size_t i = 0; i < lines.size(); ++i)
      if (!lines[i].empty() && !(i == 0 && lines[i].starts_with("#version"))) merges.push_back(lines[i]);
    const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                                       {"use_regex", true}};
    return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
            {"added_tokens", {special_token(vocab["<|endoftext|>"], "<|endoftext|>")}}, {"normalizer", nullptr},
            {"pre_tokenizer", byte_level}, {"post_processor", nullptr}, {"decoder", byte_level},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                       {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
                       {"merges", merges}}}};
  }
  if (name == "llama") return pft::read_json(std::string(POLYFORMER_LLAMA_TOKENIZER_DIR) + "/tokenizer.json");
  REQUIRE(name == "t5");
  return pft::read_json(std::string(POLYFORMER_T5_TOKENIZER_DIR) + "/tokenizer.json");
}

const nlohmann::json& fixture() {
  static const nlohmann::json j = pft::read_json(POLYFORMER_TOKENIZER_PAIRS);
  return j;
}

pt::Tokenizer tokenizer_of_case(const nlohmann::json& c) {
  nlohmann::json j = base_json(c["base"].get<std::string>());
  j["post_processor"] = c["post_processor"];
  for (const auto& added : c["added_tokens"]) j["added_tokens"].push_back(added);
  return pt::Tokenizer::from_json(j.dump(), c["name"].get<std::string>());
}

std::vector<int> ints(const nlohmann::json& a) { return a.get<std::vector<int>>(); }

}  // namespace

TEST_CASE("pairs and type ids equal the tokenizers library's under every post-processor", "[tokenizers][pairs]") {
  const nlohmann::json& f = fixture();
  const auto& texts = f["texts"];
  const auto& inputs = f["inputs"];
  REQUIRE(f["cases"].size() == 9);
  for (const auto& c : f["cases"]) {
    const std::string name = c["name"].get<std::string>();
    const pt::Tokenizer t = tokenizer_of_case(c);
    REQUIRE(c["rows"].size() == inputs.size());
    int pairs = 0;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const std::string a = texts[inputs[i][0].get<std::size_t>()].get<std::string>();
      const bool pair = !inputs[i][1].is_null();
      const std::string b = pair ? texts[inputs[i][1].get<std::size_t>()].get<std::string>() : std::string();
      for (const bool special : {true, false}) {
        const nlohmann::json& expected = c["rows"][i][special ? "with" : "without"];
        const pt::Encoding e = pair ? t.encode_pair(a, b, special) : t.encode_with_type_ids(a, special);
        INFO(name << " input " << i << (special ? " with" : " without") << " special tokens");
        CHECK(e.ids == ints(expected["ids"]));
        CHECK(e.type_ids == ints(expected["type_ids"]));
        if (!pair) CHECK(t.encode(a, special) == e.ids);
      }
      pairs += pair;
    }
    CHECK(2 * pairs == static_cast<int>(inputs.size()));
  }
}

TEST_CASE("vocab.txt pairs as BertTokenizer: [CLS] a [SEP] b [SEP] with type ids 0 then 1", "[tokenizers][pairs]") {
  const nlohmann::json& f = fixture();
  const auto& c = f["cases"][0];
  REQUIRE(c["name"] == "bert_template");
  const pt::Tokenizer slow = pt::Tokenizer::open(std::string(POLYFORMER_BERT_TOKENIZER_DIR) + "/vocab.txt");
  for (std::size_t i = 0; i < f["inputs"].size(); ++i) {
    const auto& in = f["inputs"][i];
    if (in[1].is_null()) continue;
    const pt::Encoding e = slow.encode_pair(f["texts"][in[0].get<std::size_t>()].get<std::string>(),
                                            f["texts"][in[1].get<std::size_t>()].get<std::string>());
    INFO("input " << i);
    CHECK(e.ids == ints(c["rows"][i]["with"]["ids"]));
    CHECK(e.type_ids == ints(c["rows"][i]["with"]["type_ids"]));
  }
}

#if defined(POLYFORMER_HAVE_SENTENCEPIECE)
TEST_CASE("SentencePiece .model pairs as LlamaTokenizer and T5Tokenizer join them", "[tokenizers][pairs]") {
  const std::string a = "Hello world, once more.", b = "A second text: 12 apples.";
  {  // LlamaTokenizer: <s> a <s> b, type ids 0 up to the second <s>, 1 from it
    const pt::Tokenizer t = pt::Tokenizer::from_sentencepiece(std::string(POLYFORMER_LLAMA_TOKENIZER_DIR) + "/spiece.model",
                                                              true, false);
    const std::vector<int> ia = t.encode(a, false), ib = t.encode(b, false);
    const int bos = t.token_to_id("<s>");
    std::vector<int> ids{bos}, types(ia.size() + 1, 0);
    ids.insert(ids.end(), ia.begin(), ia.end());
    ids.push_back(bos);
    ids.insert(ids.end(), ib.begin(), ib.end());
    types.resize(ids.size(), 1);
    const pt::Encoding e = t.encode_pair(a, b);
    CHECK(e.ids == ids);
    CHECK(e.type_ids == types);
    const pt::Encoding plain = t.encode_pair(a, b, false);
    CHECK(plain.ids.size() == ia.size() + ib.size());
    CHECK(plain.type_ids == [&] {
      std::vector<int> v(ia.size(), 0);
      v.resize(ia.size() + ib.size(), 1);
      return v;
    }());
  }
  {  // T5Tokenizer (tokenizer_config.json says so): a </s> b </s>, every type id 0
    const std::string dir = pft::process_temp_path("pairs_t5", "");
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(std::string(POLYFORMER_T5_TOKENIZER_DIR) + "/spiece.model", dir + "/spiece.model",
                               std::filesystem::copy_options::overwrite_existing);
    std::ofstream(dir + "/tokenizer_config.json") << R"({"tokenizer_class": "T5Tokenizer"})";
    const pt::Tokenizer t = pt::Tokenizer::open(dir);
    const std::vector<int> ia = t.encode(a, false), ib = t.encode(b, false);
    const int eos = t.token_to_id("</s>");
    std::vector<int> ids = ia;
    ids.push_back(eos);
    ids.insert(ids.end(), ib.begin(), ib.end());
    ids.push_back(eos);
    const pt::Encoding e = t.encode_pair(a, b);
    CHECK(e.ids == ids);
    CHECK(e.type_ids == std::vector<int>(ids.size(), 0));
  }
}
#endif

TEST_CASE("post-processors that cannot be run are refused by name", "[tokenizers][pairs]") {
  nlohmann::json j = base_json("bert");
  const auto piece = [](const char* kind, const char* id, int type) { return nlohmann::json{{kind, {{"id", id}, {"type_id", type}}}}; };
  const nlohmann::json specials = {{"[SEP]", {{"id", "[SEP]"}, {"ids", {3}}, {"tokens", {"[SEP]"}}}}};
  const auto refused = [&](const nlohmann::json& post, const std::string& message) {
    j["post_processor"] = post;
    INFO(post.dump());
    CHECK_THROWS_AS(pt::Tokenizer::from_json(j.dump(), "t.json"), polyformer::format_error);
    CHECK_THROWS_WITH(pt::Tokenizer::from_json(j.dump(), "t.json"), Catch::Contains(message));
  };
  const nlohmann::json template_processing = {{"type", "TemplateProcessing"},
                                              {"single", {piece("Sequence", "A", 0), piece("SpecialToken", "[SEP]", 0)}},
                                              {"pair", {piece("Sequence", "A", 0), piece("Sequence", "B", 1)}},
                                              {"special_tokens", specials}};
  nlohmann::json p = template_processing;
  p["pair"] = {piece("Sequence", "A", 0), piece("Sequence", "A", 1)};
  refused(p, "post_processor.pair is a template holding A 2 and B 0 times, expected A once and B once");
  p = template_processing;
  p["single"] = {piece("Sequence", "A", 0), piece("Sequence", "B", 0)};
  refused(p, "post_processor.single is a template holding A 1 and B 1 times, expected A once and no B");
  p = template_processing;
  p["single"] = {piece("Sequence", "C", 0)};
  refused(p, "the sequence 'C', expected A or B");
  p = template_processing;
  p["single"] = {piece("Sequence", "A", -1)};
  refused(p, "a type_id that is not an integer");
  p = template_processing;
  p["single"] = {piece("Sequence", "A", 0), piece("SpecialToken", "[X]", 0)};
  refused(p, "the special token '[X]'");
  refused({{"type", "Sequence"}, {"processors", {template_processing, template_processing}}},
          "post_processor.processors[1] is");
  refused({{"type", "Sequence"}, {"processors", "ByteLevel"}}, "post_processor.processors is missing or not a list");
  refused({{"type", "BertProcessing"}, {"sep", {"[SEP]", 3}}}, "post_processor.cls is not a [token, id] pair");
  refused({{"type", "Squash"}}, "post_processor is {\"type\":\"Squash\"}");

  // A template without a pair: texts encode, pairs are refused when asked for.
  p = template_processing;
  p.erase("pair");
  j["post_processor"] = p;
  const pt::Tokenizer t = pt::Tokenizer::from_json(j.dump(), "t.json");
  CHECK(t.encode("the") == std::vector<int>{t.token_to_id("the"), 3});
  CHECK_FALSE(t.post_processor().encodes_pairs());
  CHECK_THROWS_AS(t.encode_pair("a", "b"), polyformer::config_error);
  CHECK_THROWS_WITH(t.encode_pair("a", "b"), Catch::Contains("has no template for a pair of texts"));
}
