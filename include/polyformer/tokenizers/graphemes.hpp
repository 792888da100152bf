#pragma once
/// \file Extended grapheme clusters (Unicode Standard Annex #29, rules GB3–GB13; the tables are Unicode 15.0's,
/// tokenizers/grapheme_tables.hpp): what a reader sees as one character, e.g. a letter and its combining accents,
/// CR LF, a Hangul syllable in jamo, an emoji ZWJ sequence, a flag. SentencePiece's precompiled normalizer, as the
/// tokenizers library runs it, rewrites text a cluster at a time.

#include <algorithm>
#include <cstddef>
#include <string_view>

#include "polyformer/tokenizers/grapheme_tables.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

namespace detail {

inline GraphemeBreak grapheme_break(char32_t c) noexcept {
  if (c >= 0xAC00 && c <= 0xD7A3) return (c - 0xAC00) % 28 == 0 ? GraphemeBreak::lv : GraphemeBreak::lvt;
  const auto* end = std::end(grapheme_break_ranges);
  const auto* r = std::upper_bound(std::begin(grapheme_break_ranges), end, c,
                                   [](char32_t v, const GraphemeBreakRange& range) { return v < range.first; });
  if (r == std::begin(grapheme_break_ranges)) return GraphemeBreak::other;
  --r;
  return c <= r->last ? r->kind : GraphemeBreak::other;
}

inline bool extended_pictographic(char32_t c) noexcept {
  const auto* r = std::upper_bound(std::begin(extended_pictographic_ranges), std::end(extended_pictographic_ranges), c,
                                   [](char32_t v, const CodePointRange& range) { return v < range.first; });
  return r != std::begin(extended_pictographic_ranges) && c <= (r - 1)->last;
}

}  // namespace detail

/// The end (a byte offset) of the grapheme cluster that starts at byte `start` of `text`, which must be valid UTF-8
/// from there (format_error naming `func` otherwise). `start` < text.size().
inline std::size_t grapheme_end(std::string_view text, std::size_t start, const char* func = "grapheme_end") {
  using detail::GraphemeBreak;
  using B = GraphemeBreak;
  std::size_t length = 0;
  char32_t c = decode_utf8(text, start, length, func);
  B previous = detail::grapheme_break(c);
  // GB11: the cluster so far ends in Extended_Pictographic Extend* (pictographic) or in that and a ZWJ (joined).
  bool pictographic = detail::extended_pictographic(c), joined = false;
  std::size_t regional = previous == B::regional_indicator ? 1 : 0;  // GB12/13: indicators so far, in a row
  std::size_t at = start + length;
  while (at < text.size()) {
    c = decode_utf8(text, at, length, func);
    const B next = detail::grapheme_break(c);
    const bool next_pictographic = detail::extended_pictographic(c);
    bool keep;
    if (previous == B::cr && next == B::lf) keep = true;                                                  // GB3
    else if (previous == B::cr || previous == B::lf || previous == B::control) keep = false;               // GB4
    else if (next == B::cr || next == B::lf || next == B::control) keep = false;                           // GB5
    else if (previous == B::l && (next == B::l || next == B::v || next == B::lv || next == B::lvt)) keep = true;  // GB6
    else if ((previous == B::lv || previous == B::v) && (next == B::v || next == B::t)) keep = true;       // GB7
    else if ((previous == B::lvt || previous == B::t) && next == B::t) keep = true;                       // GB8
    else if (next == B::extend || next == B::zwj || next == B::spacing_mark) keep = true;                 // GB9, GB9a
    else if (previous == B::prepend) keep = true;                                                          // GB9b
    else if (joined && next_pictographic) keep = true;                                                     // GB11
    else keep = next == B::regional_indicator && regional % 2 == 1;                                        // GB12, GB13
    if (!keep) break;
    joined = pictographic && next == B::zwj;
    pictographic = next_pictographic || (pictographic && next == B::extend);
    regional = next == B::regional_indicator ? regional + 1 : 0;
    previous = next;
    at += length;
  }
  return at;
}

}  // namespace polyformer::tokenizers
