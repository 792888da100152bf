// The Unicode normalization forms and StripAccents (tokenizers/unicode_normalization.hpp) against the Hugging Face
// tokenizers library: tests/tokenizers/normalizer_fixtures.js wrote tests/tokenizers/normalizers.json with npm
// tokenizers 0.23.2's NFD, NFC, NFKD, NFKC, StripAccents and Lowercase outputs of every code point alone (Hangul
// syllables as hashes of chunks), the order its NFD puts the 810 non-starters in, texts.js's edge cases and 2,500
// random strings made to stress decomposition, ordering and composition in full, and the 15,221 fortune records as
// hashes of chunks of 500. Lowercase through the Lowercase normalizer (normalizer.hpp). Also cases worked by hand, and what is
// refused.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/normalizer.hpp"
#include "polyformer/tokenizers/unicode_normalization.hpp"
#include "tokenizer_testing.hpp"

namespace pt = polyformer::tokenizers;

namespace {

using Form = std::function<std::string(std::string_view)>;

/// The fixture's forms, in its column order.
const std::vector<std::string> form_names = {"nfd", "nfc", "nfkd", "nfkc", "strip_accents", "lowercase"};
const std::vector<Form> forms = {
    [](std::string_view s) { return pt::nfd(s, "nfd"); },
    [](std::string_view s) { return pt::nfc(s, "nfc"); },
    [](std::string_view s) { return pt::nfkd(s, "nfkd"); },
    [](std::string_view s) { return pt::nfkc(s, "nfkc"); },
    [](std::string_view s) { return pt::strip_accents(s, "strip_accents"); },
    [](std::string_view s) { return pt::Normalizer({pt::Lowercase{}}).normalize(s, "lowercase"); },
};

std::string utf8(char32_t c) {
  std::string s;
  pt::append_utf8(s, c);
  return s;
}

std::string hex(char32_t c) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "U+%04X", static_cast<unsigned>(c));
  return buffer;
}

/// A fixture row's outputs: its columns after the first, each a text or the number of an earlier column holding
/// the same text (0: `input`).
std::vector<std::string> outputs_of(const nlohmann::json& row, const std::string& input) {
  std::vector<std::string> columns{input};
  for (std::size_t k = 1; k < row.size(); ++k)
    columns.push_back(row[k].is_string() ? row[k].get<std::string>() : columns.at(row[k].get<std::size_t>()));
  return {columns.begin() + 1, columns.end()};
}

/// Valid UTF-8 as its code points, hex, space-separated (marks and controls do not print well).
std::string spelled(std::string_view s) {
  std::string out;
  for (std::size_t i = 0, n = 0; i < s.size(); i += n) {
    char buffer[16];
    std::snprintf(buffer, sizeof buffer, "%s%04X", out.empty() ? "" : " ",
                  static_cast<unsigned>(pt::decode_utf8(s, i, n, "spelled")));
    out += buffer;
  }
  return out;
}

/// Counts mismatches, and reports the first few as failed checks of their own.
struct Mismatches {
  std::size_t count = 0;
  void check(const std::string& what, const std::string& got, const std::string& expected) {
    if (got == expected) return;
    if (++count > 20) return;
    INFO(what);
    CHECK(spelled(got) == spelled(expected));
  }
};

bool is_hangul_syllable(char32_t c) { return c >= 0xAC00 && c <= 0xD7A3; }

}  // namespace

