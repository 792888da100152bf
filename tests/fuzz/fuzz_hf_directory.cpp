// libFuzzer target: a Hugging Face model directory (io/hf_directory.hpp, models/hf_*.hpp): the input is config.json,
// a separator line, then model.safetensors, written to a folder of the process's own and read by every loader
// (BERT, GPT-2, Llama, T5 with either FFN). A config.json whose sizes the files cannot back must be refused before
// anything is allocated (fuzz_run's -malloc_limit_mb catches one that is not).

#include "fuzz_common.hpp"
#include "polyformer/models/hf_bert.hpp"
#include "polyformer/models/hf_gpt2.hpp"
#include "polyformer/models/hf_llama.hpp"
#include "polyformer/models/hf_t5.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace pf = polyformer;
  const auto parts = fuzz::split(fuzz::text(data, size), "\n--SAFETENSORS--\n");
  const auto dir = fuzz::scratch() / "hf";
  std::filesystem::create_directories(dir);
  fuzz::write_file(dir / "config.json", parts.first);
  fuzz::write_file(dir / "model.safetensors", parts.second);
  const std::string path = dir.string();
  fuzz::expect_errors([&] { (void)pf::load_hf_bert(path); });
  fuzz::expect_errors([&] { (void)pf::load_hf_gpt2(path); });
  fuzz::expect_errors([&] { (void)pf::load_hf_llama(path); });
  fuzz::expect_errors([&] { (void)pf::load_hf_t5<pf::ReLU>(path); });
  fuzz::expect_errors([&] { (void)pf::load_hf_t5<pf::GeGLUTanh>(path, {}, pf::io::NonFinite::accept); });
  return 0;
}
