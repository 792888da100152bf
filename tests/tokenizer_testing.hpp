#pragma once
// What the tokenizer tests share with tests/tokenizers/texts.js, which wrote their fixtures: the texts (the
// fixtures' extra.jsonl, Debian's fortune records read the same way) and the hash the fixtures record ids by.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support.hpp"

namespace pft {

inline const std::string fortunes_dir = "/usr/share/games/fortunes";

/// The lines of a file, without their "\n".
inline std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> lines;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

/// ids as the fixtures write them: decimal, joined by single spaces.
inline std::string joined(const std::vector<int>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s;
}

/// The low 32 bits of FNV-1a 64 of `text`, hex (texts.js's hash).
inline std::string fnv_hash(const std::string& text) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char c : text) h = (h ^ c) * 0x100000001b3ull;
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08llx", static_cast<unsigned long long>(h & 0xffffffffull));
  return hex;
}

/// "<count> <hash of the ids' text>", as the fixture scripts write ids.
inline std::string count_and_hash(const std::vector<int>& ids) { return std::to_string(ids.size()) + " " + fnv_hash(joined(ids)); }

/// The texts of a fixture's extra.jsonl: one JSON string per line.
inline std::vector<std::string> fixture_texts(const std::string& fixture_dir) {
  std::vector<std::string> texts;
  for (const std::string& line : lines_of(fixture_dir + "/extra.jsonl")) texts.push_back(nlohmann::json::parse(line));
  return texts;
}

/// The tokenizer's ids of the fixture's hand-written cases (the first texts) against the oracle's in edge.ids (or
/// the file named `edge_file`).
template <typename Tokenizer>
void check_edge_cases(const Tokenizer& tokenizer, const std::vector<std::string>& texts, const std::string& fixture_dir,
                      const std::string& edge_file = "edge.ids") {
  const std::vector<std::string> edge_ids = lines_of(fixture_dir + "/" + edge_file);
  REQUIRE(edge_ids.size() <= texts.size());
  for (std::size_t i = 0; i < edge_ids.size(); ++i) {
    INFO("edge case " << i << " " << nlohmann::json(texts[i]).dump());
    CHECK(joined(tokenizer.encode(texts[i])) == edge_ids[i]);
  }
}

/// Every fortune record, as texts.js reads them: the files in name order, the lines between "%" lines.
inline std::vector<std::string> fortunes() {
  std::vector<std::string> files, records;
  for (const auto& e : std::filesystem::directory_iterator(fortunes_dir)) {
    const std::string name = e.path().filename().string();
    if (!name.ends_with(".dat") && !name.ends_with(".u8")) files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  for (const std::string& f : files) {
    std::vector<std::string> lines;
    const std::string text = read_text(fortunes_dir + "/" + f);
    const auto flush = [&] {
      std::string record;
      for (std::size_t i = 0; i < lines.size(); ++i) {
        if (i > 0) record += '\n';
        record += lines[i];
      }
      records.push_back(record);
      lines.clear();
    };
    for (std::size_t at = 0;;) {  // split on "\n" as JavaScript's split does: a final "" after a trailing newline
      const std::size_t end = text.find('\n', at);
      const std::string line = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
      if (line == "%") flush();
      else lines.push_back(line);
      if (end == std::string::npos) break;
      at = end + 1;
    }
    if (lines.size() > 1 || (lines.size() == 1 && !lines[0].empty())) flush();
  }
  return records;
}

/// A JSON file.
inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text(path)); }

#ifdef POLYFORMER_BERT_TOKENIZER_DIR
/// The BERT fixture's vocab.txt as a tokenizer.json (BertNormalizer with `lowercase` and `strip_accents`, WordPiece,
/// its five special tokens, no pre-tokenizer or post-processor), as the fixture scripts build it for the oracle.
inline nlohmann::json bert_tokenizer_json(bool lowercase = true, const nlohmann::json& strip_accents = nullptr) {
  const std::vector<std::string> tokens = lines_of(std::string(POLYFORMER_BERT_TOKENIZER_DIR) + "/vocab.txt");
  nlohmann::json vocab = nlohmann::json::object();
  for (std::size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  nlohmann::json added = nlohmann::json::array();
  for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
    added.push_back({{"id", vocab[s]}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
          {"normalizer", {{"type", "BertNormalizer"}, {"clean_text", true}, {"handle_chinese_chars", true},
                          {"strip_accents", strip_accents}, {"lowercase", lowercase}}},
          {"pre_tokenizer", nullptr}, {"post_processor", nullptr},
          {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
          {"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"continuing_subword_prefix", "##"},
                     {"max_input_chars_per_word", 100}, {"vocab", vocab}}}};
}
#endif

}  // namespace pft
