#pragma once
/// \file A tokenizer's normalizer: the steps of tokenizer.json's `normalizer` (one, or a Sequence of them), each
/// rewriting the text of a segment before it is split into words. BertNormalizer (tokenizers/bert.hpp), Prepend,
/// Replace with a literal pattern (SentencePiece's spaces as U+2581, the legacy Llama pipeline) or a run of one
/// character (transformers' SentencePiece conversions: " {2,}"), Strip of whitespace, SentencePiece's Precompiled
/// character map (tokenizers/precompiled.hpp: T5's, ALBERT's), the Unicode normalization forms NFD, NFKD, NFC and
/// NFKC and StripAccents (tokenizers/unicode_normalization.hpp), and Lowercase.

#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "polyformer/tokenizers/bert.hpp"
#include "polyformer/tokenizers/precompiled.hpp"
#include "polyformer/tokenizers/unicode.hpp"
#include "polyformer/tokenizers/unicode_normalization.hpp"

namespace polyformer::tokenizers {

/// Puts `text` before a non-empty text.
struct Prepend {
  std::string text;
};

/// Replaces every occurrence of `pattern` (literal, non-empty), left to right, with `content`.
struct Replace {
  std::string pattern, content;
};

/// Replaces every run of at least `min_count` of `character` (one UTF-8 character) with `content`: the regular
/// expression "c{n,}".
struct ReplaceRun {
  std::string character;
  std::size_t min_count = 1;
  std::string content;
};

/// Removes whitespace (Unicode White_Space) from the start (`left`) and the end (`right`).
struct Strip {
  bool left = false, right = true;
};

/// One of the Unicode normalization forms (UAX #15).
struct UnicodeForm {
  enum class Kind { nfd, nfkd, nfc, nfkc };
  Kind kind = Kind::nfc;
};

/// Every character's full lowercase mapping (Rust's char::to_lowercase: İ becomes i and U+0307), one character at a
/// time, so Σ becomes σ at the end of a word too (never ς). The mappings are BertNormalizer's (bert_tables.hpp).
struct Lowercase {};

/// Removes the combining marks (General_Category M), decomposing nothing: after NFD it strips accents.
struct StripAccents {};

/// Whether `c` has Unicode's White_Space property (Rust's char::is_whitespace, which the tokenizers library uses).
inline bool is_white_space(char32_t c) noexcept {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/// Replaces every occurrence of `pattern` in `text` with `content`, left to right without overlaps.
inline std::string replace_all(std::string_view text, std::string_view pattern, std::string_view content) {
  std::string out;
  out.reserve(text.size());
  std::size_t at = 0;
  for (std::size_t found; (found = text.find(pattern, at)) != std::string_view::npos; at = found + pattern.size()) {
    out.append(text.substr(at, found - at));
    out.append(content);
  }
  out.append(text.substr(at));
  return out;
}

class Normalizer {
 public:
  using Step = std::variant<BertNormalizer, Prepend, Replace, ReplaceRun, Strip, Precompiled, UnicodeForm, Lowercase,
                            StripAccents>;

  Normalizer() = default;
  explicit Normalizer(std::vector<Step> steps) : steps_(std::move(steps)) {}

  bool empty() const noexcept { return steps_.empty(); }

  /// The text after every step, in order. `text` must be valid UTF-8 (format_error naming `func` otherwise).
  std::string normalize(std::string_view text, const char* func) const {
    validate_utf8(text, func);
    std::string out(text);
    for (const Step& step : steps_) {
      if (const auto* b = std::get_if<BertNormalizer>(&step)) out = b->normalize(out, func);
      else if (const auto* p = std::get_if<Prepend>(&step)) {
        if (!out.empty()) {
          std::string prefixed;
          prefixed.reserve(p->text.size() + out.size());
          prefixed.append(p->text).append(out);
          out = std::move(prefixed);
        }
      } else if (const auto* r = std::get_if<Replace>(&step)) {
        out = replace_all(out, r->pattern, r->content);
      } else if (const auto* run = std::get_if<ReplaceRun>(&step)) {
        out = replace_runs(out, *run);
      } else if (const auto* strip = std::get_if<Strip>(&step)) {
        out = strip_white_space(out, *strip);
      } else if (const auto* form = std::get_if<UnicodeForm>(&step)) {
        using K = UnicodeForm::Kind;
        out = form->kind == K::nfd ? nfd(out, func) : form->kind == K::nfkd ? nfkd(out, func)
              : form->kind == K::nfc ? nfc(out, func) : nfkc(out, func);
      } else if (std::holds_alternative<Lowercase>(step)) {
        out = lowercase(out, func);
      } else if (std::holds_alternative<StripAccents>(step)) {
        out = strip_accents(out, func);
      } else {
        out = std::get<Precompiled>(step).normalize(out, func);
      }
    }
    return out;
  }

 private:
  static std::string lowercase(std::string_view text, const char* func) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0, n = 0; i < text.size(); i += n) {
      const auto byte = static_cast<unsigned char>(text[i]);
      if (byte < 0x80) {  // ASCII without the search
        out += static_cast<char>(byte >= 'A' && byte <= 'Z' ? byte + ('a' - 'A') : byte);
        n = 1;
        continue;
      }
      const char32_t c = decode_utf8(text, i, n, func);
      if (const char* lower = detail::bert_mapping(detail::bert_lowercase, c)) out += lower;
      else out.append(text.substr(i, n));
    }
    return out;
  }

  static std::string replace_runs(std::string_view text, const ReplaceRun& r) {
    std::string out;
    out.reserve(text.size());
    const std::string_view c = r.character;
    for (std::size_t at = 0; at < text.size();) {
      std::size_t count = 0, end = at;
      while (text.substr(end, c.size()) == c) {
        end += c.size();
        ++count;
      }
      if (count >= r.min_count) {
        out.append(r.content);
        at = end;
      } else if (count > 0) {
        out.append(text.substr(at, end - at));
        at = end;
      } else {
        out += text[at++];
      }
    }
    return out;
  }

  static std::string strip_white_space(std::string_view text, const Strip& s) {
    std::size_t begin = 0, end = text.size(), n = 0;
    if (s.left)
      while (begin < end && is_white_space(decode_utf8(text, begin, n, "Strip"))) begin += n;
    if (s.right)
      while (end > begin) {
        std::size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        if (!is_white_space(decode_utf8(text, start, n, "Strip"))) break;
        end = start;
      }
    return std::string(text.substr(begin, end - begin));
  }

  std::vector<Step> steps_;
};

}  // namespace polyformer::tokenizers
