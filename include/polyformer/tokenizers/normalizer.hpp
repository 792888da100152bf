#pragma once
/// \file A tokenizer's normalizer: the steps of tokenizer.json's `normalizer` (one, or a Sequence of them), each
/// rewriting the text of a segment before it is split into words. BertNormalizer (tokenizers/bert.hpp), Prepend
/// and Replace with a literal pattern (SentencePiece's spaces as U+2581, the legacy Llama pipeline).

#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "polyformer/tokenizers/bert.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

/// Puts `text` before a non-empty text.
struct Prepend {
  std::string text;
};

/// Replaces every occurrence of `pattern` (literal, non-empty), left to right, with `content`.
struct Replace {
  std::string pattern, content;
};

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
  using Step = std::variant<BertNormalizer, Prepend, Replace>;

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
      } else {
        const auto& r = std::get<Replace>(step);
        out = replace_all(out, r.pattern, r.content);
      }
    }
    return out;
  }

 private:
  std::vector<Step> steps_;
};

}  // namespace polyformer::tokenizers
