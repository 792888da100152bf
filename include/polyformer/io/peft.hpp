#pragma once
/// \file LoRA adapters saved by Hugging Face PEFT (`model.save_pretrained(dir)`): a directory holding
/// `adapter_config.json` (`r`, `lora_alpha`, `target_modules`, …) and `adapter_model.safetensors`, whose
/// tensors are `base_model.model.<module path>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r).
/// Everything is validated before anything is returned: options that change the arithmetic and are not
/// supported (trained biases, per-module ranks, fan-in-fan-out weights, fully saved modules) are refused by
/// name rather than ignored.

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/file.hpp"
#include "polyformer/io/safetensors.hpp"

namespace polyformer::io {

/// One PEFT LoRA adapter as read from its directory.
struct PeftLoraAdapter {
  /// One adapted module: its path in the base model (e.g. "layers.0.attention.wq") and its two factors.
  struct Module {
    std::string path;
    Matrix a;  ///< (r, in)
    Matrix b;  ///< (out, r)
  };

  std::string directory;
  Index rank = 0;          ///< r
  float alpha = 0.0f;      ///< lora_alpha
  bool use_rslora = false; ///< rank-stabilized scaling α/√r instead of α/r
  std::vector<std::string> target_modules;  ///< as listed in the config (a regex string becomes one entry)
  std::vector<Module> modules;              ///< in file order

