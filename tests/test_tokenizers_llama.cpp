// The SentencePiece-style BPE tokenizer of Llama directories (tokenizers/tokenizer.hpp: a BPE model over characters
// with byte fallback and <unk>, the legacy normalizers Prepend and Replace or the Metaspace pre-tokenizer, and their
// decoders), against the Hugging Face tokenizers library: tests/tokenizers/llama_model.py trained the model with
// python3-sentencepiece on Debian's fortunes and converted it to a tokenizer.json; llama_fixtures.js wrote the
// oracle's ids and decodings (in full for the hand-written edge cases, as a count and a hash for the rest) for 41
// edge cases, 3,000 seeded random strings over every Unicode plane and the 15,221 fortune records, for the legacy
// and the Metaspace pipelines, and SentencePiece's own ids for the spiece.model (run by the SentencePiece library
// when polyformer was built with it). Then the files it refuses.

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/tokenizers/tokenizer.hpp"
#include "tokenizer_testing.hpp"

namespace pt = polyformer::tokenizers;
namespace fs = std::filesystem;

namespace {

const std::string fixture_dir = POLYFORMER_LLAMA_TOKENIZER_DIR;

/// One row of a .hashes file: the legacy pipeline's ids (count, hash) and decoding hash, the Metaspace pipeline's
/// (each "=" when equal to the legacy one's) and SentencePiece's ids ("=" likewise).
struct Expected {
  std::string legacy_ids, legacy_decoded, metaspace_ids, metaspace_decoded, sentencepiece_ids;
};

std::vector<Expected> read_hashes(const std::string& path) {
  std::vector<Expected> rows;
  for (const std::string& line : pft::lines_of(path)) {
    std::istringstream in(line);
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    std::size_t at = 0;
    const auto ids = [&] {
      if (f.at(at) == "=") return f.at(at++);
      at += 2;
      return f.at(at - 2) + " " + f.at(at - 1);
    };
    Expected e;
    e.legacy_ids = ids();
    e.legacy_decoded = f.at(at++);
    e.metaspace_ids = ids();
    e.metaspace_decoded = f.at(at++);
    e.sentencepiece_ids = ids();
    if (e.metaspace_ids == "=") e.metaspace_ids = e.legacy_ids;
    if (e.metaspace_decoded == "=") e.metaspace_decoded = e.legacy_decoded;
    if (e.sentencepiece_ids == "=") e.sentencepiece_ids = e.legacy_ids;
    rows.push_back(e);
  }
  return rows;
}

enum class Pipeline { legacy, metaspace, sentencepiece };

/// Each text's ids and (but for SentencePiece) decoding against the oracle's.
void check_texts(const pt::Tokenizer& t, Pipeline which, const std::vector<std::string>& texts,
                 const std::vector<Expected>& want) {
  REQUIRE(texts.size() == want.size());
  std::size_t wrong = 0, wrong_decoded = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int> ids = t.encode(texts[i]);
    const std::string& expected_ids = which == Pipeline::legacy      ? want[i].legacy_ids
                                      : which == Pipeline::metaspace ? want[i].metaspace_ids
                                                                     : want[i].sentencepiece_ids;
    if (pft::count_and_hash(ids) != expected_ids && ++wrong <= 5)
      UNSCOPED_INFO("text " << i << " " << nlohmann::json(texts[i]).dump() << ": ids " << pft::joined(ids));
    if (which == Pipeline::sentencepiece) continue;
    const std::string decoded = t.decode(ids);
    if (pft::fnv_hash(decoded) != (which == Pipeline::legacy ? want[i].legacy_decoded : want[i].metaspace_decoded) &&
        ++wrong_decoded <= 5)
      UNSCOPED_INFO("text " << i << " decodes as " << nlohmann::json(decoded).dump());
  }
  CHECK(wrong == 0);
  CHECK(wrong_decoded == 0);
}

