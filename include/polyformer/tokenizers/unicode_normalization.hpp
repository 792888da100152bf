#pragma once
/// \file The Unicode normalization forms NFD, NFKD, NFC and NFKC (Unicode Standard Annex #15, "Unicode Normalization
/// Forms") and the removal of combining marks, as the Hugging Face tokenizers library's NFD, NFKD, NFC, NFKC and
/// StripAccents normalizers do them, on its Unicode 9.0 data (normalization_tables.hpp). A form decomposes every
/// character fully (canonical or compatibility mappings; Hangul syllables by arithmetic), puts each run of
/// non-starters in canonical order (a stable sort by combining class) and, for NFC and NFKC, composes: each character
/// not blocked from the last starter before it (nothing between them, or only characters of a lower, non-zero class
/// once the composed ones are gone) is merged into it when the two form a primary composite.

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/tokenizers/normalization_tables.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

namespace detail {

// Hangul syllables (Unicode, section 3.12): S = S_BASE + (L index * V_COUNT + V index) * T_COUNT + T index.
inline constexpr char32_t hangul_s_base = 0xAC00, hangul_l_base = 0x1100, hangul_v_base = 0x1161;
inline constexpr char32_t hangul_t_base = 0x11A7;  // a T index of 0: U+11A7 itself is no trailing consonant
inline constexpr char32_t hangul_l_count = 19, hangul_v_count = 21, hangul_t_count = 28;
inline constexpr char32_t hangul_s_count = hangul_l_count * hangul_v_count * hangul_t_count;

/// c's canonical combining class.
inline std::uint8_t combining_class(char32_t c) noexcept {
  if (c < combining_class_ranges[0].first) return 0;
  const auto* it = std::upper_bound(std::begin(combining_class_ranges), std::end(combining_class_ranges), c,
                                    [](char32_t v, const CombiningClassRange& r) { return v < r.first; });
  --it;
  return c <= it->last ? it->ccc : 0;
}

/// Whether c is a combining mark (General_Category M), which StripAccents removes.
inline bool is_combining_mark(char32_t c) noexcept {
  if (c < combining_mark_ranges[0].first) return false;
  const auto* it = std::upper_bound(std::begin(combining_mark_ranges), std::end(combining_mark_ranges), c,
                                    [](char32_t v, const CombiningMarkRange& r) { return v < r.first; });
  --it;
  return c <= it->last;
}

/// c's entry in a decomposition table, or nullptr.
template <std::size_t N>
const DecompositionEntry* find_decomposition(const DecompositionEntry (&table)[N], char32_t c) noexcept {
  if (c < table[0].code_point) return nullptr;
  const auto* it = std::lower_bound(std::begin(table), std::end(table), c,
                                    [](const DecompositionEntry& e, char32_t v) { return e.code_point < v; });
  return it != std::end(table) && it->code_point == c ? it : nullptr;
}

/// Passes c's full canonical (or, with `compatibility`, compatibility) decomposition to `add`, a code point at a time.
template <typename Add>
void full_decomposition(char32_t c, bool compatibility, Add&& add) {
  if (c - hangul_s_base < hangul_s_count) {
    const char32_t s = c - hangul_s_base;
    add(hangul_l_base + s / (hangul_v_count * hangul_t_count));
    add(hangul_v_base + s % (hangul_v_count * hangul_t_count) / hangul_t_count);
    if (s % hangul_t_count != 0) add(hangul_t_base + s % hangul_t_count);
    return;
  }
  const DecompositionEntry* e = compatibility ? find_decomposition(compatibility_decompositions, c) : nullptr;
  if (e == nullptr) e = find_decomposition(canonical_decompositions, c);
  if (e == nullptr) {
    add(c);
    return;
  }
  for (std::size_t k = e->offset; k < std::size_t(e->offset) + e->length; ++k) add(decomposition_pool[k]);
}

/// The primary composite of a and b, or 0 when they do not compose.
inline char32_t compose_pair(char32_t a, char32_t b) noexcept {
  if (a - hangul_l_base < hangul_l_count && b - hangul_v_base < hangul_v_count)  // L + V: an LV syllable
    return hangul_s_base + ((a - hangul_l_base) * hangul_v_count + (b - hangul_v_base)) * hangul_t_count;
  if (a - hangul_s_base < hangul_s_count && (a - hangul_s_base) % hangul_t_count == 0 &&
      b - hangul_t_base - 1 < hangul_t_count - 1)  // LV + T: an LVT syllable
    return a + (b - hangul_t_base);
  const auto before = [](const CompositionPair& x, const CompositionPair& y) {
    return x.first != y.first ? x.first < y.first : x.second < y.second;
  };
  const auto* it = std::lower_bound(std::begin(composition_pairs), std::end(composition_pairs),
                                    CompositionPair{a, b, 0}, before);
  return it != std::end(composition_pairs) && it->first == a && it->second == b ? it->composite : 0;
}

/// Whether the starter c may compose with the character before it; no other starter interacts with what precedes it.
inline bool composes_with_previous(char32_t c) noexcept {
  if (c - hangul_v_base < hangul_v_count || c - hangul_t_base - 1 < hangul_t_count - 1) return true;  // V, T jamo
  return c >= composing_starters[0] &&
         std::binary_search(std::begin(composing_starters), std::end(composing_starters), c);
}

struct ClassedChar {
  char32_t c;
  std::uint8_t ccc;
};

/// Canonical ordering: each run of non-starters stably sorted by combining class.
inline void canonical_order(ClassedChar* first, ClassedChar* last) {
  const auto by_class = [](const ClassedChar& x, const ClassedChar& y) { return x.ccc < y.ccc; };
  for (ClassedChar* run = first; run != last;) {
    if (run->ccc == 0) {
      ++run;
      continue;
    }
    ClassedChar* end = run + 1;
    while (end != last && end->ccc != 0) ++end;
    if (end - run <= 16) {  // insertion sort: stable, and quick on the short runs text has
      for (ClassedChar* i = run + 1; i != end; ++i)
        for (ClassedChar* j = i; j != run && by_class(*j, *(j - 1)); --j) std::swap(*j, *(j - 1));
    } else {
      std::stable_sort(run, end, by_class);
    }
    run = end;
  }
}

/// Canonical composition of s[0, n), in place; returns the new length.
inline std::size_t canonical_compose(ClassedChar* s, std::size_t n) noexcept {
  constexpr std::size_t none = ~std::size_t(0);
  std::size_t starter = none, w = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const ClassedChar x = s[i];
    // Not blocked: adjacent to the starter, or after a (kept) non-starter of a lower class.
    if (starter != none && (w == starter + 1 || s[w - 1].ccc < x.ccc)) {
      if (const char32_t composite = compose_pair(s[starter].c, x.c)) {
        s[starter].c = composite;  // a starter, as every primary composite is
        continue;
      }
    }
    if (x.ccc == 0) starter = w;
    s[w++] = x;
  }
  return w;
}

