// libFuzzer target: a Hugging Face tokenizer.json (tokenizers/tokenizer.hpp: every model, normalizer,
// pre-tokenizer, post-processor and decoder it reads, Precompiled charsmaps among them) from arbitrary text; a file
// that reads then encodes the text after a separator line and decodes the ids, with and without special tokens, and
// encodes it as a pair (ids and type ids must match in number) when the post-processor has a pair template.

#include "fuzz_common.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto parts = fuzz::split(fuzz::text(data, size), "\n--TEXT--\n");
  const std::string_view json = parts.first, text = parts.second;
  fuzz::expect_errors([&] {
    const auto t = polyformer::tokenizers::Tokenizer::from_json(json, "fuzz");
    const std::vector<int> ids = t.encode(text);
    (void)t.decode(ids, /*skip_special_tokens=*/false);
    (void)t.decode(ids, /*skip_special_tokens=*/true);
    (void)t.encode(text, /*add_special_tokens=*/false);
    if (t.post_processor().encodes_pairs()) {  // the text as both halves of a pair, the second from its middle
      const auto pair = t.encode_pair(text, text.substr(text.size() / 2));
      if (pair.ids.size() != pair.type_ids.size()) __builtin_trap();
    }
  });
  return 0;
}