/// The Metaspace variant of the fixture's tokenizer.json, as llama_fixtures.js derived it.
std::string write_metaspace_json() {
  nlohmann::json j = nlohmann::json::parse(pft::read_text(fixture_dir + "/tokenizer.json"));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", true}};
  const std::string path = pft::process_temp_path("llama_tokenizer", "metaspace.json");
  std::ofstream(path) << j.dump();
  return path;
}

void require_fixtures() {
  if (!fs::exists(fixture_dir + "/tokenizer.json"))
    FAIL("no Llama tokenizer fixtures in " << fixture_dir << " (tests/tokenizers/llama.tar.xz unpacks at configure time)");
}

}  // namespace

TEST_CASE("Llama's tokenizer.json equals Hugging Face tokenizers on edge cases and random text", "[tokenizers][llama]") {
  require_fixtures();
  const auto legacy = pt::Tokenizer::open(fixture_dir + "/tokenizer.json");
  CHECK(legacy.vocab_size() == 6000);
  REQUIRE(legacy.bpe() != nullptr);
  const std::vector<std::string> texts = pft::fixture_texts(fixture_dir);
  pft::check_edge_cases(legacy, texts, fixture_dir);
  const std::vector<Expected> want = read_hashes(fixture_dir + "/extra.hashes");
  check_texts(legacy, Pipeline::legacy, texts, want);
  check_texts(pt::Tokenizer::open(write_metaspace_json()), Pipeline::metaspace, texts, want);

  // Byte fallback: a character outside the vocabulary as its UTF-8 bytes' tokens (<0xXX> is id 3 + byte), and
  // back; special tokens in the text; a lone byte token decodes as U+FFFD.
  CHECK(legacy.token_to_id("<0x41>") == 3 + 0x41);
  const std::vector<int> emoji = legacy.encode("\xF0\x9F\xA6\x99", /*add_special_tokens=*/false);  // 🦙
  CHECK(emoji == std::vector<int>{legacy.token_to_id("\xE2\x96\x81"), 3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x99});
  CHECK(legacy.decode(emoji) == "\xF0\x9F\xA6\x99");
  CHECK(legacy.decode(std::vector<int>{3 + 0xF0, 3 + 0x9F}) == "\xEF\xBF\xBD\xEF\xBF\xBD");
  const std::vector<int> with_eos = legacy.encode("Hi</s>");
  CHECK(with_eos.front() == 1);
  CHECK(with_eos.back() == 2);
  CHECK(legacy.decode(with_eos, /*skip_special_tokens=*/true) == "Hi");
}

TEST_CASE("Llama's tokenizer.json equals Hugging Face tokenizers on every fortune", "[tokenizers][llama]") {
  require_fixtures();
  if (!fs::is_directory(pft::fortunes_dir))
    FAIL(pft::fortunes_dir << " is missing: install Debian's fortunes package (the README's apt-get line does)");
  const std::vector<std::string> records = pft::fortunes();
  const std::vector<Expected> want = read_hashes(fixture_dir + "/fortunes.hashes");
  check_texts(pt::Tokenizer::open(fixture_dir + "/tokenizer.json"), Pipeline::legacy, records, want);
  check_texts(pt::Tokenizer::open(write_metaspace_json()), Pipeline::metaspace, records, want);
}

TEST_CASE("A long text is one word to SentencePiece-style BPE and merges in n log n", "[tokenizers][llama]") {
  require_fixtures();
  // The fixture's model without normalizer or post-processor: a text is one word of characters. Records joined by a
  // character outside the vocabulary (its byte tokens never merge) must encode as the records one by one: the
  // long word goes through the heap merge, each short record through the scan.
  nlohmann::json j = nlohmann::json::parse(pft::read_text(fixture_dir + "/tokenizer.json"));
  j["normalizer"] = nullptr;
  j["post_processor"] = nullptr;
  const std::string path = pft::process_temp_path("llama_tokenizer", "bare.json");
  std::ofstream(path) << j.dump();
  const auto t = pt::Tokenizer::open(path);
  const std::vector<std::string> records = pft::fortunes();
  const std::string separator = "\xF0\x9F\xA6\x99";  // 🦙, not in the vocabulary
  std::string joined;
  std::vector<int> expected;
  for (std::size_t i = 0; i < 300; ++i) {
    joined += records[i];
    joined += separator;
    const std::vector<int> ids = t.encode(records[i]);
    expected.insert(expected.end(), ids.begin(), ids.end());
    for (const unsigned char b : separator) expected.push_back(3 + b);
  }
  const std::vector<int> ids = t.encode(joined);
  CHECK(joined.size() > 20000);
  CHECK(ids == expected);
}

