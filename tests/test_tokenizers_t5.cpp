// The Unigram tokenizer of T5-style directories (tokenizers/unigram.hpp through tokenizers/tokenizer.hpp: Viterbi
// over the pieces' scores, unknown characters fused into <unk>, the Metaspace pre-tokenizer and decoder, </s> after
// a sequence), against the Hugging Face tokenizers library: tests/tokenizers/t5_model.py trained the model with
// python3-sentencepiece on Debian's fortunes and converted it to a tokenizer.json; t5_fixtures.js wrote the
// oracle's ids and decodings (in full for the hand-written cases, as a count and a hash for the rest) for 47
// hand-written cases, 3,000 seeded random strings and the 15,221 fortune records, and SentencePiece's own ids for
// the spiece.model (run by the SentencePiece library when polyformer was built with it). The same for a model
// trained with T5's own normalization (nmt_nfkc: a Precompiled character map, tokenizers/precompiled.hpp, run over
// grapheme clusters) in the two tokenizer.json layouts T5 directories carry. Then byte fallback on a vocabulary
// small enough to work out by hand, and the files it refuses.

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/tokenizers/tokenizer.hpp"
#include "tokenizer_testing.hpp"

namespace pt = polyformer::tokenizers;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

const std::string fixture_dir = POLYFORMER_T5_TOKENIZER_DIR;

/// One row of a .hashes file: the oracle's ids (count, hash), its decoding's hash, (the _nfkc files) the oracle's ids
/// by the converter's layout, SentencePiece's ids.
struct Expected {
  std::string ids, decoded, converted_ids, sentencepiece_ids;
};

/// Which ids a run is checked against.
enum class Column { oracle, converted, sentencepiece };

std::vector<Expected> read_hashes(const std::string& path, bool converted_column = false) {
  std::vector<Expected> rows;
  for (const std::string& line : pft::lines_of(path)) {
    std::istringstream in(line);
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    Expected e{f.at(0) + " " + f.at(1), f.at(2), "", ""};
    std::size_t at = 3;
    const auto column = [&] {  // "=" (the oracle's ids) or a count and a hash
      if (f.at(at) == "=") return ++at, e.ids;
      at += 2;
      return f.at(at - 2) + " " + f.at(at - 1);
    };
    if (converted_column) e.converted_ids = column();
    e.sentencepiece_ids = column();
    REQUIRE(at == f.size());
    rows.push_back(std::move(e));
  }
  return rows;
}

void check_texts(const pt::Tokenizer& t, Column column, const std::vector<std::string>& texts,
                 const std::vector<Expected>& want) {
  REQUIRE(texts.size() == want.size());
  std::size_t wrong = 0, wrong_decoded = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int> ids = t.encode(texts[i]);
    const std::string& expected = column == Column::oracle      ? want[i].ids
                                  : column == Column::converted ? want[i].converted_ids
                                                                : want[i].sentencepiece_ids;
    if (pft::count_and_hash(ids) != expected && ++wrong <= 5)
      UNSCOPED_INFO("text " << i << " " << nlohmann::json(texts[i]).dump() << ": ids " << pft::joined(ids));
    if (column != Column::oracle) continue;
    const std::string decoded = t.decode(ids);
    if (pft::fnv_hash(decoded) != want[i].decoded && ++wrong_decoded <= 5)
      UNSCOPED_INFO("text " << i << " decodes as " << nlohmann::json(decoded).dump());
  }
  CHECK(wrong == 0);
  CHECK(wrong_decoded == 0);
}

void require_fixtures() {
  if (!fs::exists(fixture_dir + "/tokenizer.json"))
    FAIL("no T5 tokenizer fixtures in " << fixture_dir << " (tests/tokenizers/t5*.tar.xz unpack at configure time)");
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
  check_texts(t, Column::oracle, texts, read_hashes(fixture_dir + "/extra.hashes"));
  if (!fs::is_directory(pft::fortunes_dir))
    FAIL(pft::fortunes_dir << " is missing: install Debian's fortunes package (the README's apt-get line does)");
  check_texts(t, Column::oracle, pft::fortunes(), read_hashes(fixture_dir + "/fortunes.hashes"));
  CHECK(t.encode("Hi").back() == 1);  // </s>
}

