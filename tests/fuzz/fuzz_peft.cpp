// libFuzzer target: a PEFT LoRA adapter directory (io/peft.hpp): the input is adapter_config.json, a separator
// line, then adapter_model.safetensors, written to a folder of the process's own and read back.

#include "fuzz_common.hpp"
#include "polyformer/io/peft.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto parts = fuzz::split(fuzz::text(data, size), "\n--SAFETENSORS--\n");
  const std::string_view config = parts.first, weights = parts.second;
  const auto dir = fuzz::scratch() / "peft";
  std::filesystem::create_directories(dir);
  fuzz::write_file(dir / "adapter_config.json", config);
  fuzz::write_file(dir / "adapter_model.safetensors", weights);
  fuzz::expect_errors([&] { (void)polyformer::io::read_peft_lora(dir.string()); });
  return 0;
}
