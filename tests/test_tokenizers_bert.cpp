// BERT's WordPiece tokenizer (tokenizers/bert.hpp, tokenizers/tokenizer.hpp) against the Hugging Face tokenizers
// library: tests/tokenizers/bert_fixtures.js had the library train a 30,005-token WordPiece vocabulary on Debian's
// fortunes and wrote its ids (in full for the hand-written edge cases, as a count and a hash for the rest) under four
// normalizer settings — uncased, cased, lowercase only, accents stripped only — for 41 edge cases and 3,000 seeded
// random strings over every Unicode plane, with the hash of the uncased decoding; and the uncased ids and decoding
// of the 15,221 fortune records. The archive is unpacked at configure time. vocab.txt read as transformers'
// BertTokenizer reads it gives the uncased ids too.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
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

const std::string fixture_dir = POLYFORMER_BERT_TOKENIZER_DIR;

/// The tokenizer.json of one normalizer setting, written as the fixture script wrote the one the oracle read.
std::string write_tokenizer_json(bool lowercase, const nlohmann::json& strip_accents, const std::string& tag) {
  nlohmann::json j = pft::bert_tokenizer_json(lowercase, strip_accents);
  const auto special = [](const char* name, int type) { return nlohmann::json{{"SpecialToken", {{"id", name}, {"type_id", type}}}}; };
  const auto sequence = [](const char* name, int type) { return nlohmann::json{{"Sequence", {{"id", name}, {"type_id", type}}}}; };
  const int cls = j["model"]["vocab"]["[CLS]"].get<int>(), sep = j["model"]["vocab"]["[SEP]"].get<int>();
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {special("[CLS]", 0), sequence("A", 0), special("[SEP]", 0)}},
      {"pair", {special("[CLS]", 0), sequence("A", 0), special("[SEP]", 0), sequence("B", 1), special("[SEP]", 1)}},
      {"special_tokens", {{"[CLS]", {{"id", "[CLS]"}, {"ids", {cls}}, {"tokens", {"[CLS]"}}}},
                          {"[SEP]", {{"id", "[SEP]"}, {"ids", {sep}}, {"tokens", {"[SEP]"}}}}}}};
  const std::string path = pft::process_temp_path("bert_tokenizer", tag + ".json");
  std::ofstream(path) << j.dump();
  return path;
}

/// Column `setting` (count and hash of the ids) of each row against `t`, and with `decoded`, the last column (the
/// hash of the decoding).
void check_texts(const pt::Tokenizer& t, const std::vector<std::string>& texts, const std::vector<std::string>& rows,
                 std::size_t setting, bool decoded) {
  REQUIRE(texts.size() == rows.size());
  std::size_t wrong = 0, wrong_decoding = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    std::istringstream row(rows[i]);
    std::vector<std::string> columns{std::istream_iterator<std::string>(row), {}};
    const std::vector<int> ids = t.encode(texts[i]);
    const std::string got = std::to_string(ids.size()) + " " + pft::fnv_hash(pft::joined(ids));
    if (got != columns.at(2 * setting) + " " + columns.at(2 * setting + 1) && ++wrong <= 5)
      UNSCOPED_INFO("text " << i << " " << nlohmann::json(texts[i]).dump() << ": ids " << pft::joined(ids));
    if (decoded && pft::fnv_hash(t.decode(ids)) != columns.back() && ++wrong_decoding <= 5)
      UNSCOPED_INFO("text " << i << " decodes as " << nlohmann::json(t.decode(ids)).dump());
  }
  CHECK(wrong == 0);
  CHECK(wrong_decoding == 0);
}

}  // namespace

TEST_CASE("BERT's WordPiece tokenizer equals Hugging Face tokenizers under every normalizer setting",
          "[tokenizers][bert]") {
  if (!fs::exists(fixture_dir + "/vocab.txt"))
    FAIL("no BERT tokenizer fixtures in " << fixture_dir << " (tests/tokenizers/bert.tar.xz unpacks at configure time)");
  const std::vector<std::string> texts = pft::fixture_texts(fixture_dir);
  const std::vector<std::string> rows = pft::lines_of(fixture_dir + "/extra.hashes");
  const std::pair<bool, nlohmann::json> settings[] = {{true, nullptr}, {false, false}, {true, false}, {false, true}};
  for (std::size_t s = 0; s < std::size(settings); ++s) {
    INFO("setting " << s << ": lowercase " << settings[s].first << ", strip_accents " << settings[s].second.dump());
    const auto t = pt::Tokenizer::open(write_tokenizer_json(settings[s].first, settings[s].second, std::to_string(s)));
    check_texts(t, texts, rows, s, s == 0);
  }
  const auto uncased = pt::Tokenizer::open(fixture_dir);  // vocab.txt, as BertTokenizer reads it
  pft::check_edge_cases(uncased, texts, fixture_dir);
  check_texts(uncased, texts, rows, 0, true);
  REQUIRE(uncased.wordpiece() != nullptr);
  CHECK(uncased.vocab_size() == 30005);
  const int cls = uncased.token_to_id("[CLS]"), sep = uncased.token_to_id("[SEP]"), mask = uncased.token_to_id("[MASK]");
  const std::vector<int> ids = uncased.encode("The [MASK] sat.");
  REQUIRE(ids.size() >= 4);
  CHECK(ids.front() == cls);
  CHECK(ids.back() == sep);
  CHECK(std::count(ids.begin(), ids.end(), mask) == 1);
  CHECK(uncased.encode("The [MASK] sat.", /*add_special_tokens=*/false) == std::vector<int>(ids.begin() + 1, ids.end() - 1));
  CHECK(uncased.decode(ids, /*skip_special_tokens=*/true) == "the sat.");
}

