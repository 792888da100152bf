#pragma once
/// \file A tokenizer's decoder: the steps of tokenizer.json's `decoder` (one, or a Sequence of them) turning the
/// tokens of ids back into text. Each step maps the list of token strings to a new list, as the tokenizers
/// library's decode_chain does; the text is the final list joined. ByteLevel and WordPiece (which end a chain:
/// they produce the text) and, for SentencePiece-style models, Replace, ByteFallback, Fuse, Strip and Metaspace.

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "polyformer/tokenizers/bert.hpp"
#include "polyformer/tokenizers/byte_level.hpp"
#include "polyformer/tokenizers/normalizer.hpp"
#include "polyformer/tokenizers/unicode.hpp"

namespace polyformer::tokenizers {

namespace decoders {

/// GPT-2's bytes-as-characters back to bytes, the whole as text (invalid UTF-8 replaced).
struct ByteLevel {};
/// BERT's "##" continuations joined, other tokens spaced; `cleanup` as transformers' clean_up_tokenization.
struct WordPiece {
  std::string prefix = "##";
  bool cleanup = true;
};
/// Every occurrence of a literal pattern in each token replaced.
struct Replace {
  std::string pattern, content;
};
/// Runs of <0xXX> tokens become their bytes when those form UTF-8, else one U+FFFD per byte token.
struct ByteFallback {};
/// All tokens joined into one.
struct Fuse {};
/// Up to `start` leading and `stop` trailing copies of the character `content` removed from each token.
struct Strip {
  std::string content = " ";
  std::size_t start = 0, stop = 0;
};
/// `replacement` back to spaces; in the first token it is dropped unless the pre-tokenizer never prepended it.
struct Metaspace {
  std::string replacement = "\xE2\x96\x81";  // U+2581
  bool prepended = true;
};

}  // namespace decoders

class Decoder {
 public:
  using Step = std::variant<decoders::ByteLevel, decoders::WordPiece, decoders::Replace, decoders::ByteFallback,
                            decoders::Fuse, decoders::Strip, decoders::Metaspace>;

  Decoder() = default;
  /// ByteLevel and WordPiece may only come last (the caller checks, naming its file).
  explicit Decoder(std::vector<Step> steps) : steps_(std::move(steps)) {}

  bool empty() const noexcept { return steps_.empty(); }
  const std::vector<Step>& steps() const noexcept { return steps_; }

  /// The text of `tokens`. Without steps the tokens are joined by single spaces (the library's default).
  std::string decode(const std::vector<std::string_view>& tokens) const {
    if (steps_.empty()) {
      std::string out;
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        if (i > 0) out += ' ';
        out += tokens[i];
      }
      return out;
    }
    if (steps_.size() == 1) {  // the common single steps, without copying tokens
      if (std::holds_alternative<decoders::ByteLevel>(steps_[0])) return byte_level_decode(tokens);
      if (const auto* w = std::get_if<decoders::WordPiece>(&steps_[0])) return wordpiece_decode(tokens, w->prefix, w->cleanup);
    }
    std::vector<std::string> list(tokens.begin(), tokens.end());
    for (const Step& step : steps_) {
      if (std::holds_alternative<decoders::ByteLevel>(step) || std::holds_alternative<decoders::WordPiece>(step)) {
        const std::vector<std::string_view> views(list.begin(), list.end());
        const auto* w = std::get_if<decoders::WordPiece>(&step);
        return w ? wordpiece_decode(views, w->prefix, w->cleanup) : byte_level_decode(views);
      }
      std::visit([&](const auto& s) { apply(s, list); }, step);
    }
    std::string out;
    for (const std::string& t : list) out += t;
    return out;
  }

 private:
  static void apply(const decoders::ByteLevel&, std::vector<std::string>&) {}
  static void apply(const decoders::WordPiece&, std::vector<std::string>&) {}
  static void apply(const decoders::Replace& r, std::vector<std::string>& list) {
    for (std::string& t : list) t = replace_all(t, r.pattern, r.content);
  }
  static void apply(const decoders::Fuse&, std::vector<std::string>& list) {
    std::string all;
    for (const std::string& t : list) all += t;
    list.assign(1, std::move(all));
  }
  static void apply(const decoders::Strip& s, std::vector<std::string>& list) {
    for (std::string& t : list) {
      std::size_t begin = 0, end = t.size();
      for (std::size_t k = 0; k < s.start && end - begin >= s.content.size() &&
                              t.compare(begin, s.content.size(), s.content) == 0;
           ++k)
        begin += s.content.size();
      for (std::size_t k = 0; k < s.stop && end - begin >= s.content.size() &&
                              t.compare(end - s.content.size(), s.content.size(), s.content) == 0;
           ++k)
        end -= s.content.size();
      t = t.substr(begin, end - begin);
    }
  }
  static void apply(const decoders::Metaspace& m, std::vector<std::string>& list) {
    for (std::size_t i = 0; i < list.size(); ++i) list[i] = replace_all(list[i], m.replacement, i == 0 && m.prepended ? "" : " ");
  }
  /// <0xXX> (hex digits of either case) → its byte, else -1.
  static int byte_of(std::string_view t) {
    if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return -1;
    const auto digit = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    };
    const int hi = digit(t[3]), lo = digit(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
  static void apply(const decoders::ByteFallback&, std::vector<std::string>& list) {
    std::vector<std::string> out;
    std::string bytes;
    std::size_t byte_tokens = 0;
    const auto flush = [&] {
      if (byte_tokens == 0) return;
      std::size_t at = 0, prefix = 0, n = 0;
      bool valid = true;
      for (; at < bytes.size() && valid; at += n) valid = (n = detail::utf8_sequence(bytes, at, prefix)) != 0;
      if (valid) out.push_back(bytes);
      else
        for (std::size_t k = 0; k < byte_tokens; ++k) out.emplace_back("\xEF\xBF\xBD");
      bytes.clear();
      byte_tokens = 0;
    };
    for (std::string& t : list) {
      if (const int b = byte_of(t); b >= 0) {
        bytes += static_cast<char>(b);
        ++byte_tokens;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    list = std::move(out);
  }

  std::vector<Step> steps_;
};

}  // namespace polyformer::tokenizers