TEST_CASE("normalization forms work as UAX #15 and the tokenizers library do", "[tokenizers][normalization]") {
  // Decomposition, canonical ordering, composition and its blocking.
  CHECK(pt::nfd("caf\u00E9") == "cafe\u0301");
  CHECK(pt::nfc("cafe\u0301") == "caf\u00E9");
  CHECK(pt::nfd("a\u0301\u0316") == "a\u0316\u0301");            // class 230 after 220
  CHECK(pt::nfc("a\u0301\u0316") == "\u00E1\u0316");             // 0316 does not block 0301, of a higher class
  CHECK(pt::nfc("a\u0301\u0301") == "\u00E1\u0301");             // the second acute is blocked by the first
  CHECK(pt::nfc("\u1E9B\u0323") == "\u1E9B\u0323");
  CHECK(pt::nfkc("\u1E9B\u0323") == "\u1E69");
  CHECK(pt::nfd("\u1E9B\u0323") == "\u017F\u0323\u0307");
  CHECK(pt::nfkd("\u1E9B\u0323") == "s\u0323\u0307");
  // Hangul by arithmetic: U+11A7 is no trailing consonant; a mark between LV and T blocks them.
  CHECK(pt::nfd("\uD55C") == "\u1112\u1161\u11AB");
  CHECK(pt::nfc("\u1112\u1161\u11AB") == "\uD55C");
  CHECK(pt::nfc("\u1100\u1161\u11A7") == "\uAC00\u11A7");
  CHECK(pt::nfc("\uAC00\u0301\u11A8") == "\uAC00\u0301\u11A8");
  // Exclusions, singletons and non-starter decompositions do not come back.
  CHECK(pt::nfc("\u0958") == "\u0915\u093C");
  CHECK(pt::nfc("\u212B") == "\u00C5");
  CHECK(pt::nfc("\u2126") == "\u03A9");
  CHECK(pt::nfc("\u0344") == "\u0308\u0301");
  // Compatibility.
  CHECK(pt::nfkc("\uFB01") == "fi");
  CHECK(pt::nfkd("\u2460") == "1");
  CHECK(pt::nfkc("\u3231") == "(\u682A)");
  CHECK(pt::nfkc("\uFF76\uFF9E") == "\u30AC");                   // halfwidth KA and voiced mark: GA
  // StripAccents removes marks and decomposes nothing.
  CHECK(pt::strip_accents("caf\u00E9 cafe\u0301") == "caf\u00E9 cafe");
  // The data is Unicode 9.0's: U+1DF6 (10.0) is an unassigned starter, U+1CF2 was still a mark, U+111C9 not yet.
  CHECK(pt::nfd("a\u1DF6\u0316") == "a\u1DF6\u0316");
  CHECK(pt::strip_accents("a\u1CF2b\U000111C9") == "ab\U000111C9");
  // ASCII around the rest.
  CHECK(pt::nfc("") == "");
  CHECK(pt::nfc("plain ASCII") == "plain ASCII");
  CHECK(pt::nfc("ae\u0301e\u0301") == "a\u00E9\u00E9");
  CHECK(pt::nfd("x\u00E9y") == "xe\u0301y");
}

TEST_CASE("normalization of every code point alone equals the tokenizers library's", "[tokenizers][normalization]") {
  const nlohmann::json f = pft::read_json(POLYFORMER_TOKENIZER_NORMALIZERS);
  REQUIRE(f["forms"].get<std::vector<std::string>>() == form_names);
  const std::vector<std::size_t> columns = {0, 1, 2, 3, 5};  // the forms of a code point row: all but StripAccents
  std::vector<std::pair<char32_t, std::vector<std::string>>> rows;  // code point, outputs
  char32_t at = 0;
  for (const auto& r : f["code_points"]) {
    at += r[0].get<char32_t>();
    rows.emplace_back(at, outputs_of(r, utf8(at)));
    REQUIRE(rows.back().second.size() == columns.size());
  }
  std::vector<std::pair<char32_t, char32_t>> stripped;
  for (const auto& r : f["strip_accents"]) stripped.emplace_back(r[0].get<char32_t>(), r[1].get<char32_t>());

  Mismatches m;
  std::size_t next_row = 0, next_strip = 0;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    const std::string s = utf8(c);
    while (next_strip < stripped.size() && stripped[next_strip].second < c) ++next_strip;
    const bool removed = next_strip < stripped.size() && stripped[next_strip].first <= c;
    m.check("strip_accents " + hex(c), forms[4](s), removed ? "" : s);
    if (is_hangul_syllable(c)) continue;
    const bool listed = next_row < rows.size() && rows[next_row].first == c;
    for (std::size_t k = 0; k < columns.size(); ++k)
      m.check(form_names[columns[k]] + " " + hex(c), forms[columns[k]](s), listed ? rows[next_row].second[k] : s);
    if (listed) ++next_row;
  }
  CHECK(next_row == rows.size());
  CHECK(m.count == 0);

  for (std::size_t k = 0; k < forms.size(); ++k) {  // Hangul syllables: chunks of 588, an output a line
    INFO(form_names[k] << " of the Hangul syllables");
    std::vector<std::string> hashes;
    for (char32_t first = 0xAC00; first <= 0xD7A3; first += 588) {
      std::string chunk;
      for (char32_t c = first; c < first + 588; ++c) chunk += (c > first ? "\n" : "") + forms[k](utf8(c));
      hashes.push_back(pft::fnv_hash(chunk));
    }
    CHECK(hashes == f["hangul"][form_names[k]].get<std::vector<std::string>>());
  }
}

