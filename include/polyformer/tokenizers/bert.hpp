#pragma once
/// \file BERT's tokenizer parts (Devlin et al. 2019), as Hugging Face tokenizers runs them: the normalizer (delete
/// control characters, make whitespace a space, surround CJK characters with spaces, strip accents — canonical
/// decomposition without the nonspacing marks —, lowercase, one character at a time), the pre-tokenizer (split on
/// whitespace, isolate each punctuation character) and the WordPiece model (greedy longest match from the left,
/// "##" before every piece but a word's first; a word with an unmatched position, or longer than 100 characters,
/// is one unknown token). The character data comes from bert_tables.hpp.

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/bert_tables.hpp"
#include "polyformer/tokenizers/unicode.hpp"
#include "polyformer/tokenizers/vocabulary.hpp"

namespace polyformer::tokenizers {

namespace detail {

inline std::uint8_t bert_flags(char32_t c) noexcept {
  const auto* end = std::end(bert_flag_ranges);
  const auto* it = std::upper_bound(std::begin(bert_flag_ranges), end, c,
                                    [](char32_t v, const BertFlagRange& r) { return v < r.first; });
  if (it == std::begin(bert_flag_ranges)) return 0;
  --it;
  return c <= it->last ? it->flags : 0;
}

/// c's replacement in `table`, or nullptr when c stays.
template <std::size_t N>
const char* bert_mapping(const BertMapping (&table)[N], char32_t c) noexcept {
  const auto* it = std::lower_bound(std::begin(table), std::end(table), c,
                                    [](const BertMapping& m, char32_t v) { return m.code_point < v; });
  return it != std::end(table) && it->code_point == c ? it->replacement : nullptr;
}

enum BertFlag : std::uint8_t { bert_deleted = 1, bert_space = 2, bert_cjk = 4, bert_split = 8, bert_punctuation = 16 };

}  // namespace detail

/// BertNormalizer's options (transformers' BertTokenizer: clean_text, tokenize_chinese_chars, strip_accents —
/// which follows lowercase when not given —, do_lower_case).
struct BertNormalizer {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;

  /// The normalized text of `text` (valid UTF-8, else format_error naming `func`).
  std::string normalize(std::string_view text, const char* func = "BertNormalizer") const {
    std::string out;
    out.reserve(text.size() + text.size() / 4);
    for (std::size_t i = 0; i < text.size();) {
      std::size_t n = 0;
      const char32_t c = decode_utf8(text, i, n, func);
      const std::string_view original = text.substr(i, n);
      i += n;
      const std::uint8_t flags = detail::bert_flags(c);
      if (clean_text && (flags & detail::bert_deleted)) continue;
      if (clean_text && (flags & detail::bert_space)) {
        out += ' ';
        continue;
      }
      const bool spaced = handle_chinese_chars && (flags & detail::bert_cjk);
      if (spaced) out += ' ';
      if (strip_accents && c >= 0xAC00 && c < 0xAC00 + 11172) {  // a Hangul syllable: its jamo
        const char32_t s = c - 0xAC00;
        append_utf8(out, 0x1100 + s / 588);
        append_utf8(out, 0x1161 + (s % 588) / 28);
        if (s % 28 != 0) append_utf8(out, 0x11A7 + s % 28);
      } else if (const char* r = mapped(c)) {
        out += r;
      } else {
        out.append(original);
      }
      if (spaced) out += ' ';
    }
    return out;
  }

 private:
  const char* mapped(char32_t c) const noexcept {
    if (lowercase && strip_accents) return detail::bert_mapping(detail::bert_lowercase_strip, c);
    if (lowercase) return detail::bert_mapping(detail::bert_lowercase, c);
    if (strip_accents) return detail::bert_mapping(detail::bert_strip, c);
    return nullptr;
  }
};

/// BertPreTokenizer: the words of `text` (valid UTF-8): split at whitespace (dropped), every punctuation character a
/// word of its own.
inline std::vector<std::string_view> bert_pre_tokenize(std::string_view text, const char* func = "bert_pre_tokenize") {
  std::vector<std::string_view> words;
  std::size_t start = 0;
  const auto flush = [&](std::size_t end) {
    if (end > start) words.push_back(text.substr(start, end - start));
  };
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 0;
    const char32_t c = decode_utf8(text, i, n, func);
    const std::uint8_t flags = detail::bert_flags(c);
    if (flags & detail::bert_split) {
      flush(i);
      start = i + n;
    } else if (flags & detail::bert_punctuation) {
      flush(i);
      words.push_back(text.substr(i, n));
      start = i + n;
    }
    i += n;
  }
  flush(text.size());
  return words;
}

