#pragma once
/// \file The byte-pair tokenizer of llama2.c's `tokenizer.bin` files (tok512.bin, the 32000-token Llama 2
/// vocabulary): a SentencePiece BPE vocabulary exported with its merge scores, encoded and decoded exactly
/// as llama2.c's run.c does.
///
/// File: int32 max_token_length, then vocab_size records of (float32 score, int32 length, length bytes);
/// vocab_size comes from the model. Ids 0, 1, 2 are <unk>, BOS, EOS; ids 3..258 the byte tokens <0x00>..<0xFF>.
/// Encoding (Sennrich et al. 2016, BPE, with SentencePiece's scores as merge priorities): BOS, a dummy-prefix
/// " " token for non-empty text, one token per UTF-8 code point (its bytes as byte tokens when the code point
/// is not in the vocabulary), then repeatedly merge the adjacent pair whose concatenation is in the
/// vocabulary with the highest score (the leftmost on ties) until no pair merges.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/io/file.hpp"

namespace polyformer::io {

class Tokenizer {
 public:
  static constexpr int unk_id = 0;
  static constexpr int bos_id = 1;
  static constexpr int eos_id = 2;

  Tokenizer() = default;

  /// Reads `path` holding `vocab_size` records. Throws format_error for a file that is too short, has a
  /// negative length or trailing bytes, config_error for vocab_size < 3.
  static Tokenizer read(const std::string& path, int vocab_size) {
    return parse(detail::read_file(path, "tokenizer"), vocab_size, path);
  }

  /// Parses tokenizer bytes held in memory; `label` names them in messages.
  static Tokenizer parse(std::span<const unsigned char> bytes, int vocab_size, const std::string& label) {
    if (vocab_size < 3)
      throw config_error(detail::cat("tokenizer: ", label, ": vocab_size is ", vocab_size, ", expected >= 3"));
    Tokenizer t;
    std::size_t at = 0;
    const auto need = [&](std::size_t n, const char* what, int id) {
      if (n > bytes.size() - at)
        throw format_error(detail::cat("tokenizer: ", label, ": ", what, id >= 0 ? " of token " : "",
                                       id >= 0 ? std::to_string(id) : std::string(), " needs ", n, " bytes at offset ",
                                       at, " but the file has ", bytes.size(), " (expected ", vocab_size, " tokens)"));
    };
    const auto i32 = [&] {
      std::int32_t v;
      std::memcpy(&v, bytes.data() + at, 4);
      at += 4;
      return v;
    };
    need(4, "max_token_length", -1);
    t.max_token_length_ = i32();
    if (t.max_token_length_ < 1)
      throw format_error(detail::cat("tokenizer: ", label, ": max_token_length is ", t.max_token_length_,
                                     " at offset 0, expected >= 1"));
    // Sized as records are read, never by vocab_size alone: a record takes at least 8 bytes, so the file bounds it.
    const std::size_t fits = std::min(std::size_t(vocab_size), (bytes.size() - at) / 8);
    t.pieces_.reserve(fits);
    t.scores_.reserve(fits);
    for (int id = 0; id < vocab_size; ++id) {
      need(8, "score and length", id);
      float score;
      std::memcpy(&score, bytes.data() + at, 4);
      at += 4;
      const std::size_t len_at = at;
      const std::int32_t len = i32();
      if (len < 0)
        throw format_error(detail::cat("tokenizer: ", label, ": length of token ", id, " is ", len, " at offset ",
                                       len_at, ", expected >= 0"));
      need(static_cast<std::size_t>(len), "text", id);
      t.scores_.push_back(score);
      t.pieces_.emplace_back(reinterpret_cast<const char*>(bytes.data() + at), std::size_t(len));
      at += std::size_t(len);
    }
    if (at != bytes.size())
      throw format_error(detail::cat("tokenizer: ", label, ": ", bytes.size() - at, " bytes after token ",
                                     vocab_size - 1, " at offset ", at, ", expected the file to end (vocab_size ",
                                     vocab_size, ")"));
    t.ids_.reserve(t.pieces_.size());
    for (int id = 0; id < vocab_size; ++id) t.ids_.emplace(t.pieces_[std::size_t(id)], id);  // first id wins
    return t;
  }

  int vocab_size() const noexcept { return static_cast<int>(pieces_.size()); }
  int max_token_length() const noexcept { return max_token_length_; }
  /// A token's text and score; config_error naming the function for an id outside the vocabulary.
  const std::string& piece(int id) const { return pieces_[checked(id, "Tokenizer::piece")]; }
  float score(int id) const { return scores_[checked(id, "Tokenizer::score")]; }

  /// The id of an exact piece, or -1.
  int find(std::string_view piece) const {
    const auto it = ids_.find(std::string(piece));
    return it == ids_.end() ? -1 : it->second;
  }

