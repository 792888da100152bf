#pragma once
/// \file A Hugging Face tokenizer (the `tokenizers` library's pipeline): added tokens are cut out of the text
/// first, each remaining segment is pre-tokenized and its pieces encoded by the model; decoding maps ids back to
/// tokens (added tokens as their content) and runs the decoder. Read from `tokenizer.json`, or from GPT-2's older
/// `vocab.json` + `merges.txt`.
///
/// What it runs today: byte-level BPE (GPT-2, RoBERTa and their kin: the ByteLevel pre-tokenizer, a BPE model, the
/// ByteLevel decoder; Llama 3 and Qwen2: a Split by their regular expression before ByteLevel, split_pattern.hpp),
/// SentencePiece-style BPE (Llama, Mistral: the normalizers Prepend and Replace or the Metaspace pre-tokenizer, a
/// BPE model over characters with byte fallback and an unknown token, the decoders Replace, ByteFallback, Fuse and
/// Strip or Metaspace), Unigram (SentencePiece's other model, as T5's: Viterbi over the
/// pieces' scores, after SentencePiece's Precompiled normalizer, Strip and Replace of a run of spaces, with
/// Metaspace, WhitespaceSplit or both) and WordPiece (BERT: BertNormalizer, BertPreTokenizer, WordPiece,
/// the WordPiece decoder); the models that are not byte-level also after the splitting pre-tokenizers Whitespace,
/// WhitespaceSplit, Punctuation, Digits and BertPreTokenizer, alone or in a Sequence (pre_tokenizer.hpp). With added
/// and special tokens, and the special tokens and type ids a text or a pair of texts gets (TemplateProcessing,
/// BertProcessing, RobertaProcessing, ByteLevel, or a Sequence of ByteLevel and one of them: post_processor.hpp),
/// and the normalizers of normalizer.hpp. Anything else in a tokenizer.json (another normalizer, pre-tokenizer,
/// model, post-processor or decoder; truncation or padding; added tokens that strip spaces or match single words)
/// is refused by name when the file is read, never run differently.

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/core/error.hpp"
#include "polyformer/io/file.hpp"
#include "polyformer/tokenizers/bert.hpp"
#include "polyformer/tokenizers/bpe.hpp"
#include "polyformer/tokenizers/byte_level.hpp"
#include "polyformer/tokenizers/decoder.hpp"
#include "polyformer/tokenizers/json_number.hpp"
#include "polyformer/tokenizers/normalizer.hpp"
#include "polyformer/tokenizers/post_processor.hpp"
#include "polyformer/tokenizers/pre_tokenizer.hpp"
#include "polyformer/tokenizers/sentencepiece.hpp"
#include "polyformer/tokenizers/split_pattern.hpp"
#include "polyformer/tokenizers/unicode.hpp"
#include "polyformer/tokenizers/unigram.hpp"

namespace polyformer::tokenizers {

/// A token the tokenizer matches in the text itself, before the model (as `<|endoftext|>`).
struct AddedToken {
  int id = 0;
  std::string content;
  bool special = false;  ///< dropped by decode(…, skip_special_tokens = true)
};

/// A loaded tokenizer. Immutable once read, so one object serves any number of threads.
class Tokenizer {
 public:
  /// Reads a tokenizer.json. Throws format_error naming the file and the field for anything malformed or not
  /// supported (see the file comment).
  static Tokenizer from_json_file(const std::string& path) {
    return from_json(read_text(path, "tokenizer.json"), path);
  }

