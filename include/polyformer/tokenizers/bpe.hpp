#pragma once
/// \file Byte-pair encoding (Sennrich et al. 2016) as Hugging Face tokenizers' BPE model runs it: a word starts as
/// one symbol per character, and the adjacent pair of lowest merge rank (the leftmost among equals) merges until
/// no listed pair is left. Merges are kept by the ids they join, so a word's encoding never builds strings. A
/// character the vocabulary lacks becomes its UTF-8 bytes' `<0xXX>` tokens (byte fallback, SentencePiece's way),
/// else the unknown token (runs of them fused into one when asked), else nothing.

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/unicode.hpp"
#include "polyformer/tokenizers/vocabulary.hpp"

namespace polyformer::tokenizers {

/// What a BPE model does with a character that is not in its vocabulary (tokenizer.json's model.unk_token,
/// fuse_unk and byte_fallback).
struct BpeFallback {
  std::string unk_token;       ///< "" for none: such a character is dropped
  bool fuse_unk = false;       ///< a run of unknown characters gives one unknown token
  bool byte_fallback = false;  ///< the character's bytes as <0xXX> tokens, when the vocabulary has all of them
};

/// A BPE vocabulary (token → id, id → token) and its merges.
class BpeModel {
 public:
  BpeModel() = default;

  /// `vocab`: token → id (Vocabulary); `merges`: pairs in rank order (a later duplicate of a pair takes its rank).
  /// Throws format_error naming `source` for a bad vocabulary or a merge whose parts or whose result are not in it.
  BpeModel(const std::vector<std::pair<std::string, int>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, const std::string& source)
      : vocab_(vocab, source) {
    using polyformer::detail::cat;
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      const int left = id_of(a), right = id_of(b), merged = id_of(a + b);
      if (left < 0 || right < 0 || merged < 0)
        throw format_error(cat(source, ": merge ", rank, " ('", a, "' '", b, "') names ",
                               left < 0 ? "'" + a + "'" : right < 0 ? "'" + b + "'" : "'" + a + b + "'",
                               ", which is not in the vocabulary"));
      merges_[key(left, right)] = Merge{static_cast<std::uint32_t>(rank), merged};
    }
  }

  /// The same with a fallback for characters outside the vocabulary; format_error when its unknown token is not in
  /// the vocabulary.
  BpeModel(const std::vector<std::pair<std::string, int>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, const BpeFallback& fallback,
           const std::string& source)
      : BpeModel(vocab, merges, source) {
    if (!fallback.unk_token.empty()) {
      unk_id_ = id_of(fallback.unk_token);
      if (unk_id_ < 0)
        throw format_error(polyformer::detail::cat(source, ": the unknown token '", fallback.unk_token,
                                                   "' is not in the vocabulary"));
    }
    fuse_unk_ = fallback.fuse_unk;
    if (fallback.byte_fallback) {
      const char* hex = "0123456789ABCDEF";
      for (int b = 0; b < 256; ++b) byte_ids_[std::size_t(b)] = id_of(std::string{'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'});
    }
    byte_fallback_ = fallback.byte_fallback;
  }

