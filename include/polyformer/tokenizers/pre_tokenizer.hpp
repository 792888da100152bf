#pragma once
/// \file The tokenizers library's splitting pre-tokenizers, which cut a text into words without changing it:
/// Whitespace (the runs of \w+|[^\w\s]+, whitespace dropped), WhitespaceSplit (the runs between whitespace),
/// Punctuation (every punctuation character its own word; the "Isolated" behaviour), Digits (runs of numeric
/// characters, or each one alone, cut from their neighbours) and BertPreTokenizer, applied one after another to every
/// word the one before made (a Sequence). The character classes come from the library itself (split_tables.hpp,
/// bert_tables.hpp).

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string_view>
#include <vector>

#include "polyformer/tokenizers/bert.hpp"
#include "polyformer/tokenizers/split_tables.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

namespace detail {

/// Flags of split_ranges for one code point: 1 word character, 2 whitespace, 4 numeric.
inline std::uint8_t split_flags(char32_t c) noexcept {
  const auto* end = std::end(split_ranges);
  const auto* it = std::upper_bound(std::begin(split_ranges), end, c,
                                    [](char32_t v, const SplitRange& r) { return v < r.first; });
  if (it == std::begin(split_ranges)) return 0;
  --it;
  return c <= it->last ? it->flags : 0;
}

}  // namespace detail

/// One splitting pre-tokenizer.
struct SplitStep {
  enum class Kind { whitespace, whitespace_split, punctuation, digits, bert };
  Kind kind = Kind::whitespace;
  bool individual_digits = false;  ///< Digits: each numeric character alone, not runs of them
};

/// Replaces every word of `words` by the words `step` cuts it into (empty ones dropped); `scratch` is reused.
inline void split_words(const SplitStep& step, std::vector<std::string_view>& words, std::vector<std::string_view>& scratch,
                        const char* func) {
  using Kind = SplitStep::Kind;
  scratch.clear();
  for (const std::string_view word : words) {
    if (step.kind == Kind::bert) {
      for (const std::string_view w : bert_pre_tokenize(word, func)) scratch.push_back(w);
      continue;
    }
    // The class of each character decides where words start and end: 0 dropped (whitespace), else a class id; a
    // character of a class that does not run on (`alone`) is a word by itself.
    std::size_t start = 0;
    int current = -1;  // class of the open word, -1 when none is open
    const auto close = [&](std::size_t at) {
      if (current > 0 && at > start) scratch.push_back(word.substr(start, at - start));
      current = -1;
    };
    for (std::size_t i = 0, n = 0; i < word.size(); i += n) {
      const char32_t c = decode_utf8(word, i, n, func);
      const std::uint8_t flags = detail::split_flags(c);
      int cls = 1;
      bool alone = false;
      switch (step.kind) {
        case Kind::whitespace: cls = (flags & 2) ? 0 : (flags & 1) ? 1 : 2; break;
        case Kind::whitespace_split: cls = (flags & 2) ? 0 : 1; break;
        case Kind::punctuation:
          alone = (detail::bert_flags(c) & 16) != 0;
          cls = alone ? 2 : 1;
          break;
        case Kind::digits:
          cls = (flags & 4) ? 2 : 1;
          alone = cls == 2 && step.individual_digits;
          break;
        case Kind::bert: break;
      }
      if (cls != current || alone) {
        close(i);
        start = i;
        current = cls;
      }
      if (alone) close(i + n);
    }
    close(word.size());
  }
  words.swap(scratch);
}

}  // namespace polyformer::tokenizers