TEST_CASE("BERT's WordPiece tokenizer equals Hugging Face tokenizers on every fortune", "[tokenizers][bert]") {
  if (!fs::is_directory(pft::fortunes_dir))
    FAIL(pft::fortunes_dir << " is missing: install Debian's fortunes package (the README's apt-get line does)");
  const auto t = pt::Tokenizer::open(write_tokenizer_json(true, nullptr, "fortunes"));
  const std::vector<std::string> records = pft::fortunes();
  CHECK(records.size() == 15221);
  check_texts(t, records, pft::lines_of(fixture_dir + "/fortunes.hashes"), 0, true);
}

TEST_CASE("BERT's tokenizer parts refuse what they cannot run", "[tokenizers][bert][errors]") {
  const std::string dir = pft::process_temp_path("bert_tokenizer", "bad");
  fs::create_directories(dir);
  const auto fails = [&](const std::string& json, const std::string& message) {
    INFO(json);
    std::ofstream(dir + "/tokenizer.json") << json;
    CHECK_THROWS_WITH(pt::Tokenizer::open(dir + "/tokenizer.json"), Catch::Contains(message));
  };
  const std::string model = R"("model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 1, "##b": 2}})";
  const std::string pre = R"("pre_tokenizer": {"type": "BertPreTokenizer"})";
  std::ofstream(dir + "/tokenizer.json") << "{" + pre + ", " + model + "}";  // the control case: fine
  CHECK(pt::Tokenizer::open(dir + "/tokenizer.json").encode("ab a c") == std::vector<int>{1, 2, 1, 0});
  fails(R"({"pre_tokenizer": {"type": "CharDelimiterSplit", "delimiter": "x"}, )" + model + "}",
        "expected a BertPreTokenizer, Whitespace, WhitespaceSplit, Punctuation, Digits or a Sequence of them");
  fails("{" + pre + R"(, "normalizer": {"type": "Nmt"}, )" + model + "}", "normalizer is {\"type\":\"Nmt\"}");
  fails("{" + pre + R"(, "normalizer": {"type": "BertNormalizer", "lowercase": "yes"}, )" + model + "}",
        "normalizer.lowercase is \"yes\", expected true or false");
  fails("{" + pre + R"(, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[X]"}}, )"
                    R"({"Sequence": {"id": "A"}}]}, )" + model + "}",
        "the special token '[X]', which post_processor.special_tokens does not list");
  fails("{" + pre + R"(, "post_processor": {"type": "TemplateProcessing", "single": []}, )" + model + "}",
        "post_processor.single is a template holding A 0 and B 0 times");
  fails("{" + pre + R"(, "added_tokens": [{"id": 0, "content": "[UNK]", "normalized": true}], "normalizer": )"
                    R"({"type": "BertNormalizer"}, )" + model + "}",
        "added_tokens[0].normalized is true, expected false with a normalizer");
  fails("{" + pre + R"(, "model": {"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "<unk>"}})",
        "the unknown token '<unk>' is not in the vocabulary");
  std::ofstream(dir + "/vocab.txt") << "[UNK]\na\n";
  fs::remove(dir + "/tokenizer.json");
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir), Catch::Contains("vocab.txt: the vocabulary lacks [CLS] or [SEP]"));
  const auto t = pt::Tokenizer::open(fixture_dir + "/vocab.txt");
  CHECK_THROWS_WITH(t.encode("caf\xC3"), Catch::Contains("not valid UTF-8 at byte 3"));
  CHECK(t.encode(std::string(101, 'a'), false) == std::vector<int>{t.token_to_id("[UNK]")});  // over 100 characters
}
