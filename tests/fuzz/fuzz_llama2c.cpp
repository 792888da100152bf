// libFuzzer target: a llama2.c checkpoint (io/llama2c.hpp: legacy, version 1 and version 2 headers) from arbitrary
// bytes: the header's sizes against the file's, then every tensor.

#include "fuzz_common.hpp"
#include "polyformer/io/llama2c.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::expect_errors([&] { (void)polyformer::io::parse_llama2c(fuzz::bytes(data, size), "fuzz"); });
  return 0;
}
