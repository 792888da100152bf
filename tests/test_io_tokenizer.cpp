// Tests for polyformer/io/tokenizer.hpp: tok512.bin against a reader written here and the golden run.c
// prompt ids, decoding back to the exact text, byte fallback, a hand-made vocabulary that pins down the
// merge order, run.c's printable filter, and one test per kind of malformed file.
#include "polyformer/io/tokenizer.hpp"

#include <catch2/catch.hpp>

#include <bit>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "support.hpp"

namespace pf = polyformer;

namespace {

using Catch::Contains;
using pf::config_error;
using pf::format_error;
using pf::io::Tokenizer;

using Bytes = std::vector<unsigned char>;
using Ids = std::vector<int>;
using Vocab = std::vector<std::pair<std::string, float>>;  // (piece, score) by id


void put_u32(Bytes& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
void put_i32(Bytes& out, std::int32_t v) { put_u32(out, std::bit_cast<std::uint32_t>(v)); }
void put_f32(Bytes& out, float v) { put_u32(out, std::bit_cast<std::uint32_t>(v)); }

/// Our own reading of a tokenizer file holding exactly `n` records (format in shared/models/README.md).
Vocab read_vocab_here(const Bytes& b, int n, std::int32_t* max_len) {
  REQUIRE(b.size() >= 4);
  *max_len = std::bit_cast<std::int32_t>(pft::u32_at(b, 0));
  std::size_t at = 4;
  Vocab v;
  for (int i = 0; i < n; ++i) {
    REQUIRE(at + 8 <= b.size());
    const float score = std::bit_cast<float>(pft::u32_at(b, at));
    const auto len = static_cast<std::size_t>(std::bit_cast<std::int32_t>(pft::u32_at(b, at + 4)));
    at += 8;
    REQUIRE(at + len <= b.size());
    v.emplace_back(std::string(reinterpret_cast<const char*>(b.data() + at), len), score);
    at += len;
  }
  REQUIRE(at == b.size());
  return v;
}

/// A tokenizer file: int32 max_token_length, then (float score, int32 length, bytes) per token.
Bytes write_vocab(std::int32_t max_len, const Vocab& v) {
  Bytes out;
  put_i32(out, max_len);
  for (const auto& [piece, score] : v) {
    put_f32(out, score);
    put_i32(out, static_cast<std::int32_t>(piece.size()));
    out.insert(out.end(), piece.begin(), piece.end());
  }
  return out;
}

/// "<0x0A>" for 10: how byte tokens are spelled in llama2.c vocabularies.
std::string byte_piece(int byte) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "<0x%02X>", byte);
  return buf;
}

/// The fixed head every llama2.c vocabulary has: <unk>, BOS, EOS, then the 256 byte tokens.
Vocab vocab_head() {
  Vocab v = {{"<unk>", 0.0f}, {"\n<s>\n", 0.0f}, {"\n</s>\n", 0.0f}};
  for (int b = 0; b < 256; ++b) v.emplace_back(byte_piece(b), 0.0f);
  return v;
}

// Ids of the hand-made vocabulary, following the 259 fixed tokens.
enum TinyId : int {
  kSpace = 259,
  kA, kB, kC, kD, kE, kF, kG, kH, kI,  // single letters a..i
  kAB,        // "ab", score 1
  kBC,        // "bc", score 5: beats the leftmost "ab"
  kDE,        // "de", score 2
  kEF,        // "ef", score 2: ties with "de"
  kHI,        // "hi", score 4
  kGHI,       // "ghi", score 3: reachable only after "hi"
  kSpaceGHI,  // " ghi", score -10: a negative score still merges
  kDupBC,     // "bc" again, score 100: the first id of a piece wins
  kTinySize
};