TEST_CASE("A SentencePiece model file runs through the SentencePiece library", "[tokenizers][llama][sentencepiece]") {
  require_fixtures();
#if defined(POLYFORMER_HAVE_SENTENCEPIECE)
  const auto sp = pt::Tokenizer::open(fixture_dir + "/spiece.model");
  CHECK(sp.vocab_size() == 6000);
  CHECK(sp.token_to_id("</s>") == 2);
  const std::vector<std::string> texts = pft::fixture_texts(fixture_dir);
  check_texts(sp, Pipeline::sentencepiece, texts, read_hashes(fixture_dir + "/extra.hashes"));
  const std::vector<int> ids = sp.encode("Hello world");
  CHECK(ids.front() == 1);
  CHECK(sp.decode(ids, /*skip_special_tokens=*/true) == "Hello world");
  // A directory with only the model: <s> first (Llama); with tokenizer_config.json saying T5Tokenizer: </s> last.
  const std::string dir = pft::process_temp_path("llama_tokenizer", "spiece");
  fs::create_directories(dir);
  fs::copy_file(fixture_dir + "/spiece.model", dir + "/spiece.model", fs::copy_options::overwrite_existing);
  CHECK(pt::Tokenizer::open(dir).encode("Hi").front() == 1);
  std::ofstream(dir + "/tokenizer_config.json") << R"({"tokenizer_class": "T5Tokenizer"})";
  const std::vector<int> t5 = pt::Tokenizer::open(dir).encode("Hi");
  CHECK(t5.front() != 1);
  CHECK(t5.back() == 2);
  std::ofstream(dir + "/broken.model") << "not a model";
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir + "/broken.model"), Catch::Contains("broken.model: not a SentencePiece model"));
#else
  WARN("built without the SentencePiece library: spiece.model is refused, which is what this checks");
  CHECK_THROWS_WITH(pt::Tokenizer::open(fixture_dir + "/spiece.model"),
                    Catch::Contains("polyformer was built without the SentencePiece library"));
#endif
}