  /// Appends the ids of `word` (valid UTF-8): one symbol per character, or the fallback's, then merged.
  /// `symbols` is scratch space.
  void encode_word(std::string_view word, std::vector<int>& ids, std::vector<int>& symbols) const {
    symbols.clear();
    bool pending_unk = false;
    std::string character;
    for (std::size_t i = 0; i < word.size();) {
      std::size_t prefix = 0;
      std::size_t n = detail::utf8_sequence(word, i, prefix);
      if (n == 0) n = prefix;  // not reached for valid text; keeps the walk moving otherwise
      character.assign(word.substr(i, n));
      i += n;
      if (const int id = id_of(character); id >= 0) {
        if (pending_unk) symbols.push_back(unk_id_), pending_unk = false;
        symbols.push_back(id);
        continue;
      }
      if (byte_fallback_ && std::all_of(character.begin(), character.end(),
                                        [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
        if (pending_unk) symbols.push_back(unk_id_), pending_unk = false;
        for (const char c : character) symbols.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
      if (unk_id_ < 0) continue;
      if (!fuse_unk_) symbols.push_back(unk_id_);
      else pending_unk = true;
    }
    if (pending_unk) symbols.push_back(unk_id_);
    merge(symbols);
    ids.insert(ids.end(), symbols.begin(), symbols.end());
  }

  /// The id of `token`, or -1.
  int id_of(const std::string& token) const { return vocab_.id_of(token); }
  /// The token of `id` ("" for an id in a gap of the vocabulary); id must be in 0..size()-1.
  const std::string& token(int id) const { return vocab_.token(id); }
  /// One past the largest id.
  std::size_t size() const noexcept { return vocab_.size(); }
  std::size_t merge_count() const noexcept { return merges_.size(); }

  /// Merges the symbols (ids of one word, in order) in place until no listed pair is left.
  void merge(std::vector<int>& symbols) const {
    if (symbols.size() > 48) {  // a long word (SentencePiece-style BPE takes whole lines as one): O(n log n)
      merge_long(symbols);
      return;
    }
    while (symbols.size() > 1) {
      std::uint32_t best_rank = UINT32_MAX;
      std::size_t best = 0;
      int merged = -1;
      for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
        const auto it = merges_.find(key(symbols[i], symbols[i + 1]));
        if (it != merges_.end() && it->second.rank < best_rank) {
          best_rank = it->second.rank;
          best = i;
          merged = it->second.id;
        }
      }
      if (merged < 0) return;
      symbols[best] = merged;
      symbols.erase(symbols.begin() + std::ptrdiff_t(best) + 1);
    }
  }

 private:
  struct Merge {
    std::uint32_t rank;
    int id;
  };
  static std::uint64_t key(int left, int right) noexcept {
    return (std::uint64_t(std::uint32_t(left)) << 32) | std::uint32_t(right);
  }
  const Merge* find_merge(int left, int right) const {
    const auto it = merges_.find(key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }

  /// merge() with the candidate pairs in a heap ordered by (rank, position) and the symbols in a linked list: the
  /// same choices as the scan (the lowest rank, the leftmost among equals), without its quadratic time.
  void merge_long(std::vector<int>& symbols) const {
    const std::size_t n = symbols.size();
    std::vector<std::size_t> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (std::size_t i = 0; i < n; ++i) prev[i] = i == 0 ? 0 : i - 1, next[i] = i + 1;
    struct Candidate {
      std::uint32_t rank;
      std::size_t left;
      int left_id, right_id, merged;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    const auto offer = [&](std::size_t left) {
      if (next[left] >= n) return;
      if (const Merge* m = find_merge(symbols[left], symbols[next[left]]))
        heap.push({m->rank, left, symbols[left], symbols[next[left]], m->id});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) offer(i);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      // Stale when either symbol has changed since the pair was offered.
      if (!alive[c.left] || next[c.left] >= n || symbols[c.left] != c.left_id || symbols[next[c.left]] != c.right_id)
        continue;
      const std::size_t right = next[c.left];
      symbols[c.left] = c.merged;
      alive[right] = false;
      next[c.left] = next[right];
      if (next[right] < n) prev[next[right]] = c.left;
      if (c.left != 0) offer(prev[c.left]);  // index 0 is always the first symbol: merges keep the left index
      offer(c.left);
    }
    std::size_t out = 0;
    for (std::size_t i = 0; i < n; i = next[i]) symbols[out++] = symbols[i];
    symbols.resize(out);
  }

  Vocabulary vocab_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::array<int, 256> byte_ids_ = filled_minus_one();  // <0xXX>'s id per byte (byte fallback), or -1
  int unk_id_ = -1;
  bool fuse_unk_ = false, byte_fallback_ = false;
  static std::array<int, 256> filled_minus_one() {
    std::array<int, 256> a;
    a.fill(-1);
    return a;
  }
};

}  // namespace polyformer::tokenizers
