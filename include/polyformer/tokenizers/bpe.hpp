#pragma once
/// \file Byte-pair encoding (Sennrich et al. 2016) as Hugging Face tokenizers' BPE model runs it: a word starts as
/// one symbol per character, and the adjacent pair of lowest merge rank (the leftmost among equals) merges until
/// no listed pair is left. Merges are kept by the ids they join, so a word's encoding never builds strings.

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/tokenizers/vocabulary.hpp"

namespace polyformer::tokenizers {

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

  /// The id of `token`, or -1.
  int id_of(const std::string& token) const { return vocab_.id_of(token); }
  /// The token of `id` ("" for an id in a gap of the vocabulary); id must be in 0..size()-1.
  const std::string& token(int id) const { return vocab_.token(id); }
  /// One past the largest id.
  std::size_t size() const noexcept { return vocab_.size(); }
  std::size_t merge_count() const noexcept { return merges_.size(); }

  /// Merges the symbols (ids of one word, in order) in place until no listed pair is left.
  void merge(std::vector<int>& symbols) const {
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

  Vocabulary vocab_;
  std::unordered_map<std::uint64_t, Merge> merges_;
};

}  // namespace polyformer::tokenizers
