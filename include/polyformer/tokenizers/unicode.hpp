#pragma once
/// \file UTF-8 for the tokenizers: strict decoding of input text (a tokenizer takes text, and invalid UTF-8 is
/// refused naming its byte offset), encoding, lossy decoding of produced bytes (each maximal invalid subsequence
/// becomes one U+FFFD, as Rust's String::from_utf8_lossy, which Hugging Face tokenizers' decoders use), and the
/// character classes of GPT-2's pre-tokenizer pattern (unicode_tables.hpp).

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/unicode_tables.hpp"

namespace polyformer::tokenizers {

/// A character's class in GPT-2's pattern.
enum class CharClass : std::uint8_t { other = 0, letter = 1, number = 2, space = 3 };

inline CharClass char_class(char32_t c) noexcept {
  if (c < 0x80) {  // ASCII without the search
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::letter;
    if (c >= '0' && c <= '9') return CharClass::number;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CharClass::space;
    return CharClass::other;
  }
  const auto* end = std::end(detail::class_ranges);
  const auto* it = std::upper_bound(std::begin(detail::class_ranges), end, c,
                                    [](char32_t v, const detail::ClassRange& r) { return v < r.first; });
  if (it == std::begin(detail::class_ranges)) return CharClass::other;
  --it;
  return c <= it->last ? static_cast<CharClass>(it->cls) : CharClass::other;
}

/// Appends the UTF-8 encoding of c (a valid scalar value) to out.
inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

namespace detail {

/// The length of the valid UTF-8 sequence at s[i] (1–4), or 0 with `valid_prefix` set to how many of its bytes
/// form the longest prefix of a valid sequence (at least 1): the Unicode "maximal subpart" that one U+FFFD
/// replaces.
inline std::size_t utf8_sequence(std::string_view s, std::size_t i, std::size_t& valid_prefix) noexcept {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  valid_prefix = 1;
  if (b0 < 0x80) return 1;
  std::size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 2;
  else if (b0 >= 0xE0 && b0 <= 0xEF) need = 3, lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
  else if (b0 >= 0xF0 && b0 <= 0xF4) need = 4, lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  for (std::size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) return 0;
    const unsigned char b = byte(i + k);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    valid_prefix = k + 1;
  }
  return need;
}

/// The scalar value of the valid sequence of `length` bytes at s[i].
inline char32_t utf8_value(std::string_view s, std::size_t i, std::size_t length) noexcept {
  const auto byte = [&](std::size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
  switch (length) {
    case 1: return byte(i);
    case 2: return ((byte(i) & 0x1F) << 6) | (byte(i + 1) & 0x3F);
    case 3: return ((byte(i) & 0x0F) << 12) | ((byte(i + 1) & 0x3F) << 6) | (byte(i + 2) & 0x3F);
    default:
      return ((byte(i) & 0x07) << 18) | ((byte(i + 1) & 0x3F) << 12) | ((byte(i + 2) & 0x3F) << 6) | (byte(i + 3) & 0x3F);
  }
}

}  // namespace detail

/// The character at s[i] and its length in bytes; throws format_error naming `func` and the byte offset when s
/// is not valid UTF-8 there.
inline char32_t decode_utf8(std::string_view s, std::size_t i, std::size_t& length, const char* func) {
  std::size_t prefix = 0;
  length = detail::utf8_sequence(s, i, prefix);
  if (length == 0) {
    const char* hex = "0123456789ABCDEF";
    const unsigned char b = static_cast<unsigned char>(s[i]);
    throw format_error(polyformer::detail::cat(func, ": the text is not valid UTF-8 at byte ", i, " (0x", hex[b >> 4],
                                               hex[b & 15], ")"));
  }
  return detail::utf8_value(s, i, length);
}

/// Throws format_error naming `func` and the byte offset unless `text` is valid UTF-8.
inline void validate_utf8(std::string_view text, const char* func) {
  for (std::size_t i = 0, n = 0; i < text.size(); i += n) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      n = 1;
      continue;
    }
    decode_utf8(text, i, n, func);
  }
}

/// Bytes as text: valid UTF-8 as it is, each maximal invalid subsequence replaced by one U+FFFD.
inline std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    std::size_t prefix = 0;
    const std::size_t n = detail::utf8_sequence(bytes, i, prefix);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += prefix;
    } else {
      out.append(bytes.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace polyformer::tokenizers