/// One of the four normalization forms of `text` (valid UTF-8, else format_error naming `func`).
inline std::string normalize_unicode(std::string_view text, bool compatibility, bool composition, const char* func) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  // The decomposed text from the last starter that interacts with nothing before it; all before it is final.
  std::vector<ClassedChar> segment;
  const auto flush = [&] {
    if (segment.empty()) return;
    canonical_order(segment.data(), segment.data() + segment.size());
    const std::size_t n = composition ? canonical_compose(segment.data(), segment.size()) : segment.size();
    for (std::size_t k = 0; k < n; ++k) append_utf8(out, segment[k].c);
    segment.clear();
  };
  const auto add = [&](char32_t c) {
    const std::uint8_t ccc = combining_class(c);
    if (ccc == 0 && !(composition && composes_with_previous(c))) flush();
    segment.push_back({c, ccc});
  };
  for (std::size_t i = 0; i < text.size();) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      // ASCII characters are starters without decompositions, and no two of them compose: a run of them is final,
      // but for its last character, which may compose with a mark after it.
      std::size_t end = i + 1;
      while (end < text.size() && static_cast<unsigned char>(text[end]) < 0x80) ++end;
      flush();
      const std::size_t final_end = composition && end < text.size() ? end - 1 : end;
      out.append(text.substr(i, final_end - i));
      if (final_end < end) segment.push_back({static_cast<char32_t>(text[final_end]), 0});
      i = end;
      continue;
    }
    std::size_t length = 0;
    const char32_t c = decode_utf8(text, i, length, func);
    i += length;
    full_decomposition(c, compatibility, add);
  }
  flush();
  return out;
}

}  // namespace detail

/// Normalization Form D (canonical decomposition) of `text` (valid UTF-8, else format_error naming `func`).
inline std::string nfd(std::string_view text, const char* func = "nfd") {
  return detail::normalize_unicode(text, false, false, func);
}

/// Normalization Form KD (compatibility decomposition) of `text` (valid UTF-8, else format_error naming `func`).
inline std::string nfkd(std::string_view text, const char* func = "nfkd") {
  return detail::normalize_unicode(text, true, false, func);
}

/// Normalization Form C (canonical decomposition, then composition) of `text` (valid UTF-8, else format_error).
inline std::string nfc(std::string_view text, const char* func = "nfc") {
  return detail::normalize_unicode(text, false, true, func);
}

/// Normalization Form KC (compatibility decomposition, then composition) of `text` (valid UTF-8, else format_error).
inline std::string nfkc(std::string_view text, const char* func = "nfkc") {
  return detail::normalize_unicode(text, true, true, func);
}

/// StripAccents: `text` (valid UTF-8, else format_error naming `func`) without its combining marks, nothing decomposed.
inline std::string strip_accents(std::string_view text, const char* func = "strip_accents") {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    std::size_t length = 1;
    if (static_cast<unsigned char>(text[i]) >= 0x80) {
      if (!detail::is_combining_mark(decode_utf8(text, i, length, func))) out.append(text.substr(i, length));
    } else {
      std::size_t end = i + 1;
      while (end < text.size() && static_cast<unsigned char>(text[end]) < 0x80) ++end;
      out.append(text.substr(i, end - i));
      length = end - i;
    }
    i += length;
  }
  return out;
}

}  // namespace polyformer::tokenizers
