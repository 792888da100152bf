#pragma once
/// \file The whole state of a training run in one safetensors file, DIR/training_state.safetensors: every
/// parameter ("model.<name>"), the optimizer's per-tensor state (AdamW: "adamw.m.<name>", "adamw.v.<name>" and
/// each tensor's step count; SGD: "sgd.momentum.<name>"), and in the metadata the step, the data position, the
/// seed and whatever the caller adds (its run settings, to refuse a resume into another run). Floats are stored as
/// they are, so a run resumed from the file continues bit for bit as one that never stopped. The file is written
/// to a temporary name and renamed into place: a failed save leaves the previous checkpoint intact.

#include <charconv>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "polyformer/core/error.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/train/optimizer.hpp"

namespace polyformer {

/// Where a run stands, besides its tensors.
struct TrainingProgress {
  std::int64_t step = 0;      ///< optimizer steps taken
  std::int64_t position = 0;  ///< windows of data consumed (the next batch starts here)
  std::uint64_t seed = 0;     ///< the run's seed (shuffling, initialization)
  std::map<std::string, std::string> settings;  ///< the caller's run settings, compared on resume
};

/// The optimizer a run steps with.
using TrainingOptimizer = std::variant<AdamW, SGD>;

namespace detail {
inline const char* checkpoint_file_name = "training_state.safetensors";
inline constexpr const char* checkpoint_format = "polyformer-training-state-1";

inline io::FloatTensor float_tensor(std::vector<Index> shape, std::vector<float> data) {
  io::FloatTensor t;
  t.shape.assign(shape.begin(), shape.end());
  t.data = std::move(data);
  return t;
}
}  // namespace detail

/// The checkpoint file of directory `dir`.
inline std::string training_state_path(const std::string& dir) {
  return (std::filesystem::path(dir) / detail::checkpoint_file_name).string();
}

/// Saves `params`, the optimizer's state and `progress` into dir (created if missing), replacing an earlier
/// checkpoint there only once the new one is completely written.
inline void save_training_state(const std::string& dir, const ParameterList& params, const TrainingOptimizer& optimizer,
                                const TrainingProgress& progress) {
  const char* func = "save_training_state";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw format_error(detail::cat(func, ": cannot create directory '", dir, "': ", ec.message()));
  std::vector<std::pair<std::string, io::FloatTensor>> tensors;
  for (const Parameter& p : params.items()) {
    std::vector<float> values(static_cast<std::size_t>(p.numel()));
    p.read(values.data());
    tensors.emplace_back("model." + p.name, detail::float_tensor(p.shape, std::move(values)));
  }
  nlohmann::json optimizer_meta = nlohmann::json::object();
  if (const auto* adam = std::get_if<AdamW>(&optimizer)) {
    optimizer_meta["kind"] = "adamw";
    nlohmann::json steps = nlohmann::json::object();
    for (const Parameter& p : params.items()) {  // in the parameters' order, so the file does not depend on hashing
      const AdamW::State* s = adam->state(p.name);
      if (s == nullptr) continue;
      const Index n = static_cast<Index>(s->m.size());
      tensors.emplace_back("adamw.m." + p.name, detail::float_tensor({n}, s->m));
      tensors.emplace_back("adamw.v." + p.name, detail::float_tensor({n}, s->v));
      steps[p.name] = s->step;
    }
    optimizer_meta["steps"] = std::move(steps);
  } else {
    const SGD& sgd = std::get<SGD>(optimizer);
    optimizer_meta["kind"] = "sgd";
    for (const Parameter& p : params.items())
      if (const auto* b = sgd.momentum_buffer(p.name))
        tensors.emplace_back("sgd.momentum." + p.name, detail::float_tensor({static_cast<Index>(b->size())}, *b));
  }
  std::map<std::string, std::string> meta = progress.settings;
  meta["format"] = detail::checkpoint_format;
  meta["step"] = std::to_string(progress.step);
  meta["position"] = std::to_string(progress.position);
  meta["seed"] = std::to_string(progress.seed);
  meta["optimizer"] = optimizer_meta.dump();
  io::write_safetensors(training_state_path(dir), tensors, meta);
}

/// Reads dir's checkpoint into `params` and `optimizer` (which must be of the kind saved) and returns its progress
/// (settings: the file's other metadata). Everything is checked before anything changes: a checkpoint of another
/// model (a parameter missing or of another shape), another optimizer or a malformed file throws, and the model
/// and optimizer are then as they were.
inline TrainingProgress load_training_state(const std::string& dir, const ParameterList& params,
                                            TrainingOptimizer& optimizer) {
  const char* func = "load_training_state";
  const std::string path = training_state_path(dir);
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  const auto meta = [&](const char* key) {
    const auto v = file.metadata_value(key);
    if (!v) throw format_error(detail::cat(func, ": '", path, "' has no '", key, "' metadata, expected a training state"));
    return *v;
  };
  if (meta("format") != detail::checkpoint_format)
    throw format_error(detail::cat(func, ": '", path, "' has format '", meta("format"), "', expected '",
                                   detail::checkpoint_format, "'"));
  const auto integer = [&](const char* key) -> std::uint64_t {
    const std::string v = meta(key);
    std::uint64_t x = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size())
      throw format_error(detail::cat(func, ": '", path, "' metadata '", key, "' is '", v, "', expected an integer >= 0"));
    return x;
  };
  TrainingProgress progress;
  progress.step = static_cast<std::int64_t>(integer("step"));
  progress.position = static_cast<std::int64_t>(integer("position"));
  progress.seed = integer("seed");
  if (progress.step < 0 || progress.position < 0)
    throw format_error(detail::cat(func, ": '", path, "' step ", progress.step, ", position ", progress.position,
                                   ", expected both below 2^63"));
  nlohmann::json opt;
  try {
    opt = nlohmann::json::parse(meta("optimizer"));
  } catch (const nlohmann::json::exception& e) {
    throw format_error(detail::cat(func, ": '", path, "' optimizer metadata is not JSON: ", e.what()));
  }
  const std::string kind = opt.value("kind", "");
  const bool adam = std::holds_alternative<AdamW>(optimizer);
  if (kind != (adam ? "adamw" : "sgd"))
    throw config_error(detail::cat(func, ": '", path, "' holds the state of optimizer '", kind, "', expected '",
                                   adam ? "adamw" : "sgd", "'"));