TEST_CASE("T5's normalization (a Precompiled charsmap, nmt_nfkc) in both tokenizer.json layouts equals Hugging Face "
          "tokenizers", "[tokenizers][t5][precompiled]") {
  require_fixtures();
  const std::vector<std::string> texts = pft::fixture_texts(fixture_dir);
  const std::vector<Expected> extra = read_hashes(fixture_dir + "/extra_nfkc.hashes", true);
  if (!fs::is_directory(pft::fortunes_dir))
    FAIL(pft::fortunes_dir << " is missing: install Debian's fortunes package (the README's apt-get line does)");
  const std::vector<Expected> fortunes = read_hashes(fixture_dir + "/fortunes_nfkc.hashes", true);
  // The Hub's T5 files: Precompiled, then WhitespaceSplit and Metaspace (add_prefix_space).
  const auto hub = pt::Tokenizer::open(fixture_dir + "/tokenizer_nfkc_hub.json");
  pft::check_edge_cases(hub, texts, fixture_dir, "edge_nfkc.ids");
  check_texts(hub, Column::oracle, texts, extra);
  check_texts(hub, Column::oracle, pft::fortunes(), fortunes);
  // transformers' converter today: Precompiled, Strip (right), runs of 2+ spaces as U+2581, then Metaspace.
  const auto converted = pt::Tokenizer::open(fixture_dir + "/tokenizer_nfkc.json");
  check_texts(converted, Column::converted, texts, extra);
  check_texts(converted, Column::converted, pft::fortunes(), fortunes);
  // Compatibility forms: full-width letters, a circled digit, a ligature, half-width katakana, no-break and
  // ideographic spaces all become their plain forms.
  CHECK(hub.decode(hub.encode("ＡＢＣ ①"), true) == hub.decode(hub.encode("ABC 1"), true));
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
  check_texts(sp, Column::sentencepiece, pft::fixture_texts(fixture_dir), read_hashes(fixture_dir + "/extra.hashes"));
  // T5Tokenizer's 100 sentinels after the 4,000 pieces, <extra_id_0> last (transformers: vocab_size - 1 - i),
  // matched in text as special tokens and left out of decoding with skip_special_tokens.
  CHECK(sp.vocab_size() == 4100);
  CHECK(sp.token_to_id("<extra_id_0>") == 4099);
  CHECK(sp.token_to_id("<extra_id_99>") == 4000);
  const std::vector<int> ids = sp.encode("a<extra_id_0>b<extra_id_17>");
  CHECK(std::count(ids.begin(), ids.end(), 4099) == 1);
  CHECK(std::count(ids.begin(), ids.end(), 4082) == 1);
  CHECK(sp.decode(ids, /*skip_special_tokens=*/false) == "a<extra_id_0>b<extra_id_17></s>");
  CHECK(sp.decode(ids, /*skip_special_tokens=*/true) == "ab");
  std::ofstream(dir + "/tokenizer_config.json") << R"({"tokenizer_class": "T5Tokenizer", "extra_ids": 3})";
  CHECK(pt::Tokenizer::open(dir).vocab_size() == 4003);
  std::ofstream(dir + "/tokenizer_config.json") << R"({"tokenizer_class": "T5Tokenizer", "extra_ids": -3})";
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir), Catch::Contains("tokenizer_config.json: extra_ids is -3, expected a count"));
  std::ofstream(dir + "/tokenizer_config.json") << R"({"tokenizer_class": "T5Tokenizer"})";
  // T5's own normalization (nmt_nfkc) in the SentencePiece library.
  fs::copy_file(fixture_dir + "/spiece_nfkc.model", dir + "/spiece.model", fs::copy_options::overwrite_existing);
  const auto nfkc = pt::Tokenizer::open(dir);
  check_texts(nfkc, Column::sentencepiece, pft::fixture_texts(fixture_dir),
              read_hashes(fixture_dir + "/extra_nfkc.hashes", true));
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
  CHECK_THROWS_WITH(pt::Tokenizer::open(dir + "/tokenizer.json"), Catch::Contains("expected null, a Metaspace, a Sequence [WhitespaceSplit, Metaspace], or Whitespace, "
                                   "WhitespaceSplit, Punctuation, Digits, BertPreTokenizer or a Sequence of them (the "
                                   "Unigram model"));
}

