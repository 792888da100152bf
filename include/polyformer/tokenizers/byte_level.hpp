#pragma once
/// \file GPT-2's byte-level pre-tokenizer and decoder (Radford et al. 2019; Hugging Face tokenizers' ByteLevel):
/// text splits into pieces by GPT-2's pattern ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
/// \s+(?!\S)|\s+), matched here by hand over the character classes of unicode.hpp, and every byte of a piece is
/// spelled as one printable character (bytes_to_unicode: the printable bytes as themselves, the other 68 as
/// U+0100 onwards), the alphabet the vocabulary is written in.

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

/// The byte ↔ character map of byte-level vocabularies.
class ByteAlphabet {
 public:
  ByteAlphabet() {
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? char32_t(b) : next++;
      spelling_[std::size_t(b)].clear();
      append_utf8(spelling_[std::size_t(b)], c);
      byte_of_[c] = static_cast<short>(b);
    }
  }
  /// The character (as UTF-8) that spells byte b.
  const std::string& spelling(unsigned char b) const noexcept { return spelling_[b]; }
  /// The byte character c spells, or -1 when c spells none.
  int byte_of(char32_t c) const noexcept { return c < byte_of_.size() ? byte_of_[c] : -1; }

  /// A vocabulary entry's bytes; false (out unspecified) when one of its characters spells no byte.
  bool bytes_of(std::string_view token, std::string& out) const {
    out.clear();
    for (std::size_t i = 0; i < token.size();) {
      std::size_t prefix = 0;
      const std::size_t n = detail::utf8_sequence(token, i, prefix);
      if (n == 0) return false;
      const int b = byte_of(detail::utf8_value(token, i, n));
      if (b < 0) return false;
      out += static_cast<char>(b);
      i += n;
    }
    return true;
  }

  static const ByteAlphabet& instance() {
    static const ByteAlphabet alphabet;
    return alphabet;
  }

 private:
  std::array<std::string, 256> spelling_;
  std::array<short, 0x144> byte_of_ = make_unmapped();  // every spelling lies below U+0144
  static std::array<short, 0x144> make_unmapped() {
    std::array<short, 0x144> a{};
    a.fill(-1);
    return a;
  }
};

/// Splits `text` (valid UTF-8, else format_error naming `func`) into GPT-2's pieces, each a view of `text`, in
/// order; together they are the whole text.
inline std::vector<std::string_view> gpt2_split(std::string_view text, const char* func = "gpt2_split") {
  // Each character's class and byte offset, then the pattern's alternatives in order at each position.
  std::vector<std::size_t> offset;
  std::vector<CharClass> cls;
  offset.reserve(text.size() + 1);
  cls.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 0;
    const char32_t c = decode_utf8(text, i, n, func);
    offset.push_back(i);
    cls.push_back(char_class(c));
    i += n;
  }
  offset.push_back(text.size());
  const std::size_t count = cls.size();
  const auto is_space_char = [&](std::size_t k) { return text[offset[k]] == ' '; };  // U+0020 itself
  const auto run = [&](std::size_t k, CharClass c) {  // end of the run of class c from k
    while (k < count && cls[k] == c) ++k;
    return k;
  };
  std::vector<std::string_view> pieces;
  for (std::size_t i = 0; i < count;) {
    std::size_t end = i;
    if (text[offset[i]] == '\'' && i + 1 < count) {  // 's 't 're 've 'm 'll 'd, in the pattern's order
      const std::string_view rest = text.substr(offset[i + 1]);
      for (const std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"})
        if (rest.starts_with(suffix)) {
          end = i + 1 + suffix.size();
          break;
        }
    }
    if (end == i) {
      // ` ?X+` for X = letter, number, other: an optional U+0020 joins the run after it.
      const std::size_t start = is_space_char(i) && i + 1 < count && cls[i + 1] != CharClass::space ? i + 1 : i;
      if (cls[start] != CharClass::space) {
        end = run(start, cls[start]);
      } else {  // whitespace: \s+(?!\S) leaves the last one of a run followed by text to the piece after it
        const std::size_t stop = run(i, CharClass::space);
        end = stop < count && stop - i >= 2 ? stop - 1 : stop;
      }
    }
    pieces.push_back(text.substr(offset[i], offset[end] - offset[i]));
    i = end;
  }
  return pieces;
}

/// The ByteLevel decoder: a token's characters back to their bytes (a token with a character outside the
/// alphabet passes as its own UTF-8), the whole as text with invalid UTF-8 replaced (utf8_lossy).
inline std::string byte_level_decode(const std::vector<std::string_view>& tokens) {
  const ByteAlphabet& alphabet = ByteAlphabet::instance();
  std::string bytes, token_bytes;
  for (const std::string_view token : tokens) {
    if (alphabet.bytes_of(token, token_bytes)) bytes += token_bytes;
    else bytes.append(token);
  }
  return utf8_lossy(bytes);
}

}  // namespace polyformer::tokenizers