TEST_CASE("SentencePiece-style tokenizer.json settings it cannot run are refused by name", "[tokenizers][llama][errors]") {
  const std::string dir = pft::process_temp_path("llama_tokenizer", "bad");
  fs::create_directories(dir);
  const auto open = [&](const std::string& json) {
    std::ofstream(dir + "/tokenizer.json") << json;
    return pt::Tokenizer::open(dir + "/tokenizer.json");
  };
  const auto fails = [&](const std::string& json, const std::string& message) {
    INFO(json);
    CHECK_THROWS_WITH(open(json), Catch::Contains(message));
  };
  const std::string model =
      R"("model": {"type": "BPE", "vocab": {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "▁": 4}, "merges": ["a b"], "unk_token": "<unk>", "fuse_unk": true})";
  // The control case: unknown characters fuse into one <unk>; Prepend and Replace; no pre-tokenizer.
  const auto ok = open(R"({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}, "pre_tokenizer": null, )" + model + "}");
  CHECK(ok.encode("ab xyb") == std::vector<int>{4, 3, 4, 0, 2});
  fails(R"({"normalizer": {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": "▁"}, )" + model + "}",
        R"(normalizer.pattern is {"Regex":"\\s+"}, expected {"String": …})");
  fails(R"({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Nmt"}]}, )" + model + "}",
        R"(normalizer.normalizers[1] is {"type":"Nmt"})");
  fails(R"({"pre_tokenizer": {"type": "Metaspace", "replacement": "ab"}, )" + model + "}",
        "pre_tokenizer.replacement is 'ab', expected one character");
  fails(R"({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "sometimes"}, )" + model + "}",
        "pre_tokenizer.prepend_scheme is \"sometimes\", expected \"always\", \"first\" or \"never\"");
  fails(R"({"decoder": {"type": "Sequence", "decoders": [{"type": "ByteLevel"}, {"type": "Fuse"}]}, )" + model + "}",
        "decoder.decoders[0] is {\"type\":\"ByteLevel\"}, expected ByteLevel and WordPiece only as the last decoder");
  fails(R"({"decoder": {"type": "Sequence", "decoders": [{"type": "Strip", "content": " ", "start": -1, "stop": 0}]}, )" +
            model + "}",
        "decoder.decoders[0].start is missing or not a count");
  fails(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}})",
        "the unknown token '<unk>' is not in the vocabulary");
  fails(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": "yes"}})",
        "model.byte_fallback is \"yes\", expected true or false");
  CHECK_THROWS_WITH(open(R"({"pre_tokenizer": null, )" + model + "}").encode("a\xC3("),
                    Catch::Contains("Tokenizer::encode: the text is not valid UTF-8 at byte 1 (0xC3)"));
}

TEST_CASE("BPE's ignore_merges takes a word the vocabulary holds whole, on every path", "[tokenizers][bpe]") {
  // Expected ids: npm tokenizers 0.23.2 on the same tokenizer.json. "abc" is in the vocabulary, but the only merge
  // ("b c") makes a + bc of it.
  const auto tokenizer = [](const nlohmann::json& pre, const nlohmann::json& vocab, const nlohmann::json& merges,
                            bool ignore) {
    const nlohmann::json j = {{"version", "1.0"}, {"pre_tokenizer", pre},
                              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"ignore_merges", ignore}}}};
    return pt::Tokenizer::from_json(j.dump(), "ignore_merges.json");
  };
  using Ids = std::vector<std::vector<int>>;
  const auto ids = [](const pt::Tokenizer& t) {
    Ids out;
    for (const char* text : {"abc", "abc abc", "ab", "bc", "ab c"}) out.push_back(t.encode(text, false));
    return out;
  };
  const nlohmann::json chars = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {" ", 6}, {"ab c", 7}};
  const nlohmann::json whitespace = {{"type", "Whitespace"}};
  CHECK(ids(tokenizer(nullptr, chars, {"b c"}, false)) == Ids{{0, 4}, {0, 4, 6, 0, 4}, {0, 1}, {4}, {0, 1, 6, 2}});
  CHECK(ids(tokenizer(nullptr, chars, {"b c"}, true)) == Ids{{5}, {0, 4, 6, 0, 4}, {3}, {4}, {7}});
  CHECK(ids(tokenizer(whitespace, chars, {"b c"}, false)) == Ids{{0, 4}, {0, 4, 0, 4}, {0, 1}, {4}, {0, 1, 2}});
  CHECK(ids(tokenizer(whitespace, chars, {"b c"}, true)) == Ids{{5}, {5, 5}, {3}, {4}, {3, 2}});
  const nlohmann::json bytes = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5},
                                {"\u0120", 6}, {"\u0120abc", 7}, {"\u0120a", 8}};
  const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  CHECK(ids(tokenizer(byte_level, bytes, {"b c", "\u0120 a"}, false)) == Ids{{0, 4}, {0, 4, 8, 4}, {0, 1}, {4}, {0, 1, 6, 2}});
  CHECK(ids(tokenizer(byte_level, bytes, {"b c", "\u0120 a"}, true)) == Ids{{5}, {5, 7}, {3}, {4}, {3, 6, 2}});
}
