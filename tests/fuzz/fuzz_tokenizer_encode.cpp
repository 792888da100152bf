// libFuzzer target: encoding arbitrary bytes with fixed tokenizers (tokenizers/tokenizer.hpp), and the round trips
// their formats promise. Byte-level BPE (GPT-2's pipeline: every byte a token, a few merges) and a Unigram model with
// byte fallback over Metaspace must give back valid UTF-8 input (the latter with U+2581 as a space and the first space
// dropped, as Metaspace promises), and refuse other input by name (format_error), as the tokenizers library takes
// only text.

#include <cstdlib>

#include "fuzz_common.hpp"
#include "polyformer/tokenizers/byte_level.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

namespace {

namespace pt = polyformer::tokenizers;

pt::Tokenizer byte_level() {
  const auto& alphabet = pt::ByteAlphabet::instance();
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet.spelling(static_cast<unsigned char>(b))] = b;
  const std::string t = alphabet.spelling('t'), h = alphabet.spelling('h'), e = alphabet.spelling('e'),
                    space = alphabet.spelling(' ');
  vocab[t + h] = 256;
  vocab[t + h + e] = 257;
  vocab[space + t + h + e] = 258;
  const nlohmann::json merges = {t + " " + h, t + h + " " + e, space + " " + t + h + e};
  const nlohmann::json level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const nlohmann::json j = {{"pre_tokenizer", level}, {"decoder", level},
                            {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  return pt::Tokenizer::from_json(j.dump(), "byte-level");
}

pt::Tokenizer unigram() {
  nlohmann::json vocab = nlohmann::json::array({nlohmann::json::array({"<unk>", 0.0})});
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab.push_back({name, -10.0});
  }
  for (const char* piece : {"\xE2\x96\x81", "\xE2\x96\x81the", "a", "b", "th", "e", "\xC3\xA9"}) vocab.push_back({piece, -2.0});
  const nlohmann::json metaspace = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"},
                                    {"split", true}};
  const nlohmann::json decoder = {{"type", "Sequence"}, {"decoders", nlohmann::json::array({
      {{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}}, {{"type", "ByteFallback"}},
      {{"type", "Fuse"}}, {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  const nlohmann::json j = {{"pre_tokenizer", metaspace}, {"decoder", decoder},
                            {"model", {{"type", "Unigram"}, {"unk_id", 0}, {"byte_fallback", true}, {"vocab", vocab}}}};
  return pt::Tokenizer::from_json(j.dump(), "unigram");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const pt::Tokenizer bytes = byte_level(), pieces = unigram();
  const std::string_view input = fuzz::text(data, size);
  bool valid = true;
  try {
    pt::validate_utf8(input, "fuzz");
  } catch (const polyformer::format_error&) {
    valid = false;
  }
  // Both take text (as the library's &str): invalid UTF-8 is refused by name, and only it.
  for (const pt::Tokenizer* t : {&bytes, &pieces}) {
    try {
      const std::string back = t->decode(t->encode(input));
      if (!valid) std::abort();
      // Byte-level BPE gives back every byte. Metaspace turns spaces into U+2581 and every U+2581 back into a space,
      // and the decoder strips the space its prepended U+2581 becomes (or the text's own first one).
      std::string want(input);
      if (t == &pieces) {
        want = pt::replace_all(want, "\xE2\x96\x81", " ");
        if (want.starts_with(' ')) want.erase(0, 1);
      }
      // (A text spelling a byte piece, "<0x41>", encodes to it and decodes to its byte, as in the library.)
      if (back != want && !(t == &pieces && input.find("<0x") != std::string_view::npos)) std::abort();
    } catch (const polyformer::format_error&) {
      if (valid) std::abort();
    }
  }
  return 0;
}
