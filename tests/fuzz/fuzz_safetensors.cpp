// libFuzzer target: a safetensors file (io/safetensors.hpp) from arbitrary bytes — the header, every tensor's
// shape and offsets, F32/F16/BF16 conversion and I32/I64 ids.

#include "fuzz_common.hpp"
#include "polyformer/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::expect_errors([&] {
    const auto file = polyformer::io::SafetensorsFile::from_bytes(std::vector<unsigned char>(data, data + size), "fuzz");
    for (const std::string& name : file.names()) {
      (void)file.info(name);
      fuzz::expect_errors([&] { (void)file.tensor(name); });
      fuzz::expect_errors([&] { (void)file.integers(name); });
    }
  });
  return 0;
}