  /// Token ids of `text` (up to its first NUL byte, as a C string), with BOS and EOS when asked. Throws config_error
  /// for a character the vocabulary has neither as a piece nor as byte tokens.
  std::vector<int> encode(std::string_view text, bool bos = true, bool eos = false) const {
    if (const auto nul = text.find('\0'); nul != std::string_view::npos) text = text.substr(0, nul);
    std::vector<int> tokens;
    tokens.reserve(text.size() + 3);
    if (bos) tokens.push_back(bos_id);
    if (!text.empty()) push_piece(tokens, " ");  // SentencePiece's dummy prefix
    // One token per UTF-8 code point (at most 4 bytes: a longer run of continuation bytes is cut there).
    std::string code_point;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) code_point.clear();
      code_point.push_back(static_cast<char>(c));
      const bool continues = i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (continues && code_point.size() < 4) continue;
      push_piece(tokens, code_point);
      code_point.clear();
    }
    // Greedy merges: the best-scoring adjacent pair (leftmost on ties) until none is in the vocabulary.
    std::string pair;
    for (;;) {
      float best_score = -1e10f;
      int best_id = -1;
      std::size_t best_at = 0;
      for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
        pair.assign(pieces_[std::size_t(tokens[i])]).append(pieces_[std::size_t(tokens[i + 1])]);
        const int id = find(pair);
        if (id != -1 && scores_[std::size_t(id)] > best_score) {
          best_score = scores_[std::size_t(id)];
          best_id = id;
          best_at = i;
        }
      }
      if (best_id == -1) break;
      tokens[best_at] = best_id;
      tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
    }
    if (eos) tokens.push_back(eos_id);
    return tokens;
  }

  /// The text of `token` following `prev`: a piece after BOS loses one leading space, and a byte token
  /// <0xXX> is that raw byte. Throws config_error naming the token for an id outside the vocabulary.
  std::string_view decode(int prev, int token) const {
    std::string_view piece = pieces_[checked(token, "Tokenizer::decode")];
    if (prev == bos_id && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
    if (const int byte = byte_value(piece); byte >= 0) return std::string_view(&byte_chars()[std::size_t(byte)], 1);
    return piece;
  }

  /// What run.c prints for a decoded piece: the piece up to its first NUL, except that a single byte which
  /// is neither printable ASCII nor white space prints nothing.
  static std::string_view printable(std::string_view piece) noexcept {
    if (const auto nul = piece.find('\0'); nul != std::string_view::npos) piece = piece.substr(0, nul);
    if (piece.size() == 1) {
      const auto b = static_cast<unsigned char>(piece[0]);
      const bool print = b >= 0x20 && b <= 0x7E;
      const bool space = b == ' ' || (b >= '\t' && b <= '\r');
      if (!print && !space) return {};
    }
    return piece;
  }

 private:
  std::size_t checked(int id, const char* func) const {
    if (id < 0 || id >= vocab_size())
      throw config_error(detail::cat(func, ": token ", id, ", expected 0..", vocab_size() - 1, " (the vocabulary)"));
    return static_cast<std::size_t>(id);
  }

  /// Appends the id of `piece`, or its bytes as byte tokens (<0xXX> is id byte + 3) when it is not a piece. Throws
  /// config_error when the vocabulary is too small to hold that byte's token.
  void push_piece(std::vector<int>& tokens, std::string_view piece) const {
    if (const int id = find(piece); id != -1) {
      tokens.push_back(id);
      return;
    }
    for (const char ch : piece) {
      const int byte = static_cast<unsigned char>(ch), id = byte + 3;
      if (static_cast<std::size_t>(id) >= pieces_.size()) {
        const char* hex = "0123456789ABCDEF";
        throw config_error(detail::cat("Tokenizer::encode: the text needs the byte token <0x", hex[byte >> 4],
                                       hex[byte & 15], "> (id ", id, "), but the vocabulary has ", pieces_.size(),
                                       " tokens"));
      }
      tokens.push_back(id);
    }
  }

  /// The byte of a piece spelled "<0x" followed by one or two hex digits (run.c's sscanf "<0x%02hhX>"), else -1.
  static int byte_value(std::string_view piece) noexcept {
    if (piece.size() < 4 || piece.substr(0, 3) != "<0x") return -1;
    const auto hex = [](char ch) {
      if (ch >= '0' && ch <= '9') return ch - '0';
      if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
      if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
      return -1;
    };
    const int hi = hex(piece[3]);
    if (hi < 0) return -1;
    const int lo = piece.size() > 4 ? hex(piece[4]) : -1;
    return lo < 0 ? hi : hi * 16 + lo;
  }

  /// The 256 single-byte strings a byte token decodes to.
  static const std::string& byte_chars() {
    static const std::string chars = [] {
      std::string s(256, '\0');
      for (int i = 0; i < 256; ++i) s[std::size_t(i)] = static_cast<char>(i);
      return s;
    }();
    return chars;
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> ids_;
  int max_token_length_ = 0;
};

}  // namespace polyformer::io
