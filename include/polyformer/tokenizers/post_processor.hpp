#pragma once
/// \file What a tokenizer's post-processor does to the ids of a text or of a pair of texts: the special tokens it
/// puts around and between them and the type id of every id (which text of a pair it belongs to, as BERT's
/// token_type_ids). Every post-processor polyformer reads is a template, as the tokenizers library's
/// TemplateProcessing: BertProcessing, RobertaProcessing and none are templates too (tokenizers/tokenizer.hpp reads
/// them). Without special tokens a template keeps its sequences, in its order, with their type ids.

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"

namespace polyformer::tokenizers {

/// The ids of a text or a pair, and the type id of each.
struct Encoding {
  std::vector<int> ids;
  std::vector<int> type_ids;  ///< one per id
};

/// The templates of a text and of a pair.
class PostProcessor {
 public:
  /// One piece of a template: text A or B, or a special token's ids, with the type id its ids get.
  struct Piece {
    enum class Kind { a, b, special };
    Kind kind = Kind::a;
    int type_id = 0;
    std::vector<int> ids;  ///< a special token's ids
  };
  using Template = std::vector<Piece>;

  /// None: "A" for a text and "A B:1" for a pair (the tokenizers library's default, GPT-2's).
  PostProcessor() : PostProcessor({}, {}, 1) {}

  /// `before` A `after` for a text, `before` A `after` `before` B `after` for a pair, B's ids and its special tokens
  /// typed `pair_type_id` (transformers' LlamaTokenizer: <s> A <s> B with types 0 and 1; T5Tokenizer: A </s> B </s>,
  /// all 0).
  PostProcessor(std::vector<int> before, std::vector<int> after, int pair_type_id) {
    single_ = {special(before, 0), {Piece::Kind::a, 0, {}}, special(after, 0)};
    pair_ = {special(before, 0),       {Piece::Kind::a, 0, {}},           special(after, 0),
             special(before, pair_type_id), {Piece::Kind::b, pair_type_id, {}}, special(std::move(after), pair_type_id)};
    drop_empty();
  }

  /// Given templates. `pair` may be empty (a tokenizer that cannot encode pairs). Throws config_error unless
  /// `single` holds A once and no B, and a non-empty `pair` holds A and B once each.
  PostProcessor(Template single, Template pair) : single_(std::move(single)), pair_(std::move(pair)) {
    check(single_, false, "single");
    if (!pair_.empty()) check(pair_, true, "pair");
    drop_empty();
  }

  /// BertProcessing: [CLS] A [SEP] and [CLS] A [SEP] B:1 [SEP]:1.
  static PostProcessor bert(int cls, int sep) {
    return PostProcessor({special({cls}, 0), {Piece::Kind::a, 0, {}}, special({sep}, 0)},
                         {special({cls}, 0), {Piece::Kind::a, 0, {}}, special({sep}, 0), {Piece::Kind::b, 1, {}},
                          special({sep}, 1)});
  }
  /// RobertaProcessing: <s> A </s> and <s> A </s> </s> B </s>, every type id 0.
  static PostProcessor roberta(int cls, int sep) {
    return PostProcessor({special({cls}, 0), {Piece::Kind::a, 0, {}}, special({sep}, 0)},
                         {special({cls}, 0), {Piece::Kind::a, 0, {}}, special({sep, sep}, 0), {Piece::Kind::b, 0, {}},
                          special({sep}, 0)});
  }

  const Template& single() const noexcept { return single_; }
  const Template& pair() const noexcept { return pair_; }
  bool encodes_pairs() const noexcept { return !pair_.empty(); }

  /// The ids a template makes of text A's ids `a` (and B's `b` for a pair), without the special tokens when not
  /// `add_special_tokens`. Throws config_error for a pair when the tokenizer has no pair template.
  Encoding apply(const std::vector<int>& a, const std::vector<int>* b, bool add_special_tokens) const {
    if (b != nullptr && pair_.empty())
      throw config_error("Tokenizer::encode_pair: the tokenizer's post-processor has no template for a pair of texts");
    Encoding e;
    for (const Piece& p : b != nullptr ? pair_ : single_) {
      const std::vector<int>* ids = p.kind == Piece::Kind::a ? &a : p.kind == Piece::Kind::b ? b : &p.ids;
      if (p.kind == Piece::Kind::special && !add_special_tokens) continue;
      e.ids.insert(e.ids.end(), ids->begin(), ids->end());
      e.type_ids.insert(e.type_ids.end(), ids->size(), p.type_id);
    }
    return e;
  }

  /// The ids alone the single template makes of `a` (apply's without type ids): `a` itself, not copied, when the
  /// template adds no id.
  std::vector<int> apply_ids(std::vector<int> a, bool add_special_tokens) const {
    std::size_t added = 0;
    for (const Piece& p : single_) added += p.kind == Piece::Kind::special && add_special_tokens ? p.ids.size() : 0;
    if (added == 0) return a;  // the template is A and special tokens, and these add nothing
    std::vector<int> ids;
    ids.reserve(a.size() + added);
    for (const Piece& p : single_) {
      if (p.kind == Piece::Kind::special && !add_special_tokens) continue;
      const std::vector<int>& piece = p.kind == Piece::Kind::a ? a : p.ids;
      ids.insert(ids.end(), piece.begin(), piece.end());
    }
    return ids;
  }

 private:
  static Piece special(std::vector<int> ids, int type_id) { return {Piece::Kind::special, type_id, std::move(ids)}; }

  static void check(const Template& t, bool pair, const char* which) {
    int a = 0, b = 0;
    for (const Piece& p : t) {
      a += p.kind == Piece::Kind::a;
      b += p.kind == Piece::Kind::b;
      if (p.type_id < 0)
        throw config_error(polyformer::detail::cat("PostProcessor: a type id of the ", which, " template is ", p.type_id,
                                                   ", expected 0 or more"));
    }
    if (a != 1 || b != (pair ? 1 : 0))
      throw config_error(polyformer::detail::cat("PostProcessor: the ", which, " template holds A ", a, " and B ", b,
                                                 " times, expected A once", pair ? " and B once" : " and no B"));
  }

  void drop_empty() {
    for (Template* t : {&single_, &pair_})
      std::erase_if(*t, [](const Piece& p) { return p.kind == Piece::Kind::special && p.ids.empty(); });
  }

  Template single_, pair_;
};

}  // namespace polyformer::tokenizers