TEST_CASE("Unigram scores are read as the tokenizers library reads them (serde_json), ties and all",
          "[tokenizers][t5]") {
  // serde_json gathers 9833489418029785 (over 2^53) into a double, then divides by 10^15: one ulp from the
  // correctly rounded -9.8334894180297852.
  CHECK(*pt::detail::serde_json_f64("-9.833489418029785") == -9.8334894180297834);
  CHECK(*pt::detail::serde_json_f64("-4.421453952789307") == -4.4214539527893066);
  CHECK(*pt::detail::serde_json_f64("2.5e3") == 2500.0);
  CHECK(*pt::detail::serde_json_f64("1234567890123456789012") == 1234567890123456789012.0);
  for (const char* bad : {"", "-", "01", "1.", ".5", "1e", "1x", "1e400"}) CHECK_FALSE(pt::detail::serde_json_f64(bad));
  // The pieces of the nmt_nfkc fixture's "▁--", "-", "--", "---": with the scores as written, a-- + 7 dashes has
  // two segmentations of exactly equal score; with serde_json's "---" one ulp lower, the library chooses
  // a-- --- --- - (recorded from npm tokenizers 0.23.2).
  const std::string dir = pft::process_temp_path("t5_tokenizer", "serde");
  fs::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json")
      << R"({"pre_tokenizer": null, "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0],
         ["a--", -4.421453952789307], ["-", -5.485395908355713], ["--", -9.0900239944458],
         ["---", -9.833489418029785]]}})";
  const auto t = pt::Tokenizer::open(dir + "/tokenizer.json");
  CHECK(t.encode("a---------") == std::vector<int>{1, 4, 4, 2});
  CHECK(t.encode("a------") == std::vector<int>{1, 2, 4});
  CHECK(t.encode("a-------") == std::vector<int>{1, 3, 4});
}

TEST_CASE("Precompiled charsmaps, Strip and runs of spaces: malformed and unsupported ones refused, random ones safe",
          "[tokenizers][t5][precompiled][errors]") {
  const std::string dir = pft::process_temp_path("t5_tokenizer", "precompiled");
  fs::create_directories(dir);
  const auto open = [&](const std::string& normalizer) {
    std::ofstream(dir + "/tokenizer.json") << R"({"normalizer": )" + normalizer +
                                                  R"(, "pre_tokenizer": null, "model": {"type": "Unigram", "unk_id": 0,
                                                  "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -1.0], ["_", -1.0]]}})";
    return pt::Tokenizer::open(dir + "/tokenizer.json");
  };
  const auto fails = [&](const std::string& normalizer, const std::string& message) {
    INFO(normalizer);
    CHECK_THROWS_WITH(open(normalizer), Catch::Contains(message));
  };
  const auto charsmap = [](const std::string& base64) {
    return R"({"type": "Precompiled", "precompiled_charsmap": ")" + base64 + "\"}";
  };
  fails(charsmap("AAE"), "the charsmap has 2 bytes, expected at least 4");
  fails(charsmap("BQAAAAAAAAAA"), "the charsmap's trie is 5 bytes, expected a multiple of 4 from 4 to 5");
  fails(charsmap("CAAAAAAAAAA="), "the charsmap's trie is 8 bytes, expected a multiple of 4 from 4 to 4");
  fails(charsmap("BAAAAAAAAAD/"), "precompiled_charsmap: the text is not valid UTF-8");
  fails(charsmap("BAAAAAAA*AAA"), "character 8 of the base64 text is not base64");
  fails(R"({"type": "Precompiled"})", "normalizer.precompiled_charsmap");
  fails(R"({"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "})", "a run of one character");
  fails(R"({"type": "Replace", "pattern": {"Regex": "a{0,}"}, "content": " "})", "a run of one character");
  fails(R"({"type": "Replace", "pattern": {"Regex": ".{2,}"}, "content": " "})", "a run of one character");
  fails(R"({"type": "Strip", "strip_left": 1, "strip_right": true})", "normalizer.strip_left");
  fails(R"({"type": "ByteLevel"})", "expected null, a BertNormalizer, Prepend, Replace, Strip, Precompiled, NFD, NFKD, "
                                    "NFC, NFKC, Lowercase, StripAccents or a Sequence");
  // A run of 2+ spaces becomes "_", a single one stays (and is no piece: <unk>); Strip both sides.
  const auto runs = open(R"({"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": true, "strip_right":
                            true}, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "_"}]})");
  CHECK(runs.encode(" \t a  b   a b\u3000\n") == std::vector<int>{1, 3, 2, 3, 1, 0, 2});
  // A trie of random units: lookups stay inside it (ASan runs this suite), whatever they find.
  std::uint32_t state = 12345;
  const auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return state;
  };
  for (int trial = 0; trial < 20; ++trial) {
    std::string bytes(4, '\0');
    const std::uint32_t units = 1 + next() % 64;
    for (int b = 0; b < 4; ++b) bytes[std::size_t(b)] = static_cast<char>(((units * 4) >> (8 * b)) & 0xFF);
    for (std::uint32_t u = 0; u < units * 4; ++u) bytes += static_cast<char>(next() >> 24);
    bytes += "x\0yz"s;
    const pt::Precompiled p(bytes, "random");
    for (const char* text : {"abc", "\xC3\xA9t\xC3\xA9", "\xEF\xBD\xB6\xEF\xBE\x9E", "\r\n\x01", "\xF0\x9F\x91\x8B"})
      CHECK_NOTHROW(p.normalize(text, "random"));
  }
}
