#pragma once
/// \file The Unigram language model tokenizer (Kudo 2018) as Hugging Face tokenizers runs it: a word is cut into the
/// pieces whose summed log-probabilities (the vocabulary's scores) are highest, found by Viterbi over every piece
/// that starts at each character. A character no piece covers is an unknown piece scored (lowest score − 10); runs
/// of unknown characters fuse into one unknown token, or with byte fallback become their <0xXX> byte tokens.

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

class UnigramModel {
 public:
  UnigramModel() = default;

  /// `pieces`: (piece, score) in id order; `unk_id`: the unknown piece's id, or -1 for none (a text with a character
  /// no piece covers is then refused when encoded). Throws format_error naming `source` for a duplicate piece or an
  /// unk_id outside the vocabulary.
  UnigramModel(std::vector<std::pair<std::string, double>> pieces, int unk_id, bool byte_fallback,
               const std::string& source)
      : pieces_(std::move(pieces)), unk_id_(unk_id), byte_fallback_(byte_fallback) {
    using polyformer::detail::cat;
    if (unk_id_ >= static_cast<int>(pieces_.size()))
      throw format_error(cat(source, ": unk_id is ", unk_id_, ", expected below the vocabulary's ", pieces_.size()));
    min_score_ = std::numeric_limits<double>::infinity();
    for (std::size_t id = 0; id < pieces_.size(); ++id) {
      const auto& [piece, score] = pieces_[id];
      if (!ids_.emplace(piece, static_cast<int>(id)).second)
        throw format_error(cat(source, ": the piece '", piece, "' is listed twice (ids ", ids_[piece], " and ", id, ")"));
      min_score_ = std::min(min_score_, score);
      max_length_ = std::max(max_length_, piece.size());
    }
    const char* hex = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) byte_ids_[std::size_t(b)] = id_of(std::string{'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'});
  }

  /// The id of `piece`, or -1.
  int id_of(const std::string& piece) const {
    const auto it = ids_.find(piece);
    return it == ids_.end() ? -1 : it->second;
  }
  const std::string& piece(int id) const { return pieces_[std::size_t(id)].first; }
  std::size_t size() const noexcept { return pieces_.size(); }
  int unk_id() const noexcept { return unk_id_; }

  /// Appends the ids of `word` (valid UTF-8). Throws format_error naming `func` when a character needs the unknown
  /// piece and the model has none.
  void encode_word(std::string_view word, std::vector<int>& ids, const char* func) const {
    if (word.empty()) return;
    const std::size_t n = word.size();
    // best[e]: the best path over word[0, e): its score, where its last piece starts, that piece's id (-1: unknown).
    struct Node {
      double score = 0;
      std::size_t start = 0;
      int id = -1;
      bool reached = false;
    };
    std::vector<Node> best(n + 1);
    best[0].reached = true;
    const double unk_score = min_score_ - 10.0;
    std::string candidate;
    for (std::size_t start = 0; start < n;) {
      std::size_t prefix = 0, char_length = detail::utf8_sequence(word, start, prefix);
      if (char_length == 0) char_length = prefix;  // not reached for valid text
      const double here = best[start].score;
      bool single_character = false;
      // Every piece starting here, shortest first; a longer one ends only at a character boundary.
      for (std::size_t end = start + 1; end <= n && end - start <= max_length_; ++end) {
        if (end < n && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80) continue;
        candidate.assign(word.substr(start, end - start));
        const auto it = ids_.find(candidate);
        if (it == ids_.end()) continue;
        const double score = here + pieces_[std::size_t(it->second)].second;
        if (!best[end].reached || score > best[end].score) best[end] = {score, start, it->second, true};
        if (end - start == char_length) single_character = true;
      }
      if (!single_character) {
        const std::size_t end = start + char_length;
        const double score = here + unk_score;
        if (!best[end].reached || score > best[end].score) best[end] = {score, start, -1, true};
      }
      start += char_length;
    }
    // Back from the end; runs of unknown characters join into one unknown piece.
    std::vector<std::pair<std::size_t, std::size_t>> spans;  // [start, end) of each piece, last first
    std::vector<int> span_ids;
    for (std::size_t end = n; end > 0;) {
      const Node& node = best[end];
      if (node.id < 0 && !span_ids.empty() && span_ids.back() < 0) spans.back().first = node.start;
      else {
        spans.emplace_back(node.start, end);
        span_ids.push_back(node.id);
      }
      end = node.start;
    }
    for (std::size_t i = spans.size(); i-- > 0;) {
      if (span_ids[i] >= 0) {
        ids.push_back(span_ids[i]);
        continue;
      }
      const std::string_view text = word.substr(spans[i].first, spans[i].second - spans[i].first);
      if (byte_fallback_ && std::all_of(text.begin(), text.end(),
                                        [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
        for (const char c : text) ids.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
      if (unk_id_ < 0)
        throw format_error(polyformer::detail::cat(func, ": '", text, "' has no piece and the Unigram model no unk_id"));
      ids.push_back(unk_id_);
    }
  }

 private:
  std::vector<std::pair<std::string, double>> pieces_;
  std::unordered_map<std::string, int> ids_;
  int unk_id_ = -1;
  bool byte_fallback_ = false;
  double min_score_ = 0;
  std::size_t max_length_ = 0;
  std::array<int, 256> byte_ids_{};
};

}  // namespace polyformer::tokenizers