Vocab tiny_vocab() {
  Vocab v = vocab_head();
  for (const char* letter : {" ", "a", "b", "c", "d", "e", "f", "g", "h", "i"}) v.emplace_back(letter, 0.0f);
  v.emplace_back("ab", 1.0f);
  v.emplace_back("bc", 5.0f);
  v.emplace_back("de", 2.0f);
  v.emplace_back("ef", 2.0f);
  v.emplace_back("hi", 4.0f);
  v.emplace_back("ghi", 3.0f);
  v.emplace_back(" ghi", -10.0f);
  v.emplace_back("bc", 100.0f);
  REQUIRE(v.size() == std::size_t(kTinySize));
  return v;
}

Tokenizer tiny_tokenizer() { return Tokenizer::parse(write_vocab(6, tiny_vocab()), kTinySize, "tiny"); }

Tokenizer tok512() { return Tokenizer::read(pft::shared_path("models/tok512.bin"), 512); }

/// The text an id sequence starting with BOS stands for: run.c's decode of each token after its predecessor.
std::string decode_all(const Tokenizer& t, const Ids& ids) {
  REQUIRE(!ids.empty());
  REQUIRE(ids.front() == Tokenizer::bos_id);
  std::string out;
  for (std::size_t i = 1; i < ids.size(); ++i) out += t.decode(ids[i - 1], ids[i]);
  return out;
}

/// Byte tokens for every byte of `s`: id = byte + 3.
Ids byte_ids(std::string_view s) {
  Ids out;
  for (char ch : s) out.push_back(static_cast<unsigned char>(ch) + 3);
  return out;
}

