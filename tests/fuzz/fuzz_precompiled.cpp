// libFuzzer target: SentencePiece's precompiled character map (tokenizers/precompiled.hpp) from arbitrary bytes —
// the trie's size, its units and their offsets, the replacement strings — then normalizing the text after a
// separator with it, grapheme cluster by grapheme cluster (tokenizers/graphemes.hpp).

#include "fuzz_common.hpp"
#include "polyformer/tokenizers/precompiled.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto parts = fuzz::split(fuzz::text(data, size), "\n--TEXT--\n");
  const std::string_view charsmap = parts.first, text = parts.second;
  fuzz::expect_errors([&] {
    const polyformer::tokenizers::Precompiled p(charsmap, "fuzz");
    (void)p.normalize(text, "fuzz");
  });
  return 0;
}