TEST_CASE("canonical ordering follows the tokenizers library's combining classes", "[tokenizers][normalization]") {
  const nlohmann::json f = pft::read_json(POLYFORMER_TOKENIZER_NORMALIZERS);
  const auto representatives = f["classes"]["representatives"].get<std::vector<char32_t>>();
  REQUIRE(representatives.size() == 54);
  std::string descending;
  for (auto it = representatives.rbegin(); it != representatives.rend(); ++it) descending += utf8(*it);
  std::vector<int> rank(0x110000, -1);  // -1: a starter (or a character that decomposes)
  std::size_t non_starters = 0;
  for (const auto& r : f["classes"]["ranks"])
    for (char32_t c = r[0].get<char32_t>(); c <= r[1].get<char32_t>(); ++c, ++non_starters) rank[c] = r[2].get<int>();
  CHECK(non_starters == 810);
  std::vector<bool> decomposes(0x110000, false);
  char32_t at = 0;
  for (const auto& r : f["code_points"]) {
    at += r[0].get<char32_t>();
    decomposes[at] = !(r[1].is_number() && r[1].get<int>() == 0);
  }

  Mismatches m;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if ((c >= 0xD800 && c <= 0xDFFF) || is_hangul_syllable(c) || decomposes[c]) continue;
    const std::string x = utf8(c);
    if (rank[c] < 0) {  // a starter stays between U+0345 (class 240) and U+0334 (class 1)
      m.check("starter " + hex(c), pt::nfd("\u0345" + x + "\u0334"), "\u0345" + x + "\u0334");
    } else {  // a non-starter before every class's representative, in descending order, moves to its rank
      std::string expected = "a";
      for (std::size_t k = 0; k < representatives.size(); ++k) {
        if (int(k) == rank[c]) expected += x;
        expected += utf8(representatives[k]);
      }
      m.check("non-starter " + hex(c), pt::nfd("a" + x + descending), expected);
    }
  }
  CHECK(m.count == 0);
}

TEST_CASE("normalization of edge cases and random strings equals the tokenizers library's",
          "[tokenizers][normalization]") {
  const nlohmann::json f = pft::read_json(POLYFORMER_TOKENIZER_NORMALIZERS);
  REQUIRE(f["edge"].size() >= 40);
  REQUIRE(f["stress"].size() == 2500);
  for (const char* part : {"edge", "stress"}) {
    INFO(part);
    Mismatches m;
    std::size_t i = 0;
    for (const auto& r : f[part]) {
      const std::string text = r[0].get<std::string>();
      const std::vector<std::string> expected = outputs_of(r, text);
      REQUIRE(expected.size() == forms.size());
      for (std::size_t k = 0; k < forms.size(); ++k)
        m.check(form_names[k] + " of " + part + " text " + std::to_string(i) + ": " + spelled(text),
                forms[k](text), expected[k]);
      ++i;
    }
    CHECK(m.count == 0);
  }
}

TEST_CASE("normalization of the fortune records equals the tokenizers library's", "[tokenizers][normalization]") {
  const nlohmann::json f = pft::read_json(POLYFORMER_TOKENIZER_NORMALIZERS);
  const std::vector<std::string> records = pft::fortunes();
  REQUIRE(records.size() == 15221);
  for (std::size_t k = 0; k < forms.size(); ++k) {
    INFO(form_names[k]);
    std::vector<std::string> hashes;
    for (std::size_t i = 0; i < records.size(); i += 500) {
      std::string chunk;
      for (std::size_t j = i; j < std::min(records.size(), i + 500); ++j)
        chunk += (j > i ? "\n" : "") + forms[k](records[j]);
      hashes.push_back(pft::fnv_hash(chunk));
    }
    CHECK(hashes == f["fortunes"][form_names[k]].get<std::vector<std::string>>());
  }
}

TEST_CASE("normalization refuses invalid UTF-8 naming the function", "[tokenizers][normalization]") {
  const std::vector<std::function<std::string(std::string_view, const char*)>> named = {
      [](std::string_view s, const char* func) { return pt::nfd(s, func); },
      [](std::string_view s, const char* func) { return pt::nfc(s, func); },
      [](std::string_view s, const char* func) { return pt::nfkd(s, func); },
      [](std::string_view s, const char* func) { return pt::nfkc(s, func); },
      [](std::string_view s, const char* func) { return pt::strip_accents(s, func); },
  };
  // A cut sequence after ASCII, a lone continuation byte after a mark, a surrogate, an overlong form, a byte never
  // in UTF-8, a code point above U+10FFFF.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"ab\xC3", "at byte 2 (0xC3)"},          {"e\xCC\x81\x81", "at byte 3 (0x81)"},
      {"\xED\xA0\x80", "at byte 0 (0xED)"},    {"a\xC0\xAF", "at byte 1 (0xC0)"},
      {"\xE2\x91\xA0\xFF", "at byte 3 (0xFF)"}, {"\xF4\x90\x80\x80", "at byte 0 (0xF4)"},
  };
  for (std::size_t k = 0; k < named.size(); ++k) {
    for (const auto& [text, where] : cases) {
      INFO(form_names[k] << ", invalid " << where);
      CHECK_THROWS_AS(named[k](text, "normalize_test"), polyformer::format_error);
      CHECK_THROWS_WITH(named[k](text, "normalize_test"),
                        Catch::Contains("normalize_test: the text is not valid UTF-8 " + where));
    }
  }
  CHECK_THROWS_WITH(pt::nfkc("\xFF"), Catch::StartsWith("nfkc: "));
  CHECK_THROWS_WITH(pt::strip_accents("\xFF"), Catch::StartsWith("strip_accents: "));
}
