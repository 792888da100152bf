// The Unigram tokenizer of T5-style directories (tokenizers/unigram.hpp through tokenizers/tokenizer.hpp: Viterbi
// over the pieces' scores, unknown characters fused into <unk>, the Metaspace pre-tokenizer and decoder, </s> after
// a sequence), against the Hugging Face tokenizers library: tests/tokenizers/t5_model.py trained the model with
// python3-sentencepiece on Debian's fortunes and converted it to a tokenizer.json; t5_fixtures.js wrote the
// oracle's ids and decodings (in full for the hand-written cases, as a count and a hash for the rest) for 46
// hand-written cases, 3,000 seeded random strings and the 15,221 fortune records, and SentencePiece's own ids for
// the spiece.model (run by the SentencePiece library when polyformer was built with it). Then byte fallback on a
// vocabulary small enough to work out by hand, and the files it refuses.

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

const std::string fixture_dir = POLYFORMER_T5_TOKENIZER_DIR;

/// One row of a .hashes file: the oracle's ids (count, hash), its decoding's hash, SentencePiece's ids.
struct Expected {
  std::string ids, decoded, sentencepiece_ids;
};

std::vector<Expected> read_hashes(const std::string& path) {
  std::vector<Expected> rows;
  for (const std::string& line : pft::lines_of(path)) {
    std::istringstream in(line);
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    REQUIRE((f.size() == 4 || f.size() == 5));
    rows.push_back({f[0] + " " + f[1], f[2], f[3] == "=" ? f[0] + " " + f[1] : f[3] + " " + f.at(4)});
  }
  return rows;
}

void check_texts(const pt::Tokenizer& t, bool sentencepiece, const std::vector<std::string>& texts,
                 const std::vector<Expected>& want) {
  REQUIRE(texts.size() == want.size());
  std::size_t wrong = 0, wrong_decoded = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int> ids = t.encode(texts[i]);
    if (pft::count_and_hash(ids) != (sentencepiece ? want[i].sentencepiece_ids : want[i].ids) && ++wrong <= 5)
      UNSCOPED_INFO("text " << i << " " << nlohmann::json(texts[i]).dump() << ": ids " << pft::joined(ids));
    if (sentencepiece) continue;
    const std::string decoded = t.decode(ids);
    if (pft::fnv_hash(decoded) != want[i].decoded && ++wrong_decoded <= 5)
      UNSCOPED_INFO("text " << i << " decodes as " << nlohmann::json(decoded).dump());
  }
  CHECK(wrong == 0);
  CHECK(wrong_decoded == 0);
}

void require_fixtures() {
  if (!fs::exists(fixture_dir + "/tokenizer.json"))
    FAIL("no T5 tokenizer fixtures in " << fixture_dir << " (tests/tokenizers/t5.tar.xz unpacks at configure time)");
}

}  // namespace

TEST_CASE("A Unigram tokenizer.json equals Hugging Face tokenizers on edge cases, random text and fortunes",
          "[tokenizers][t5]") {
  require_fixtures();
  const auto t = pt::Tokenizer::open(fixture_dir + "/tokenizer.json");
  CHECK(t.vocab_size() == 4000);
  REQUIRE(t.unigram() != nullptr);
  const std::vector<std::string> texts = pft::fixture_texts(fixture_dir);
  pft::check_edge_cases(t, texts, fixture_dir);
  check_texts(t, false, texts, read_hashes(fixture_dir + "/extra.hashes"));
  if (!fs::is_directory(pft::fortunes_dir))
    FAIL(pft::fortunes_dir << " is missing: install Debian's fortunes package (the README's apt-get line does)");
  check_texts(t, false, pft::fortunes(), read_hashes(fixture_dir + "/fortunes.hashes"));
  CHECK(t.encode("Hi").back() == 1);  // </s>
}

TEST_CASE("A SentencePiece Unigram model file runs through the SentencePiece library", "[tokenizers][t5][sentencepiece]") {
  require_fixtures();
#if defined(POLYFORMER_HAVE_SENTENCEPIECE)
  // A T5 directory: tokenizer_config.json says T5Tokenizer, so </s> ends a sequence.
  const std::string dir = pft::process_temp_path("t5_tokenizer", "spiece");
  fs::create_directories(dir);
  fs::copy_file(fixture_dir + "/spiece.model", dir + "/spiece.model", fs::copy_options::overwrite_existing);
  std::ofstream(dir + "/tokenizer_config.json") << R"({"tokenizer_class": "T5Tokenizer"})";
  const auto sp = pt::Tokenizer::open(dir);
  check_texts(sp, true, pft::fixture_texts(fixture_dir), read_hashes(fixture_dir + "/extra.hashes"));
#else
  WARN("built without the SentencePiece library: spiece.model is refused (checked in the Llama tokenizer's tests)");
#endif
}

TEST_CASE("Unigram byte fallback, fused unknowns and refusals, worked out by hand", "[tokenizers][t5][errors]") {
  const std::string dir = pft::process_temp_path("t5_tokenizer", "small");
  fs::create_directories(dir);
  const auto open = [&](const std::string& model) {
    std::ofstream(dir + "/tokenizer.json") << R"({"pre_tokenizer": null, "model": )" + model + "}";
    return pt::Tokenizer::open(dir + "/tokenizer.json");
  };
  const std::string vocab =
      R"([["<unk>", 0.0], ["a", -1.0], ["b", -2.0], ["ab", -2.5], ["<0xC3>", -5.0], ["<0xA9>", -5.0], ["abab", -6.0]])";
  const auto plain = open(R"({"type": "Unigram", "unk_id": 0, "vocab": )" + vocab + "}");
  CHECK(plain.encode("ab") == std::vector<int>{3});        // ab (−2.5) beats a + b (−3)
  CHECK(plain.encode("abab") == std::vector<int>{3, 3});   // ab + ab (−5) beats abab (−6)
  CHECK(plain.encode("a\xC3\xA9\xC3\xA9" "b") == std::vector<int>{1, 0, 2});  // é é: one fused <unk>
  CHECK(plain.decode(plain.encode("ab")) == "ab");
  const auto bytes = open(R"({"type": "Unigram", "unk_id": 0, "byte_fallback": true, "vocab": )" + vocab + "}");
  CHECK(bytes.encode("a\xC3\xA9\xC3\xA9") == std::vector<int>{1, 4, 5, 4, 5});
  CHECK(bytes.encode("\xC3\xA8") == std::vector<int>{0});  // è: 0xA8 has no byte token, so <unk>
  const auto no_unk = open(R"({"type": "Unigram", "vocab": )" + vocab + "}");
  CHECK_THROWS_WITH(no_unk.encode("x"), Catch::Contains("'x' has no piece and the Unigram model no unk_id"));
  const auto fails = [&](const std::string& model, const std::string& message) {
    INFO(model);
    CHECK_THROWS_WITH(open(model), Catch::Contains(message));
  };
  fails(R"({"type": "Unigram", "unk_id": 9, "vocab": [["a", 0.0]]})", "unk_id is 9, expected below the vocabulary's 1");
  fails(R"({"type": "Unigram", "vocab": [["a", 0.0], ["a", -1.0]]})", "the piece 'a' is listed twice (ids 0 and 1)");
  fails(R"({"type": "Unigram", "vocab": [["a"]]})", "model.vocab[0] is [\"a\"], expected [piece, score]");
  std::ofstream(dir + "/tokenizer.json") << R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "Unigram", "vocab": [["a", 0.0]]}})";
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir + "/tokenizer.json"), Catch::Contains("expected null or a Metaspace one (the Unigram model's)"));
}