Ids cat(Ids a, const Ids& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// tok512.bin

TEST_CASE("io/tokenizer: tok512.bin holds the pieces and scores stored in the file", "[io][tokenizer]") {
  const std::string path = pft::shared_path("models/tok512.bin");
  std::int32_t max_len = 0;
  const Vocab want = read_vocab_here(pft::read_bytes(path), 512, &max_len);
  const Tokenizer t = Tokenizer::read(path, 512);
  CHECK(t.vocab_size() == 512);
  CHECK(max_len == 7);
  CHECK(t.max_token_length() == 7);
  std::size_t wrong = 0;
  for (int id = 0; id < 512; ++id) {
    const auto& [piece, score] = want[std::size_t(id)];
    if (t.piece(id) != piece || t.score(id) != score || t.find(piece) != id) ++wrong;
  }
  CHECK(wrong == 0);

  CHECK(t.piece(0) == "<unk>");
  CHECK(t.piece(Tokenizer::bos_id) == "\n<s>\n");
  CHECK(t.piece(Tokenizer::eos_id) == "\n</s>\n");
  for (int b = 0; b < 256; ++b) {
    INFO("byte " << b);
    REQUIRE(t.piece(b + 3) == byte_piece(b));
  }
  CHECK(t.piece(403) == " Once");
  CHECK(t.score(403) == -144.0f);
  CHECK(t.find(" Once") == 403);
  CHECK(t.find("not a piece") == -1);
  CHECK(t.find("") == -1);
  CHECK_THROWS_AS(t.piece(512), polyformer::config_error);
  CHECK_THROWS_WITH(t.piece(512), Catch::Contains("Tokenizer::piece: token 512, expected 0..511"));
  CHECK_THROWS_AS(t.score(-1), polyformer::config_error);
  CHECK_THROWS_WITH(t.score(-1), Catch::Contains("Tokenizer::score: token -1, expected 0..511"));
}

TEST_CASE("io/tokenizer: encodes the golden prompts to run.c's ids", "[io][tokenizer]") {
  const Tokenizer t = tok512();
  // shared/models/golden/README.md, "Prompt token ids (BOS first) as run.c encodes them".
  CHECK(t.encode("Once upon a time") == Ids{1, 403, 407, 261, 378});
  CHECK(t.encode("") == Ids{1});
  CHECK(t.encode("Lily and Tom went to the park") == Ids{1, 317, 269, 274, 287, 263, 377, 267, 265, 282, 295, 433});
}

TEST_CASE("io/tokenizer: bos and eos flags", "[io][tokenizer]") {
  const Tokenizer t = tok512();
  CHECK(t.encode("Once upon a time", true, true) == Ids{1, 403, 407, 261, 378, 2});
  CHECK(t.encode("Once upon a time", false) == Ids{403, 407, 261, 378});
  CHECK(t.encode("Once upon a time", false, true) == Ids{403, 407, 261, 378, 2});
  CHECK(t.encode("", true, true) == Ids{1, 2});
  CHECK(t.encode("", false, true) == Ids{2});
  CHECK(t.encode("", false, false).empty());
}

TEST_CASE("io/tokenizer: characters missing from tok512 fall back to byte tokens", "[io][tokenizer]") {
  const std::string path = pft::shared_path("models/tok512.bin");
  std::int32_t max_len = 0;
  const Vocab vocab = read_vocab_here(pft::read_bytes(path), 512, &max_len);
  std::map<std::string, int> id_of;
  for (std::size_t i = 0; i < vocab.size(); ++i) id_of.emplace(vocab[i].first, int(i));
  REQUIRE(id_of.count(" ") == 1);
  const int space = id_of.at(" ");
  const Tokenizer t = Tokenizer::read(path, 512);

  // None of these code points (nor " " followed by them) is a piece of tok512.
  for (const std::string s : {"\n", "\t", "\xC3\xAF" /* ï */, "\xE4\xB8\xAD" /* 中 */, "\xF0\x9F\x98\x80" /* 😀 */}) {
    INFO("text bytes " << s.size());
    REQUIRE(id_of.count(s) == 0);
    CHECK(t.encode(s, false) == cat({space}, byte_ids(s)));
    CHECK(t.encode(s) == cat({1, space}, byte_ids(s)));
  }
  CHECK(t.encode("\n", false) == Ids{space, 13});
  CHECK(t.encode("\xF0\x9F\x98\x80", false) == Ids{space, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3});
  CHECK(t.decode(space, 13) == "\n");
  CHECK(t.decode(Tokenizer::bos_id, 13) == "\n");
  CHECK(t.decode(space, 0xFF + 3) == "\xFF");
  CHECK(t.decode(space, 3) == std::string_view("\0", 1));

  // A multi-byte code point that is a piece stays one token.
  REQUIRE(id_of.count("\xC3\xA9") == 1);  // é
  CHECK(t.encode("\xC3\xA9", false) == Ids{space, id_of.at("\xC3\xA9")});

  // Encoding stops at a NUL byte, as with a C string.
  CHECK(t.encode(std::string_view("Once\0 upon", 10)) == t.encode("Once"));
}

TEST_CASE("io/tokenizer: decoding the encoded ids gives back the exact text", "[io][tokenizer]") {
  const Tokenizer t = tok512();
  const std::string texts[] = {
      "Once upon a time, there was a little girl named Lily. She said: \"Hi! How are you?\"",
      "two  spaces   and three",
      "line one\nline two\n\nend\n",
      "caf\xC3\xA9",                                  // café (é is a piece)
      "na\xC3\xAFve",                                 // naïve (ï falls back to bytes)
      "\xE4\xB8\xAD",                                 // 中
      "smile \xF0\x9F\x98\x80!",                      // 😀
      "\xE2\x80\x9Cquoted\xE2\x80\x9D \xE2\x80\x94 it\xE2\x80\x99s",  // curly quotes, em dash
      "  leading spaces",
      "trailing space ",
      "tabs\tand\r\ncarriage returns",
      "100% & <tags> [x] {y} ~ ^ @ #5",
      "\x01\x7F control bytes",
      "\xFF\xFE\x80 not UTF-8",
      "a",
      " ",
  };
  for (const std::string& text : texts) {
    INFO("text: " << text);
    const Ids ids = t.encode(text);
    CHECK(ids.size() >= 2);
    CHECK(decode_all(t, ids) == text);
    CHECK(decode_all(t, t.encode(text, true, true)) == text + "\n</s>\n");
  }
  // Only the piece right after BOS loses its leading space.
  CHECK(t.decode(Tokenizer::bos_id, 403) == "Once");
  CHECK(t.decode(403, 407) == " upon");
  CHECK(t.decode(Tokenizer::bos_id, 433) == "k");  // no space to drop
  CHECK_THROWS_AS(t.decode(1, 512), polyformer::config_error);
  CHECK_THROWS_WITH(t.decode(1, 512), Catch::Contains("Tokenizer::decode: token 512, expected 0..511"));
  CHECK_THROWS_AS(t.decode(1, -1), polyformer::config_error);
  CHECK_THROWS_WITH(t.decode(1, -1), Catch::Contains("Tokenizer::decode: token -1"));
}

// ---------------------------------------------------------------------------------------------------------
// A hand-made vocabulary for the merge rules

TEST_CASE("io/tokenizer: the hand-made vocabulary loads as written", "[io][tokenizer]") {
  const Tokenizer t = tiny_tokenizer();
  CHECK(t.vocab_size() == kTinySize);
  CHECK(t.max_token_length() == 6);
  CHECK(t.piece(kBC) == "bc");
  CHECK(t.score(kBC) == 5.0f);
  CHECK(t.piece(kDupBC) == "bc");
  CHECK(t.score(kDupBC) == 100.0f);
  CHECK(t.find("bc") == kBC);  // the first of two equal pieces
  CHECK(t.find(" ghi") == kSpaceGHI);
  CHECK(t.find("<0x41>") == 0x41 + 3);
  CHECK(t.find("abc") == -1);
}

TEST_CASE("io/tokenizer: merges take the highest score first, the leftmost pair on ties", "[io][tokenizer]") {
  const Tokenizer t = tiny_tokenizer();
  SECTION("a higher score beats a pair further left") {
    // " ", a, b, c: "ab" (1) is leftmost, "bc" (5) scores higher.
    CHECK(t.encode("abc", false) == Ids{kSpace, kA, kBC});
  }
  SECTION("equal scores merge the leftmost pair") {
    // " ", d, e, f: "de" and "ef" both score 2; "de" comes first, after which "ef" no longer exists.
    CHECK(t.encode("def", false) == Ids{kSpace, kDE, kF});
  }
  SECTION("merges cascade, negative scores included") {
    // hi (4), then g+hi = ghi (3), then " "+ghi (-10).
    CHECK(t.encode("ghi", false) == Ids{kSpaceGHI});
    CHECK(t.encode("ghi") == Ids{Tokenizer::bos_id, kSpaceGHI});
    CHECK(t.encode("gghi", false) == Ids{kSpace, kG, kGHI});
  }
  SECTION("a piece stored twice merges to its first id") {
    CHECK(t.encode("bc", false) == Ids{kSpace, kBC});
  }
  SECTION("several merges in one text") {
    CHECK(t.encode("abc def", false) == Ids{kSpace, kA, kBC, kSpace, kDE, kF});
    CHECK(t.encode("abab", false) == Ids{kSpace, kAB, kAB});
  }
  SECTION("missing characters become byte tokens, which never merge") {
    CHECK(t.encode("az", false) == Ids{kSpace, kA, 'z' + 3});
    CHECK(t.encode("z", false) == Ids{kSpace, 'z' + 3});
    CHECK(t.encode("\xC3\xA9", false) == Ids{kSpace, 0xC3 + 3, 0xA9 + 3});
    CHECK(t.piece('z' + 3) == "<0x7A>");
  }
  SECTION("round trip") {
    for (const std::string text : {"abc def ghi", "zz ab \xC3\xA9 hi", "  ghi\n"}) {
      INFO("text: " << text);
      CHECK(decode_all(t, t.encode(text)) == text);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// printable()

TEST_CASE("io/tokenizer: printable drops lone control bytes and cuts at NUL", "[io][tokenizer]") {
  CHECK(Tokenizer::printable("\x01").empty());
  CHECK(Tokenizer::printable("\x80").empty());
  CHECK(Tokenizer::printable("\x7F").empty());
  CHECK(Tokenizer::printable("\xFF").empty());
  CHECK(Tokenizer::printable("\n") == "\n");
  CHECK(Tokenizer::printable("\t") == "\t");
  CHECK(Tokenizer::printable(" ") == " ");
  CHECK(Tokenizer::printable("a") == "a");
  CHECK(Tokenizer::printable("~") == "~");
  CHECK(Tokenizer::printable("\xC3\xA9") == "\xC3\xA9");      // é: two bytes, printed as is
  CHECK(Tokenizer::printable("\xE4\xB8\xAD") == "\xE4\xB8\xAD");
  CHECK(Tokenizer::printable("\x01\x02") == "\x01\x02");     // only single bytes are filtered
  CHECK(Tokenizer::printable(" upon") == " upon");
  CHECK(Tokenizer::printable("").empty());
  CHECK(Tokenizer::printable(std::string_view("ab\0cd", 5)) == "ab");
  CHECK(Tokenizer::printable(std::string_view("\0x", 2)).empty());
  CHECK(Tokenizer::printable(std::string_view("\x01\0z", 3)).empty());  // cut to one control byte

  // A decoded byte token goes through the same filter.
  const Tokenizer t = tok512();
  CHECK(Tokenizer::printable(t.decode(403, 0x01 + 3)).empty());
  CHECK(Tokenizer::printable(t.decode(403, 0x0A + 3)) == "\n");
}

// ---------------------------------------------------------------------------------------------------------
// Malformed files

TEST_CASE("io/tokenizer: rejects a file truncated inside a record", "[io][tokenizer]") {
  const Bytes good = write_vocab(6, tiny_vocab());
  REQUIRE_NOTHROW(Tokenizer::parse(good, kTinySize, "tiny"));
  const auto cut = [&](std::size_t n) {
    return Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
  };
  SECTION("inside the text of the last token") {
    const Bytes b = cut(good.size() - 2);
    REQUIRE_THROWS_AS(Tokenizer::parse(b, kTinySize, "tiny"), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::parse(b, kTinySize, "tiny"),
                        Contains("tokenizer: tiny: ") && Contains("text of token " + std::to_string(kDupBC)) &&
                            Contains("needs 2 bytes at offset " + std::to_string(good.size() - 2)));
  }
  SECTION("inside the score and length of the first token") {
    const Bytes b = cut(10);
    REQUIRE_THROWS_AS(Tokenizer::parse(b, kTinySize, "tiny"), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::parse(b, kTinySize, "tiny"), Contains("of token 0 needs 8 bytes at offset 4"));
  }
  SECTION("inside max_token_length") {
    const Bytes b = cut(3);
    REQUIRE_THROWS_AS(Tokenizer::parse(b, kTinySize, "tiny"), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::parse(b, kTinySize, "tiny"), Contains("needs 4 bytes at offset 0"));
  }
  SECTION("empty") {
    REQUIRE_THROWS_AS(Tokenizer::parse(Bytes{}, kTinySize, "tiny"), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::parse(Bytes{}, kTinySize, "tiny"), Contains("bytes at offset 0"));
  }
  SECTION("tok512.bin read with one token too many") {
    const std::string path = pft::shared_path("models/tok512.bin");
    REQUIRE_THROWS_AS(Tokenizer::read(path, 513), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::read(path, 513),
                        Contains("of token 512 needs 8 bytes at offset 6227") && Contains("expected 513 tokens"));
  }
}

TEST_CASE("io/tokenizer: rejects a negative token length", "[io][tokenizer]") {
  Bytes b;
  put_i32(b, 7);
  for (const char* piece : {"<unk>", "\n<s>\n"}) {
    put_f32(b, 0.0f);
    put_i32(b, static_cast<std::int32_t>(std::string_view(piece).size()));
    b.insert(b.end(), piece, piece + std::string_view(piece).size());
  }
  const std::size_t len_at = b.size() + 4;
  put_f32(b, 0.0f);
  put_i32(b, -1);
  b.insert(b.end(), 8, 'x');
  REQUIRE_THROWS_AS(Tokenizer::parse(b, 3, "neg"), format_error);
  REQUIRE_THROWS_WITH(Tokenizer::parse(b, 3, "neg"),
                      Contains("length of token 2 is -1 at offset " + std::to_string(len_at)) &&
                          Contains("expected >= 0"));
}

TEST_CASE("io/tokenizer: rejects trailing bytes after the last token", "[io][tokenizer]") {
  SECTION("junk after the hand-made vocabulary") {
    Bytes b = write_vocab(6, tiny_vocab());
    const std::size_t end = b.size();
    b.insert(b.end(), {1, 2, 3});
    REQUIRE_THROWS_AS(Tokenizer::parse(b, kTinySize, "tiny"), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::parse(b, kTinySize, "tiny"),
                        Contains("3 bytes after token " + std::to_string(kTinySize - 1)) &&
                            Contains("at offset " + std::to_string(end)));
  }
  SECTION("tok512.bin read with one token too few") {
    const std::string path = pft::shared_path("models/tok512.bin");
    REQUIRE_THROWS_AS(Tokenizer::read(path, 511), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::read(path, 511), Contains("bytes after token 510") && Contains("vocab_size 511"));
  }
}

TEST_CASE("io/tokenizer: rejects max_token_length below 1", "[io][tokenizer]") {
  for (const std::int32_t bad : {0, -3}) {
    INFO("max_token_length " << bad);
    const Bytes b = write_vocab(bad, tiny_vocab());
    REQUIRE_THROWS_AS(Tokenizer::parse(b, kTinySize, "tiny"), format_error);
    REQUIRE_THROWS_WITH(Tokenizer::parse(b, kTinySize, "tiny"),
                        Contains("max_token_length is " + std::to_string(bad)) && Contains("expected >= 1"));
  }
}

TEST_CASE("io/tokenizer: rejects vocab_size below 3", "[io][tokenizer]") {
  const Bytes b = write_vocab(6, tiny_vocab());
  for (const int bad : {2, 0, -1}) {
    INFO("vocab_size " << bad);
    REQUIRE_THROWS_AS(Tokenizer::parse(b, bad, "tiny"), config_error);
    REQUIRE_THROWS_WITH(Tokenizer::parse(b, bad, "tiny"),
                        Contains("vocab_size is " + std::to_string(bad)) && Contains("expected >= 3"));
  }
  const std::string path = pft::shared_path("models/tok512.bin");
  REQUIRE_THROWS_AS(Tokenizer::read(path, 2), config_error);
}

TEST_CASE("io/tokenizer: reading a missing file names the path", "[io][tokenizer]") {
  const std::string path = "/nonexistent-polyformer-dir/tokenizer.bin";
  REQUIRE_THROWS_AS(Tokenizer::read(path, 512), format_error);
  REQUIRE_THROWS_WITH(Tokenizer::read(path, 512), Contains("tokenizer: " + path + ": cannot open"));
}

TEST_CASE("io/tokenizer: a vocabulary without byte tokens refuses a character it lacks (found by fuzz_tokenizer_bin)",
          "[io][tokenizer][errors]") {
  // Nine tokens: ids 3..258 would be the byte tokens, so the byte fallback of "\n" (id 13) is past the vocabulary.
  const Vocab v = {{"<unk>", 0.0f}, {"<s>", 0.0f}, {"</s>", 0.0f}, {" ", -1.0f}, {"a", -2.0f},
                   {"b", -3.0f},    {" a", -4.0f}, {"ab", -5.0f},   {"<0x0A>", -6.0f}};
  const Tokenizer t = Tokenizer::parse(write_vocab(3, v), 9, "nine");
  // " a" (−4) merges before "ab" (−5): " ", a, " ", a, b, " ", b → " a", " a", b, " ", b.
  CHECK(t.encode("a ab b", false) == Ids{6, 6, 5, 3, 5});
  CHECK_THROWS_WITH(t.encode("a\nb"), Catch::Contains("Tokenizer::encode: the text needs the byte token <0x0A> (id 13), "
                                                      "but the vocabulary has 9 tokens"));
  CHECK_THROWS_AS(t.encode("\xFF"), polyformer::config_error);
}
