#pragma once
/// \file Text of ids as they arrive, one at a time, for printing while generating: the text a whole decode would
/// give, in pieces. A token's text can depend on its neighbours (a SentencePiece decoder drops the first space; a
/// character can span several byte tokens), so each step decodes a short window of recent ids and passes on what it
/// adds to the window's previous text, holding back while that ends in an unfinished character (U+FFFD) — the way
/// the tokenizers library's DecodeStream does.

#include <algorithm>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/tokenizers/tokenizer.hpp"

namespace polyformer::tokenizers {

class DecodeStream {
 public:
  /// `tokenizer` must outlive the stream.
  explicit DecodeStream(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

  /// The text `id` adds, or "" while it is held back. Throws as Tokenizer::decode for an id that is no token.
  std::string step(int id) {
    ids_.push_back(id);
    const std::string text = tokenizer_->decode(std::span<const int>(ids_), skip_special_);
    if (text.size() <= prefix_.size() || text.ends_with(replacement)) return {};
    // A decoder that rewrites earlier text (WordPiece's clean-up joins " ." into ".") cannot take back what was
    // printed: the new text starts where the two first differ.
    const std::size_t kept = text.starts_with(prefix_) ? prefix_.size()
                                                       : std::size_t(std::mismatch(prefix_.begin(), prefix_.end(), text.begin()).first - prefix_.begin());
    std::string added = text.substr(kept);
    // The window keeps the ids since the previous emitted step: enough context for the next token's spacing.
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_ids_));
    prefix_ids_ = ids_.size();
    prefix_ = tokenizer_->decode(std::span<const int>(ids_), skip_special_);
    return added;
  }

  /// What is still held back (an unfinished character decodes as U+FFFD), after which the stream starts anew.
  std::string finish() {
    const std::string text = tokenizer_->decode(std::span<const int>(ids_), skip_special_);
    std::string rest = text.size() > prefix_.size() && text.starts_with(prefix_) ? text.substr(prefix_.size()) : "";
    ids_.clear();
    prefix_.clear();
    prefix_ids_ = 0;
    return rest;
  }

 private:
  static constexpr std::string_view replacement = "\xEF\xBF\xBD";  // U+FFFD
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<int> ids_;        // the window: ids since the last emitted step's predecessor, then newer ones
  std::size_t prefix_ids_ = 0;  // how many of ids_ the text prefix_ was decoded from
  std::string prefix_;
};

}  // namespace polyformer::tokenizers
