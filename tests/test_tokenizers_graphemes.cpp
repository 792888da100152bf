// Grapheme clusters (tokenizers/graphemes.hpp) against the Unicode Consortium's own conformance cases,
// GraphemeBreakTest.txt of the Unicode version the tables were written from (Debian's unicode-data package: every
// line a sequence of code points with ÷ where a cluster boundary falls and × where none does), then invalid UTF-8.

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/graphemes.hpp"

namespace pt = polyformer::tokenizers;

namespace {

const std::string test_file = "/usr/share/unicode/auxiliary/GraphemeBreakTest.txt";

struct Case {
  std::string text;                  // UTF-8
  std::vector<std::size_t> ends;     // byte offsets of each cluster's end
  std::string line;
};

std::vector<Case> read_cases() {
  std::ifstream in(test_file);
  std::vector<Case> cases;
  for (std::string line; std::getline(in, line);) {
    const std::string rule = line.substr(0, line.find('#'));
    std::istringstream words(rule);
    Case c;
    c.line = line;
    for (std::string w; words >> w;) {
      if (w == "\xC3\xB7") {  // ÷: a boundary (the first one is the text's start)
        if (!c.text.empty()) c.ends.push_back(c.text.size());
      } else if (w != "\xC3\x97") {  // ×: none
        pt::append_utf8(c.text, static_cast<char32_t>(std::stoul(w, nullptr, 16)));
      }
    }
    if (!c.text.empty()) cases.push_back(std::move(c));
  }
  return cases;
}

}  // namespace

TEST_CASE("grapheme_end splits every case of Unicode's GraphemeBreakTest.txt where it says", "[tokenizers][graphemes]") {
  if (!std::filesystem::exists(test_file))
    FAIL("no " << test_file << ": apt-get install unicode-data (the README's install command has it)");
  const std::vector<Case> cases = read_cases();
  REQUIRE(cases.size() > 500);  // 602 in Unicode 15.0
  std::size_t wrong = 0;
  for (const Case& c : cases) {
    std::vector<std::size_t> ends;
    for (std::size_t at = 0; at < c.text.size();) ends.push_back(at = pt::grapheme_end(c.text, at));
    if (ends != c.ends && ++wrong <= 10) FAIL_CHECK(c.line);
  }
  CHECK(wrong == 0);
}

TEST_CASE("grapheme_end: clusters worked out by hand, and invalid UTF-8 refused by byte offset", "[tokenizers][graphemes]") {
  const auto clusters = [](const std::string& text) {
    std::vector<std::string> out;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t end = pt::grapheme_end(text, at);
      out.push_back(text.substr(at, end - at));
      at = end;
    }
    return out;
  };
  using V = std::vector<std::string>;
  CHECK(clusters("e\xCC\x81x") == V{"e\xCC\x81", "x"});                    // e + combining acute
  CHECK(clusters("\r\n\n") == V{"\r\n", "\n"});                           // CR LF, then LF
  CHECK(clusters("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8") == V{"\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"});  // L V T jamo
  // A family (man ZWJ woman ZWJ girl) is one cluster; two flags (four regional indicators) are two.
  CHECK(clusters("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7").size() == 1);
  CHECK(clusters("\xF0\x9F\x87\xA9\xF0\x9F\x87\xAA\xF0\x9F\x87\xAB\xF0\x9F\x87\xB7").size() == 2);
  CHECK_THROWS_AS(pt::grapheme_end("a\xCC", 0), polyformer::format_error);
  CHECK_THROWS_WITH(pt::grapheme_end("a\xFF", 0, "Precompiled"),
                    Catch::Contains("Precompiled") && Catch::Contains("not valid UTF-8 at byte 1"));
}