/// The WordPiece model: a vocabulary, its unknown token, the continuation prefix and the longest word it splits.
class WordPieceModel {
 public:
  WordPieceModel() = default;
  /// `vocab`: token → id (Vocabulary); `unk`: the unknown token, which must be in it. Throws format_error naming
  /// `source`.
  WordPieceModel(const std::vector<std::pair<std::string, int>>& vocab, const std::string& unk, std::string prefix,
                 std::size_t max_chars, const std::string& source)
      : vocab_(vocab, source), prefix_(std::move(prefix)), max_chars_(max_chars) {
    unk_id_ = vocab_.id_of(unk);
    if (unk_id_ < 0)
      throw format_error(polyformer::detail::cat(source, ": the unknown token '", unk, "' is not in the vocabulary"));
  }

  int id_of(const std::string& token) const { return vocab_.id_of(token); }
  const std::string& token(int id) const { return vocab_.token(id); }
  std::size_t size() const noexcept { return vocab_.size(); }
  const std::string& prefix() const noexcept { return prefix_; }

  /// Appends the ids of one word (valid UTF-8) to `ids`.
  void encode_word(std::string_view word, std::vector<int>& ids) const {
    std::vector<std::size_t> bounds;  // each character's byte offset, then the end
    for (std::size_t i = 0; i < word.size();) {
      std::size_t prefix_length = 0;
      const std::size_t n = detail::utf8_sequence(word, i, prefix_length);
      bounds.push_back(i);
      i += n == 0 ? 1 : n;
    }
    bounds.push_back(word.size());
    if (bounds.size() - 1 > max_chars_) {
      ids.push_back(unk_id_);
      return;
    }
    const std::size_t before = ids.size();
    std::string candidate;
    for (std::size_t start = 0; start + 1 < bounds.size();) {
      int found = -1;
      std::size_t end = bounds.size() - 1;
      for (; end > start; --end) {  // the longest piece from `start` in the vocabulary
        candidate.assign(start > 0 ? prefix_ : std::string());
        candidate.append(word.substr(bounds[start], bounds[end] - bounds[start]));
        if ((found = id_of(candidate)) >= 0) break;
      }
      if (found < 0) {  // no piece fits here: the whole word is unknown
        ids.resize(before);
        ids.push_back(unk_id_);
        return;
      }
      ids.push_back(found);
      start = end;
    }
  }

 private:
  Vocabulary vocab_;
  std::string prefix_ = "##";
  std::size_t max_chars_ = 100;
  int unk_id_ = 0;
};

/// The WordPiece decoder: pieces after the first lose the prefix or get a space before them; with `cleanup`,
/// transformers' clean_up_tokenization: spaces before . ? ! , and some contractions are removed.
inline std::string wordpiece_decode(const std::vector<std::string_view>& tokens, const std::string& prefix,
                                    bool cleanup) {
  std::string out;
  std::string token;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    std::string_view piece = tokens[i];
    token.clear();
    if (i > 0) {
      if (!prefix.empty() && piece.starts_with(prefix)) piece.remove_prefix(prefix.size());
      else token += ' ';
    }
    token.append(piece);
    if (cleanup) {
      for (const auto& [from, to] : {std::pair<std::string_view, std::string_view>{" .", "."}, {" ?", "?"},
                                     {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"},
                                     {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}})
        for (std::size_t at = token.find(from); at != std::string::npos; at = token.find(from, at + to.size()))
          token.replace(at, from.size(), to);
    }
    out += token;
  }
  return out;
}

}  // namespace polyformer::tokenizers
