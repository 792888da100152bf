#pragma once
/// \file SentencePiece's precompiled normalizer (its `precompiled_charsmap`: T5's, ALBERT's, XLM-R's NFKC-like
/// rewriting), as the tokenizers library runs a tokenizer.json's `Precompiled` normalizer. The charsmap is a
/// little-endian u32 byte count, a double-array trie (Aoki's, as the Darts library lays it out) of that many bytes,
/// then the replacement strings, each ending in a NUL. The text is rewritten one grapheme cluster at a time
/// (graphemes.hpp): a cluster of fewer than 6 bytes that starts with a key of the trie is replaced whole by the
/// shortest such key's string; any other cluster character by character, each replaced by its own key's string or
/// kept. (The whole-cluster rule can drop the rest of a cluster; the tokenizers library does so, and ids follow it.)

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/graphemes.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

namespace detail {

/// The bytes of standard base64 text (RFC 4648, '=' padding optional); format_error naming `what` otherwise.
inline std::string base64_decode(std::string_view text, const std::string& what) {
  const auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.size() % 4 == 1)
    throw format_error(polyformer::detail::cat(what, ": base64 of ", text.size(), " characters, expected a length that is "
                                               "not 1 more than a multiple of 4"));
  std::string out;
  out.reserve(text.size() / 4 * 3 + 2);
  std::uint32_t bits = 0;
  int count = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const int v = value(text[i]);
    if (v < 0)
      throw format_error(polyformer::detail::cat(what, ": character ", i, " of the base64 text is not base64"));
    bits = (bits << 6) | std::uint32_t(v);
    if (++count == 4) {
      out += static_cast<char>((bits >> 16) & 0xFF);
      out += static_cast<char>((bits >> 8) & 0xFF);
      out += static_cast<char>(bits & 0xFF);
      bits = 0;
      count = 0;
    }
  }
  if (count == 2) out += static_cast<char>((bits >> 4) & 0xFF);
  if (count == 3) {
    out += static_cast<char>((bits >> 10) & 0xFF);
    out += static_cast<char>((bits >> 2) & 0xFF);
  }
  return out;
}

}  // namespace detail

class Precompiled {
 public:
  /// From the charsmap's bytes; `what` names it in errors (format_error for a charsmap that is cut short, whose trie
  /// is not whole units, or whose strings are not UTF-8).
  Precompiled(std::string_view charsmap, const std::string& what) {
    using polyformer::detail::cat;
    if (charsmap.size() < 4)
      throw format_error(cat(what, ": the charsmap has ", charsmap.size(), " bytes, expected at least 4"));
    std::uint32_t trie_bytes = 0;
    for (int b = 3; b >= 0; --b) trie_bytes = (trie_bytes << 8) | static_cast<unsigned char>(charsmap[std::size_t(b)]);
    if (trie_bytes % 4 != 0 || trie_bytes < 4 || trie_bytes > charsmap.size() - 4)
      throw format_error(cat(what, ": the charsmap's trie is ", trie_bytes, " bytes, expected a multiple of 4 from 4 to ",
                             charsmap.size() - 4));
    units_.resize(trie_bytes / 4);
    for (std::size_t u = 0; u < units_.size(); ++u) {
      std::uint32_t v = 0;
      for (int b = 3; b >= 0; --b) v = (v << 8) | static_cast<unsigned char>(charsmap[4 + 4 * u + std::size_t(b)]);
      units_[u] = v;
    }
    strings_.assign(charsmap.substr(4 + trie_bytes));
    validate_utf8(strings_, what.c_str());
  }

  /// From tokenizer.json's base64 `precompiled_charsmap`.
  static Precompiled from_base64(std::string_view text, const std::string& what) {
    return Precompiled(detail::base64_decode(text, what), what);
  }

  /// The string the trie gives the shortest of its keys that starts `chunk`, or none.
  std::optional<std::string_view> transform(std::string_view chunk) const noexcept {
    const auto offset = [](std::uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); };
    std::size_t node = offset(units_[0]);
    for (const char ch : chunk) {
      const auto c = static_cast<unsigned char>(ch);
      if (c == 0) break;
      node ^= c;
      if (node >= units_.size()) return std::nullopt;
      const std::uint32_t unit = units_[node];
      if ((unit & ((1u << 31) | 0xFFu)) != c) return std::nullopt;  // the unit's label is another byte
      node ^= offset(unit);
      if ((unit >> 8) & 1u) {  // a key ends here: its value is the offset of its string
        if (node >= units_.size()) return std::nullopt;
        const std::size_t start = units_[node] & 0x7FFFFFFFu;
        if (start > strings_.size() || (start < strings_.size() && (strings_[start] & 0xC0) == 0x80)) return std::nullopt;
        const std::size_t end = strings_.find('\0', start);
        return std::string_view(strings_).substr(start, (end == std::string::npos ? strings_.size() : end) - start);
      }
    }
    return std::nullopt;
  }

  /// `text` (valid UTF-8; format_error naming `func` otherwise) rewritten as the file's header says.
  std::string normalize(std::string_view text, const char* func) const {
    std::string out;
    out.reserve(text.size());
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t end = grapheme_end(text, at, func);
      const std::string_view cluster = text.substr(at, end - at);
      at = end;
      if (cluster.size() < 6) {
        if (const auto whole = transform(cluster)) {
          out.append(*whole);
          continue;
        }
      }
      for (std::size_t i = 0, n = 0; i < cluster.size(); i += n) {
        decode_utf8(cluster, i, n, func);
        const std::string_view character = cluster.substr(i, n);
        const auto replaced = transform(character);
        out.append(replaced ? *replaced : character);
      }
    }
    return out;
  }

 private:
  std::vector<std::uint32_t> units_;  // the trie (at least the root)
  std::string strings_;              // NUL-terminated replacements
};

}  // namespace polyformer::tokenizers
