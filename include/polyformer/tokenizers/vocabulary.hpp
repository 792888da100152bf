#pragma once
/// \file A tokenizer model's vocabulary: token ↔ id, both ways.

#include <algorithm>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"

namespace polyformer::tokenizers {

class Vocabulary {
 public:
  Vocabulary() = default;
  /// `entries`: token → id, any order; a token listed twice keeps its last id (as vocab.txt's later lines win).
  /// Throws format_error naming `source` for a negative id, an id given to two tokens, or an id past twice the
  /// number of entries plus 1024: the ids may leave gaps, but the table they index is sized by the largest, so the
  /// file's own length bounds it (a few tokens claiming id 2·10⁹ would otherwise allocate 64 GB).
  Vocabulary(const std::vector<std::pair<std::string, int>>& entries, const std::string& source) {
    using polyformer::detail::cat;
    int max_id = -1;
    const std::size_t bound = 2 * entries.size() + 1024;
    for (const auto& [token, id] : entries) {
      if (id < 0) throw format_error(cat(source, ": token '", token, "' has id ", id, ", expected >= 0"));
      if (std::size_t(id) >= bound)
        throw format_error(cat(source, ": token '", token, "' has id ", id, ", expected below ", bound, " (",
                               entries.size(), " tokens: twice as many, plus 1024)"));
      max_id = std::max(max_id, id);
    }
    tokens_.assign(std::size_t(max_id + 1), std::string());
    std::vector<bool> seen(tokens_.size(), false);
    for (const auto& [token, id] : entries) {
      if (seen[std::size_t(id)])
        throw format_error(cat(source, ": id ", id, " is given to both '", tokens_[std::size_t(id)], "' and '", token, "'"));
      seen[std::size_t(id)] = true;
      tokens_[std::size_t(id)] = token;
      ids_[token] = id;
    }
  }

  /// The id of `token`, or -1.
  int id_of(const std::string& token) const {
    const auto it = ids_.find(token);
    return it == ids_.end() ? -1 : it->second;
  }
  /// The token of `id` ("" for an id in a gap); id must be in 0..size()-1.
  const std::string& token(int id) const { return tokens_[std::size_t(id)]; }
  /// One past the largest id.
  std::size_t size() const noexcept { return tokens_.size(); }

 private:
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int> ids_;
};

}  // namespace polyformer::tokenizers
