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

namespace polyformer::tokenizers {

/// A BPE vocabulary (token → id, id → token) and its merges.
class BpeModel {
 public:
  BpeModel() = default;

  /// `vocab`: token → id (ids unique, any order); `merges`: pairs in rank order (a later duplicate of a pair takes
  /// its rank). Throws format_error naming `source` for a duplicate id, a negative one, or a merge whose parts or
  /// whose result are not in the vocabulary.
  BpeModel(const std::vector<std::pair<std::string, int>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, const std::string& source) {
    using polyformer::detail::cat;
    int max_id = -1;
    for (const auto& [token, id] : vocab) {
      if (id < 0) throw format_error(cat(source, ": token '", token, "' has id ", id, ", expected >= 0"));
      max_id = std::max(max_id, id);
    }
    tokens_.assign(std::size_t(max_id + 1), std::string());
    std::vector<bool> seen(tokens_.size(), false);
    for (const auto& [token, id] : vocab) {
      if (seen[std::size_t(id)])
        throw format_error(cat(source, ": id ", id, " is given to both '", tokens_[std::size_t(id)], "' and '", token, "'"));
      seen[std::size_t(id)] = true;
      tokens_[std::size_t(id)] = token;
      ids_.emplace(token, id);
    }
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
  int id_of(const std::string& token) const {
    const auto it = ids_.find(token);
    return it == ids_.end() ? -1 : it->second;
  }
  /// The token of `id` ("" for an id in a gap of the vocabulary); id must be in 0..size()-1.
  const std::string& token(int id) const { return tokens_[std::size_t(id)]; }
  /// One past the largest id.
  std::size_t size() const noexcept { return tokens_.size(); }
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

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int> ids_;
  std::unordered_map<std::uint64_t, Merge> merges_;
};

}  // namespace polyformer::tokenizers
