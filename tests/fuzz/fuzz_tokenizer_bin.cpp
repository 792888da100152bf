// libFuzzer target: llama2.c's tokenizer.bin (io/tokenizer.hpp) from arbitrary bytes, for the vocabulary size the
// first byte picks (3..258); a file that reads is then used: its pieces encode the rest of the input, and the ids
// decode.

#include "fuzz_common.hpp"
#include "polyformer/io/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const int vocab = 3 + data[0];
  const auto parts = fuzz::split(fuzz::text(data + 1, size - 1), std::string_view("\0PROMPT\0", 8));
  const std::string_view file = parts.first, prompt = parts.second;
  fuzz::expect_errors([&] {
    const auto t = polyformer::io::Tokenizer::parse(fuzz::bytes(reinterpret_cast<const std::uint8_t*>(file.data()), file.size()),
                                                    vocab, "fuzz");
    const std::vector<int> ids = t.encode(prompt);
    int previous = 1;
    for (const int id : ids) {
      (void)t.decode(previous, id);
      previous = id;
    }
  });
  return 0;
}