  // Read every tensor first; nothing is written until all of them fit.
  const auto vector_of = [&](const std::string& name, Index numel) {
    const io::TensorInfo& info = file.info(name);
    if (info.numel() != numel)
      throw config_error(detail::cat(func, ": '", path, "' tensor '", name, "' has ", info.numel(), " values, expected ",
                                     numel, " (a checkpoint of another model?)"));
    return file.tensor(name).data;
  };
  std::vector<std::vector<float>> values;
  for (const Parameter& p : params.items()) {
    const std::string name = "model." + p.name;
    if (!file.contains(name))
      throw config_error(detail::cat(func, ": '", path, "' has no parameter '", p.name, "' (a checkpoint of another model?)"));
    const io::TensorInfo& info = file.info(name);
    if (std::vector<Index>(info.shape.begin(), info.shape.end()) != p.shape)
      throw config_error(detail::cat(func, ": '", path, "' parameter '", p.name, "' has shape ",
                                     io::detail::shape_string(info.shape), ", the model's has ", p.numel(),
                                     " values in ", p.shape.size(), " dimensions (a checkpoint of another model?)"));
    values.push_back(file.tensor(name).data);
  }
  if (auto* a = std::get_if<AdamW>(&optimizer)) {
    AdamW restored = *a;
    const nlohmann::json steps = opt.value("steps", nlohmann::json::object());
    std::vector<std::pair<std::string, AdamW::State>> states;
    for (const Parameter& p : params.items()) {
      if (!steps.contains(p.name)) continue;
      if (!steps[p.name].is_number_integer())
        throw format_error(detail::cat(func, ": '", path, "' step count of '", p.name, "' is not an integer"));
      AdamW::State s;
      s.step = steps[p.name].get<std::int64_t>();
      s.m = vector_of("adamw.m." + p.name, p.numel());
      s.v = vector_of("adamw.v." + p.name, p.numel());
      states.emplace_back(p.name, std::move(s));
    }
    for (auto& [name, s] : states) restored.set_state(name, std::move(s));
    *a = std::move(restored);
  } else {
    SGD& sgd = std::get<SGD>(optimizer);
    std::vector<std::pair<std::string, std::vector<float>>> buffers;
    for (const Parameter& p : params.items())
      if (file.contains("sgd.momentum." + p.name))
        buffers.emplace_back(p.name, vector_of("sgd.momentum." + p.name, p.numel()));
    for (auto& [name, b] : buffers) sgd.set_momentum_buffer(name, std::move(b));
  }
  for (std::size_t i = 0; i < values.size(); ++i) params.items()[i].write(values[i].data());
  for (const auto& [k, v] : file.metadata())
    if (k != "format" && k != "step" && k != "position" && k != "seed" && k != "optimizer") progress.settings[k] = v;
  return progress;
}

}  // namespace polyformer
