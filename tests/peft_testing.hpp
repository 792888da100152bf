#pragma once
// Writes small PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors) for the tests,
// laid out as Hugging Face PEFT saves them.

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/core/tensor.hpp"
#include "polyformer/io/safetensors.hpp"

namespace pft {

/// One adapted module of a test adapter: its llama2.c path and factors A (r, in), B (out, r).
struct LoraModule {
  std::string path;
  polyformer::Matrix a, b;
};

inline polyformer::io::FloatTensor to_tensor(const polyformer::Matrix& m) {
  polyformer::io::FloatTensor t;
  t.shape = {m.rows(), m.cols()};
  t.data.assign(m.data(), m.data() + m.size());
  return t;
}

/// Writes `dir` (created if needed) with a config of rank r, alpha and the given target modules (the modules'
/// leaf names when `targets` is empty); `config_extra` entries are merged into the config.
inline void write_peft_adapter(const std::string& dir, long r, double alpha, const std::vector<LoraModule>& modules,
                               nlohmann::json config_extra = nlohmann::json::object(),
                               std::vector<std::string> targets = {}) {
  std::filesystem::create_directories(dir);
  if (targets.empty())
    for (const auto& m : modules) {
      const std::string leaf = m.path.substr(m.path.rfind('.') + 1);
      if (std::find(targets.begin(), targets.end(), leaf) == targets.end()) targets.push_back(leaf);
    }
  nlohmann::json config = {{"peft_type", "LORA"},     {"r", r},           {"lora_alpha", alpha},
                           {"target_modules", targets}, {"lora_dropout", 0.0}, {"bias", "none"},
                           {"fan_in_fan_out", false},   {"task_type", "CAUSAL_LM"}};
  config.update(config_extra);
  std::ofstream(dir + "/adapter_config.json") << config.dump(2);
  std::vector<std::pair<std::string, polyformer::io::FloatTensor>> tensors;
  for (const auto& m : modules) {
    tensors.emplace_back("base_model.model." + m.path + ".lora_A.weight", to_tensor(m.a));
    tensors.emplace_back("base_model.model." + m.path + ".lora_B.weight", to_tensor(m.b));
  }
  polyformer::io::write_safetensors(dir + "/adapter_model.safetensors", tensors);
}

}  // namespace pft
