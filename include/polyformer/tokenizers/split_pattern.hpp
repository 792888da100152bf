#pragma once
/// \file The tokenizers library's Split pre-tokenizer with the regular expressions byte-level models ship, matched by
/// hand over the character classes of unicode.hpp rather than by a regex engine: GPT-2's (gpt2_split,
/// byte_level.hpp) and the one of OpenAI's cl100k_base that Llama 3 adopted,
///   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
/// with Qwen2's variant, whose numbers are one digit each (\p{N} for \p{N}{1,3}). Every character falls in one of
/// the alternatives, so the matches, "Isolated", are the whole text. Another pattern is refused by its caller.

#include <cstddef>
#include <optional>
#include <string_view>
#include <vector>

#include "polyformer/tokenizers/byte_level.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

/// A Split regular expression this library matches.
enum class SplitPattern { gpt2, cl100k, qwen2 };

/// The pattern whose regular expression (as tokenizer.json spells it) is `regex`, or nothing for another.
inline std::optional<SplitPattern> split_pattern_of(std::string_view regex) noexcept {
  if (regex == R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)") return SplitPattern::gpt2;
  constexpr std::string_view head = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|)";
  constexpr std::string_view tail = R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  if (!regex.starts_with(head) || !regex.ends_with(tail) || regex.size() < head.size() + tail.size()) return {};
  const std::string_view numbers = regex.substr(head.size(), regex.size() - head.size() - tail.size());
  if (numbers == R"(\p{N}{1,3})") return SplitPattern::cl100k;
  if (numbers == R"(\p{N})") return SplitPattern::qwen2;
  return {};
}

/// Splits `text` (valid UTF-8, else format_error naming `func`) into the matches of cl100k_base's pattern (numbers
/// in runs of up to `max_digits`: 3, or Qwen2's 1), each a view of `text`, in order.
inline std::vector<std::string_view> cl100k_split(std::string_view text, std::size_t max_digits,
                                                  const char* func = "cl100k_split") {
  std::vector<std::size_t> offset;
  std::vector<char32_t> code;
  std::vector<CharClass> cls;
  offset.reserve(text.size() + 1);
  code.reserve(text.size());
  cls.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 0;
    const char32_t c = decode_utf8(text, i, n, func);
    offset.push_back(i);
    code.push_back(c);
    cls.push_back(char_class(c));
    i += n;
  }
  offset.push_back(text.size());
  const std::size_t count = cls.size();
  const auto run = [&](std::size_t k, CharClass c) {  // end of the run of class c from k
    while (k < count && cls[k] == c) ++k;
    return k;
  };
  const auto line_break = [&](std::size_t k) { return code[k] == U'\r' || code[k] == U'\n'; };
  // (?i:…) folds case as Unicode does: the long s (U+017F) matches 's' too.
  const auto folded = [&](std::size_t k) -> char32_t {
    const char32_t c = code[k];
    if (c >= U'A' && c <= U'Z') return c + (U'a' - U'A');
    return c == 0x17F ? U's' : c;
  };
  const auto contraction = [&](std::size_t i) -> std::size_t {  // its length after the apostrophe, or 0
    if (code[i] != U'\'' || i + 1 >= count) return 0;
    const char32_t a = folded(i + 1), b = i + 2 < count ? folded(i + 2) : 0;
    if (a == U's' || a == U't' || a == U'm' || a == U'd') return 1;
    if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return 2;
    return 0;
  };
  std::vector<std::string_view> pieces;
  for (std::size_t i = 0; i < count;) {
    std::size_t end = i;
    if (const std::size_t n = contraction(i); n > 0) {
      end = i + 1 + n;
    } else if (cls[i] == CharClass::letter) {  // [^\r\n\p{L}\p{N}]?\p{L}+ without its first character
      end = run(i, CharClass::letter);
    } else if (cls[i] != CharClass::number && !line_break(i) && i + 1 < count && cls[i + 1] == CharClass::letter) {
      end = run(i + 1, CharClass::letter);  // … with it: one space or symbol before the letters
    } else if (cls[i] == CharClass::number) {  // \p{N}{1,max_digits}
      end = std::min(run(i, CharClass::number), i + max_digits);
    } else if (cls[i] == CharClass::other || (code[i] == U' ' && i + 1 < count && cls[i + 1] == CharClass::other)) {
      end = run(cls[i] == CharClass::other ? i : i + 1, CharClass::other);  //  ?[^\s\p{L}\p{N}]+[\r\n]*
      while (end < count && line_break(end)) ++end;
    } else {  // whitespace
      const std::size_t stop = run(i, CharClass::space);
      std::size_t last_break = stop;
      for (std::size_t k = i; k < stop; ++k)
        if (line_break(k)) last_break = k;
      if (last_break < stop) end = last_break + 1;  // \s*[\r\n]+: up to the run's last line break
      else if (stop < count && stop - i >= 2) end = stop - 1;  // \s+(?!\S): the last one goes with what follows
      else end = stop;  // \s+
    }
    pieces.push_back(text.substr(offset[i], offset[end] - offset[i]));
    i = end;
  }
  return pieces;
}

/// The matches of `pattern` in `text` (valid UTF-8, else format_error naming `func`), in order.
inline std::vector<std::string_view> split_by_pattern(std::string_view text, SplitPattern pattern, const char* func) {
  switch (pattern) {
    case SplitPattern::gpt2:
      return gpt2_split(text, func);
    case SplitPattern::cl100k:
      return cl100k_split(text, 3, func);
    case SplitPattern::qwen2:
      break;
  }
  return cl100k_split(text, 1, func);
}

}  // namespace polyformer::tokenizers