  /// s in y += s·B(A x): α/r, or α/√r with use_rslora.
  float scaling() const noexcept {
    const float r = static_cast<float>(rank);
    return use_rslora ? alpha / std::sqrt(r) : alpha / r;
  }
};

namespace detail {

inline std::string peft_prefix(const std::string& path) { return file_prefix("PEFT adapter", path); }

/// Reads a whole text file (format_error naming the path when it cannot).
inline std::string read_text_file(const std::string& path) {
  const std::vector<unsigned char> bytes = read_file(path, "PEFT adapter");
  return std::string(bytes.begin(), bytes.end());
}

}  // namespace detail

/// Reads the PEFT LoRA adapter in `directory`. Throws format_error (naming the file and what was expected
/// versus found) for a missing or malformed file, an unsupported option, a tensor that is not a LoRA factor,
/// a factor without its partner, or factors whose shapes disagree with each other or with `r`.
inline PeftLoraAdapter read_peft_lora(const std::string& directory) {
  using nlohmann::json;
  using polyformer::detail::cat;
  PeftLoraAdapter out;
  out.directory = directory;

  // ---- adapter_config.json ----
  const std::string config_path = directory + "/adapter_config.json";
  const std::string pre = detail::peft_prefix(config_path);
  json config;
  try {
    config = json::parse(detail::read_text_file(config_path));
  } catch (const json::exception& e) {
    throw format_error(cat(pre, "not valid JSON (", e.what(), ")"));
  }
  if (!config.is_object()) throw format_error(cat(pre, "expected a JSON object, found ", config.type_name()));
  const auto field = [&](const char* key) -> const json* {
    auto it = config.find(key);
    return it == config.end() || it->is_null() ? nullptr : &*it;
  };
  if (const json* t = field("peft_type"); t && !(t->is_string() && t->get<std::string>() == "LORA"))
    throw format_error(cat(pre, "peft_type is ", t->dump(), ", expected \"LORA\""));
  const json* r = field("r");
  if (!r || !r->is_number_integer() || r->get<long long>() < 1 || r->get<long long>() > (1 << 20))
    throw format_error(cat(pre, "r is ", r ? r->dump() : "missing", ", expected a positive integer"));
  out.rank = r->get<Index>();
  const json* alpha = field("lora_alpha");
  if (!alpha || !alpha->is_number() || !std::isfinite(alpha->get<double>()))
    throw format_error(cat(pre, "lora_alpha is ", alpha ? alpha->dump() : "missing", ", expected a number"));
  out.alpha = alpha->get<float>();
  if (const json* rs = field("use_rslora")) {
    if (!rs->is_boolean()) throw format_error(cat(pre, "use_rslora is ", rs->dump(), ", expected true or false"));
    out.use_rslora = rs->get<bool>();
  }
  if (const json* t = field("target_modules")) {
    if (t->is_string()) {
      out.target_modules.push_back(t->get<std::string>());
    } else if (t->is_array()) {
      for (const json& m : *t) {
        if (!m.is_string()) throw format_error(cat(pre, "target_modules holds ", m.dump(), ", expected module names"));
        out.target_modules.push_back(m.get<std::string>());
      }
    } else {
      throw format_error(cat(pre, "target_modules is ", t->dump(), ", expected a list of module names or a string"));
    }
  }
  // Options that change the arithmetic: refuse what is not the plain y += s·B(A x).
  if (const json* b = field("bias"); b && !(b->is_string() && b->get<std::string>() == "none"))
    throw format_error(cat(pre, "bias is ", b->dump(), ", only \"none\" is supported (trained biases are not)"));
  if (const json* f = field("fan_in_fan_out"); f && !(f->is_boolean() && !f->get<bool>()))
    throw format_error(cat(pre, "fan_in_fan_out is ", f->dump(), ", only false is supported"));
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (const json* p = field(key); p && !(p->is_object() && p->empty()))
      throw format_error(cat(pre, key, " is ", p->dump(), ", per-module ranks and alphas are not supported"));
  if (const json* m = field("modules_to_save"); m && !(m->is_array() && m->empty()))
    throw format_error(cat(pre, "modules_to_save is ", m->dump(), ", fully saved modules are not supported"));
  if (const json* d = field("use_dora"); d && !(d->is_boolean() && !d->get<bool>()))
    throw format_error(cat(pre, "use_dora is ", d->dump(), ", DoRA is not supported"));

  // ---- adapter_model.safetensors ----
  const std::string weights_path = directory + "/adapter_model.safetensors";
  const SafetensorsFile file = SafetensorsFile::open(weights_path);
  const std::string wpre = detail::peft_prefix(weights_path);
  constexpr std::string_view head = "base_model.model.";
  constexpr std::string_view a_tail = ".lora_A.weight", b_tail = ".lora_B.weight";
  struct Pair {
    std::string a, b;
  };
  std::map<std::string, Pair> pairs;
  std::vector<std::string> order;
  for (const std::string& name : file.names()) {
    const auto ends_with = [&](std::string_view tail) {
      return name.size() > head.size() + tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
    };
    const bool is_a = ends_with(a_tail), is_b = ends_with(b_tail);
    if (name.compare(0, head.size(), head) != 0 || (!is_a && !is_b))
      throw format_error(cat(wpre, "tensor '", name, "' is not a LoRA factor, expected 'base_model.model.<module>",
                             a_tail, "' or '…", b_tail, "'"));
    const std::size_t tail = is_a ? a_tail.size() : b_tail.size();
    const std::string module = name.substr(head.size(), name.size() - head.size() - tail);
    auto [it, fresh] = pairs.try_emplace(module);
    if (fresh) order.push_back(module);
    (is_a ? it->second.a : it->second.b) = name;
  }
  if (order.empty()) throw format_error(cat(wpre, "holds no LoRA factors"));
  for (const std::string& module : order) {
    const Pair& p = pairs.at(module);
    if (p.a.empty() || p.b.empty())
      throw format_error(cat(wpre, "module '", module, "' has lora_", p.a.empty() ? "B" : "A", " but no lora_",
                             p.a.empty() ? "A" : "B"));
    const TensorInfo& ia = file.info(p.a);
    const TensorInfo& ib = file.info(p.b);
    if (ia.shape.size() != 2 || ia.shape[0] != out.rank || ia.shape[1] < 1)
      throw format_error(cat(wpre, "tensor '", p.a, "' has shape ", detail::shape_string(ia.shape), ", expected (r = ",
                             out.rank, ", in)"));
    if (ib.shape.size() != 2 || ib.shape[1] != out.rank || ib.shape[0] < 1)
      throw format_error(cat(wpre, "tensor '", p.b, "' has shape ", detail::shape_string(ib.shape), ", expected (out, r = ",
                             out.rank, ")"));
    if (!out.target_modules.empty() && config.at("target_modules").is_array()) {
      const std::string leaf = module.substr(module.rfind('.') + 1);
      bool listed = false;
      for (const auto& t : out.target_modules) listed = listed || t == leaf || t == module;
      if (!listed)
        throw format_error(cat(wpre, "module '", module, "' is not among adapter_config.json's target_modules"));
    }
    out.modules.push_back({module, file.matrix(p.a), file.matrix(p.b)});
  }
  return out;
}

/// Writes `adapter` as PEFT's save_pretrained does: `directory` (created if missing) gets adapter_config.json (r,
/// lora_alpha, use_rslora, target_modules, and PEFT's defaults for the rest) and adapter_model.safetensors
/// (`base_model.model.<path>.lora_A.weight` / `.lora_B.weight`). Each file is written to a temporary name and
/// renamed into place. Throws format_error when a file cannot be written, config_error for an adapter without
/// modules or with factors of another rank.
inline void write_peft_lora(const std::string& directory, const PeftLoraAdapter& adapter) {
  using polyformer::detail::cat;
  const char* func = "write_peft_lora";
  if (adapter.modules.empty()) throw config_error(cat(func, ": the adapter has no modules, expected at least one"));
  for (const auto& m : adapter.modules)
    if (m.a.rows() != adapter.rank || m.b.cols() != adapter.rank)
      throw config_error(cat(func, ": module '", m.path, "' has A ", polyformer::detail::shape_str(m.a.rows(), m.a.cols()),
                             " and B ", polyformer::detail::shape_str(m.b.rows(), m.b.cols()), ", expected rank ",
                             adapter.rank));
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec) throw format_error(cat(func, ": cannot create directory '", directory, "': ", ec.message()));
  std::vector<std::string> targets = adapter.target_modules;
  if (targets.empty())
    for (const auto& m : adapter.modules) {
      const std::string leaf = m.path.substr(m.path.rfind('.') + 1);
      if (std::find(targets.begin(), targets.end(), leaf) == targets.end()) targets.push_back(leaf);
    }
  const nlohmann::ordered_json config = {
      {"peft_type", "LORA"},   {"r", adapter.rank},       {"lora_alpha", adapter.alpha},
      {"use_rslora", adapter.use_rslora}, {"target_modules", targets}, {"lora_dropout", 0.0},
      {"bias", "none"},        {"fan_in_fan_out", false}, {"modules_to_save", nullptr},
      {"task_type", "CAUSAL_LM"}, {"inference_mode", true}};
  const std::string text = config.dump(2) + "\n";
  std::vector<std::pair<std::string, FloatTensor>> tensors;
  const auto tensor = [](const Matrix& m) {
    FloatTensor t;
    t.shape = {m.rows(), m.cols()};
    t.data.assign(m.data(), m.data() + m.size());
    return t;
  };
  for (const auto& m : adapter.modules) {
    tensors.emplace_back("base_model.model." + m.path + ".lora_A.weight", tensor(m.a));
    tensors.emplace_back("base_model.model." + m.path + ".lora_B.weight", tensor(m.b));
  }
  write_safetensors(directory + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  detail::write_file_replace(directory + "/adapter_config.json", std::vector<unsigned char>(text.begin(), text.end()),
                             "PEFT adapter");
}

}  // namespace polyformer::io