  /// The same from the file's text; `source` names it in messages.
  static Tokenizer from_json(std::string_view text, const std::string& source) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw format_error(polyformer::detail::cat(source, ": not valid JSON (", e.what(), ")"));
    }
    if (!j.is_object()) throw format_error(polyformer::detail::cat(source, ": expected a JSON object"));
    try {
      return from_parsed_json(j, text, source);
    } catch (const nlohmann::json::exception& e) {  // a value of another JSON type than its field takes
      throw format_error(polyformer::detail::cat(source, ": a field holds the wrong kind of JSON value (", e.what(), ")"));
    }
  }

 private:
  static Tokenizer from_parsed_json(const nlohmann::json& j, std::string_view text, const std::string& source) {
    Tokenizer t;
    t.source_ = source;
    Reader r{source};
    const auto field = [&](const char* key) { return j.contains(key) ? j[key] : nlohmann::json(); };
    for (const char* key : {"truncation", "padding"})
      if (!field(key).is_null()) r.unsupported(key, j[key], "null");
    if (!j.contains("model")) r.fail("model", "missing");
    const nlohmann::json& m = j["model"];
    if (!m.is_object()) r.fail("model", "not an object");
    const std::string type = m.value("type", m.contains("merges") ? "BPE" : "");
    if (type == "BPE") {
      t.bpe_ = read_bpe(r, m);
      if (const auto it = m.find("ignore_merges"); it != m.end()) {
        if (!it->is_boolean()) r.fail("model.ignore_merges", "not true or false");
        t.ignore_merges_ = it->get<bool>();
      }
    } else if (type == "WordPiece") {
      t.wordpiece_ = read_wordpiece(r, m);
    } else if (type == "Unigram") {
      t.unigram_ = read_unigram(r, m, detail::unigram_score_texts(text));
    } else {
      r.unsupported("model.type", m.contains("type") ? m["type"] : nlohmann::json(),
                    "\"BPE\", \"WordPiece\" or \"Unigram\"");
    }
    t.read_normalizer(r, field("normalizer"));
    t.read_pre_tokenizer(r, field("pre_tokenizer"));
    t.read_post_processor(r, field("post_processor"));
    t.read_decoder(r, field("decoder"));
    if (j.contains("added_tokens")) t.read_added_tokens(r, j["added_tokens"]);
    t.finish();
    return t;
  }

 public:

  /// GPT-2's older pair of files: vocab.json (token → id) and merges.txt (a "#version" line, then one "a b" merge
  /// per line), with GPT-2's pipeline (byte-level, no prefix space) and `<|endoftext|>` as a special token when
  /// the vocabulary has it.
  static Tokenizer from_vocab_merges(const std::string& vocab_path, const std::string& merges_path) {
    using polyformer::detail::cat;
    nlohmann::json vocab;
    try {
      vocab = nlohmann::json::parse(read_text(vocab_path, "vocab.json"));
    } catch (const nlohmann::json::exception& e) {
      throw format_error(cat(vocab_path, ": not valid JSON (", e.what(), ")"));
    }
    Reader r{vocab_path};
    std::vector<std::pair<std::string, std::string>> merges;
    const std::string text = read_text(merges_path, "merges.txt");
    std::size_t line_number = 0;
    for (std::size_t at = 0; at < text.size();) {
      std::size_t end = text.find('\n', at);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + at, end - at);
      at = end + 1;
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_number == 1 && line.starts_with("#version"))) continue;
      const std::size_t space = line.find(' ');
      if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
          line.find(' ', space + 1) != std::string_view::npos)
        throw format_error(cat(merges_path, ": line ", line_number, " is '", line, "', expected two tokens and one space"));
      merges.emplace_back(std::string(line.substr(0, space)), std::string(line.substr(space + 1)));
    }
    Tokenizer t;
    t.source_ = vocab_path;
    t.bpe_ = BpeModel(read_vocab(r, vocab), merges, merges_path);
    t.pre_tokenizer_ = PreTokenizer::byte_level;
    t.decoder_ = Decoder({decoders::ByteLevel{}});
    if (const int eot = t.bpe_->id_of("<|endoftext|>"); eot >= 0) t.added_.push_back({eot, "<|endoftext|>", true});
    t.finish();
    return t;
  }

  /// BERT's older vocab.txt (one token per line, its id the line's index) with transformers' BertTokenizer
  /// pipeline: BertNormalizer (lowercasing and stripping accents with `lowercase`), BertPreTokenizer, WordPiece over
  /// "[UNK]", [CLS] … [SEP] around a sequence, and [PAD] [UNK] [CLS] [SEP] [MASK] as special tokens.
  static Tokenizer from_vocab_txt(const std::string& path, bool lowercase = true) {
    using polyformer::detail::cat;
    const std::string text = read_text(path, "vocab.txt");
    std::vector<std::pair<std::string, int>> vocab;
    int id = 0;
    for (std::size_t at = 0; at < text.size(); ++id) {
      std::size_t end = text.find('\n', at);
      if (end == std::string::npos) end = text.size();
      std::string token = text.substr(at, end - at);
      while (!token.empty() && (token.back() == '\r' || token.back() == ' ' || token.back() == '\t')) token.pop_back();
      vocab.emplace_back(std::move(token), id);
      at = end + 1;
    }
    Tokenizer t;
    t.source_ = path;
    t.wordpiece_ = WordPieceModel(vocab, "[UNK]", "##", 100, path);
    t.normalizer_ = Normalizer({BertNormalizer{true, true, lowercase, lowercase}});
    t.pre_tokenizer_ = PreTokenizer::bert;
    t.decoder_ = Decoder({decoders::WordPiece{}});
    for (const char* special : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
      if (const int sid = t.wordpiece_->id_of(special); sid >= 0) t.added_.push_back({sid, special, true});
    const int cls = t.wordpiece_->id_of("[CLS]"), sep = t.wordpiece_->id_of("[SEP]");
    if (cls < 0 || sep < 0) throw format_error(cat(path, ": the vocabulary lacks [CLS] or [SEP]"));
    t.post_ = PostProcessor::bert(cls, sep);
    t.finish();
    return t;
  }

  /// A SentencePiece model file run by the SentencePiece library (tokenizers/sentencepiece.hpp), as transformers'
  /// slow tokenizers run it: the model's control pieces and <unk> are matched in the text as special tokens, and a
  /// sequence gets <s> before it with `add_bos` and </s> after it with `add_eos`.
  /// `extra_ids`: T5Tokenizer's sentinels <extra_id_0> … <extra_id_{n-1}>, special tokens after the model's pieces
  /// in reverse order (<extra_id_0> is the last id), as transformers numbers them.
  /// `pair_type_id`: the type id of a pair's second text and its special tokens (1 as LlamaTokenizer; T5Tokenizer's
  /// are all 0).
  static Tokenizer from_sentencepiece(const std::string& path, bool add_bos, bool add_eos, int extra_ids = 0,
                                      int pair_type_id = 1) {
    using polyformer::detail::cat;
    Tokenizer t;
    t.source_ = path;
    t.sentencepiece_ = SentencePieceModel::open(path);
    const SentencePieceModel& sp = *t.sentencepiece_;
    for (int id = 0; id < sp.size(); ++id)  // the control pieces (<s>, </s>, <pad>) and the unknown one
      if (sp.is_control(id) || id == sp.unk_id()) t.added_.push_back({id, sp.piece(id), true});
    if (extra_ids < 0 || extra_ids > 100000)
      throw config_error(cat("Tokenizer::from_sentencepiece: extra_ids is ", extra_ids, ", expected 0..100000"));
    for (int i = 0; i < extra_ids; ++i) {
      const std::string content = cat("<extra_id_", i, ">");
      if (sp.id_of(content) >= 0)
        throw format_error(cat(path, ": the model already has the piece ", content, " (extra_ids would add it again)"));
      t.added_.push_back({sp.size() + extra_ids - 1 - i, content, true});
    }
    std::vector<int> before, after;
    if (add_bos) {
      if (sp.bos_id() < 0) throw format_error(cat(path, ": the model has no <s> to put before a sequence"));
      before = {sp.bos_id()};
    }
    if (add_eos) {
      if (sp.eos_id() < 0) throw format_error(cat(path, ": the model has no </s> to put after a sequence"));
      after = {sp.eos_id()};
    }
    if (pair_type_id < 0)
      throw config_error(cat("Tokenizer::from_sentencepiece: pair_type_id is ", pair_type_id, ", expected 0 or more"));
    t.post_ = PostProcessor(std::move(before), std::move(after), pair_type_id);
    return t;
  }

  /// A tokenizer from a file or a model directory: tokenizer.json, vocab.txt, vocab.json with merges.txt beside
  /// it, or a SentencePiece model (spiece.model or tokenizer.model); a directory is searched for them in that order.
  /// A SentencePiece model's special tokens follow tokenizer_config.json beside it (add_bos_token, add_eos_token;
  /// T5Tokenizer adds </s> and extra_ids sentinels, 100 unless it says), else config.json's model_type ("t5": </s>
  /// after and 100 sentinels; otherwise <s> before, as Llama).
  /// Throws format_error naming what was looked for.
  static Tokenizer open(const std::string& file_or_directory) {
    namespace fs = std::filesystem;
    using polyformer::detail::cat;
    const fs::path p(file_or_directory);
    if (fs::is_directory(p)) {
      if (fs::exists(p / "tokenizer.json")) return from_json_file((p / "tokenizer.json").string());
      if (fs::exists(p / "vocab.txt")) return from_vocab_txt((p / "vocab.txt").string());
      if (fs::exists(p / "vocab.json") && fs::exists(p / "merges.txt"))
        return from_vocab_merges((p / "vocab.json").string(), (p / "merges.txt").string());
      for (const char* name : {"spiece.model", "tokenizer.model"})
        if (fs::exists(p / name)) return open_sentencepiece(p / name);
      throw format_error(cat("Tokenizer::open: ", file_or_directory,
                             " has neither tokenizer.json, vocab.txt, vocab.json with merges.txt, spiece.model nor "
                             "tokenizer.model"));
    }
    if (p.extension() == ".model") return open_sentencepiece(p);
    const std::string name = p.filename().string();
    if (name == "merges.txt")
      throw format_error(cat("Tokenizer::open: ", file_or_directory, " is GPT-2's merges: give its vocab.json or directory"));
    if (name.ends_with(".txt")) return from_vocab_txt(p.string());
    if (name == "vocab.json") {
      const fs::path merges = p.parent_path() / "merges.txt";
      if (!fs::exists(merges)) throw format_error(cat("Tokenizer::open: ", merges.string(), " (beside vocab.json) is missing"));
      return from_vocab_merges(p.string(), merges.string());
    }
    if (name.ends_with(".json")) return from_json_file(p.string());
    throw format_error(cat("Tokenizer::open: ", file_or_directory,
                           " is not a tokenizer.json, a vocab.txt, a vocab.json, a SentencePiece .model or a directory "
                           "holding one"));
  }

  /// The ids of `text` (UTF-8; format_error naming the byte offset otherwise), with the special tokens the
  /// post-processor puts around a sequence unless `add_special_tokens` is false.
  std::vector<int> encode(std::string_view text, bool add_special_tokens = true) const {
    return post_.apply_ids(encode_text(text), add_special_tokens);
  }

  /// The same with the type id of every id (what the post-processor's template for one text gives it).
  Encoding encode_with_type_ids(std::string_view text, bool add_special_tokens = true) const {
    return post_.apply(encode_text(text), nullptr, add_special_tokens);
  }

  /// A pair of texts as the post-processor's pair template joins them (BERT: [CLS] a [SEP] b [SEP], type ids 0 up to
  /// the first [SEP], 1 after it). Throws config_error when the tokenizer has no pair template.
  Encoding encode_pair(std::string_view a, std::string_view b, bool add_special_tokens = true) const {
    const std::vector<int> second = encode_text(b);
    return post_.apply(encode_text(a), &second, add_special_tokens);
  }

  /// The post-processor's templates.
  const PostProcessor& post_processor() const noexcept { return post_; }

 private:
  /// The ids of one text, before the post-processor.
  std::vector<int> encode_text(std::string_view text) const {
    const char* func = "Tokenizer::encode";
    std::vector<int> ids, symbols;
    std::vector<std::string_view> words, split_scratch;  // PreTokenizer::splits
    std::string spelled, normalized;
    const ByteAlphabet& alphabet = ByteAlphabet::instance();
    if (sentencepiece_) validate_utf8(text, func);
    // A word of a character-level model (SentencePiece-style BPE, Unigram); BPE's ignore_merges takes a word the
    // vocabulary holds whole as its one token.
    const auto encode_word = [&](std::string_view word) {
      if (unigram_) {
        unigram_->encode_word(word, ids, func);
        return;
      }
      if (ignore_merges_) {
        spelled.assign(word);
        if (const int id = bpe_->id_of(spelled); id >= 0) {
          ids.push_back(id);
          return;
        }
      }
      bpe_->encode_word(word, ids, symbols);
    };
    // The words of Metaspace over `segment` (`first`: it starts the text, for prepend_scheme "first").
    const auto encode_metaspace = [&](std::string_view segment, bool first) {
      std::string spaced = replace_all(segment, " ", metaspace_.replacement);
      const bool prepend = metaspace_.prepend == Metaspace::Prepend::always ||
                           (metaspace_.prepend == Metaspace::Prepend::first && first);
      if (prepend && !std::string_view(spaced).starts_with(metaspace_.replacement)) {
        std::string prefixed(metaspace_.replacement);
        prefixed.append(spaced);
        spaced = std::move(prefixed);
      }
      const std::string_view words = spaced;
      if (!metaspace_.split) {
        encode_word(words);
        return;
      }
      // Split before every replacement character (each piece starts with one, but perhaps the first).
      std::size_t start = 0;
      for (std::size_t at = words.find(metaspace_.replacement, 1); at != std::string_view::npos;
           at = words.find(metaspace_.replacement, at + 1)) {
        encode_word(words.substr(start, at - start));
        start = at;
      }
      encode_word(words.substr(start));
    };
    // One piece's bytes through the byte-level BPE model.
    const auto encode_bytes = [&](std::string_view piece) {
      if (ignore_merges_) {
        spelled.clear();
        for (const char b : piece) spelled += alphabet.spelling(static_cast<unsigned char>(b));
        if (const int id = bpe_->id_of(spelled); id >= 0) {
          ids.push_back(id);
          return;
        }
      }
      symbols.clear();
      bool every_byte = true;
      for (const char b : piece) {
        const int id = byte_ids_[static_cast<unsigned char>(b)];
        every_byte = every_byte && id >= 0;
        symbols.push_back(id);
      }
      if (!every_byte) {  // a byte's character the vocabulary lacks: the model's fallback (or nothing) for it
        spelled.clear();
        for (const char b : piece) spelled += alphabet.spelling(static_cast<unsigned char>(b));
        bpe_->encode_word(spelled, ids, symbols);
        return;
      }
      bpe_->merge(symbols);
      ids.insert(ids.end(), symbols.begin(), symbols.end());
    };
    // The ByteLevel pre-tokenizer over one piece (valid UTF-8): a space put before it unless it starts with one
    // (add_prefix_space), then GPT-2's pattern (use_regex) or the piece whole.
    std::string prefixed;
    const auto byte_level = [&](std::string_view piece) {
      if (add_prefix_space_ && !piece.empty() && piece.front() != ' ') {
        prefixed.assign(1, ' ');
        prefixed.append(piece);
        piece = prefixed;
      }
      if (!byte_regex_) {
        encode_bytes(piece);
        return;
      }
      for (const std::string_view p : gpt2_split(piece, func)) encode_bytes(p);
    };
    // `first`: the segment starts the text (Metaspace's prepend_scheme "first").
    const auto encode_segment = [&](std::string_view segment, bool first) {
      if (segment.empty()) return;
      if (sentencepiece_) {
        const std::vector<int> piece_ids = sentencepiece_->encode(segment);
        ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
        return;
      }
      if (!normalizer_.empty()) {
        normalized = normalizer_.normalize(segment, func);
        segment = normalized;
        if (segment.empty()) return;  // nothing left to pre-tokenize (e.g. only spaces, stripped)
      }
      if (pre_tokenizer_ == PreTokenizer::bert) {
        for (const std::string_view word : bert_pre_tokenize(segment, func)) wordpiece_->encode_word(word, ids);
        return;
      }
      if (pre_tokenizer_ == PreTokenizer::splits) {
        words.assign(1, segment);
        for (const SplitStep& step : splits_) split_words(step, words, split_scratch, func);
        for (const std::string_view word : words) {
          if (wordpiece_) wordpiece_->encode_word(word, ids);
          else encode_word(word);
        }
        return;
      }
      // A piece of the segment: one word (no pre-tokenizer), or the words Metaspace makes of it.
      const auto encode_piece = [&](std::string_view piece, bool first_piece) {
        if (pre_tokenizer_ == PreTokenizer::none) encode_word(piece);
        else encode_metaspace(piece, first_piece);
      };
      if (pre_tokenizer_ == PreTokenizer::none || pre_tokenizer_ == PreTokenizer::metaspace) {
        if (normalizer_.empty()) validate_utf8(segment, func);
        if (!whitespace_split_) {
          encode_piece(segment, first);
          return;
        }
        // WhitespaceSplit first: the runs between whitespace, the whitespace dropped.
        std::size_t start = 0;
        bool first_piece = first;
        for (std::size_t i = 0, n = 0; i < segment.size(); i += n) {
          if (!is_white_space(decode_utf8(segment, i, n, func))) continue;
          if (i > start) {
            encode_piece(segment.substr(start, i - start), first_piece);
            first_piece = false;
          }
          start = i + n;
        }
        if (start < segment.size()) encode_piece(segment.substr(start), first_piece);
        return;
      }
      // Byte-level BPE: a Split by a known pattern first (split_pattern_), then ByteLevel on each of its pieces —
      // a space before one that lacks it (add_prefix_space), GPT-2's pattern (byte_regex_) or the piece whole.
      if (split_pattern_) {
        for (const std::string_view piece : split_by_pattern(segment, *split_pattern_, func)) byte_level(piece);
      } else {
        if (!byte_regex_) validate_utf8(segment, func);
        byte_level(segment);
      }
    };
    std::size_t at = 0;
    while (at < text.size()) {  // the leftmost added token, the longest of those starting there
      std::size_t best_at = std::string_view::npos, best_length = 0;
      const AddedToken* best = nullptr;
      for (const AddedToken& a : added_) {
        const std::size_t found = a.content.empty() ? std::string_view::npos : text.find(a.content, at);
        if (found < best_at || (found == best_at && found != std::string_view::npos && a.content.size() > best_length)) {
          best_at = found;
          best_length = a.content.size();
          best = &a;
        }
      }
      if (best == nullptr) break;
      encode_segment(text.substr(at, best_at - at), at == 0);
      ids.push_back(best->id);
      at = best_at + best_length;
    }
    encode_segment(text.substr(at), at == 0);
    return ids;
  }

 public:

  /// The text of `ids`; special added tokens are left out with `skip_special_tokens`. Throws config_error naming
  /// the position of an id that is no token.
  std::string decode(std::span<const int> ids, bool skip_special_tokens = false) const {
    if (sentencepiece_) return decode_sentencepiece(ids, skip_special_tokens);
    std::vector<std::string_view> tokens;
    tokens.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const int id = ids[i];
      if (const AddedToken* a = added(id)) {
        if (!(skip_special_tokens && a->special)) tokens.push_back(a->content);
        continue;
      }
      const std::string* token = model_token(id);
      if (token == nullptr)
        throw config_error(polyformer::detail::cat("Tokenizer::decode: id ", i, " is ", id, ", which is no token of ",
                                                   source_));
      tokens.push_back(*token);
    }
    return decoder_.decode(tokens);
  }

  /// The number of ids: one past the largest of the model's and the added tokens'.
  std::size_t vocab_size() const noexcept {
    std::size_t n = bpe_         ? bpe_->size()
                    : wordpiece_ ? wordpiece_->size()
                    : unigram_   ? unigram_->size()
                                 : std::size_t(sentencepiece_->size());
    for (const AddedToken& a : added_) n = std::max(n, std::size_t(a.id) + 1);
    return n;
  }
  /// The id of a token (an added one's content, or the model's spelling), or -1.
  int token_to_id(const std::string& token) const {
    for (const AddedToken& a : added_)
      if (a.content == token) return a.id;
    return bpe_         ? bpe_->id_of(token)
           : wordpiece_ ? wordpiece_->id_of(token)
           : unigram_   ? unigram_->id_of(token)
                        : sentencepiece_->id_of(token);
  }
  const std::vector<AddedToken>& added_tokens() const noexcept { return added_; }
  /// The BPE model, or nullptr for another model.
  const BpeModel* bpe() const noexcept { return bpe_ ? &*bpe_ : nullptr; }
  /// The WordPiece model, or nullptr for another model.
  const WordPieceModel* wordpiece() const noexcept { return wordpiece_ ? &*wordpiece_ : nullptr; }
  /// The Unigram model, or nullptr for another model.
  const UnigramModel* unigram() const noexcept { return unigram_ ? &*unigram_ : nullptr; }

 private:
  // none: each segment is one word
  enum class PreTokenizer { byte_level, bert, metaspace, none, splits };
  /// The Metaspace pre-tokenizer: spaces become `replacement`, which may be put before the segment (always, or
  /// only before one that starts the text) and may split it into words, each starting with it.
  struct Metaspace {
    enum class Prepend { always, first, never };
    std::string replacement = "\xE2\x96\x81";  // U+2581
    Prepend prepend = Prepend::always;
    bool split = true;
  };

  /// A SentencePiece model's tokenizer, with the special tokens its directory's files ask for (see open()).
  static Tokenizer open_sentencepiece(const std::filesystem::path& model) {
    bool add_bos = true, add_eos = false;
    int extra_ids = 0, pair_type_id = 1;
    const auto read_json = [](const std::filesystem::path& file) {
      try {
        const std::vector<unsigned char> bytes = io::detail::read_file(file.string(), "JSON");
        return nlohmann::json::parse(bytes.begin(), bytes.end());
      } catch (const nlohmann::json::exception& e) {
        throw format_error(polyformer::detail::cat(file.string(), ": not valid JSON (", e.what(), ")"));
      }
    };
    const std::filesystem::path dir = model.parent_path();
    if (std::filesystem::exists(dir / "tokenizer_config.json")) {
      const nlohmann::json c = read_json(dir / "tokenizer_config.json");
      if (c.is_object() && c.value("tokenizer_class", "").starts_with("T5Tokenizer")) {
        add_bos = false, add_eos = true, pair_type_id = 0;
        extra_ids = 100;  // T5Tokenizer's default
      }
      if (c.is_object() && c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) add_bos = c["add_bos_token"].get<bool>();
      if (c.is_object() && c.contains("add_eos_token") && c["add_eos_token"].is_boolean()) add_eos = c["add_eos_token"].get<bool>();
      if (c.is_object() && c.contains("extra_ids")) {
        if (!c["extra_ids"].is_number_unsigned() || c["extra_ids"].get<std::uint64_t>() > 100000)
          throw format_error(polyformer::detail::cat((dir / "tokenizer_config.json").string(), ": extra_ids is ",
                                                     c["extra_ids"].dump(), ", expected a count up to 100000"));
        extra_ids = c["extra_ids"].get<int>();
      }
    } else if (std::filesystem::exists(dir / "config.json")) {
      const nlohmann::json c = read_json(dir / "config.json");
      if (c.is_object() && c.value("model_type", "") == "t5")
        add_bos = false, add_eos = true, extra_ids = 100, pair_type_id = 0;
    }
    return from_sentencepiece(model.string(), add_bos, add_eos, extra_ids, pair_type_id);
  }

  /// Runs of ordinary ids decoded by the library; special ones as their pieces (or left out).
  std::string decode_sentencepiece(std::span<const int> ids, bool skip_special_tokens) const {
    std::string out;
    std::vector<int> run;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const int id = ids[i];
      const AddedToken* a = added(id);
      if (a == nullptr && (id < 0 || id >= sentencepiece_->size()))
        throw config_error(polyformer::detail::cat("Tokenizer::decode: id ", i, " is ", id, ", which is no token of ",
                                                   source_));
      if (a == nullptr) {
        run.push_back(id);
        continue;
      }
      out += sentencepiece_->decode(run);
      run.clear();
      if (!(skip_special_tokens && a->special)) out += a->content;
    }
    out += sentencepiece_->decode(run);
    return out;
  }

  /// Where messages come from, and how they say what is wrong.
  struct Reader {
    const std::string& source;
    [[noreturn]] void fail(const std::string& field, const std::string& what) const {
      throw format_error(polyformer::detail::cat(source, ": ", field, " is ", what));
    }
    [[noreturn]] void unsupported(const std::string& field, const nlohmann::json& found, const std::string& supported) const {
      std::string shown = found.dump();
      if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
      throw format_error(polyformer::detail::cat(source, ": ", field, " is ", shown, ", expected ", supported,
                                                 " (polyformer does not run it)"));
    }
  };

  static std::vector<std::pair<std::string, int>> read_vocab(const Reader& r, const nlohmann::json& vocab) {
    if (!vocab.is_object()) r.fail("the vocabulary", "not an object of token: id");
    std::vector<std::pair<std::string, int>> out;
    out.reserve(vocab.size());
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer()) r.fail("the id of '" + token + "'", id.dump() + ", expected an integer");
      if (id.is_number_unsigned() && id.get<std::uint64_t>() > std::uint64_t(INT32_MAX))
        r.fail("the id of '" + token + "'", id.dump() + ", expected 0.." + std::to_string(INT32_MAX));
      out.emplace_back(token, id.get<int>());
    }
    return out;
  }

  static BpeModel read_bpe(const Reader& r, const nlohmann::json& m) {
    for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"}) {
      const nlohmann::json& v = m.contains(key) ? m[key] : nlohmann::json();
      const bool off = v.is_null() || (v.is_string() && v.get<std::string>().empty()) ||
                       (std::string(key) == "dropout" && v.is_number() && v.get<double>() == 0.0);
      if (!off) r.unsupported(std::string("model.") + key, v, "null");
    }
    BpeFallback fallback;
    if (m.contains("unk_token") && !m["unk_token"].is_null()) {
      if (!m["unk_token"].is_string()) r.fail("model.unk_token", m["unk_token"].dump() + ", expected a string or null");
      fallback.unk_token = m["unk_token"].get<std::string>();
    }
    const auto flag = [&](const char* key) {
      if (!m.contains(key) || m[key].is_null()) return false;
      if (!m[key].is_boolean()) r.fail(std::string("model.") + key, m[key].dump() + ", expected true or false");
      return m[key].get<bool>();
    };
    fallback.fuse_unk = flag("fuse_unk");
    fallback.byte_fallback = flag("byte_fallback");
    if (!m.contains("merges") || !m["merges"].is_array()) r.fail("model.merges", "missing or not a list");
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(m["merges"].size());
    for (std::size_t i = 0; i < m["merges"].size(); ++i) {
      const nlohmann::json& e = m["merges"][i];
      if (e.is_string()) {  // "a b"
        const std::string s = e.get<std::string>();
        const std::size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          r.fail(polyformer::detail::cat("model.merges[", i, "]"), "'" + s + "', expected two tokens and one space");
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["a", "b"]
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      } else {
        r.fail(polyformer::detail::cat("model.merges[", i, "]"), e.dump() + ", expected \"a b\" or [\"a\", \"b\"]");
      }
    }
    if (!m.contains("vocab")) r.fail("model.vocab", "missing");
    return BpeModel(read_vocab(r, m["vocab"]), merges, fallback, r.source);
  }

  /// `score_texts`: the scores as the file spells them (json_number.hpp), read as the tokenizers library reads them.
  static UnigramModel read_unigram(const Reader& r, const nlohmann::json& m, const std::vector<std::string>& score_texts) {
    using polyformer::detail::cat;
    if (!m.contains("vocab") || !m["vocab"].is_array()) r.fail("model.vocab", "missing or not a list of [piece, score]");
    std::vector<std::pair<std::string, double>> pieces;
    pieces.reserve(m["vocab"].size());
    for (std::size_t i = 0; i < m["vocab"].size(); ++i) {
      const nlohmann::json& e = m["vocab"][i];
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
        r.fail(cat("model.vocab[", i, "]"), e.dump() + ", expected [piece, score]");
      double score = e[1].get<double>();
      if (score_texts.size() == m["vocab"].size() && !score_texts[i].empty())
        if (const auto serde = detail::serde_json_f64(score_texts[i])) score = *serde;
      pieces.emplace_back(e[0].get<std::string>(), score);
    }
    int unk_id = -1;
    if (m.contains("unk_id") && !m["unk_id"].is_null()) {
      if (!m["unk_id"].is_number_unsigned()) r.fail("model.unk_id", m["unk_id"].dump() + ", expected an id or null");
      unk_id = m["unk_id"].get<int>();
    }
    bool byte_fallback = false;
    if (m.contains("byte_fallback") && !m["byte_fallback"].is_null()) {
      if (!m["byte_fallback"].is_boolean()) r.fail("model.byte_fallback", m["byte_fallback"].dump() + ", expected true or false");
      byte_fallback = m["byte_fallback"].get<bool>();
    }
    return UnigramModel(std::move(pieces), unk_id, byte_fallback, r.source);
  }

  static WordPieceModel read_wordpiece(const Reader& r, const nlohmann::json& m) {
    const auto text = [&](const char* key, const char* fallback) {
      if (!m.contains(key) || m[key].is_null()) return std::string(fallback);
      if (!m[key].is_string()) r.fail(std::string("model.") + key, m[key].dump() + ", expected a string");
      return m[key].get<std::string>();
    };
    std::size_t max_chars = 100;
    if (m.contains("max_input_chars_per_word")) {
      if (!m["max_input_chars_per_word"].is_number_unsigned()) r.fail("model.max_input_chars_per_word", "not a count");
      max_chars = m["max_input_chars_per_word"].get<std::size_t>();
    }
    if (!m.contains("vocab")) r.fail("model.vocab", "missing");
    return WordPieceModel(read_vocab(r, m["vocab"]), text("unk_token", "[UNK]"), text("continuing_subword_prefix", "##"),
                          max_chars, r.source);
  }

  /// A Regex pattern that is a run of one character, "c{n,}" (c literal or escaped, n >= 1), as (c, n); nothing for
  /// a String pattern; any other Regex is refused.
  static std::optional<std::pair<std::string, std::size_t>> read_run_pattern(const Reader& r, const std::string& at,
                                                                             const nlohmann::json& step) {
    if (!step.contains("pattern") || !step["pattern"].is_object() || !step["pattern"].contains("Regex")) return std::nullopt;
    const nlohmann::json& regex = step["pattern"]["Regex"];
    const std::string text = regex.is_string() ? regex.get<std::string>() : std::string();
    std::size_t i = 0, length = 0;
    if (!text.empty() && text[0] == '\\') ++i;
    if (i < text.size()) {
      try {
        decode_utf8(text, i, length, "Tokenizer");
      } catch (const format_error&) {
        length = 0;
      }
    }
    const std::string character = length ? text.substr(i, length) : std::string();
    const bool meta = character.size() == 1 && std::string_view("\\^$.|?*+()[]{}").find(character[0]) != std::string_view::npos;
    const std::size_t brace = i + length;
    std::size_t count = 0, digits = brace + 1;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9' && count < 1000000)
      count = count * 10 + std::size_t(text[digits++] - '0');
    const bool run = !character.empty() && (i == 1) == meta && brace < text.size() && text[brace] == '{' &&
                     digits > brace + 1 && count >= 1 && text.substr(digits) == ",}";
    if (!run) r.unsupported(at + ".pattern", step["pattern"], "{\"String\": …} or {\"Regex\": \"c{n,}\"} (a run of one character)");
    return std::pair{character, count};
  }

  /// A literal pattern: {"String": "..."} (a Regex one is refused).
  static std::string read_pattern(const Reader& r, const std::string& at, const nlohmann::json& step) {
    const nlohmann::json* p = step.contains("pattern") ? &step["pattern"] : nullptr;
    if (p == nullptr || !p->is_object() || !p->contains("String") || !(*p)["String"].is_string())
      r.unsupported(at + ".pattern", p ? *p : nlohmann::json(), "{\"String\": …}");
    std::string pattern = (*p)["String"].get<std::string>();
    if (pattern.empty()) r.fail(at + ".pattern", "empty");
    return pattern;
  }
  static std::string read_string(const Reader& r, const std::string& at, const nlohmann::json& step, const char* key) {
    if (!step.contains(key) || !step[key].is_string()) r.fail(at + "." + key, "missing or not a string");
    return step[key].get<std::string>();
  }

  void read_normalizer(const Reader& r, const nlohmann::json& n) {
    using polyformer::detail::cat;
    if (n.is_null()) return;
    const bool sequence = n.is_object() && n.value("type", "") == "Sequence";
    if (sequence && (!n.contains("normalizers") || !n["normalizers"].is_array())) r.fail("normalizer.normalizers", "missing or not a list");
    std::vector<Normalizer::Step> steps;
    for (std::size_t i = 0; i < (sequence ? n["normalizers"].size() : 1); ++i) {
      const nlohmann::json& step = sequence ? n["normalizers"][i] : n;
      const std::string at = sequence ? cat("normalizer.normalizers[", i, "]") : std::string("normalizer");
      const std::string type = step.is_object() ? step.value("type", "") : "";
      if (type == "BertNormalizer") {
        const auto flag = [&](const char* key, bool fallback) {
          if (!step.contains(key) || step[key].is_null()) return fallback;
          if (!step[key].is_boolean()) r.fail(at + "." + key, step[key].dump() + ", expected true or false");
          return step[key].get<bool>();
        };
        BertNormalizer b;
        b.clean_text = flag("clean_text", true);
        b.handle_chinese_chars = flag("handle_chinese_chars", true);
        b.lowercase = flag("lowercase", true);
        b.strip_accents = flag("strip_accents", b.lowercase);  // null: as lowercase
        steps.emplace_back(b);
      } else if (type == "Prepend") {
        steps.emplace_back(Prepend{read_string(r, at, step, "prepend")});
      } else if (type == "Replace") {
        if (const auto run = read_run_pattern(r, at, step)) {
          steps.emplace_back(ReplaceRun{run->first, run->second, read_string(r, at, step, "content")});
        } else {
          steps.emplace_back(Replace{read_pattern(r, at, step), read_string(r, at, step, "content")});
        }
      } else if (type == "Strip") {
        Strip strip;
        for (const auto& [key, flag] : {std::pair<const char*, bool*>{"strip_left", &strip.left}, {"strip_right", &strip.right}}) {
          if (!step.contains(key) || !step[key].is_boolean()) r.fail(at + "." + key, "missing or not true or false");
          *flag = step[key].get<bool>();
        }
        steps.emplace_back(strip);
      } else if (type == "Precompiled") {
        const std::string charsmap = read_string(r, at, step, "precompiled_charsmap");
        steps.emplace_back(Precompiled::from_base64(charsmap, r.source + ": " + at + ".precompiled_charsmap"));
      } else if (type == "NFD" || type == "NFKD" || type == "NFC" || type == "NFKC") {
        using K = UnicodeForm::Kind;
        steps.emplace_back(UnicodeForm{type == "NFD" ? K::nfd : type == "NFKD" ? K::nfkd : type == "NFC" ? K::nfc : K::nfkc});
      } else if (type == "Lowercase") {
        steps.emplace_back(Lowercase{});
      } else if (type == "StripAccents") {
        steps.emplace_back(StripAccents{});
      } else {
        r.unsupported(at, step, "null, a BertNormalizer, Prepend, Replace, Strip, Precompiled, NFD, NFKD, NFC, NFKC, "
                                "Lowercase, StripAccents or a Sequence of them");
      }
    }
    normalizer_ = Normalizer(std::move(steps));
  }

  /// null, ByteLevel (it only moves offsets), BertProcessing, RobertaProcessing, TemplateProcessing, or a Sequence
  /// of ByteLevel ones and at most one of the others.
  void read_post_processor(const Reader& r, const nlohmann::json& p) {
    using polyformer::detail::cat;
    if (p.is_null()) return;
    const std::string type = p.is_object() ? p.value("type", "") : "";
    if (type != "Sequence") {
      post_ = read_one_post_processor(r, p, "post_processor");
      return;
    }
    if (!p.contains("processors") || !p["processors"].is_array()) r.fail("post_processor.processors", "missing or not a list");
    bool seen = false;
    for (std::size_t i = 0; i < p["processors"].size(); ++i) {
      const nlohmann::json& step = p["processors"][i];
      const std::string at = cat("post_processor.processors[", i, "]");
      if (step.is_object() && step.value("type", "") == "ByteLevel") continue;
      if (seen) r.unsupported(at, step, "ByteLevel ones and at most one other post-processor");
      post_ = read_one_post_processor(r, step, at);
      seen = true;
    }
  }

  static PostProcessor read_one_post_processor(const Reader& r, const nlohmann::json& p, const std::string& at) {
    using polyformer::detail::cat;
    const std::string type = p.is_object() ? p.value("type", "") : "";
    const auto pair_id = [&](const char* key) {  // ["[CLS]", 101]
      if (!p.contains(key) || !p[key].is_array() || p[key].size() != 2 || !p[key][1].is_number_unsigned() ||
          p[key][1].get<std::uint64_t>() > 0x7fffffff)
        r.fail(cat(at, ".", key), "not a [token, id] pair with an id 0..2147483647");
      return p[key][1].get<int>();
    };
    if (type == "ByteLevel") return {};
    if (type == "BertProcessing") return PostProcessor::bert(pair_id("cls"), pair_id("sep"));
    if (type == "RobertaProcessing") return PostProcessor::roberta(pair_id("cls"), pair_id("sep"));
    if (type != "TemplateProcessing")
      r.unsupported(at, p, "null, a ByteLevel, BertProcessing, RobertaProcessing or TemplateProcessing one, or a "
                           "Sequence of them");
    // {"Sequence": {"id": "A", "type_id": 0}} or {"SpecialToken": {"id": "[SEP]", "type_id": 1}}, the special
    // token's ids from special_tokens
    const auto read_template = [&](const char* key) {
      PostProcessor::Template t;
      if (!p[key].is_array()) r.fail(cat(at, ".", key), "not a list");
      for (std::size_t i = 0; i < p[key].size(); ++i) {
        const nlohmann::json& piece = p[key][i];
        const std::string where = cat(at, ".", key, "[", i, "]");
        const bool sequence = piece.is_object() && piece.contains("Sequence");
        if (!sequence && !(piece.is_object() && piece.contains("SpecialToken")))
          r.fail(where, piece.dump() + ", expected {\"Sequence\": …} or {\"SpecialToken\": …}");
        const nlohmann::json& body = piece[sequence ? "Sequence" : "SpecialToken"];
        if (!body.is_object() || !body.contains("id") || !body["id"].is_string()) r.fail(where, "without a string id");
        int type_id = 0;
        if (body.contains("type_id")) {
          if (!body["type_id"].is_number_unsigned() || body["type_id"].get<std::uint64_t>() > 0x7fffffff)
            r.fail(where, "a type_id that is not an integer 0..2147483647");
          type_id = body["type_id"].get<int>();
        }
        const std::string name = body["id"].get<std::string>();
        if (sequence) {
          if (name != "A" && name != "B") r.fail(where, "the sequence '" + name + "', expected A or B");
          t.push_back({name == "A" ? PostProcessor::Piece::Kind::a : PostProcessor::Piece::Kind::b, type_id, {}});
          continue;
        }
        const nlohmann::json* special = p.contains("special_tokens") && p["special_tokens"].is_object() &&
                                                p["special_tokens"].contains(name)
                                            ? &p["special_tokens"][name] : nullptr;
        if (special == nullptr || !special->is_object() || !special->contains("ids") || !(*special)["ids"].is_array())
          r.fail(where, "the special token '" + name + "', which " + at + ".special_tokens does not list with its ids");
        PostProcessor::Piece token{PostProcessor::Piece::Kind::special, type_id, {}};
        for (const nlohmann::json& id : (*special)["ids"]) {
          if (!id.is_number_unsigned() || id.get<std::uint64_t>() > 0x7fffffff)
            r.fail(where, "a special token with an id that is not an integer 0..2147483647");
          token.ids.push_back(id.get<int>());
        }
        t.push_back(std::move(token));
      }
      const auto count = [&](PostProcessor::Piece::Kind kind) {
        return std::count_if(t.begin(), t.end(), [&](const PostProcessor::Piece& x) { return x.kind == kind; });
      };
      const bool pair = std::string_view(key) == "pair";
      const auto a = count(PostProcessor::Piece::Kind::a), b = count(PostProcessor::Piece::Kind::b);
      if (a != 1 || b != (pair ? 1 : 0))
        r.fail(cat(at, ".", key), cat("a template holding A ", a, " and B ", b, " times, expected A once and ",
                                      pair ? "B once" : "no B"));
      return t;
    };
    if (!p.contains("single") || p["single"].is_null()) r.fail(at + ".single", "missing");
    PostProcessor::Template single = read_template("single");
    PostProcessor::Template pair = p.contains("pair") && !p["pair"].is_null() ? read_template("pair") : PostProcessor::Template{};
    return PostProcessor(std::move(single), std::move(pair));
  }

  void read_decoder(const Reader& r, const nlohmann::json& d) {
    using polyformer::detail::cat;
    if (d.is_null()) return;
    const bool sequence = d.is_object() && d.value("type", "") == "Sequence";
    if (sequence && (!d.contains("decoders") || !d["decoders"].is_array())) r.fail("decoder.decoders", "missing or not a list");
    const std::size_t count = sequence ? d["decoders"].size() : 1;
    std::vector<Decoder::Step> steps;
    for (std::size_t i = 0; i < count; ++i) {
      const nlohmann::json& step = sequence ? d["decoders"][i] : d;
      const std::string at = sequence ? cat("decoder.decoders[", i, "]") : std::string("decoder");
      const std::string type = step.is_object() ? step.value("type", "") : "";
      if ((type == "ByteLevel" || type == "WordPiece") && i + 1 != count)
        r.unsupported(at, step, "ByteLevel and WordPiece only as the last decoder");
      if (type == "ByteLevel") {
        steps.emplace_back(decoders::ByteLevel{});
      } else if (type == "WordPiece") {
        decoders::WordPiece w;
        if (step.contains("prefix") && step["prefix"].is_string()) w.prefix = step["prefix"].get<std::string>();
        if (step.contains("cleanup") && step["cleanup"].is_boolean()) w.cleanup = step["cleanup"].get<bool>();
        steps.emplace_back(std::move(w));
      } else if (type == "Replace") {
        steps.emplace_back(decoders::Replace{read_pattern(r, at, step), read_string(r, at, step, "content")});
      } else if (type == "ByteFallback") {
        steps.emplace_back(decoders::ByteFallback{});
      } else if (type == "Fuse") {
        steps.emplace_back(decoders::Fuse{});
      } else if (type == "Strip") {
        decoders::Strip s;
        s.content = read_string(r, at, step, "content");
        if (s.content.empty()) r.fail(at + ".content", "empty");
        for (const char* key : {"start", "stop"})
          if (!step.contains(key) || !step[key].is_number_unsigned()) r.fail(at + "." + key, "missing or not a count");
        s.start = step["start"].get<std::size_t>();
        s.stop = step["stop"].get<std::size_t>();
        steps.emplace_back(std::move(s));
      } else if (type == "Metaspace") {
        const Metaspace m = read_metaspace(r, at, step);
        steps.emplace_back(decoders::Metaspace{m.replacement, m.prepend != Metaspace::Prepend::never});
      } else {
        r.unsupported(at, step,
                      "null, a ByteLevel, WordPiece, Replace, ByteFallback, Fuse, Strip, Metaspace or a Sequence of them");
      }
    }
    decoder_ = Decoder(std::move(steps));
  }

  /// The Metaspace pre-tokenizer's (or decoder's) settings: `replacement` (one character), `prepend_scheme`
  /// ("always", "first", "never"; older files say add_prefix_space) and `split`.
  static Metaspace read_metaspace(const Reader& r, const std::string& at, const nlohmann::json& step) {
    Metaspace m;
    m.replacement = read_string(r, at, step, "replacement");
    std::size_t length = 0;
    if (m.replacement.empty() || (validate_utf8(m.replacement, "Tokenizer"), decode_utf8(m.replacement, 0, length, "Tokenizer"),
                                  length != m.replacement.size()))
      r.fail(at + ".replacement", "'" + m.replacement + "', expected one character");
    if (step.contains("prepend_scheme")) {
      const std::string scheme = step["prepend_scheme"].is_string() ? step["prepend_scheme"].get<std::string>() : "";
      if (scheme == "always") m.prepend = Metaspace::Prepend::always;
      else if (scheme == "first") m.prepend = Metaspace::Prepend::first;
      else if (scheme == "never") m.prepend = Metaspace::Prepend::never;
      else r.fail(at + ".prepend_scheme", step["prepend_scheme"].dump() + ", expected \"always\", \"first\" or \"never\"");
    } else if (step.contains("add_prefix_space")) {
      if (!step["add_prefix_space"].is_boolean()) r.fail(at + ".add_prefix_space", "not true or false");
      m.prepend = step["add_prefix_space"].get<bool>() ? Metaspace::Prepend::always : Metaspace::Prepend::never;
    }
    if (step.contains("split")) {
      if (!step["split"].is_boolean()) r.fail(at + ".split", "not true or false");
      m.split = step["split"].get<bool>();
    }
    return m;
  }

  /// Whitespace, WhitespaceSplit, Punctuation (Isolated), Digits, BertPreTokenizer, or a Sequence of them
  /// (pre_tokenizer.hpp) into splits_; false, reading nothing, when `p` is none of these.
  bool read_splits(const Reader& r, const nlohmann::json& p) {
    using polyformer::detail::cat;
    const auto kind_of = [](const nlohmann::json& step) -> std::optional<SplitStep::Kind> {
      const std::string type = step.is_object() ? step.value("type", "") : "";
      if (type == "Whitespace") return SplitStep::Kind::whitespace;
      if (type == "WhitespaceSplit") return SplitStep::Kind::whitespace_split;
      if (type == "Punctuation") return SplitStep::Kind::punctuation;
      if (type == "Digits") return SplitStep::Kind::digits;
      if (type == "BertPreTokenizer") return SplitStep::Kind::bert;
      return std::nullopt;
    };
    const bool sequence = p.is_object() && p.value("type", "") == "Sequence";
    const nlohmann::json* steps = sequence && p.contains("pretokenizers") ? &p["pretokenizers"] : nullptr;
    if (sequence && (steps == nullptr || !steps->is_array() || steps->empty())) return false;
    const std::size_t count = sequence ? steps->size() : 1;
    for (std::size_t i = 0; i < count; ++i)
      if (!kind_of(sequence ? (*steps)[i] : p)) return false;
    splits_.clear();
    for (std::size_t i = 0; i < count; ++i) {
      const nlohmann::json& step = sequence ? (*steps)[i] : p;
      const std::string at = sequence ? cat("pre_tokenizer.pretokenizers[", i, "]") : std::string("pre_tokenizer");
      SplitStep s{*kind_of(step)};
      if (s.kind == SplitStep::Kind::punctuation && step.contains("behavior") &&
          !(step["behavior"].is_string() && step["behavior"].get<std::string>() == "Isolated"))
        r.unsupported(at + ".behavior", step["behavior"], "\"Isolated\"");
      if (s.kind == SplitStep::Kind::digits && step.contains("individual_digits")) {
        if (!step["individual_digits"].is_boolean()) r.fail(at + ".individual_digits", "not true or false");
        s.individual_digits = step["individual_digits"].get<bool>();
      }
      splits_.push_back(s);
    }
    pre_tokenizer_ = PreTokenizer::splits;
    return true;
  }

  void read_pre_tokenizer(const Reader& r, const nlohmann::json& p) {
    if (wordpiece_) {
      if (p.is_object() && p.value("type", "") == "BertPreTokenizer") {
        pre_tokenizer_ = PreTokenizer::bert;
        return;
      }
      if (!read_splits(r, p))
        r.unsupported("pre_tokenizer", p, "a BertPreTokenizer, Whitespace, WhitespaceSplit, Punctuation, Digits or a "
                                          "Sequence of them (the WordPiece model's)");
      return;
    }
    if (p.is_null()) {  // each segment one word, split into characters (SentencePiece-style)
      pre_tokenizer_ = PreTokenizer::none;
      return;
    }
    const std::string type = p.is_object() ? p.value("type", "") : "";
    if (type == "WhitespaceSplit") {  // each run between whitespace one word
      pre_tokenizer_ = PreTokenizer::none;
      whitespace_split_ = true;
      return;
    }
    if (type == "Metaspace") {
      pre_tokenizer_ = PreTokenizer::metaspace;
      metaspace_ = read_metaspace(r, "pre_tokenizer", p);
      return;
    }
    // T5's and ALBERT's: Sequence [WhitespaceSplit, Metaspace].
    const nlohmann::json* steps = type == "Sequence" && p.contains("pretokenizers") ? &p["pretokenizers"] : nullptr;
    if (steps && steps->is_array() && steps->size() == 2 && (*steps)[0].is_object() &&
        (*steps)[0].value("type", "") == "WhitespaceSplit" && (*steps)[1].is_object() &&
        (*steps)[1].value("type", "") == "Metaspace") {
      pre_tokenizer_ = PreTokenizer::metaspace;
      whitespace_split_ = true;
      metaspace_ = read_metaspace(r, "pre_tokenizer.pretokenizers[1]", (*steps)[1]);
      if (metaspace_.prepend == Metaspace::Prepend::first)
        r.unsupported("pre_tokenizer.pretokenizers[1].prepend_scheme", "first", "\"always\" or \"never\" after WhitespaceSplit");
      return;
    }
    if (read_splits(r, p)) return;  // the model's words are what the splitters leave (characters for BPE)
    if (unigram_)
      r.unsupported("pre_tokenizer", p, "null, a Metaspace, a Sequence [WhitespaceSplit, Metaspace], or Whitespace, "
                                        "WhitespaceSplit, Punctuation, Digits, BertPreTokenizer or a Sequence of them (the "
                                        "Unigram model's)");
    // Llama 3's and Qwen2's: Sequence [Split by a pattern, ByteLevel].
    if (steps && steps->is_array() && steps->size() == 2 && (*steps)[0].is_object() &&
        (*steps)[0].value("type", "") == "Split" && (*steps)[1].is_object() &&
        (*steps)[1].value("type", "") == "ByteLevel") {
      read_split(r, "pre_tokenizer.pretokenizers[0]", (*steps)[0]);
      read_byte_level(r, "pre_tokenizer.pretokenizers[1]", (*steps)[1]);
      return;
    }
    if (!p.is_object() || p.value("type", "") != "ByteLevel")
      r.unsupported("pre_tokenizer", p, "null, a ByteLevel, a Sequence [Split, ByteLevel], a Metaspace, or "
                                        "Whitespace, WhitespaceSplit, Punctuation, Digits, BertPreTokenizer or a "
                                        "Sequence of them (the BPE model's)");
    read_byte_level(r, "pre_tokenizer", p);
  }

  /// A ByteLevel pre-tokenizer (the one at `at`): its add_prefix_space and use_regex.
  void read_byte_level(const Reader& r, const std::string& at, const nlohmann::json& p) {
    pre_tokenizer_ = PreTokenizer::byte_level;
    for (const char* key : {"add_prefix_space", "use_regex"})
      if (p.contains(key) && !p[key].is_boolean()) r.fail(at + "." + key, "not true or false");
    add_prefix_space_ = p.value("add_prefix_space", add_prefix_space_);
    byte_regex_ = p.value("use_regex", true);
  }

  /// A Split pre-tokenizer (the one at `at`) by a regular expression split_pattern.hpp matches, its matches
  /// isolated.
  void read_split(const Reader& r, const std::string& at, const nlohmann::json& p) {
    const nlohmann::json* regex = p.contains("pattern") && p["pattern"].is_object() && p["pattern"].contains("Regex")
                                      ? &p["pattern"]["Regex"]
                                      : nullptr;
    if (regex == nullptr || !regex->is_string() || !split_pattern_of(regex->get<std::string>()))
      r.unsupported(at + ".pattern", p.value("pattern", nlohmann::json()),
                    "the regular expression of GPT-2, of cl100k_base (Llama 3) or of Qwen2");
    split_pattern_ = split_pattern_of(regex->get<std::string>());
    if (p.value("behavior", nlohmann::json()) != "Isolated")
      r.unsupported(at + ".behavior", p.value("behavior", nlohmann::json()), "\"Isolated\"");
    if (p.value("invert", nlohmann::json(false)) != false)
      r.unsupported(at + ".invert", p["invert"], "false");
  }

  void read_added_tokens(const Reader& r, const nlohmann::json& list) {
    using polyformer::detail::cat;
    if (!list.is_array()) r.fail("added_tokens", "not a list");
    for (std::size_t i = 0; i < list.size(); ++i) {
      const nlohmann::json& a = list[i];
      const std::string at = cat("added_tokens[", i, "]");
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string())
        r.fail(at, "not an object with an integer id and a string content");
      for (const char* key : {"single_word", "lstrip", "rstrip"})
        if (a.contains(key) && !(a[key].is_boolean() && !a[key].get<bool>())) r.unsupported(at + "." + key, a[key], "false");
      if (!normalizer_.empty() && a.value("normalized", false))  // matched in the normalized text: not run here
        r.unsupported(at + ".normalized", a["normalized"], "false with a normalizer");
      AddedToken t{a["id"].get<int>(), a["content"].get<std::string>(), a.value("special", false)};
      if (t.id < 0) r.fail(at + ".id", cat(t.id, ", expected >= 0"));
      if (t.content.empty()) r.fail(at + ".content", "empty");
      added_.push_back(std::move(t));
    }
  }

  const AddedToken* added(int id) const {
    for (const AddedToken& a : added_)
      if (a.id == id) return &a;
    return nullptr;
  }

  static std::string read_text(const std::string& path, std::string_view format) {
    const std::vector<unsigned char> bytes = io::detail::read_file(path, format);
    return std::string(bytes.begin(), bytes.end());
  }

  Tokenizer() = default;
  /// The model's token of `id`, or nullptr.
  const std::string* model_token(int id) const {
    const std::size_t size = bpe_ ? bpe_->size() : wordpiece_ ? wordpiece_->size() : unigram_->size();
    if (id < 0 || std::size_t(id) >= size) return nullptr;
    const std::string& token = bpe_ ? bpe_->token(id) : wordpiece_ ? wordpiece_->token(id) : unigram_->piece(id);
    return token.empty() ? nullptr : &token;
  }

  /// Each byte's single-character token, looked up once (byte-level BPE).
  void finish() {
    if (!bpe_ || pre_tokenizer_ != PreTokenizer::byte_level) return;
    const ByteAlphabet& alphabet = ByteAlphabet::instance();
    for (int b = 0; b < 256; ++b) byte_ids_[std::size_t(b)] = bpe_->id_of(alphabet.spelling(static_cast<unsigned char>(b)));
  }

  std::string source_;
  std::optional<BpeModel> bpe_;              // one of the four models
  std::optional<WordPieceModel> wordpiece_;
  std::optional<UnigramModel> unigram_;
  std::shared_ptr<const SentencePieceModel> sentencepiece_;  // or the SentencePiece library's model
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_ = PreTokenizer::byte_level;
  Metaspace metaspace_;
  Decoder decoder_;
  PostProcessor post_;  // the special tokens and type ids of a text and of a pair
  std::vector<AddedToken> added_;
  std::array<int, 256> byte_ids_{};  // each byte's single-character token, or -1
  bool add_prefix_space_ = false, ignore_merges_ = false;
  bool byte_regex_ = true;                   // ByteLevel's use_regex: GPT-2's pattern over each piece
  std::optional<SplitPattern> split_pattern_;  // a Split before ByteLevel
  bool whitespace_split_ = false;  // WhitespaceSplit before Metaspace (or alone)
  std::vector<SplitStep> splits_;  // PreTokenizer::splits: the splitters, in order
};

}  // namespace polyformer::tokenizers
